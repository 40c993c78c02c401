//! Command-line entry points of the client side: `mount`, `umount`, `remount`, `status`.
//!
//! `status` and `remount` ask the mount itself: the root of every depotfs mount answers its
//! [`Status`] as JSON in `user.depotfs.status`, and each of its values in the other
//! attributes listed in [`crate::status::XATTRS_ROOT`] (see `getfattr -d -m - MOUNTPOINT`),
//! so there is no socket or state file to keep in step.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backend::NetOptions;
use crate::cache;
use crate::mount::{self, Options};
use crate::status::{CacheState, LastCheck, Status, XATTR_JSON};

/// `depotfs mount`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    override_usage = "depotfs mount [OPTIONS] SOURCE MOUNTPOINT\n       \
                      depotfs mount [OPTIONS] --server URL [--server URL]... MOUNTPOINT",
    after_help = "\
Defaults: objects are cached in /var/cache/depotfs (created if missing; --cache-dir), up to
4 GiB (--cache-size). A background mount (the default) prints one line when it is ready and
logs to CACHE_DIR/logs/mount<MOUNTPOINT with / as _>.log (--log-file), appended and rotated
at --log-size (2 older files kept: .1, .2); with --foreground it logs to stderr.

Reads fail after: a request no route can serve fails with EIO after at most
  (retries + 1) x servers x proxies x timeout + backoff,
where backoff = 0.25 s, 0.5 s, 1 s, ... (capped at 4 s) before each retry pass; e.g. one
server, DIRECT, the defaults (--timeout 30, --retries 2): 3 x 30 s + 0.75 s = 90.75 s.
`depotfs status` shows this bound. Once every route has failed the mount is offline:
uncached reads fail (EIO) within 2 s, cached files keep working, a probe every 5 s (and the
revision check) brings it back online when a server answers."
)]
pub struct MountArgs {
    /// HTTP(S) URL of a served `public/` (several, separated by `,` or `;`, are tried in
    /// order with failover), or a local STORE path. Left out with `--server`: then the one
    /// argument is MOUNTPOINT.
    #[arg(value_name = "SOURCE", required = true)]
    pub source: Option<String>,
    /// Where to mount.
    #[arg(value_name = "MOUNTPOINT", required_unless_present = "servers")]
    pub mountpoint: Option<PathBuf>,
    /// A server URL (a served `public/`); repeat for mirrors, tried in order (sticky
    /// failover, back to the first after --failback-after).
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// An HTTP proxy URL, or `DIRECT` for none; repeat for fallbacks, tried in order.
    /// Default: DIRECT only (`http_proxy` and similar variables are ignored).
    #[arg(long = "proxy", value_name = "URL|DIRECT")]
    pub proxies: Vec<String>,
    /// The repository's public key file (`repo.pub`). Required over HTTP; for a local store
    /// it defaults to the store's own `public/repo.pub`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Cache directory, shared by all mounts that name it (created if missing); also holds
    /// the logs of background mounts (`logs/`).
    #[arg(long, default_value = cache::DEFAULT_DIR)]
    pub cache_dir: PathBuf,
    /// Cache limit, e.g. `4G`, `512M` (binary units).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Decompressed chunks kept in memory, e.g. `64M` (the kernel's page cache holds what
    /// readers read; this holds chunks read ahead and partly read).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub mem_size: u64,
    /// Seconds one attempt (one request over one server/proxy route, body included) may take.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Seconds a TCP connect may take.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub connect_timeout: u64,
    /// Extra passes over all routes after the first fails, with exponential backoff.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Seconds on a fallback proxy or server before the preferred one is tried again.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub failback_after: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Seconds between checks for a new revision (default: the manifest's TTL).
    #[arg(long = "ttl", visible_alias = "manifest-ttl", value_name = "SECS")]
    pub manifest_ttl: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Bandwidth cap, MiB/s, of the background fetch of an image's access list (recorded
    /// with --record, published with `depotfs add --trace`) when it is opened, after a burst
    /// of half a second's worth; 0 turns access-list prefetch off.
    #[arg(long, value_name = "MIB_PER_S", default_value_t = 64.0)]
    pub prefetch_rate: f64,
    /// The kernel's readahead for this mount in KiB (it also bounds the size of the
    /// kernel's read requests); 0 leaves the kernel's default (128). Needs root.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub kernel_readahead: u32,
    /// Record every read (PATH<TAB>OFFSET<TAB>LENGTH lines) to FILE, the trace
    /// `depotfs add --trace` takes.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stay in the foreground (otherwise return once the mount is ready).
    #[arg(long)]
    pub foreground: bool,
    /// Let other users access the mount (FUSE `allow_other`).
    #[arg(long)]
    pub allow_other: bool,
    /// The daemon's log file (default for a background mount:
    /// CACHE_DIR/logs/mount<MOUNTPOINT>.log; with --foreground: stderr). Appended to.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Rotate the log file when it would grow past SIZE (`FILE.1`, `FILE.2` are kept).
    #[arg(long, value_name = "SIZE", default_value = "10M", value_parser = parse_size)]
    pub log_size: u64,
    /// Internal: report readiness on stdout (used by the background launcher).
    #[arg(long, hide = true)]
    pub notify_stdout: bool,
    /// Internal: take the live mount over from daemon PID (`depotfs reload` starts the new
    /// daemon with the old one's arguments and this).
    #[arg(long, hide = true, value_name = "PID")]
    pub takeover: Option<u32>,
}

