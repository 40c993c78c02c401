//! A real non-root user, created here with useradd, mounts over HTTP through fusermount3
//! (Debian's setuid helper, package fuse3) without capabilities, with a cache in its own
//! directory; reads; is refused `--allow-other` with a clear message while /etc/fuse.conf
//! lacks `user_allow_other`; unmounts with `depotfs umount`. Needs root (useradd, runuser).
//!
//! The user needs /dev/fuse open to all (mode 0666, the kernel's and udev's mode on Debian);
//! containers often make it 0600, so the test sets 0666 and restores the mode afterwards.

mod cli_run;
mod http_suite;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cli_run::{BIN, Served, ok_stdout, poll, run};

/// A user created for the test, deleted when dropped.
struct User(String);

impl User {
    fn create() -> User {
        let name = format!("dfs{}", std::process::id());
        let st = Command::new("useradd")
            .args(["-M", "-s", "/usr/sbin/nologin", &name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        User(name)
    }
    fn uid(&self) -> u32 {
        let out = Command::new("id").args(["-u", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
    /// Run `PROGRAM ARGS…` as this user.
    fn run(&self, program: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.0, "--"]).arg(program);
        for a in args {
            c.arg(a);
        }
        c.current_dir("/").output().unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// /dev/fuse at mode 0666 while alive; the old mode restored when dropped.
struct DevFuseOpen(u32);

impl DevFuseOpen {
    fn set() -> DevFuseOpen {
        let old = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseOpen(old)
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

fn mounted(mp: &Path) -> Option<String> {
    let want = mp.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .map(String::from)
}

#[test]
fn a_non_root_user_mounts_reads_and_unmounts() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let store = dir.join("store");
    ok_stdout(run(&[&"init", &store, &"--name", &"user.test"]));
    let img = dir.join("tool.img");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&img, &content).unwrap();
    ok_stdout(run(&[&"add", &store, &img]));
    let served = Served::start(&store);

    // What the user can reach: a copy of the binary and of the key, its own directories.
    let user = User::create();
    let uid = user.uid();
    let bin = dir.join("depotfs");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.join("repo.pub");
    fs::copy(store.join("public/repo.pub"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (mp, mp2, cache) = (dir.join("mnt"), dir.join("mnt2"), dir.join("cache"));
    for d in [&mp, &mp2, &cache] {
        fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), None).unwrap();
    }
    let _dev = DevFuseOpen::set();

    let out = user.run(
        &bin,
        &[
            &"mount",
            &served.url(),
            &mp,
            &"--key",
            &key,
            &"--cache-dir",
            &cache,
        ],
    );
    assert!(
        out.status.success(),
        "mount as {}: {}",
        user.0,
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = cli_run::Mounted(mp.clone());
    let line = mounted(&mp).expect("the mount in mountinfo");
    assert!(line.contains(&format!("user_id={uid}")), "{line}");
    // The daemon runs as the user, without capabilities.
    // Only the user may look into its mount (no allow_other): even root is refused.
    let out = user.run(
        Path::new("/usr/bin/python3"),
        &[
            &"-c",
            &"import os,sys; print(os.getxattr(sys.argv[1], 'user.depotfs.pid').decode())",
            &mp,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = String::from_utf8(out.stdout).unwrap();
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), uid.to_string(), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    // The user reads the right bytes; the cache is filled in its own directory.
    let out = user.run(Path::new("/bin/cat"), &[&mp.join("tool.img")]);
    assert!(out.status.success());
    assert!(out.stdout == content, "content read as the user differs");
    // Written by the cache's writer after the read was served.
    poll(Duration::from_secs(10), "something cached", || {
        fs::read_dir(cache.join("objects")).unwrap().count() > 0
    });
    // Kernel readahead needs root: skipped with one log line.
    let logs: String = fs::read_dir(cache.join("logs"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        logs.matches("left at the kernel's default: setting it needs root")
            .count(),
        1,
        "{logs}"
    );

    // --allow-other without user_allow_other: refused, saying so.
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        eprintln!("/etc/fuse.conf sets user_allow_other: the refusal is not checked here");
    } else {
        let out = user.run(
            &bin,
            &[
                &"mount",
                &served.url(),
                &mp2,
                &"--key",
                &key,
                &"--cache-dir",
                &cache,
                &"--allow-other",
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("user_allow_other") && err.contains("/etc/fuse.conf"),
            "{err}"
        );
        assert!(mounted(&mp2).is_none());
    }

    // The user unmounts with depotfs umount (fusermount3 -u underneath).
    let out = user.run(&bin, &[&"umount", &mp]);
    assert!(
        out.status.success(),
        "umount as the user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted(&mp).is_none());
    poll(Duration::from_secs(10), "the daemon gone", || {
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
    std::mem::forget(guard);
}
