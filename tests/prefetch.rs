//! Fetching ahead, with real parts (the `depotfs` binary, `depotfs serve` over loopback HTTP,
//! real FUSE mounts): scattered reads fetch only the chunks they touch while a sequential
//! reader gets readahead; `mount --record` writes the trace `add --trace` publishes; a mount
//! opening an image with an access list fetches that list in the background, so the
//! recorded reads then need no download, and under the `--prefetch-rate` cap; 0 turns it
//! off. Needs root and /dev/fuse.

mod cli_run;
mod http_suite;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cli_run::{Mounted, Served, depotfs, ok, ok_stdout, one_image_store, poll, xattr};
use depotfs_catalog::chunking::CHUNK_MAX;
use depotfs_catalog::dir::{DirNode, NODE_MAX_BYTES};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{ChunkList, EntryKind, FileContent, Manifest, PublicKey};
use http_suite::random_bytes;

const MIB: u64 = 1 << 20;

/// A store with `img/app.sif` (12 MiB of random bytes, ~48 chunks, unless asked for another
/// size), served over HTTP.
struct Setup {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    server: Served,
}

impl Setup {
    fn new() -> Setup {
        Setup::of_size(12 << 20)
    }

    /// [`Setup::new`] with an image of `len` bytes.
    fn of_size(len: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = random_bytes(len, 7);
        let store = one_image_store(dir.path(), "prefetch.test.org", &data);
        let server = Served::start(&store);
        Setup { dir, data, server }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A background mount over HTTP with a cache of its own (`name`), plus `extra` options.
    fn mount(&self, name: &str, extra: &[&OsStr]) -> Mounted {
        let mp = self.dir.path().join(name);
        fs::create_dir_all(&mp).unwrap();
        let url = self.server.url();
        let key = self.store().join("public/repo.pub");
        let cache = self.dir.path().join(format!("{name}.cache"));
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("mount"),
            OsStr::new(&url),
            mp.as_os_str(),
            OsStr::new("--key"),
            key.as_os_str(),
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
        ];
        args.extend_from_slice(extra);
        ok(depotfs(&args));
        Mounted(mp)
    }

    /// `depotfs add STORE --trace TRACE`: publish the access list.
    fn add_trace(&self, trace: &Path) {
        let store = self.store();
        ok(depotfs(&[
            OsStr::new("add"),
            store.as_os_str(),
            OsStr::new("--trace"),
            trace.as_os_str(),
        ]));
    }

    /// The published chunk list of `img/app.sif`.
    fn chunk_list(&self) -> ChunkList {
        let public = self.store().join("public");
        let key =
            PublicKey::from_text(&fs::read_to_string(public.join("repo.pub")).unwrap()).unwrap();
        let m = Manifest::parse_verified(&fs::read(public.join("manifest")).unwrap(), &key, None)
            .unwrap();
        let read = |id: depotfs_catalog::ObjectId, kind| {
            let bytes = fs::read(public.join(id.store_path())).unwrap();
            object::decode(id, kind, &bytes, 64 << 20).unwrap()
        };
        let mut tree = m.root;
        let mut found = None;
        for name in ["img", "app.sif"] {
            let v = read(tree, ObjectKind::DirNode);
            assert!(v.data().len() as u64 <= NODE_MAX_BYTES);
            let DirNode::Leaf(es) = DirNode::from_verified(&v).unwrap() else {
                panic!("one-leaf directories expected");
            };
            let e = es.into_iter().find(|e| e.name == name).unwrap();
            match e.kind {
                EntryKind::Dir { tree: t, .. } => tree = t,
                EntryKind::File {
                    content: FileContent::Chunked(id),
                    ..
                } => found = Some(id),
                other => panic!("{name}: {other:?}"),
            }
        }
        ChunkList::from_verified(&read(found.unwrap(), ObjectKind::ChunkList)).unwrap()
    }
}

