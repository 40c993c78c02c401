//! The soak test, run by hand (ignored in CI; results in `docs/soak.md`):
//!
//! ```text
//! SOAK_SECS=1800 cargo test --test soak -- --ignored --nocapture
//! ```
//!
//! Real parts throughout: a store published by the `depotfs` binary, two `depotfs serve`
//! mirrors of it, one real FUSE mount over both (`--server` twice, a short `--ttl`), a disk
//! cache four times smaller than the working set. For `SOAK_SECS` (default 1800):
//!
//! - `SOAK_READERS` readers (default 4) read random 128 KiB-1 MiB ranges of random files
//!   and compare every byte with what was published;
//! - a new revision is published every 30 s (a new file; readers pick it up once the
//!   mount has switched to it);
//! - every 150 s one mirror (in turn) is killed and restarted 20 s later.
//!
//! It passes with 0 read errors, 0 wrong bytes, 0 verification failures, and a flat RSS of
//! the mount daemon: the highest sample of the last third of the run at most 32 MB above the
//! highest of the first third (after the first revision, so caches are full).

mod cli_run;
mod http_suite;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_run::{Mounted, Served, ok, run};
use http_suite::random_bytes;

/// Images in the first revision, and their size: 8 × 24 MiB, a 192 MiB working set.
const IMAGES: u64 = 8;
const IMAGE_LEN: usize = 24 << 20;
/// The disk cache limit: a third of the working set.
const CACHE: &str = "64M";
const REVISION_EVERY: Duration = Duration::from_secs(30);
const MIRROR_EVERY: Duration = Duration::from_secs(150);
const MIRROR_DOWN: Duration = Duration::from_secs(20);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// `O_DIRECT` (no libc crate in this package's tests).
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const O_DIRECT: i32 = 0o40000;
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
const O_DIRECT: i32 = 0o200000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bytes a file of the soak repository holds: image `img-K` or revision file `rev-N`.
fn expected(name: &str) -> Vec<u8> {
    let (kind, n) = name.split_once('-').expect("NAME-N");
    let n: u64 = n.parse().expect("number");
    match kind {
        "img" => random_bytes(IMAGE_LEN, n),
        _ => random_bytes(300_000 + (n as usize % 7) * 100_000, 1000 + n),
    }
}

/// The daemon's resident memory, MB.
fn rss_mb(pid: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
}

/// The files readers may pick, with their published bytes.
type Files = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

fn reader(mp: PathBuf, files: Files, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    let mut rng = http_suite::Rng::new(std::process::id() as u64 ^ (Arc::as_ptr(&c) as u64));
    let mut next = move || rng.next_u64();
    while !stop.load(Ordering::Relaxed) {
        let (name, data) = {
            let f = files.lock().unwrap();
            let k = next() as usize % f.len();
            let (n, d) = f.iter().nth(k).expect("k < len");
            (n.clone(), d.clone())
        };
        let len = ((128 << 10) + next() as usize % (896 << 10)).min(data.len());
        let off = next() as usize % (data.len() - len + 1);
        let path = mp.join("soak").join(&name);
        // O_DIRECT: every read goes to the mount daemon, not to the kernel's page cache
        // (which would hold the whole working set and answer nearly every read itself).
        let got = fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_DIRECT)
            .open(&path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(off as u64))?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf)?;
                Ok(buf)
            });
        c.reads.fetch_add(1, Ordering::Relaxed);
        match got {
            Ok(buf) if buf == data[off..off + len] => {
                c.bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Ok(_) => {
                c.wrong.fetch_add(1, Ordering::Relaxed);
                eprintln!("WRONG BYTES: {name} at {off}+{len}");
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("read error: {name} at {off}+{len}: {e}");
            }
        }
    }
}

