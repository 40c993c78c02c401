//! `depotfs doctor [MOUNTPOINT | --source URL --key FILE]`: check a node the way a node admin
//! would, one line per check with what to do when it fails; exit 1 if any check failed.
//!
//! Given a MOUNTPOINT, the settings (servers, proxies, key, cache) are those of the running
//! mount, read from its command line (`/proc/PID/cmdline`, the pid from its
//! `user.depotfs.pid` attribute); `--source` and the other flags check a node before (or
//! without) mounting.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use depotfs_catalog::{Manifest, PublicKey};

use crate::backend::{self, DIRECT};
use crate::cache;
use crate::cli::{MountArgs, parse_size, split_servers};

/// `depotfs doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A mount to check (its settings are read from the running mount).
    #[arg(conflicts_with = "source")]
    pub mountpoint: Option<PathBuf>,
    /// Server URLs (a served `public/`), separated by `,` or `;`, in order of preference.
    #[arg(long, required_unless_present = "mountpoint")]
    pub source: Option<String>,
    /// The repository's public key file.
    #[arg(long, required_unless_present = "mountpoint")]
    pub key: Option<PathBuf>,
    /// A proxy URL or DIRECT; repeat as for `mount` (default: DIRECT).
    #[arg(long = "proxy", value_name = "URL|DIRECT")]
    pub proxies: Vec<String>,
    /// Cache directory to check.
    #[arg(long, default_value = cache::DEFAULT_DIR)]
    pub cache_dir: PathBuf,
    /// Cache limit the directory must have room for.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Seconds one request may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Broken: the line says what to do.
    Fail,
    /// Not applicable here (e.g. autofs not in use).
    Skip,
}

/// One check: what, how it went, and (on failure) what to do.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short name, e.g. `fuse`, `server http://…`.
    pub what: String,
    /// How it went.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    pub fix: String,
}

