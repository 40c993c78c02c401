//! The daemon's log when stderr is not a terminal (a background mount logs to
//! CACHE/logs/, a unit to the journal): one plain line per event that matters — cache full,
//! revision change, failover, offline, online, refused manifest — each naming the mount
//! point. Every event is caused for real: a cache smaller than a file read, a publish, servers
//! killed and restarted, an older manifest served. Needs root and /dev/fuse.

mod cli_run;
mod http_suite;

use std::fs;
use std::path::Path;
use std::time::Duration;

use cli_run::{Mounted, Served, ok_stdout, poll, run};
use http_suite::{free_port, random_bytes};

fn log_text(cache: &Path) -> String {
    fs::read_dir(cache.join("logs"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

/// The lines of `log` containing `needle`.
fn lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn one_line_per_event_naming_the_mount() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let store = dir.join("store");
    ok_stdout(run(&[&"init", &store, &"--name", &"logs.test"]));
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        fs::write(src.join(format!("f{i}")), random_bytes(400_000, i)).unwrap();
    }
    ok_stdout(run(&[&"add", &store, &src]));
    let rev1_manifest = fs::read(store.join("public/manifest")).unwrap();

    let a = Served::start(&store);
    let a_url = a.url();
    let b_port = free_port();
    let b = Served::start_on(&store, b_port);
    let b_url = format!("http://127.0.0.1:{b_port}/");
    let mp = dir.join("mnt");
    let cache = dir.join("cache");
    fs::create_dir_all(&mp).unwrap();
    ok_stdout(run(&[
        &"mount",
        &"--server",
        &a_url,
        &"--server",
        &b_url,
        &mp,
        &"--key",
        &store.join("public/repo.pub"),
        &"--cache-dir",
        &cache,
        &"--cache-size",
        &"600K",
        &"--retries",
        &"0",
        &"--timeout",
        &"3",
    ]));
    let _m = Mounted(mp.clone());
    let mark = format!("mp={}", mp.display());

    // Cache full: 1.2 MB read through a 600 KiB cache.
    for i in 0..3 {
        assert_eq!(
            fs::read(mp.join(format!("src/f{i}"))).unwrap(),
            random_bytes(400_000, i)
        );
    }
    // A new revision.
    fs::write(src.join("g"), b"new").unwrap();
    ok_stdout(run(&[&"add", &store, &src.join("g")]));
    assert!(ok_stdout(run(&[&"remount", &mp])).contains("new, was 1"));
    // Failover: the preferred server dies.
    drop(a);
    ok_stdout(run(&[&"remount", &mp]));
    // Offline: the other one dies too; then online: it comes back.
    drop(b);
    let _ = run(&[&"remount", &mp]);
    // A failed revision check alone keeps the mount online (reads of the current revision go
    // on, #16 item 6); a read that no route answers takes it offline.
    assert!(
        fs::read(mp.join("g")).is_err(),
        "g read with every server down"
    );
    let b = Served::start_on(&store, b_port);
    poll(Duration::from_secs(30), "back online", || {
        !lines(&log_text(&cache), "leaving offline mode").is_empty()
    });
    // A refused manifest: revision 1 served again (a replay).
    fs::write(store.join("public/manifest"), &rev1_manifest).unwrap();
    let _ = run(&[&"remount", &mp]);
    drop(b);

    let log = log_text(&cache);
    assert!(!log.contains('\x1b'), "terminal escapes in the log:\n{log}");
    // Each failover is an event of its own (the offline probe fails over too).
    let failover = format!("server {a_url} failed (connect refused); switching to server {b_url}");
    let found = lines(&log, &failover);
    assert!(!found.is_empty(), "no failover line:\n{log}");
    assert!(found.iter().all(|l| l.contains(&mark)), "{found:?}");
    for (event, needle) in [
        ("cache full", "full ("),
        ("revision change", "switching from revision 1 to 2"),
        ("offline", "all servers unreachable"),
        ("online", "leaving offline mode"),
        ("refused manifest", "manifest refused (older)"),
    ] {
        let found = lines(&log, needle);
        assert_eq!(found.len(), 1, "{event}: {found:?}\nlog:\n{log}");
        assert!(
            found[0].contains(&mark),
            "{event} without the mount point: {}",
            found[0]
        );
    }
}