#[test]
#[ignore = "a soak test, run by hand: SOAK_SECS=1800 cargo test --test soak -- --ignored --nocapture"]
fn soak_random_reads_revisions_and_mirror_restarts() {
    let secs = env_u64("SOAK_SECS", 1800);
    let readers = env_u64("SOAK_READERS", 4);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/soak");
    fs::create_dir_all(&src).unwrap();
    let mut names = HashMap::new();
    for k in 0..IMAGES {
        let name = format!("img-{k}");
        let data = expected(&name);
        fs::write(src.join(&name), &data).unwrap();
        names.insert(name, Arc::new(data));
    }
    let store = dir.path().join("store");
    ok(run(&[&"init", &store, &"--name", &"soak.depotfs.org"]));
    ok(run(&[&"add", &store, &src]));
    let mut mirrors = [Some(Served::start(&store)), Some(Served::start(&store))];
    let ports = mirrors
        .each_ref()
        .map(|m| m.as_ref().expect("started").port);
    let mp = dir.path().join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let [u1, u2] = ports.map(|p| format!("http://127.0.0.1:{p}/"));
    ok(run(&[
        &"mount",
        &"--server",
        &u1,
        &"--server",
        &u2,
        &mp,
        &"--key",
        &store.join("public/repo.pub"),
        &"--cache-dir",
        &dir.path().join("cache"),
        &"--cache-size",
        &CACHE,
        &"--mem-size",
        &"16M",
        &"--ttl",
        &"5",
        &"--timeout",
        &"3",
        &"--failback-after",
        &"60",
    ]));
    let mounted = Mounted(mp.clone());
    let pid = cli_run::xattr(&mp, "user.depotfs.pid");

    let files = Arc::new(Mutex::new(names));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (mp, files, stop, c) = (mp.clone(), files.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || reader(mp, files, stop, c))
        })
        .collect();

    let start = Instant::now();
    let total = Duration::from_secs(secs);
    let (mut revision, mut next_rev) = (1u64, REVISION_EVERY);
    let (mut next_kill, mut down): (Duration, Option<(usize, Duration)>) = (MIRROR_EVERY, None);
    let mut kills = 0;
    let mut next_sample = SAMPLE_EVERY;
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        let t = start.elapsed();
        if t >= next_rev {
            next_rev += REVISION_EVERY;
            let name = format!("rev-{revision}");
            fs::write(src.join(&name), expected(&name)).unwrap();
            ok(run(&[&"add", &store, &src]));
            revision += 1;
            pending.push(name);
        }
        // A new file joins the readers' set once the mount shows it.
        pending.retain(|n| {
            let seen = mp.join("soak").join(n).exists();
            if seen {
                files
                    .lock()
                    .unwrap()
                    .insert(n.clone(), Arc::new(expected(n)));
            }
            !seen
        });
        match down {
            Some((i, until)) if t >= until => {
                mirrors[i] = Some(Served::start_on(&store, ports[i]));
                down = None;
            }
            None if t >= next_kill => {
                let i = kills % 2;
                kills += 1;
                // Dropping a `Served` kills its process.
                mirrors[i] = None;
                down = Some((i, t + MIRROR_DOWN));
                next_kill += MIRROR_EVERY;
            }
            _ => {}
        }
        if t >= next_sample {
            next_sample += SAMPLE_EVERY;
            let r = rss_mb(&pid);
            rss.push((t.as_secs(), r));
            eprintln!(
                "{:>5} s: rev {revision}, {} reads, {} MB, {} errors, {} wrong, RSS {r} MB",
                t.as_secs(),
                counts.reads.load(Ordering::Relaxed),
                counts.bytes.load(Ordering::Relaxed) >> 20,
                counts.errors.load(Ordering::Relaxed),
                counts.wrong.load(Ordering::Relaxed),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let status = String::from_utf8(ok(run(&[&"status", &mp])).stdout).unwrap();
    eprintln!("{status}");
    let corrupt = cli_run::xattr(&mp, "user.depotfs.corrupt");
    drop(mounted);
    let third = rss.len() / 3;
    let first = rss[1..third.max(2)].iter().map(|r| r.1).max().unwrap_or(0);
    let last = rss[rss.len() - third.max(1)..]
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or(0);
    eprintln!(
        "soak: {secs} s, {readers} readers, {} revisions, {kills} mirror kills, {} reads, \
         {} MB read, {} errors, {} wrong, corrupt {corrupt}, RSS first third max {first} MB, \
         last third max {last} MB",
        revision - 1,
        counts.reads.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed) >> 20,
        counts.errors.load(Ordering::Relaxed),
        counts.wrong.load(Ordering::Relaxed),
    );
    assert_eq!(counts.wrong.load(Ordering::Relaxed), 0, "wrong bytes");
    assert_eq!(counts.errors.load(Ordering::Relaxed), 0, "read errors");
    assert_eq!(corrupt, "0");
    assert!(last <= first + 32, "RSS grew: {first} -> {last} MB");
}