impl Check {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: String::new(),
        }
    }
    fn fail(what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            outcome: Outcome::Fail,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
    fn skip(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            outcome: Outcome::Skip,
            detail: detail.into(),
            fix: String::new(),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        write!(f, "{tag} {}: {}", self.what, self.detail)?;
        if !self.fix.is_empty() {
            write!(f, " -- fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// What to check: the settings of a mount or of the command line.
#[derive(Debug, Clone)]
struct Settings {
    servers: Vec<String>,
    proxies: Vec<String>,
    key: Option<PathBuf>,
    cache_dir: PathBuf,
    cache_size: u64,
    timeout: Duration,
}

/// `depotfs doctor`: run every check, print one line each, exit 1 if any failed.
pub fn run(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = checks(&a);
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        eprintln!("depotfs doctor: {failed} of {} checks failed", checks.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn checks(a: &DoctorArgs) -> Vec<Check> {
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut out = vec![fuse_device(), fusermount()];
    let settings = match &a.mountpoint {
        Some(mp) => {
            let (check, settings) = mount_answers(mp, timeout);
            out.push(check);
            settings
        }
        None => Some(Settings {
            servers: split_servers(a.source.as_deref().unwrap_or_default()),
            proxies: a.proxies.clone(),
            key: a.key.clone(),
            cache_dir: a.cache_dir.clone(),
            cache_size: a.cache_size,
            timeout,
        }),
    };
    if let Some(s) = settings {
        let key = key_file(s.key.as_deref(), &mut out);
        servers(&s, key.as_ref(), &mut out);
        out.push(cache_dir(&s.cache_dir, s.cache_size));
    } else {
        out.push(Check::skip(
            "settings",
            "the mount's settings could not be read; servers, key and cache not checked",
        ));
    }
    out.extend(autofs());
    out
}

fn fuse_device() -> Check {
    let what = "fuse device";
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Check::ok(what, "/dev/fuse opens read-write"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::fail(
            what,
            "/dev/fuse does not exist",
            "load the module (`modprobe fuse`); in a container, pass the device (`--device /dev/fuse`)",
        ),
        Err(e) => Check::fail(
            what,
            format!("/dev/fuse: {e}"),
            "make /dev/fuse mode 0666 (udev does by default), or mount as root",
        ),
    }
}

fn fusermount() -> Check {
    let what = "fusermount3";
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file());
    let Some(p) = found else {
        return Check::fail(
            what,
            "not found",
            "install the fuse3 package (`apt-get install fuse3`): non-root mounts and unmounts need it",
        );
    };
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(&p) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o4000 != 0 => {
            Check::ok(what, format!("{} (setuid root)", p.display()))
        }
        Ok(_) => Check::fail(
            what,
            format!("{} is not setuid root", p.display()),
            format!(
                "`chown root {0} && chmod u+s {0}` (reinstall fuse3)",
                p.display()
            ),
        ),
        Err(e) => Check::fail(what, format!("{}: {e}", p.display()), "reinstall fuse3"),
    }
}

fn key_file(key: Option<&Path>, out: &mut Vec<Check>) -> Option<PublicKey> {
    let what = "key";
    let Some(path) = key else {
        out.push(Check::fail(
            what,
            "no key file given",
            "give --key FILE, the repository's public key (STORE/public/repo.pub)",
        ));
        return None;
    };
    let fix =
        "copy the repository's public key (the publisher's STORE/public/repo.pub) to this path";
    match std::fs::read_to_string(path) {
        Err(e) => {
            out.push(Check::fail(what, format!("{}: {e}", path.display()), fix));
            None
        }
        Ok(text) => match PublicKey::from_text(&text) {
            Ok(k) => {
                out.push(Check::ok(
                    what,
                    format!("{} holds a public key", path.display()),
                ));
                Some(k)
            }
            Err(e) => {
                out.push(Check::fail(what, format!("{}: {e}", path.display()), fix));
                None
            }
        },
    }
}

/// Each server through each proxy: reachable, how fast; then each server's manifest:
/// signature, name, age, and whether it lags behind the newest revision seen.
fn servers(s: &Settings, key: Option<&PublicKey>, out: &mut Vec<Check>) {
    if s.servers.is_empty() {
        out.push(Check::fail(
            "servers",
            "no server URL",
            "give --source URL (a served public/ directory)",
        ));
        return;
    }
    if let Some(local) = s.servers.iter().find(|u| !u.contains("://")) {
        out.push(Check::skip(
            "servers",
            format!("{local} is a local store: no servers to reach"),
        ));
        return;
    }
    let proxies = if s.proxies.is_empty() {
        vec![DIRECT.to_string()]
    } else {
        s.proxies.clone()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.push(Check::fail("servers", format!("tokio runtime: {e}"), "-"));
            return;
        }
    };
    // The manifest each server sent (first proxy that reached it).
    let mut manifests: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for server in &s.servers {
        let url = format!("{}/manifest", server.trim_end_matches('/'));
        let mut got = None;
        for proxy in &proxies {
            let what = if proxy == DIRECT {
                format!("server {server}")
            } else {
                format!("server {server} via proxy {proxy}")
            };
            let fix = if proxy == DIRECT {
                "check the server is up and reachable from this node (firewall, DNS, URL ending in the served public/)"
            } else {
                "check the proxy is up and lets this node reach the server (squid ACLs, deploy/squid/)"
            };
            let start = Instant::now();
            let r = rt.block_on(async {
                let c = backend::client(proxy, s.timeout, s.timeout).map_err(|e| e.to_string())?;
                let resp = c.get(&url).send().await.map_err(|e| cause(&e))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| cause(&e))?;
                Ok::<_, String>((status, body))
            });
            let ms = start.elapsed().as_millis();
            match r {
                Ok((st, body)) if st.is_success() => {
                    out.push(Check::ok(
                        what,
                        format!("manifest answered in {ms} ms (HTTP {})", st.as_u16()),
                    ));
                    got.get_or_insert(body.to_vec());
                }
                Ok((st, _)) => out.push(Check::fail(
                    what,
                    format!("{url}: HTTP {} in {ms} ms", st.as_u16()),
                    fix,
                )),
                Err(e) => out.push(Check::fail(what, format!("{url}: {e} after {ms} ms"), fix)),
            }
        }
        manifests.push((server.clone(), got));
    }
    let Some(key) = key else {
        out.push(Check::skip(
            "manifest",
            "signatures not checked: no usable key",
        ));
        return;
    };
    let verified: Vec<(String, Result<Manifest, String>)> = manifests
        .into_iter()
        .filter_map(|(server, bytes)| {
            let bytes = bytes?;
            Some((
                server,
                Manifest::parse_verified(&bytes, key, None).map_err(|e| e.to_string()),
            ))
        })
        .collect();
    let newest = verified
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok().map(|m| m.revision))
        .max();
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    for (server, m) in verified {
        let what = format!("manifest {server}");
        match m {
            Err(e) => out.push(Check::fail(
                what,
                format!("refused: {e}"),
                "the key does not match this repository, or the server serves another or a damaged one: compare the key with the publisher's STORE/public/repo.pub",
            )),
            Ok(m) => {
                let age = (now_ns - m.published_ns).max(0) / 1_000_000_000;
                let mut detail = String::new();
                let _ = write!(
                    detail,
                    "{} revision {}, signature holds, published {} ago",
                    m.name,
                    m.revision,
                    humanize(age as u64)
                );
                match newest {
                    Some(n) if m.revision < n => out.push(Check::fail(
                        what,
                        format!("{detail}; stale: another server has revision {n}"),
                        "this mirror lags: check its `depotfs replicate` timer (deploy/systemd/depotfs-replicate@.timer) and its log",
                    )),
                    _ => out.push(Check::ok(what, detail)),
                }
            }
        }
    }
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// The most specific cause of a reqwest error, e.g. `Connection refused`.
fn cause(e: &reqwest::Error) -> String {
    let mut last = e.to_string();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        format!("timed out ({last})")
    } else {
        last
    }
}

/// The cache directory exists (or can be made), is writable, and has room for the limit.
fn cache_dir(dir: &Path, limit: u64) -> Check {
    let what = format!("cache {}", dir.display());
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail(
            what,
            format!("cannot create it: {e}"),
            "create it writable by the user the mount runs as, or choose another --cache-dir",
        );
    }
    let probe = dir.join(format!(".doctor.{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, b"probe") {
        return Check::fail(
            what,
            format!("not writable: {e}"),
            "make it writable by the user the mount runs as (chown), or choose another --cache-dir",
        );
    }
    let _ = std::fs::remove_file(&probe);
    let used = du(&dir.join("objects"));
    let free = match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail * s.f_frsize,
        Err(e) => return Check::fail(what, format!("statvfs: {e}"), "-"),
    };
    let need = limit.saturating_sub(used);
    let detail = format!(
        "writable; {} used, {} free on its filesystem, --cache-size {}",
        mib(used),
        mib(free),
        mib(limit)
    );
    if free < need {
        Check::fail(
            what,
            format!("{detail}: the cache cannot grow to its limit"),
            "lower --cache-size, free space, or move --cache-dir to a larger filesystem",
        )
    } else {
        Check::ok(what, detail)
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The autofs mount helper and map (deploy/autofs): skipped when not installed, failed when
/// installed but unusable.
fn autofs() -> Vec<Check> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let helper = ["/sbin/mount.depotfs", "/usr/sbin/mount.depotfs"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    out.push(match helper {
        None => Check::skip(
            "mount helper",
            "/sbin/mount.depotfs not installed (needed only for autofs and fstab mounts: deploy/autofs/)",
        ),
        Some(p) => match std::fs::metadata(p) {
            Ok(m) if m.permissions().mode() & 0o111 != 0 => {
                Check::ok("mount helper", format!("{} is executable", p.display()))
            }
            _ => Check::fail(
                "mount helper",
                format!("{} is not executable", p.display()),
                format!("chmod 0755 {}", p.display()),
            ),
        },
    });
    let master = ["/etc/auto.master.d/depotfs.autofs", "/etc/auto.master"]
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok().map(|t| (p, t)))
        .find(|(_, t)| t.contains("auto.depotfs"));
    out.push(match master {
        None => Check::skip(
            "autofs map",
            "no auto.master entry names auto.depotfs (autofs not used for depotfs)",
        ),
        Some((p, _)) if Path::new("/etc/auto.depotfs").is_file() => Check::ok(
            "autofs map",
            format!("{p} names /etc/auto.depotfs, which exists"),
        ),
        Some((p, _)) => Check::fail(
            "autofs map",
            format!("{p} names auto.depotfs, but /etc/auto.depotfs is missing"),
            "install deploy/autofs/auto.depotfs as /etc/auto.depotfs and `systemctl reload autofs`",
        ),
    });
    out
}

/// `depotfs mount …` as a parser of a running mount's command line.
#[derive(Debug, Parser)]
struct MountCommand {
    #[command(flatten)]
    args: MountArgs,
}

/// Does the mount answer (its root's `user.depotfs.revision`, within `timeout`)? And its
/// settings, from its command line.
fn mount_answers(mp: &Path, timeout: Duration) -> (Check, Option<Settings>) {
    let what = format!("mount {}", mp.display());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = mp.to_path_buf();
    // A hung daemon hangs the caller's syscall: ask from a thread, give up after `timeout`.
    std::thread::spawn(move || {
        let get = |n: &str| -> Result<String, std::io::Error> {
            let mut buf = vec![0u8; 256];
            let len = rustix::fs::getxattr(&path, n, &mut buf[..])?;
            Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
        };
        let _ =
            tx.send(get("user.depotfs.revision").and_then(|r| Ok((r, get("user.depotfs.pid")?))));
    });
    let (rev, pid) = match rx.recv_timeout(timeout) {
        Err(_) => {
            return (
                Check::fail(
                    what,
                    format!("no answer within {} s", timeout.as_secs()),
                    "the daemon hangs: look at its log (journalctl -u depotfs-mount@…), then restart it",
                ),
                None,
            );
        }
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return (
                Check::fail(
                    what,
                    "ENOTCONN: the mount's daemon is gone",
                    "restart the unit (systemctl restart depotfs-mount@…), or `depotfs umount --lazy` and mount again",
                ),
                None,
            );
        }
        Ok(Err(e)) => {
            return (
                Check::fail(
                    what,
                    format!("not a depotfs mount: {e}"),
                    "mount it (`depotfs mount`, the systemd unit or autofs) or give the right path",
                ),
                None,
            );
        }
        Ok(Ok(v)) => v,
    };
    let check = Check::ok(
        what,
        format!(
            "answers: revision {}, daemon pid {}",
            rev.trim(),
            pid.trim()
        ),
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let settings = argv
        .iter()
        .position(|a| a == "mount")
        .and_then(|i| MountCommand::try_parse_from(&argv[i..]).ok())
        .map(|m| {
            let a = m.args;
            let servers = if a.servers.is_empty() {
                split_servers(a.source.as_deref().unwrap_or_default())
            } else {
                a.servers.clone()
            };
            Settings {
                servers,
                proxies: a.proxies,
                key: a.key,
                cache_dir: a.cache_dir,
                cache_size: a.cache_size,
                timeout,
            }
        });
    (check, settings)
}
