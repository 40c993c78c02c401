//! A new user's first hour (issue 20), with the real binary, `depotfs serve` and real FUSE
//! mounts: commands end quietly when their output pipe closes; a background mount says what
//! it mounted and where its log is, appends to that log (rotated at `--log-size`, no colour
//! codes, no unmount or ioctl noise), and keeps serving when the disk under its log and cache
//! is full; stacked mounts are refused; `umount` and `status` say what is wrong (not mounted,
//! not a depotfs mount, daemon dead) and `status` shows the daemon; key errors name the key
//! file; `add` and `mount` errors and help read cleanly. Needs root and /dev/fuse.

mod cli_run;
mod http_suite;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_run::{BIN, Mounted, Served, fails, ok, ok_stdout, poll, run, xattr};
use http_suite::random_bytes;

/// A published store with `img/app.sif` (12 MiB of random bytes), served over HTTP.
struct Repo {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    server: Served,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/img");
        fs::create_dir_all(&src).unwrap();
        let data = random_bytes(12 << 20, 20);
        fs::write(src.join("app.sif"), &data).unwrap();
        let store = dir.path().join("store");
        ok(run(&[&"init", &store, &"--name", &"firsthour.test.org"]));
        ok(run(&[&"add", &store, &src]));
        let server = Served::start(&store);
        Repo { dir, data, server }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn key(&self) -> PathBuf {
        self.store().join("public/repo.pub")
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        let mp = self.dir.path().join(name);
        fs::create_dir_all(&mp).unwrap();
        mp
    }

    /// `depotfs mount URL MP --key K --cache-dir CACHE EXTRA...` (background), unchecked.
    fn mount_cmd(&self, mp: &Path, cache: &Path, extra: &[&OsStr]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("mount")
            .arg(self.server.url())
            .arg(mp)
            .arg("--key")
            .arg(self.key())
            .arg("--cache-dir")
            .arg(cache)
            .args(extra);
        c
    }

    /// A background mount that must succeed: its one line of output, and the guard.
    fn mount(&self, mp: &Path, cache: &Path, extra: &[&OsStr]) -> (String, Mounted) {
        let out = ok_stdout(self.mount_cmd(mp, cache, extra).output().unwrap());
        (out, Mounted(mp.to_path_buf()))
    }
}

/// The depotfs mounts at `mp` in /proc/self/mountinfo.
fn mounts_at(mp: &Path) -> usize {
    let want = format!(" {} ", mp.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&want) && l.contains(" depotfs:"))
        .count()
}

/// Run `depotfs ARGS` with its stdout a pipe whose reading end is already closed: the
/// first line printed meets EPIPE.
fn run_into_closed_pipe(args: &[&OsStr]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn commands_end_quietly_when_their_output_pipe_closes() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let cache = r.dir.path().join("cache");
    let (_, _m) = r.mount(&mp, &cache, &[]);
    let store = r.store();
    let all: [&[&OsStr]; 7] = [
        &[OsStr::new("status"), mp.as_os_str()],
        // The demo keeps SIGPIPE ignored (it runs a server and a mount) and must still end
        // quietly, having cleaned up.
        &[OsStr::new("demo")],
        &[OsStr::new("log"), store.as_os_str()],
        &[OsStr::new("ls"), store.as_os_str(), OsStr::new("img")],
        &[
            OsStr::new("cat"),
            store.as_os_str(),
            OsStr::new("img/app.sif"),
        ],
        &[OsStr::new("--help")],
        &[OsStr::new("mount"), OsStr::new("--help")],
    ];
    for args in all {
        let out = run_into_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() != Some(101)
                && !err.contains("panicked")
                && !err.contains("Broken pipe"),
            "depotfs {args:?} into a closed pipe: {}\n{err}",
            out.status
        );
    }
}

