//! `depotfs reload` with real parts: a real FUSE mount over HTTP (`depotfs serve`), one
//! reader streaming a large file through one open descriptor and 16 readers of small files,
//! while the daemon is replaced 10 times (alternately by the binary under test and a copy of
//! it). Every read must return the right bytes (hashes compared), with no ENOTCONN and no
//! EIO; `status` shows the new pid after each reload; inode numbers stay the same; a file
//! opened before a publish and a reload reads its old content after them. A reload whose new
//! binary fails leaves the old daemon serving, with the reason.
//!
//! The stream is 128 MiB (debug build, CI); `reload_1gib_stream` (ignored) streams the
//! 1 GiB of issue 15: `cargo test --test reload -- --ignored` (result in docs/reload.md).

mod cli_run;
mod http_suite;

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cli_run::{BIN, Mounted, Served, fails, ok, ok_stdout, run};
use http_suite::random_bytes;

const SMALL_FILES: usize = 64;
const SMALL_READERS: usize = 16;
const RELOADS: usize = 10;

/// Drop the kernel's cached pages of `f`, so that the next read is a request to the daemon.
fn uncache(f: &std::fs::File) {
    rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
}

/// The pid `depotfs status` shows for the mount's daemon.
fn status_pid(mp: &Path) -> u32 {
    let out = ok_stdout(run(&[&"status", &mp]));
    let line = out
        .lines()
        .find(|l| l.starts_with("daemon:"))
        .unwrap_or_else(|| panic!("no daemon line in:\n{out}"));
    line.split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(',')
        .parse()
        .unwrap()
}

/// Read errors seen by the readers, by kind.
#[derive(Default)]
struct Seen {
    errors: Mutex<Vec<String>>,
    reads: AtomicU64,
}

impl Seen {
    fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }
}

fn replace_daemon_under_readers(stream_mib: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = (dir.path().join("src"), dir.path().join("store"));
    let big = random_bytes(stream_mib << 20, 1);
    let mut small = BTreeMap::new();
    for i in 0..SMALL_FILES {
        let data = random_bytes(4096 + i * 997, 100 + i as u64);
        small.insert(format!("small/f{i:03}"), data);
    }
    std::fs::create_dir_all(src.join("data/small")).unwrap();
    std::fs::create_dir_all(src.join("v")).unwrap();
    std::fs::write(src.join("data/big"), &big).unwrap();
    for (name, data) in &small {
        std::fs::write(src.join("data").join(name), data).unwrap();
    }
    std::fs::write(src.join("v/changing"), b"revision one\n").unwrap();
    ok(run(&[&"init", &store, &"--name", &"reload.test"]));
    ok(run(&[&"add", &store, &src.join("data")]));
    ok(run(&[&"add", &store, &src.join("v")]));
    let served = Served::start(&store);

    let mp = dir.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    ok(run(&[
        &"mount",
        &served.url(),
        &mp,
        &"--key",
        &store.join("public/repo.pub"),
        &"--cache-dir",
        &dir.path().join("cache"),
    ]));
    let _mounted = Mounted(mp.clone());
    // The second build: a copy of the binary, at another path.
    let copy = dir.path().join("depotfs-copy");
    std::fs::copy(BIN, &copy).unwrap();

    let data = mp.join("data");
    let inodes: Vec<(PathBuf, u64)> = ["big", "small", "small/f000", "small/f063"]
        .iter()
        .map(|p| (data.join(p), std::fs::metadata(data.join(p)).unwrap().ino()))
        .chain([(mp.join("v"), std::fs::metadata(mp.join("v")).unwrap().ino())])
        .collect();
    // Opened in revision 2, read after revision 3 is published and after the reloads.
    let mut held = std::fs::File::open(mp.join("v/changing")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut readers = Vec::new();
    {
        // One descriptor for the whole test: it must survive every reload.
        let (stop, seen) = (stop.clone(), seen.clone());
        let want = blake3::hash(&big);
        let mut f = std::fs::File::open(data.join("big")).unwrap();
        readers.push(std::thread::spawn(move || {
            let mut passes = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            while passes == 0 || !stop.load(Ordering::Relaxed) {
                uncache(&f);
                f.rewind().unwrap();
                let mut h = blake3::Hasher::new();
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            seen.reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            seen.error(format!("big: {e}"));
                            return passes;
                        }
                    }
                }
                if h.finalize() != want {
                    seen.error(format!("big: wrong bytes in pass {passes}"));
                }
                passes += 1;
            }
            passes
        }));
    }
    let small = Arc::new(small);
    for r in 0..SMALL_READERS {
        let (stop, seen, small, data) = (stop.clone(), seen.clone(), small.clone(), data.clone());
        readers.push(std::thread::spawn(move || {
            let mut files = 0u64;
            let names: Vec<&String> = small.keys().collect();
            let mut i = r * 7;
            while files < SMALL_FILES as u64 || !stop.load(Ordering::Relaxed) {
                let name = names[i % names.len()];
                i += 1;
                let got = std::fs::File::open(data.join(name)).and_then(|mut f| {
                    uncache(&f);
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).map(|_| v)
                });
                match got {
                    Ok(v) if blake3::hash(&v) == blake3::hash(&small[name]) => {}
                    Ok(_) => seen.error(format!("{name}: wrong bytes")),
                    Err(e) => {
                        seen.error(format!("{name}: {e}"));
                        return files;
                    }
                }
                seen.reads.fetch_add(1, Ordering::Relaxed);
                files += 1;
            }
            files
        }));
    }

    // The reloads, while they read.
    let mut pid = status_pid(&mp);
    for n in 0..RELOADS {
        if n == RELOADS / 2 {
            // A new revision changes v/changing; the descriptor opened before keeps
            // reading the old content, also in the next daemon.
            std::fs::write(src.join("v/changing"), b"revision two, longer\n").unwrap();
            ok(run(&[&"add", &store, &src.join("v")]));
            let out = ok_stdout(run(&[&"remount", &mp]));
            assert!(out.contains("new"), "{out}");
        }
        let before = seen.reads.load(Ordering::Relaxed);
        cli_run::poll(Duration::from_secs(60), "readers progressing", || {
            seen.reads.load(Ordering::Relaxed) > before + 8
        });
        let binary: &Path = if n % 2 == 0 { Path::new(BIN) } else { &copy };
        let out = ok_stdout(run(&[&"reload", &mp, &"--binary", &binary]));
        let new = status_pid(&mp);
        assert_ne!(new, pid, "reload {n}: the pid did not change: {out}");
        assert!(
            out.contains(&format!("daemon {pid} replaced by {new}")),
            "reload {n}: {out}"
        );
        cli_run::poll(Duration::from_secs(10), "the old daemon exiting", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        });
        pid = new;
        for (p, ino) in &inodes {
            assert_eq!(
                std::fs::metadata(p).unwrap().ino(),
                *ino,
                "reload {n}: inode of {}",
                p.display()
            );
        }
    }

    // A new binary that cannot start: the old daemon serves on.
    let err = fails(run(&[&"reload", &mp, &"--binary", &"/bin/false"]));
    assert!(
        err.contains("exited") && err.contains(&format!("daemon {pid} serves on")),
        "{err}"
    );
    let err = fails(run(&[
        &"reload",
        &mp,
        &"--binary",
        &dir.path().join("none"),
    ]));
    assert!(err.contains("cannot start the new daemon"), "{err}");
    assert_eq!(status_pid(&mp), pid);

    stop.store(true, Ordering::Relaxed);
    let done: Vec<u64> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "read errors: {errors:?}");
    assert!(done[0] >= 1, "the stream never finished a pass");
    assert!(
        done[1..].iter().all(|n| *n >= SMALL_FILES as u64),
        "{done:?}"
    );

    let mut old = String::new();
    held.read_to_string(&mut old).unwrap();
    assert_eq!(old, "revision one\n");
    assert_eq!(
        std::fs::read_to_string(mp.join("v/changing")).unwrap(),
        "revision two, longer\n"
    );
    eprintln!(
        "{RELOADS} reloads; stream of {stream_mib} MiB read {} times, {} small files read",
        done[0],
        done[1..].iter().sum::<u64>()
    );
}