/// `user.depotfs.NAME` of the mount root, as numbers (`CHUNKS BYTES` pairs and counters).
fn numbers(mp: &Path, name: &str) -> Vec<u64> {
    xattr(mp, &format!("user.depotfs.{name}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// The kernel's readahead of the mount at `mp`, KiB (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`).
fn kernel_readahead(mp: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(mp).unwrap().dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    fs::read_to_string(&file).unwrap().trim().parse().unwrap()
}

fn read_at(f: &fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Read `from..to` of `f` sequentially in 128 KiB pieces, each checked against `data`.
fn read_run(f: &fs::File, data: &[u8], from: u64, to: u64) {
    for o in (from..to).step_by(128 << 10) {
        assert!(
            read_at(f, o, 128 << 10) == data[o as usize..][..128 << 10],
            "wrong bytes at {o}"
        );
    }
}

/// Scattered reads (a container start through squashfuse) get no readahead: each fetches
/// the chunks it touches. A sequential reader gets readahead, and the bytes are right.
#[test]
fn scattered_reads_fetch_what_they_touch_sequential_reads_read_ahead() {
    let s = Setup::new();
    let m = s.mount("mnt", &[]);
    // The kernel's own readahead (and so its largest read request) is raised to 1 MiB.
    assert_eq!(kernel_readahead(&m.0), 1024);
    let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
    let misses0 = numbers(&m.0, "misses")[0];
    let offsets = [
        9 * MIB + 5000,
        MIB + 77,
        5 * MIB,
        11 * MIB + 12345,
        3 * MIB + 1,
    ];
    for &o in &offsets {
        assert_eq!(read_at(&f, o, 4096), &s.data[o as usize..o as usize + 4096]);
    }
    assert_eq!(
        numbers(&m.0, "readahead"),
        [0, 0],
        "scattered reads read ahead"
    );
    // The kernel reads up to 128 KiB around each 4 KiB read: at most two chunks each.
    let fetched = numbers(&m.0, "misses")[0] - misses0;
    assert!(
        fetched <= 2 * offsets.len() as u64,
        "{fetched} chunks fetched for {} scattered reads",
        offsets.len()
    );

    let all = fs::read(m.0.join("img/app.sif")).unwrap();
    assert!(all == s.data, "sequential read returned wrong bytes");
    let ra = numbers(&m.0, "readahead");
    assert!(
        ra[0] > 0 && ra[1] > 0,
        "no readahead for a sequential reader: {ra:?}"
    );
}

/// Issue 21 (P7): a sequential run of a few MiB — squashfuse reading one file out of an
/// image at a container start — is not speculated on: it fetches the chunks it reads and no
/// more. (Readahead started after 1 MiB with twice the run: 12 of the 30 MB a container
/// start fetched were read ahead and never read.) A longer run still gets readahead.
#[test]
fn a_short_sequential_run_fetches_only_what_it_reads() {
    let s = Setup::new();
    // 128 KiB kernel requests: the daemon sees the run exactly as read, plus at most one
    // request of the kernel's readahead beyond it.
    let m = s.mount(
        "short",
        &[OsStr::new("--kernel-readahead"), OsStr::new("0")],
    );
    let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
    let (from, to) = (2 * MIB, 5 * MIB);
    read_run(&f, &s.data, from, to);
    assert_eq!(
        numbers(&m.0, "readahead"),
        [0, 0],
        "a 3 MiB run was read ahead"
    );
    // The chunks of the run and of one more 128 KiB request beyond it.
    let list = s.chunk_list();
    let offsets = list.offsets();
    let needed = offsets
        .windows(2)
        .filter(|w| w[0] < to + (128 << 10) && w[1] > from)
        .count() as u64;
    // The other downloads: the root's and img/'s nodes, the chunk list.
    let misses = numbers(&m.0, "misses")[0];
    assert!(
        misses <= needed + 3,
        "{misses} downloads for a run over {needed} chunks"
    );
    // A run past 4 MiB is proven sequential: read ahead.
    read_run(&f, &s.data, to, 10 * MIB);
    let ra = numbers(&m.0, "readahead");
    assert!(ra[0] > 0, "no readahead for a 8 MiB run: {ra:?}");
}

/// Issue 21 (P7): while an image's access list is being prefetched, reads of listed chunks
/// start no readahead — the list is what the start needs (a recorded start with readahead
/// fetched 30 MB for a list of 18). A reader that leaves the list gets readahead again.
#[test]
fn reads_on_the_access_list_are_not_read_ahead() {
    let s = Setup::of_size(24 << 20);
    // A recorded start that read 1..7 MiB in one run, long enough for readahead.
    let trace = s.dir.path().join("run.trace");
    let (from, to) = (MIB, 7 * MIB);
    let body: String = (from..to)
        .step_by(128 << 10)
        .map(|o| format!("img/app.sif\t{o}\t131072\n"))
        .collect();
    fs::write(&trace, body).unwrap();
    s.add_trace(&trace);
    let list = s.chunk_list();
    let listed_bytes: u64 = list
        .prefetch
        .iter()
        .map(|&i| list.chunks[i as usize].len as u64)
        .sum();

    let m = s.mount(
        "listed",
        &[OsStr::new("--kernel-readahead"), OsStr::new("0")],
    );
    // Opening the image (and reading its first byte) starts the prefetch of the list.
    let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
    assert_eq!(read_at(&f, 0, 1), &s.data[..1]);
    poll(Duration::from_secs(30), "access-list prefetch", || {
        numbers(&m.0, "prefetched") == [list.prefetch.len() as u64, listed_bytes]
    });
    let misses = numbers(&m.0, "misses")[0];
    read_run(&f, &s.data, from, to);
    assert_eq!(
        numbers(&m.0, "readahead"),
        [0, 0],
        "reads of the access list were read ahead"
    );
    // At most the chunk of the kernel's one 128 KiB request past the run was downloaded.
    let more = numbers(&m.0, "misses")[0] - misses;
    assert!(
        more <= 1,
        "{more} downloads for reads of the prefetched list"
    );
    // Leaving the list: a further run is read ahead as any other. (The list's pages are in
    // the page cache, so the daemon sees the run begin where the list ends: it is read
    // ahead once it is 4 MiB long, and then well ahead of the reader.)
    read_run(&f, &s.data, to, 24 * MIB);
    let ra = numbers(&m.0, "readahead");
    assert!(ra[0] > 0, "no readahead once off the list: {ra:?}");
}

/// Issues 20 and 21: the readahead counter counts each chunk load it started once (it
/// counted a chunk once per readahead range it overlapped and again for each reader it
/// joined: 1.3 GiB "read ahead" for a 1 GiB read that fetched 988 MiB). After one cold
/// sequential read: read ahead ≤ the file, its downloads ≤ all bytes fetched, and the
/// `status` line says the same.
#[test]
fn readahead_counts_what_it_loaded_once() {
    let s = Setup::new();
    // The kernel's default 128 KiB reads: many readahead ranges, each overlapping the last
    // one's final chunk while it downloads.
    let m = s.mount(
        "count",
        &[OsStr::new("--kernel-readahead"), OsStr::new("0")],
    );
    let all = fs::read(m.0.join("img/app.sif")).unwrap();
    assert!(all == s.data, "sequential read returned wrong bytes");
    let list = s.chunk_list();
    let ra = numbers(&m.0, "readahead");
    let fetched = numbers(&m.0, "bytes_fetched")[0];
    let misses = numbers(&m.0, "misses")[0];
    assert!(ra[0] > 0, "no readahead for a sequential reader: {ra:?}");
    assert!(
        ra[0] <= list.chunks.len() as u64 && ra[0] <= misses,
        "{} chunks read ahead of a file of {} chunks ({misses} downloads in all)",
        ra[0],
        list.chunks.len()
    );
    assert!(
        ra[1] <= s.data.len() as u64,
        "{} bytes read ahead of a {}-byte file",
        ra[1],
        s.data.len()
    );
    let downloaded = numbers(&m.0, "prefetch_downloaded");
    assert!(
        downloaded[0] > 0 && downloaded[0] <= fetched,
        "readahead downloaded {} of {fetched} bytes fetched",
        downloaded[0]
    );
    let status = ok_stdout(depotfs(&[OsStr::new("status"), m.0.as_os_str()]));
    assert!(
        status.contains(&format!("prefetch:      {} chunks (", ra[0])),
        "{status}"
    );

    // Issue 21's stage counters (`user.depotfs.stages`: NAME CALLS NANOSECONDS BYTES) agree
    // with the other counters: one `http` and one `cache_write` per download, of the bytes
    // fetched; every byte hashed; the reader's bytes read and replied; nothing from disk.
    let text = xattr(&m.0, "user.depotfs.stages");
    let stage = |name: &str| -> [u64; 3] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no stage {name}: {text}"));
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        [v[0], v[1], v[2]]
    };
    let [calls, ns, bytes] = stage("http");
    assert!(
        calls == misses && bytes == fetched && ns > 0,
        "http {calls} {ns} {bytes}: {misses} downloads of {fetched} bytes\n{text}"
    );
    let [calls, _, bytes] = stage("cache_write");
    assert!(calls == misses && bytes == fetched, "{text}");
    assert!(stage("hash")[2] >= s.data.len() as u64, "{text}");
    assert_eq!(stage("cache_load")[0], 0, "{text}");
    for name in ["read", "reply"] {
        let [calls, ns, bytes] = stage(name);
        assert!(
            calls > 0 && ns > 0 && bytes == s.data.len() as u64,
            "{name}: {text}"
        );
    }
}

/// Issue 21: readahead loads each chunk of a sequential read once, also when the memory cache
/// cannot keep what it loaded until the reader comes (16 readers with 8 MiB windows outgrow
/// the default 64 MiB). A chunk straddling two readahead ranges was handed to both; the
/// second found it no longer in memory, loaded it again from the disk cache and counted it
/// again: more chunks "read ahead" than the file has.
#[test]
fn readahead_loads_each_chunk_once_when_memory_is_short() {
    // ~256 chunks: enough ranges and out-of-order requests to show a chunk loaded twice.
    let s = Setup::of_size(64 << 20);
    let chunks = s.chunk_list().chunks.len() as u64;
    // A memory cache of one chunk. 128 KiB kernel reads (each moves the readahead window on
    // by a sliver, so nearly every chunk straddles two ranges), then the default 1 MiB reads
    // (sent side by side, they arrive out of order, which started the run over).
    for (name, kernel_ra) in [("short128k", "0"), ("short1m", "1024")] {
        let m = s.mount(
            name,
            &[
                OsStr::new("--kernel-readahead"),
                OsStr::new(kernel_ra),
                OsStr::new("--mem-size"),
                OsStr::new("1"),
            ],
        );
        let all = fs::read(m.0.join("img/app.sif")).unwrap();
        assert!(
            all == s.data,
            "{name}: sequential read returned wrong bytes"
        );
        let ra = numbers(&m.0, "readahead");
        assert!(
            ra[0] > 0,
            "{name}: no readahead for a sequential reader: {ra:?}"
        );
        assert!(
            ra[0] <= chunks && ra[1] <= s.data.len() as u64,
            "{name}: {} chunks ({} bytes) read ahead of a file of {chunks} chunks ({} bytes)",
            ra[0],
            ra[1],
            s.data.len()
        );
    }
}

/// `mount --record` → `add --trace` → a fresh mount fetches the access list when the image
/// is opened, and the recorded reads then download nothing; `--prefetch-rate 0` turns it off.
#[test]
fn recorded_access_list_is_prefetched_on_open() {
    let s = Setup::new();
    let trace = s.dir.path().join("start.trace");
    let ranges = [
        (9 * MIB, 65536),
        (MIB, 65536),
        (5 * MIB + 4096, 8192),
        (11 * MIB, 65536),
    ];
    {
        let m = s.mount("rec", &[OsStr::new("--record"), trace.as_os_str()]);
        let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
        for &(o, n) in &ranges {
            assert_eq!(read_at(&f, o, n), &s.data[o as usize..o as usize + n]);
        }
    }
    // Unmounted: the trace is complete. The kernel may widen reads, never narrow them.
    let text = fs::read_to_string(&trace).unwrap();
    let lines: Vec<(String, u64, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: Vec<&str> = l.split('\t').collect();
            (
                v[0].to_string(),
                v[1].parse().unwrap(),
                v[2].parse().unwrap(),
            )
        })
        .collect();
    assert!(lines.iter().all(|(p, _, _)| p == "img/app.sif"), "{text}");
    for &(o, n) in &ranges {
        assert!(
            lines
                .iter()
                .any(|&(_, lo, ln)| lo <= o && o + n as u64 <= lo + ln),
            "read {o}+{n} not in the trace:\n{text}"
        );
    }

    s.add_trace(&trace);
    let list = s.chunk_list();
    assert!(!list.prefetch.is_empty());
    let listed_bytes: u64 = list
        .prefetch
        .iter()
        .map(|&i| list.chunks[i as usize].len as u64)
        .sum();

    // A fresh mount: opening the image (and reading its first byte, not in the trace)
    // starts the prefetch of the listed chunks.
    let m = s.mount("cold", &[]);
    let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
    assert_eq!(read_at(&f, 0, 1), &s.data[..1]);
    poll(Duration::from_secs(30), "access-list prefetch", || {
        numbers(&m.0, "prefetched") == [list.prefetch.len() as u64, listed_bytes]
    });
    // The listed chunks' whole pages went into the kernel's page cache of the file.
    let offsets = list.offsets();
    let whole_pages: u64 = list
        .prefetch
        .iter()
        .map(|&i| {
            let (at, len) = (offsets[i as usize], list.chunks[i as usize].len as u64);
            let end = at + len;
            // The file's last page goes in too, whole or not.
            let to = if end == s.data.len() as u64 {
                end
            } else {
                end / 4096 * 4096
            };
            to.saturating_sub(at.next_multiple_of(4096))
        })
        .sum();
    poll(Duration::from_secs(30), "the page-cache push", || {
        numbers(&m.0, "page_cache_pushed") == [whole_pages]
    });
    let misses = numbers(&m.0, "misses")[0];
    let through_daemon = numbers(&m.0, "bytes_read")[0];
    for &(o, n) in &ranges {
        assert_eq!(read_at(&f, o, n), &s.data[o as usize..o as usize + n]);
    }
    assert_eq!(
        numbers(&m.0, "misses")[0],
        misses,
        "recorded reads downloaded again"
    );
    // The kernel answered them from those pages: at most the pages a listed chunk shares
    // with the next one came to the daemon (none of the ranges starts or ends in one).
    let asked: usize = ranges.iter().map(|&(_, n)| n).sum();
    let came = numbers(&m.0, "bytes_read")[0] - through_daemon;
    assert!(
        came < asked as u64 / 2,
        "{came} of the {asked} recorded bytes were read through the daemon"
    );
    // And every byte of the file, pushed or read, is the published one.
    assert!(
        fs::read(m.0.join("img/app.sif")).unwrap() == s.data,
        "the file read through the page cache the list filled differs"
    );
    let status = ok_stdout(depotfs(&[OsStr::new("status"), m.0.as_os_str()]));
    assert!(
        status.contains(&format!("{} chunks", list.prefetch.len()))
            && status.contains("from access lists"),
        "{status}"
    );

    // Off: nothing beyond what is read (and the kernel's readahead as asked).
    let off = s.mount(
        "off",
        &[
            OsStr::new("--prefetch-rate"),
            OsStr::new("0"),
            OsStr::new("--kernel-readahead"),
            OsStr::new("512"),
        ],
    );
    assert_eq!(kernel_readahead(&off.0), 512);
    let f = fs::File::open(off.0.join("img/app.sif")).unwrap();
    assert_eq!(read_at(&f, 0, 1), &s.data[..1]);
    // Time for a prefetch that must not start to show itself.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(numbers(&off.0, "prefetched"), [0, 0]);
}

/// The access-list prefetch stays under `--prefetch-rate`: by any moment t after the open it
/// has fetched at most rate·(t + its half-second burst) plus the one chunk granted last, and
/// it finishes.
#[test]
fn access_list_prefetch_keeps_to_its_rate() {
    let s = Setup::new();
    // A hand-written trace (the format `mount --record` writes): 4 MiB from 2 MiB on.
    let trace = s.dir.path().join("t.trace");
    let body: String = (0..32)
        .map(|i| format!("img/app.sif\t{}\t131072\n", 2 * MIB + i * 131072))
        .collect();
    fs::write(&trace, body).unwrap();
    s.add_trace(&trace);
    let list = s.chunk_list();
    let total: u64 = list
        .prefetch
        .iter()
        .map(|&i| list.chunks[i as usize].len as u64)
        .sum();
    assert!(total >= 4 * MIB, "{total}");

    let rate = 1.0; // MiB/s: the ≥ 4 MiB take ≥ 3 s
    let m = s.mount("slow", &[OsStr::new("--prefetch-rate"), OsStr::new("1")]);
    let t0 = Instant::now();
    let f = fs::File::open(m.0.join("img/app.sif")).unwrap();
    let mut samples = 0;
    loop {
        let got = numbers(&m.0, "prefetched");
        let t = t0.elapsed().as_secs_f64();
        let cap = rate * (t + 0.5) * MIB as f64 + CHUNK_MAX as f64;
        assert!(
            got[1] as f64 <= cap,
            "{} bytes prefetched after {t:.2} s (cap {cap})",
            got[1]
        );
        samples += 1;
        if got[0] == list.prefetch.len() as u64 {
            assert_eq!(got[1], total);
            assert!(
                t >= (total - CHUNK_MAX as u64) as f64 / MIB as f64 / rate - 0.5,
                "done after {t:.2} s"
            );
            break;
        }
        assert!(t < 60.0, "prefetch not finished after {t:.0} s: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Seen along the way, not only at the end (the finishing time above is what proves the
    // pace; at load 11 one sample took ~1 s here, so only a few are asked for).
    assert!(samples >= 3, "{samples} samples");
    drop(f);
}

/// Abort the FUSE connection of the mount at `mp` (`/sys/fs/fuse/connections/MINOR/abort`,
/// mounting fusectl if needed), so that a hung mount cannot hang the test run too.
fn abort_fuse(mp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(mp) else { return };
    let minor = rustix::fs::minor(meta.dev());
    let conns = Path::new("/sys/fs/fuse/connections");
    if fs::read_dir(conns).map_or(true, |mut d| d.next().is_none()) {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(conns)
            .status();
    }
    let _ = fs::write(conns.join(minor.to_string()).join("abort"), "1");
}

/// The page-cache push never waits on the reads it races with: readers of the listed ranges,
/// started as the list starts downloading (8 threads, on several fresh mounts), all finish
/// with the published bytes. (Pushed from the runtime, pushes waiting on pages a read had
/// locked held both runtime threads: the reads never got their answers and even the unmount
/// hung.)
#[test]
fn access_list_pushes_and_racing_reads_all_finish() {
    const LEN: u64 = 32 * MIB;
    const PIECE: u64 = 128 << 10;
    let s = Setup::of_size(LEN as usize);
    let trace = s.dir.path().join("all.trace");
    let text: String = (0..LEN)
        .step_by(PIECE as usize)
        .map(|o| format!("img/app.sif\t{o}\t65536\n"))
        .collect();
    fs::write(&trace, text).unwrap();
    s.add_trace(&trace);
    let data = std::sync::Arc::new(s.data.clone());
    for round in 0..4 {
        let m = s.mount(&format!("race{round}"), &[]);
        let path = m.0.join("img/app.sif");
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..8u64 {
            let (path, data, tx) = (path.clone(), data.clone(), tx.clone());
            std::thread::spawn(move || {
                let f = fs::File::open(&path).unwrap();
                let mut wrong = None;
                for o in (t * PIECE..LEN).step_by(8 * PIECE as usize) {
                    if read_at(&f, o, 65536) != data[o as usize..][..65536] {
                        wrong = Some(o);
                    }
                }
                let _ = tx.send(wrong);
            });
        }
        for _ in 0..8 {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(None) => {}
                Ok(Some(o)) => panic!("round {round}: wrong bytes at {o}"),
                Err(_) => {
                    abort_fuse(&m.0);
                    panic!("round {round}: a reader of the listed ranges hung for 60 s");
                }
            }
        }
        poll(Duration::from_secs(30), "the page-cache push", || {
            numbers(&m.0, "page_cache_pushed")[0] > 0
        });
    }
}