impl MountArgs {
    /// How to reach the servers of `source` (SOURCE, or the `--server`s joined): `None` for
    /// a local store.
    pub fn net_options(&self, source: &str) -> Option<NetOptions> {
        let servers = if self.servers.is_empty() {
            if !is_url(source) {
                return None;
            }
            split_servers(source)
        } else {
            self.servers.clone()
        };
        Some(NetOptions {
            servers,
            proxies: self.proxies.clone(),
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            timeout: Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
            failback_after: Duration::from_secs(self.failback_after),
        })
    }

    /// SOURCE (the servers joined by `,` with `--server`) and MOUNTPOINT.
    fn source_and_mountpoint(&self) -> anyhow::Result<(String, PathBuf)> {
        match (self.servers.is_empty(), &self.source, &self.mountpoint) {
            (true, Some(source), Some(mp)) => Ok((source.clone(), mp.clone())),
            (false, Some(mp), None) => Ok((self.servers.join(","), PathBuf::from(mp))),
            (true, _, _) => {
                bail!("mount: give SOURCE and MOUNTPOINT (or --server URL and MOUNTPOINT)")
            }
            (false, _, _) => bail!(
                "mount: with --server URL, give only MOUNTPOINT (got {:?} {:?})",
                self.source.as_deref().unwrap_or(""),
                self.mountpoint.as_deref().unwrap_or(Path::new(""))
            ),
        }
    }
}

/// `depotfs umount`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// Detach even if busy or if the mount process is gone (`umount -l`).
    #[arg(long, short)]
    pub lazy: bool,
}