#[test]
fn reload_under_readers() {
    replace_daemon_under_readers(128);
}

/// The 1 GiB stream of issue 15 (slow in a debug build: run by hand).
#[test]
#[ignore]
fn reload_1gib_stream() {
    replace_daemon_under_readers(1024);
}

/// The daemon's command line, from `/proc/PID/cmdline`, after the executable.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Issue 17 item 3: a background mount's daemon, and the daemon `reload` starts, run the
/// arguments as given (relative paths and sizes as typed; before, the launcher rebuilt them
/// flag by flag and a flag it did not know was dropped) plus `--foreground`.
#[test]
fn daemons_run_the_original_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("src/files")).unwrap();
    std::fs::write(d.join("src/files/a"), b"content a\n").unwrap();
    ok(run(&[&"init", &d.join("store"), &"--name", &"args.test"]));
    ok(run(&[&"add", &d.join("store"), &d.join("src/files")]));
    std::fs::create_dir_all(d.join("mnt")).unwrap();
    let given = [
        "mount",
        "store",
        "mnt",
        "--cache-dir",
        "cache",
        "--mem-size",
        "32M",
        "--ttl",
        "77",
    ];
    let out = std::process::Command::new(BIN)
        .args(given)
        .current_dir(d)
        .output()
        .unwrap();
    ok(out);
    let mp = d.join("mnt");
    let _mounted = Mounted(mp.clone());
    assert_eq!(
        std::fs::read_to_string(mp.join("files/a")).unwrap(),
        "content a\n"
    );
    let pid = status_pid(&mp);
    let log = d.join("cache/logs/mount").display().to_string();
    let argv = cmdline(pid);
    assert_eq!(argv[..given.len()], given, "{argv:?}");
    assert_eq!(
        argv[given.len()..given.len() + 3],
        ["--foreground", "--notify-stdout", "--log-file"],
        "{argv:?}"
    );
    assert!(argv[given.len() + 3].starts_with(&log), "{argv:?}");

    let out = ok_stdout(run(&[&"reload", &mp]));
    let new = status_pid(&mp);
    assert!(out.contains(&format!("replaced by {new}")), "{out}");
    let argv = cmdline(new);
    assert_eq!(argv[..given.len()], given, "{argv:?}");
    assert_eq!(argv[given.len()], "--foreground", "{argv:?}");
    assert_eq!(
        argv[argv.len() - 2..],
        ["--takeover".to_string(), pid.to_string()],
        "{argv:?}"
    );
    assert!(!argv.contains(&"--notify-stdout".to_string()), "{argv:?}");
    assert_eq!(
        std::fs::read_to_string(mp.join("files/a")).unwrap(),
        "content a\n"
    );

    // SIGTERM (how systemd stops the unit) unmounts also a mount taken over, which fuser
    // did not mount in this process.
    let pid = rustix::process::Pid::from_raw(new as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    cli_run::poll(Duration::from_secs(10), "the daemon exiting", || {
        std::fs::read_to_string(format!("/proc/{new}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&format!(" {} ", mp.display())),
        "still mounted after SIGTERM"
    );
}
