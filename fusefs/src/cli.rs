//! Command-line entry points of the client side: `mount`, `umount`, `status`.
//!
//! `status` asks the mount itself: the root of every depotfs mount answers the
//! `user.depotfs.*` attributes listed in [`crate::fs::XATTRS_STATUS`] (see `getfattr -d -m -
//! MOUNTPOINT`), so there is no socket or state file to keep in step.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cache;
use crate::mount::{self, Options};

/// `depotfs mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// HTTP(S) URL of a served `public/` (several, separated by `;`, are tried in order
    /// with failover), or a local STORE path.
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The repository's public key file (`repo.pub`). Required over HTTP; for a local store
    /// it defaults to the store's own `public/repo.pub`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Cache directory, shared by all mounts that name it.
    #[arg(long, default_value = cache::DEFAULT_DIR)]
    pub cache_dir: PathBuf,
    /// Cache limit, e.g. `4G`, `512M` (binary units).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Decompressed chunks kept in memory, e.g. `256M`.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub mem_size: u64,
    /// Seconds before an unanswered request fails with EIO.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Seconds between checks for a new revision (default: the manifest's TTL).
    #[arg(long = "ttl", visible_alias = "manifest-ttl", value_name = "SECS")]
    pub manifest_ttl: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Stay in the foreground (otherwise return once the mount is ready).
    #[arg(long)]
    pub foreground: bool,
    /// Let other users access the mount (FUSE `allow_other`).
    #[arg(long)]
    pub allow_other: bool,
    /// Internal: report readiness on stdout (used by the background launcher).
    #[arg(long, hide = true)]
    pub notify_stdout: bool,
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

/// `depotfs remount`.
#[derive(Debug, clap::Args)]
pub struct RemountArgs {
    /// The mountpoint whose revision check should run now.
    pub mountpoint: PathBuf,
}

/// `depotfs remount`: ask a mount to check for a new revision now.
pub fn remount(a: RemountArgs) -> anyhow::Result<ExitCode> {
    bail!("remount {}: not implemented yet", a.mountpoint.display())
}

/// `depotfs status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The mountpoint.
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

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Mount.
pub fn mount(mut a: MountArgs) -> anyhow::Result<ExitCode> {
    a.mountpoint = absolute(&a.mountpoint)?;
    a.cache_dir = absolute(&a.cache_dir)?;
    a.key = a.key.as_deref().map(absolute).transpose()?;
    if !a.source.starts_with("http://") && !a.source.starts_with("https://") {
        a.source = absolute(Path::new(&a.source))?.display().to_string();
    }
    if !a.foreground {
        return launch_background(&a);
    }
    let o = Options {
        source: a.source.clone(),
        mountpoint: a.mountpoint.clone(),
        key: a.key.clone(),
        cache_dir: a.cache_dir.clone(),
        cache_size: a.cache_size,
        mem_size: a.mem_size,
        timeout: Duration::from_secs(a.timeout.max(1)),
        allow_other: a.allow_other,
        threads: a.threads,
        metrics_listen: a.metrics_listen,
        manifest_ttl: a.manifest_ttl,
    };
    let notify = a.notify_stdout;
    let result = mount::prepare(&o).and_then(|p| {
        mount::serve(&o, p, || {
            tracing::info!("mounted {} at {}", o.source, o.mountpoint.display());
            if notify {
                println!("ready");
            }
        })
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if notify => {
            println!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Start `depotfs mount --foreground` as a detached process and wait until it reports the
/// mount ready (exit 0) or failed (its reason, non-zero). Its log goes to
/// `CACHE_DIR/logs/`.
fn launch_background(a: &MountArgs) -> anyhow::Result<ExitCode> {
    let logs = a.cache_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let tag: String = a
        .mountpoint
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let log_path = logs.join(format!("mount{tag}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mount")
        .arg(&a.source)
        .arg(&a.mountpoint)
        .arg("--cache-dir")
        .arg(&a.cache_dir)
        .arg("--cache-size")
        .arg(a.cache_size.to_string())
        .arg("--mem-size")
        .arg(a.mem_size.to_string())
        .arg("--timeout")
        .arg(a.timeout.to_string())
        .arg("--threads")
        .arg(a.threads.to_string())
        .args(["--foreground", "--notify-stdout"]);
    if let Some(k) = &a.key {
        cmd.arg("--key").arg(k);
    }
    if a.allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(t) = a.manifest_ttl {
        cmd.arg("--ttl").arg(t.to_string());
    }
    if let Some(m) = a.metrics_listen {
        cmd.arg("--metrics-listen").arg(m.to_string());
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() == "ready" {
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    let reason = line
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(line.trim())
        .to_string();
    if reason.is_empty() {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "mount process exited ({status}) without mounting; log {}:\n{tail}",
            log_path.display()
        );
    }
    bail!("{reason}")
}

fn xattr(path: &Path, name: &str) -> anyhow::Result<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(path, name, &mut buf[..]).with_context(|| {
        format!(
            "{}: reading {name} (is it a depotfs mount?)",
            path.display()
        )
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
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
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u");
        if a.lazy {
            cmd.arg("-z");
        }
        let st = cmd.arg(&mp).status();
        if !st.is_ok_and(|s| s.success()) {
            bail!("unmounting {}: {e}", mp.display());
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

/// Print the mount's revision, source, publish time, cache use and limit, hit rate and
/// bytes fetched.
pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mp = absolute(&a.mountpoint)?;
    let get = |n: &str| xattr(&mp, &format!("user.depotfs.{n}"));
    let num = |n: &str| -> anyhow::Result<u64> { Ok(get(n)?.trim().parse().unwrap_or(0)) };
    let (hits, misses) = (num("hits")?, num("misses")?);
    let (used, limit) = (num("cache_used")?, num("cache_limit")?);
    let published: i64 = get("published_ns")?.trim().parse().unwrap_or(0);
    let cache_dir = get("cache_dir")?;
    println!("repository:    {}", get("name")?);
    println!("revision:      {}", get("revision")?);
    println!("root:          {}", get("root")?);
    println!("source:        {}", get("source")?);
    println!("server:        {}", get("host")?);
    println!("published:     {}", utc(published));
    if cache_dir.is_empty() {
        println!("cache:         none (local store)");
    } else {
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
    }
    let rate = if hits + misses > 0 {
        hits as f64 * 100.0 / (hits + misses) as f64
    } else {
        0.0
    };
    println!("hit rate:      {rate:.1} % ({hits} hits, {misses} downloads)");
    println!("fetched:       {}", human(num("bytes_fetched")?));
    println!(
        "read:          {} returned to readers",
        human(num("bytes_read")?)
    );
    println!(
        "corrupt:       {} downloads failed verification",
        num("corrupt")?
    );
    println!("inodes:        {} known to the kernel", get("inodes")?);
    println!("pid:           {}", get("pid")?);
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
    }
}