/// `depotfs reload`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
A new daemon process takes over the live mount: the old one stops reading requests, answers
those it has, hands the FUSE connection and its state (revision, inode numbers, open files)
to the new one and exits. Jobs with open files read on; nothing is unmounted. The new daemon
runs with the old one's arguments. If it cannot start or refuses the state, the old daemon
serves on and this command fails with the reason. docs/reload.md explains how it works.")]
pub struct ReloadArgs {
    /// The mountpoint whose daemon is replaced.
    pub mountpoint: PathBuf,
    /// The new daemon's executable (default: the path the running daemon was started
    /// from, e.g. an upgraded /usr/local/bin/depotfs).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// `depotfs reload`: replace the mount's daemon under running jobs; prints the old and new
/// pid.
pub fn reload(a: ReloadArgs) -> anyhow::Result<ExitCode> {
    let mp = absolute(&a.mountpoint)?;
    live_mount(&mp)?;
    let old: u32 = xattr(&mp, "user.depotfs.pid")?
        .trim()
        .parse()
        .with_context(|| format!("{}: user.depotfs.pid is not a number", mp.display()))?;
    let binary = a.binary.as_deref().map(absolute).transpose()?;
    let answer = crate::reload::request(old, binary).with_context(|| {
        format!(
            "{}: asking daemon {old} to hand its mount over (a daemon older than \
             `depotfs reload` has no control socket: remount it once)",
            mp.display()
        )
    })?;
    match answer {
        Ok(new) => {
            let now = xattr(&mp, "user.depotfs.pid")?;
            println!(
                "reloaded {}: daemon {old} replaced by {new} (depotfs {}); now served by pid {}",
                mp.display(),
                xattr(&mp, "user.depotfs.version")?.trim(),
                now.trim()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!(
                "depotfs reload {}: {why}; daemon {old} serves on",
                mp.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `depotfs remount`.
#[derive(Debug, clap::Args)]
pub struct RemountArgs {
    /// The mountpoint whose revision check should run now.
    pub mountpoint: PathBuf,
}

/// `depotfs remount`: ask a mount to check for a new revision now, and wait for the answer.
///
/// The mount's process (`user.depotfs.pid` of the mount root) gets SIGUSR1 and runs one
/// revision check; when `user.depotfs.checks` has grown, `user.depotfs.last_check` holds
/// the outcome. Prints `revision 7 (new, was 6)` or `revision 7 (unchanged)`; exits 1
/// with the reason when the check failed (refused manifest, no server answered).
pub fn remount(a: RemountArgs) -> anyhow::Result<ExitCode> {
    let mp = absolute(&a.mountpoint)?;
    let before = status_of(&mp)?;
    let pid = i32::try_from(before.pid).unwrap_or(0);
    let pid = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{}: bad mount pid {pid}", mp.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)
        .with_context(|| format!("signalling mount process {pid:?} of {}", mp.display()))?;
    // Checks run one at a time: once as many have finished as had started before the
    // signal, plus one, a check that began after the signal has finished. A check fetches
    // the manifest (one pass over the routes) and the new root; another check may be
    // running first.
    let limit = Duration::from_millis(2 * before.request_bound_ms) + Duration::from_secs(30);
    let start = Instant::now();
    let after = loop {
        let now = status_of(&mp)?;
        if now.checks > before.checks_started {
            break now;
        }
        if start.elapsed() > limit {
            bail!(
                "{}: no answer from the mount within {} s",
                mp.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match after.last_check {
        Some(LastCheck::New { now, was }) => println!("revision {now} (new, was {was})"),
        Some(LastCheck::Unchanged(now)) => println!("revision {now} (unchanged)"),
        Some(LastCheck::Error(why)) => {
            eprintln!("depotfs remount {}: check failed: {why}", mp.display());
            return Ok(ExitCode::FAILURE);
        }
        None => {
            eprintln!("depotfs remount {}: check failed: ", mp.display());
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The status of the mount at `mp` (its root's `user.depotfs.status`).
fn status_of(mp: &Path) -> anyhow::Result<Status> {
    Status::from_json(&xattr(mp, XATTR_JSON)?).map_err(|e| anyhow::anyhow!("{}: {e}", mp.display()))
}

/// `depotfs status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The mountpoint (or a publisher's STORE: then what is staged there).
    pub mountpoint: PathBuf,
}

/// Parse `123`, `64K`, `512M`, `4G`, `1T` (also `4GiB`, `4GB`: binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches(['i']);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?}"))?;
    if n < 0.0 {
        return Err(format!("not a size: {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}

/// The server URLs of a SOURCE: separated by `,` or `;`.
pub(crate) fn split_servers(s: &str) -> Vec<String> {
    s.split([',', ';'])
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// A second depotfs mount on the same mountpoint would hide the first and leave two
/// daemons: refused, naming the one there.
fn refuse_stacking(mountpoint: &Path) -> anyhow::Result<()> {
    let Some(m) = mount::fuse_mount_at(mountpoint)?.filter(|m| m.is_depotfs()) else {
        return Ok(());
    };
    let daemon = match xattr_raw(mountpoint, "user.depotfs.pid") {
        Ok(pid) => format!("daemon pid {}", pid.trim()),
        Err(_) => "its daemon is not running".to_string(),
    };
    bail!(
        "{} is already a depotfs mount (of {}, {daemon}); unmount it first: depotfs umount {}",
        mountpoint.display(),
        m.depotfs_source(),
        mountpoint.display()
    )
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Mount.
pub fn mount(mut a: MountArgs) -> anyhow::Result<ExitCode> {
    // How this process was started, before anything changes directory: a background mount
    // and `depotfs reload` start the daemon again with these arguments.
    let launch = crate::reload::Launch::current();
    let (mut source, mountpoint) = a.source_and_mountpoint()?;
    let mountpoint = absolute(&mountpoint)?;
    a.cache_dir = absolute(&a.cache_dir)?;
    a.key = a.key.as_deref().map(absolute).transpose()?;
    a.record = a.record.as_deref().map(absolute).transpose()?;
    if !(a.prefetch_rate >= 0.0 && a.prefetch_rate.is_finite()) {
        bail!(
            "mount: --prefetch-rate {}: not a rate in MiB/s (0 turns prefetch off)",
            a.prefetch_rate
        );
    }
    let over_http = !a.servers.is_empty() || is_url(&source);
    if !over_http {
        source = absolute(Path::new(&source))?.display().to_string();
    }
    if over_http && a.key.is_none() {
        bail!(
            "mount: --key FILE is required over HTTP: the repository's public key \
             (repo.pub, from the publisher's STORE/public/)"
        );
    }
    if a.takeover.is_none() {
        refuse_stacking(&mountpoint)?;
    }
    a.log_file = a.log_file.as_deref().map(absolute).transpose()?;
    if !a.foreground {
        return launch_background(&a, &source, &mountpoint);
    }
    // Every path is absolute now; the daemon keeps no directory busy.
    std::env::set_current_dir("/").context("changing directory to /")?;
    let o = Options {
        net: a.net_options(&source),
        source,
        mountpoint,
        key: a.key.clone(),
        cache_dir: a.cache_dir.clone(),
        cache_size: a.cache_size,
        mem_size: a.mem_size,
        allow_other: a.allow_other,
        threads: a.threads,
        metrics_listen: a.metrics_listen,
        manifest_ttl: a.manifest_ttl,
        prefetch_rate: (a.prefetch_rate * (1u64 << 20) as f64) as u64,
        record: a.record.clone(),
        kernel_readahead_kib: a.kernel_readahead,
    };
    let notify = a.notify_stdout;
    let _span = tracing::info_span!("mount", mp = %o.mountpoint.display()).entered();
    let result = match a.takeover {
        Some(old) => mount::take_over(&o, old, launch, || {
            tracing::info!(
                "serving {} in place of daemon {old}",
                o.mountpoint.display()
            )
        }),
        None => mount::prepare(&o).and_then(|p| {
            let m = p.fs.manifest();
            mount::serve(&o, p, launch, || {
                tracing::info!(
                    "mounted {} revision {} from {} at {} (cache {})",
                    m.name,
                    m.revision,
                    o.source,
                    o.mountpoint.display(),
                    o.cache_dir.display()
                );
                if notify {
                    // `ready NAME REVISION`, for the background launcher's line.
                    println!("ready {} {}", m.name, m.revision);
                }
            })
        }),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if notify => {
            println!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The log file of a background mount: `--log-file`, else `CACHE_DIR/logs/mount<MOUNTPOINT
/// with every character but letters and digits as _>.log`.
fn log_path(a: &MountArgs, mountpoint: &Path) -> PathBuf {
    if let Some(f) = &a.log_file {
        return f.clone();
    }
    let tag: String = mountpoint
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    a.cache_dir.join("logs").join(format!("mount{tag}.log"))
}

/// Start `depotfs mount --foreground` as a detached process and wait until it reports the
/// mount ready (one line on stdout: what, which revision, cache and log where; exit 0) or
/// failed (its reason, non-zero). It appends its log to [`log_path`], rotated at
/// `--log-size`; its stderr goes there too (a panic's message).
fn launch_background(a: &MountArgs, source: &str, mountpoint: &Path) -> anyhow::Result<ExitCode> {
    let log_path = log_path(a, mountpoint);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the log file {}", log_path.display()))?;
    let log_start = log.metadata().map_or(0, |m| m.len());
    // The daemon is this command again, with the same arguments (so no option can be
    // forgotten on the way) and in the same directory (so relative paths mean the same).
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1))
        .args(["--foreground", "--notify-stdout"]);
    if a.log_file.is_none() {
        cmd.arg("--log-file").arg(&log_path);
    }
    // Two malloc arenas instead of glibc's 8 per core: the peak RSS after listing 118,594
    // names and reading 5 GB fell from 211 to 174 MB (P9 in benches/RESULTS.md), at no cost
    // in read throughput. Foreground mounts get it from their unit (deploy/systemd/).
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        cmd.env("MALLOC_ARENA_MAX", "2");
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if let Some(what) = line.trim().strip_prefix("ready ") {
        let (name, rev) = what.rsplit_once(' ').unwrap_or((what, "?"));
        // Mounted whether or not anyone reads this line (SIGPIPE stays ignored for `mount`).
        let _ = writeln!(
            std::io::stdout(),
            "mounted {name} revision {rev} from {source} at {}; cache {} (up to {}); log {}",
            mountpoint.display(),
            a.cache_dir.display(),
            human(a.cache_size),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    let reason = line
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(line.trim())
        .to_string();
    if reason.is_empty() {
        let tail = std::fs::read(&log_path)
            .map(|b| {
                String::from_utf8_lossy(b.get(log_start as usize..).unwrap_or(&b)).into_owned()
            })
            .unwrap_or_default();
        bail!(
            "mount process exited ({status}) without mounting; log {}:\n{tail}",
            log_path.display()
        );
    }
    bail!("{reason}")
}

fn xattr_raw(path: &Path, name: &str) -> Result<String, rustix::io::Errno> {
    // The largest value Linux passes (XATTR_SIZE_MAX): the whole status fits.
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::getxattr(path, name, &mut buf[..])?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn xattr(path: &Path, name: &str) -> anyhow::Result<String> {
    xattr_raw(path, name).with_context(|| {
        format!(
            "{}: reading {name} (is it a depotfs mount?)",
            path.display()
        )
    })
}

/// `path` must be the root of a depotfs mount whose daemon answers: otherwise an error that
/// says which of the two it is not.
fn live_mount(path: &Path) -> anyhow::Result<()> {
    let Some(m) = mount::fuse_mount_at(path)?.filter(|m| m.is_depotfs()) else {
        bail!("{} is not a depotfs mount", path.display());
    };
    match xattr_raw(path, "user.depotfs.pid") {
        Err(rustix::io::Errno::NOTCONN) => bail!(
            "{mp}: the daemon of this mount is not running (it exited or was killed); \
             restart it with: depotfs umount {mp} && depotfs mount {src} {mp} --key FILE \
             (with its other options), or restart its systemd unit",
            mp = path.display(),
            src = m.depotfs_source(),
        ),
        // A subdirectory of a mount, or not one of ours.
        Err(rustix::io::Errno::NODATA) => {
            bail!("{} is not the root of a depotfs mount", path.display())
        }
        _ => Ok(()),
    }
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Unmount, then wait (up to 10 s) for the mount process to exit.
pub fn umount(a: UmountArgs) -> anyhow::Result<ExitCode> {
    let mp = absolute(&a.mountpoint)?;
    if mount::fuse_mount_at(&mp)?.is_none() {
        bail!("{} is not mounted", mp.display());
    }
    let pid = xattr(&mp, "user.depotfs.pid")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let flags = if a.lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    if let Err(e) = rustix::mount::unmount(&mp, flags) {
        // Not root: fusermount3 is setuid and unmounts what this user mounted.
        if let Err(f) = crate::fusermount::unmount(&mp, a.lazy) {
            bail!("unmounting {}: {e}; {f}", mp.display());
        }
    }
    if let Some(pid) = pid
        && !wait_gone(pid, Duration::from_secs(10))
    {
        eprintln!("depotfs: unmounted; mount process {pid} is still exiting");
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix nanoseconds (civil-from-days, H. Hinnant).
fn utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `3 d 4 h`, `2 h 5 min`, `4 min 10 s`, `12 s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// The last revision check, of `checks`, in words.
fn last_check(last: Option<&LastCheck>, checks: u64) -> String {
    let what = match last {
        None => return "none yet".to_string(),
        Some(LastCheck::New { now, was }) => format!("switched to revision {now} (was {was})"),
        Some(LastCheck::Unchanged(now)) => format!("no newer revision than {now}"),
        Some(LastCheck::Error(why)) => format!("failed: {why}"),
    };
    format!(
        "{what}; {checks} check{} since mounted",
        if checks == 1 { "" } else { "s" }
    )
}

/// Print the mount's revision, source, publish time, cache use and limit, hit rate and
/// bytes fetched, and its daemon (version, pid, uptime); say so when the path is not a
/// depotfs mount or its daemon is not running.
pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mp = absolute(&a.mountpoint)?;
    live_mount(&mp)?;
    let s = status_of(&mp)?;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let age = (now_ns - s.published_ns).max(0) / 1_000_000_000;
    println!("repository:    {}", s.name);
    println!("revision:      {} (published {age} s ago)", s.revision);
    println!("root:          {}", s.root);
    println!("source:        {}", s.source);
    println!("server:        {}", s.host);
    println!("proxy:         {} (of {})", s.proxy, s.proxies.join(";"));
    println!("published:     {}", utc(s.published_ns));
    if s.offline_since > 0 {
        println!(
            "state:         OFFLINE since {} (serving from cache)",
            utc(s.offline_since as i64 * 1_000_000_000)
        );
    } else {
        println!("state:         online");
    }
    println!(
        "failovers:     {} proxy, {} server",
        s.proxy_failovers, s.server_failovers
    );
    let refused = s.xattr("user.depotfs.manifest_refused").unwrap_or_default();
    println!(
        "refused:       {} manifests refused",
        if refused.is_empty() { "no" } else { &refused }
    );
    println!(
        "last check:    {}",
        last_check(s.last_check.as_ref(), s.checks)
    );
    if s.request_bound_ms > 0 {
        println!(
            "reads give up: after {:.2} s with no answer from any server or proxy (then EIO)",
            s.request_bound_ms as f64 / 1000.0
        );
    }
    match &s.cache_dir {
        None => println!("cache:         none (local store)"),
        Some(cache_dir) => {
            let (used, limit) = (s.cache_used, s.cache_limit);
            let pct = if limit > 0 {
                used as f64 * 100.0 / limit as f64
            } else {
                0.0
            };
            println!(
                "cache:         {} of {} ({pct:.1} %) in {cache_dir}",
                human(used),
                human(limit)
            );
            if let CacheState::NotStoring { since, reason } = &s.cache_state {
                println!(
                    "cache state:   NOT STORING since {} ({reason}): reads are served without caching",
                    utc(*since as i64 * 1_000_000_000)
                );
            } else {
                println!("cache state:   {}", s.cache_state);
            }
        }
    }
    let (hits, misses) = (s.hits, s.misses);
    let rate = if hits + misses > 0 {
        hits as f64 * 100.0 / (hits + misses) as f64
    } else {
        0.0
    };
    println!("hit rate:      {rate:.1} % ({hits} hits, {misses} downloads)");
    println!("fetched:       {}", human(s.bytes_fetched));
    println!("read:          {} returned to readers", human(s.bytes_read));
    println!("verification:  {} downloads failed verification", s.corrupt);
    println!(
        "evictions:     {} objects evicted from the cache",
        s.evictions
    );
    println!(
        "cache writes:  {} objects waiting for the writer, {} served without caching (queue full)",
        s.cache_pending, s.cache_dropped
    );
    let (ra, pl) = (s.readahead, s.access_list);
    println!(
        "prefetch:      {} chunks ({}, {} of `fetched`) read ahead, \
         {} chunks ({}, {} of `fetched`) from access lists",
        ra.chunks,
        human(ra.bytes),
        human(ra.downloaded),
        pl.chunks,
        human(pl.bytes),
        human(pl.downloaded)
    );
    println!("inodes:        {} known to the kernel", s.inodes);
    println!(
        "daemon:        pid {}, depotfs {}, up {}",
        s.pid,
        s.version,
        duration(((now_ns - s.started_ns).max(0) / 1_000_000_000) as u64)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dates() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_769_558_400_000_000_000), "2026-01-28 00:00:00 UTC");
        assert_eq!(duration(12), "12 s");
        assert_eq!(duration(250), "4 min 10 s");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(3 * 86400 + 4 * 3600 + 5), "3 d 4 h");
    }

    #[test]
    fn last_check_in_words() {
        assert_eq!(last_check(None, 0), "none yet");
        assert_eq!(
            last_check(Some(&LastCheck::New { now: 2, was: 1 }), 2),
            "switched to revision 2 (was 1); 2 checks since mounted"
        );
        assert_eq!(
            last_check(Some(&LastCheck::Unchanged(7)), 1),
            "no newer revision than 7; 1 check since mounted"
        );
        let failed = LastCheck::Error("manifest: signature does not verify".into());
        assert_eq!(
            last_check(Some(&failed), 3),
            "failed: manifest: signature does not verify; 3 checks since mounted"
        );
    }
}