#[test]
fn background_mount_says_what_it_mounted_and_appends_a_quiet_log() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let cache = r.dir.path().join("cache");
    let (line, m) = r.mount(&mp, &cache, &[]);
    // One line: what, which revision, where, the cache and the log.
    assert_eq!(line.lines().count(), 1, "{line}");
    let log = PathBuf::from(
        line.trim()
            .rsplit_once("; log ")
            .unwrap_or_else(|| panic!("no log in {line:?}"))
            .1,
    );
    for part in [
        "mounted firsthour.test.org revision 1".to_string(),
        r.server.url(),
        format!("at {}", mp.display()),
        format!("cache {}", cache.display()),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line:?}");
    }
    assert!(log.starts_with(cache.join("logs")), "{}", log.display());

    // A second mount on the same mountpoint is refused, naming the first.
    let err = fails(r.mount_cmd(&mp, &cache, &[]).output().unwrap());
    assert!(
        err.contains("already a depotfs mount") && err.contains(&r.server.url()),
        "{err}"
    );
    assert_eq!(mounts_at(&mp), 1);

    // Python's open() asks for an ioctl (isatty) on every call.
    let py = Command::new("python3")
        .arg("-c")
        .arg("import sys\nfor _ in range(50): open(sys.argv[1], 'rb').read(4096)")
        .arg(mp.join("img/app.sif"))
        .status()
        .unwrap();
    assert!(py.success());
    drop(m);
    assert_eq!(mounts_at(&mp), 0);
    let err = fails(run(&[&"umount", &mp]));
    assert!(err.contains("is not mounted"), "{err}");

    // The same mountpoint again: the log is appended to, not overwritten.
    let (_, m) = r.mount(&mp, &cache, &[]);
    drop(m);
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("mounted firsthour.test.org revision 1")
            .count(),
        2,
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in the log file:\n{text}"
    );
    assert!(!text.contains("ioctl"), "ioctl noise in the log:\n{text}");
    assert!(!text.contains("Failed to umount"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn log_lines_in_pipes_have_no_colour() {
    let d = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        &"init",
        &d.path().join("s"),
        &"--name",
        &"c.test.org",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes in a pipe: {err:?}");
}

#[test]
fn daemon_log_is_rotated_at_its_size_limit() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let cache = r.dir.path().join("cache");
    let log = r.dir.path().join("daemon.log");
    // Debug level: fuser logs every request.
    let out = r
        .mount_cmd(
            &mp,
            &cache,
            &[
                OsStr::new("--log-file"),
                log.as_os_str(),
                OsStr::new("--log-size"),
                OsStr::new("16K"),
            ],
        )
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let line = ok_stdout(out);
    assert!(line.contains(&format!("log {}", log.display())), "{line}");
    let m = Mounted(mp.clone());
    for _ in 0..300 {
        fs::metadata(mp.join("img/app.sif")).unwrap();
        let _ = fs::read_dir(mp.join("img")).unwrap().count();
    }
    drop(m);
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(size(&log) > 0 && size(&log) <= 16 << 10, "{}", size(&log));
    for n in [1, 2] {
        let s = size(&rotated(n));
        assert!(
            s > 8 << 10 && s <= 16 << 10,
            "{}.{n}: {s} bytes",
            log.display()
        );
    }
    assert!(!rotated(3).exists());
}

/// Mount a tmpfs of `size` at `dir`; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 16, item 1: the log file and the cache on a full disk. Every failed cache write is
/// logged, the log write fails too: the daemon must keep serving right bytes (tracing's
/// fallback used to panic, and the mount died).
#[test]
fn full_disk_under_log_and_cache_does_not_stop_the_mount() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let small = Tmpfs::new(r.dir.path().join("small"), "4m");
    let cache = small.0.join("cache");
    let (_, _m) = r.mount(&mp, &cache, &[]);
    // Fill what is left.
    let mut filler = fs::File::create(small.0.join("filler")).unwrap();
    let block = vec![1u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let got = fs::read(mp.join("img/app.sif")).expect("reading with the disk full");
    assert!(got == r.data, "wrong bytes with the disk full");
    // The daemon is alive and answers.
    assert_eq!(xattr(&mp, "user.depotfs.revision"), "1");
    ok(run(&[&"status", &mp]));
}

#[test]
fn status_names_the_daemon_and_says_when_it_is_dead_or_not_a_mount() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let cache = r.dir.path().join("cache");
    let (_, _m) = r.mount(&mp, &cache, &[]);
    let pid = xattr(&mp, "user.depotfs.pid");
    let text = ok_stdout(run(&[&"status", &mp]));
    let daemon = text
        .lines()
        .find_map(|l| l.strip_prefix("daemon:"))
        .unwrap_or_else(|| panic!("no daemon line:\n{text}"));
    assert!(
        daemon.contains(&format!("pid {pid}"))
            && daemon.contains(env!("CARGO_PKG_VERSION"))
            && daemon.contains(" up "),
        "{daemon}"
    );
    assert!(text.contains("last check:    none yet"), "{text}");
    assert!(!text.contains("request bound"), "{text}");
    assert!(text.contains("reads give up: after "), "{text}");

    // A new revision, checked now: the outcome in words.
    let extra = r.dir.path().join("extra.txt");
    fs::write(&extra, "a second revision").unwrap();
    ok(run(&[&"add", &r.store(), &extra]));
    ok(run(&[&"remount", &mp]));
    let text = ok_stdout(run(&[&"status", &mp]));
    assert!(
        text.contains("last check:    switched to revision 2 (was 1); "),
        "{text}"
    );

    // Not a mount at all.
    let plain = r.mountpoint("plain");
    let err = fails(run(&[&"status", &plain]));
    assert!(
        err.contains(&format!("{} is not a depotfs mount", plain.display())),
        "{err}"
    );

    // The daemon killed: ENOTCONN on the mountpoint.
    let st = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    poll(Duration::from_secs(10), "daemon gone", || {
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
    let err = fails(run(&[&"status", &mp]));
    assert!(
        err.contains("the daemon of this mount is not running")
            && err.contains("restart it with")
            && err.contains(&format!(
                "depotfs mount {} {}",
                r.server.url(),
                mp.display()
            )),
        "{err}"
    );
    // A new mount over the dead one is refused too, and says why.
    let err = fails(r.mount_cmd(&mp, &cache, &[]).output().unwrap());
    assert!(err.contains("its daemon is not running"), "{err}");
}

#[test]
fn key_errors_name_the_key_file() {
    let r = Repo::new();
    let mp = r.mountpoint("mnt");
    let cache = r.dir.path().join("cache");
    // Another repository's key.
    let other = r.dir.path().join("other");
    ok(run(&[&"init", &other, &"--name", &"other.test.org"]));
    let other_key = other.join("public/repo.pub");
    let mount_with = |key: &Path| {
        let mut c = Command::new(BIN);
        c.arg("mount")
            .arg(r.server.url())
            .arg(&mp)
            .arg("--key")
            .arg(key)
            .arg("--cache-dir")
            .arg(&cache);
        fails(c.output().unwrap())
    };
    let err = mount_with(&other_key);
    assert!(
        err.contains("signature does not verify") && err.contains(&other_key.display().to_string()),
        "{err}"
    );
    let garbage = r.dir.path().join("garbage.pub");
    fs::write(&garbage, "not a key\n").unwrap();
    let err = mount_with(&garbage);
    assert!(
        err.contains(&garbage.display().to_string()) && err.contains("not a depotfs public key"),
        "{err}"
    );
    // No key over HTTP: a usage error, not a manifest one.
    let out = Command::new(BIN)
        .arg("mount")
        .arg(r.server.url())
        .arg(&mp)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    let err = fails(out);
    assert!(
        err.contains("--key FILE is required") && !err.contains("manifest:"),
        "{err}"
    );
    assert_eq!(mounts_at(&mp), 0);
}

#[test]
fn add_errors_once_and_help_reads_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    ok(run(&[&"init", &store, &"--name", &"help.test.org"]));
    let missing = d.path().join("no-such-image.sif");
    let err = fails(run(&[&"add", &store, &missing]));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let help = ok_stdout(run(&[&"add", &"--help"]));
    let to = help
        .lines()
        .find(|l| l.trim_start().starts_with("--to"))
        .unwrap();
    assert_eq!(to.matches("default").count(), 1, "{to}");

    let help = ok_stdout(run(&[&"mount", &"--help"]));
    assert!(
        help.contains("Usage: depotfs mount [OPTIONS] SOURCE MOUNTPOINT"),
        "{help}"
    );
    assert!(!help.contains("[SOURCE]"), "{help}");
    let err = fails(run(&[&"mount"]));
    assert!(
        err.contains("<SOURCE>") && err.contains("<MOUNTPOINT>"),
        "{err}"
    );
    // The defaults a new user meets: cache and log.
    assert!(help.contains("/var/cache/depotfs") && help.contains("logs/mount"));
}
