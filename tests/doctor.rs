//! `depotfs doctor` against real parts: `depotfs serve`, a real mirror made by `replicate`,
//! a real mount. Every failure is caused, not simulated: a dead server port, a dead proxy,
//! another repository's key, a missing key file, a read-only cache directory (a read-only
//! tmpfs), a cache limit larger than the disk, a mirror one revision behind, a mount whose
//! daemon was killed. Needs root (mounts) and /dev/fuse.

mod cli_run;
mod http_suite;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cli_run::{Mounted, Served, ok_stdout, poll, run, try_xattr, xattr};
use http_suite::free_port;

struct Setup {
    _t: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    key: PathBuf,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let store = dir.join("store");
    ok_stdout(run(&[&"init", &store, &"--name", &"doctor.test"]));
    let f = dir.join("a.img");
    fs::write(&f, b"image a").unwrap();
    ok_stdout(run(&[&"add", &store, &f]));
    let key = store.join("public/repo.pub");
    Setup {
        _t: t,
        dir,
        store,
        key,
    }
}

/// `depotfs doctor ARGS…`: (exit code 0?, stdout).
fn doctor(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (bool, String) {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"doctor"];
    all.extend_from_slice(args);
    let out: Output = run(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `depotfs doctor --source SOURCE --key KEY --cache-dir CACHE EXTRA…`.
fn doctor_source(
    source: &str,
    key: &Path,
    cache: &Path,
    extra: &[&dyn AsRef<std::ffi::OsStr>],
) -> (bool, String) {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"--source", &source, &"--key", &key, &"--cache-dir", &cache];
    all.extend_from_slice(extra);
    doctor(&all)
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn a_healthy_node_passes_every_check() {
    let s = setup();
    let served = Served::start(&s.store);
    let cache = s.dir.join("cache");
    let (ok, out) = doctor_source(&served.url(), &s.key, &cache, &[&"--cache-size", &"16M"]);
    assert!(ok, "{out}");
    line(&out, "ok   fuse device: /dev/fuse opens read-write");
    line(&out, "ok   fusermount3:");
    line(&out, "ok   key:");
    let l = line(&out, &format!("ok   server {}", served.url()));
    assert!(l.contains(" ms (HTTP 200)"), "{l}");
    let l = line(&out, &format!("ok   manifest {}", served.url()));
    assert!(l.contains("doctor.test revision 1, signature holds"), "{l}");
    line(&out, &format!("ok   cache {}: writable", cache.display()));
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn each_failure_is_named_with_a_fix_and_fails_the_run() {
    let s = setup();
    let served = Served::start(&s.store);
    let cache = s.dir.join("cache");
    let dead = format!("http://127.0.0.1:{}/", free_port());

    // A dead server port.
    let (ok, out) = doctor_source(&dead, &s.key, &cache, &[]);
    assert!(!ok, "{out}");
    let l = line(&out, &format!("FAIL server {dead}"));
    assert!(
        l.to_lowercase().contains("refused") && l.contains("-- fix:"),
        "{l}"
    );

    // A dead proxy in front of a live server.
    let proxy = format!("http://127.0.0.1:{}", free_port());
    let (ok, out) = doctor_source(
        &served.url(),
        &s.key,
        &cache,
        &[&"--proxy", &proxy, &"--proxy", &"DIRECT"],
    );
    assert!(!ok, "{out}");
    line(
        &out,
        &format!("FAIL server {} via proxy {proxy}", served.url()),
    );
    line(&out, &format!("ok   server {}: manifest", served.url()));

    // Another repository's key: the signature does not hold.
    let other = s.dir.join("other");
    ok_stdout(run(&[&"init", &other, &"--name", &"doctor.test"]));
    let (ok, out) = doctor_source(&served.url(), &other.join("public/repo.pub"), &cache, &[]);
    assert!(!ok, "{out}");
    let l = line(&out, &format!("FAIL manifest {}", served.url()));
    assert!(l.contains("refused") && l.contains("-- fix:"), "{l}");

    // A missing key file.
    let (ok, out) = doctor_source(&served.url(), &s.dir.join("nokey.pub"), &cache, &[]);
    assert!(!ok, "{out}");
    assert!(line(&out, "FAIL key:").contains("nokey.pub"), "{out}");

    // A cache limit larger than the filesystem.
    let (ok, out) = doctor_source(&served.url(), &s.key, &cache, &[&"--cache-size", &"1000T"]);
    assert!(!ok, "{out}");
    assert!(
        line(&out, &format!("FAIL cache {}", cache.display())).contains("cannot grow"),
        "{out}"
    );

    // A read-only cache directory (a read-only tmpfs: root writes anywhere else).
    let ro = s.dir.join("ro-cache");
    fs::create_dir_all(&ro).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    let (ok, out) = doctor_source(&served.url(), &s.key, &ro, &[&"--cache-size", &"64K"]);
    let _ = Command::new("umount").arg(&ro).status();
    assert!(!ok, "{out}");
    assert!(
        line(&out, &format!("FAIL cache {}", ro.display())).contains("not writable"),
        "{out}"
    );
}

#[test]
fn a_mirror_behind_the_origin_is_stale() {
    let s = setup();
    let mirror = s.dir.join("mirror");
    let origin = Served::start(&s.store);
    ok_stdout(run(&[
        &"replicate",
        &origin.url(),
        &mirror,
        &"--key",
        &s.key,
    ]));
    let f = s.dir.join("b.img");
    fs::write(&f, b"image b").unwrap();
    ok_stdout(run(&[&"add", &s.store, &f]));
    let served_mirror = Served::start(&mirror);
    let sources = format!("{},{}", origin.url(), served_mirror.url());
    let (ok, out) = doctor_source(&sources, &s.key, &s.dir.join("cache"), &[]);
    assert!(!ok, "{out}");
    line(
        &out,
        &format!("ok   manifest {}: doctor.test revision 2", origin.url()),
    );
    let l = line(&out, &format!("FAIL manifest {}", served_mirror.url()));
    assert!(
        l.contains("revision 1") && l.contains("stale: another server has revision 2"),
        "{l}"
    );
    assert!(l.contains("replicate"), "{l}");
}

#[test]
fn a_mount_is_checked_with_its_own_settings_and_a_dead_daemon_fails() {
    let s = setup();
    let served = Served::start(&s.store);
    let mp = s.dir.join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let cache = s.dir.join("cache");
    ok_stdout(run(&[
        &"mount",
        &served.url(),
        &mp,
        &"--key",
        &s.key,
        &"--cache-dir",
        &cache,
        &"--cache-size",
        &"8M",
    ]));
    let _guard = Mounted(mp.clone());
    let (ok, out) = doctor(&[&mp]);
    assert!(ok, "{out}");
    let l = line(
        &out,
        &format!("ok   mount {}: answers: revision 1", mp.display()),
    );
    assert!(l.contains("daemon pid"), "{l}");
    // The servers, key and cache are the mount's own.
    line(&out, &format!("ok   server {}", served.url()));
    line(&out, &format!("ok   key: {}", s.key.display()));
    line(&out, &format!("ok   cache {}", cache.display()));

    // Kill the daemon: the mount point answers ENOTCONN.
    let pid = xattr(&mp, "user.depotfs.pid");
    assert!(
        Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    poll(Duration::from_secs(10), "the daemon gone", || {
        try_xattr(&mp, "user.depotfs.pid").is_err()
    });
    let (ok, out) = doctor(&[&mp]);
    assert!(!ok, "{out}");
    let l = line(&out, &format!("FAIL mount {}", mp.display()));
    assert!(l.contains("ENOTCONN") && l.contains("restart"), "{l}");
}
