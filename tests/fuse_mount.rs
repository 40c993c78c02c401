//! Real FUSE mounts of published repositories: `depotfs init/add` publish a generated corpus,
//! `depotfs serve` or nginx serve it (or nothing: a local store), `depotfs mount` mounts it,
//! and every file and entry is compared with the source tree. Needs root (or fusermount3),
//! /dev/fuse, nginx, python3 (for xattrs), squashfs-tools, squashfuse and busybox-static.

mod cli_run;
mod http_suite;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_run::{BIN, Mounted, Served, http_get, ok, poll, run, try_xattr, xattr};
use http_suite::{Rng, free_port};

// ---------------------------------------------------------------------------------------
// Corpus

/// `n` bytes of `r`: words that compress well, or incompressible noise.
fn corpus_bytes(r: &mut Rng, n: usize, compressible: bool) -> Vec<u8> {
    if !compressible {
        return r.bytes(n);
    }
    let words: [&[u8]; 6] = [
        b"samtools ",
        b"bwa ",
        b"ACGT",
        b"mulled-v2 ",
        b"\x7fELF",
        b"\0\0\0\0",
    ];
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(words[(r.next_u64() % 6) as usize]);
    }
    v.truncate(n);
    v
}

/// A tree with small, empty, exactly-one-chunk-limit and multi-chunk files, a directory
/// large enough to be split into several nodes, deep nesting, symlinks and varied modes.
/// About 20 MB.
fn make_corpus(root: &Path) {
    let mut r = Rng::new(1);
    let w = |p: &Path, data: &[u8], mode: u32| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    };
    for i in 0..150 {
        let n = (r.next_u64() % 20_000) as usize;
        let data = corpus_bytes(&mut r, n, i % 2 == 0);
        w(
            &root.join(format!("small/f{i:03}")),
            &data,
            [0o644, 0o755, 0o600, 0o444][i % 4],
        );
    }
    w(&root.join("small/empty"), b"", 0o644);
    for i in 0..600 {
        w(
            &root.join(format!("wide/samtools:1.{i}--h{:06x}_0", i * 7919)),
            format!("{i}\n").as_bytes(),
            0o644,
        );
    }
    let one_mib = 1 << 20;
    w(
        &root.join("big/exactly-1MiB"),
        &corpus_bytes(&mut r, one_mib, false),
        0o644,
    );
    w(
        &root.join("big/1MiB-plus-1"),
        &corpus_bytes(&mut r, one_mib + 1, true),
        0o755,
    );
    w(
        &root.join("big/random-5M.sif"),
        &corpus_bytes(&mut r, 5 * one_mib + 12345, false),
        0o755,
    );
    w(
        &root.join("big/text-9M"),
        &corpus_bytes(&mut r, 9 * one_mib + 7, true),
        0o644,
    );
    w(&root.join("deep/a/b/c/d/e/leaf.txt"), b"deep leaf\n", 0o644);
    fs::create_dir_all(root.join("emptydir")).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    w(&root.join("private/secret"), b"s", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("small/f001", root.join("link-rel")).unwrap();
    symlink("../../big", root.join("deep/a/up")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling")).unwrap();
}

/// Every path under `root`, relative, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = rel.join(n);
            if fs::symlink_metadata(root.join(&p)).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Compare names, types, modes, sizes, mtimes, nlink, symlink targets and every byte.
/// Directory mtimes are publish times by design (Galaxy's `dir_mtime` cacher needs that), so
/// they are not compared; directory nlink is compared where the client counts it (one-node
/// directories) and must be 1 elsewhere.
fn compare_trees(src: &Path, mnt: &Path) -> usize {
    let (a, b) = (walk(src), walk(mnt));
    assert_eq!(a, b, "listings differ");
    for rel in &a {
        let (s, m) = (src.join(rel), mnt.join(rel));
        let (sm, mm) = (
            fs::symlink_metadata(&s).unwrap(),
            fs::symlink_metadata(&m).unwrap(),
        );
        assert_eq!(sm.file_type(), mm.file_type(), "{rel:?} type");
        if sm.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&s).unwrap(),
                fs::read_link(&m).unwrap(),
                "{rel:?} target"
            );
            assert_eq!(
                mm.size(),
                fs::read_link(&s).unwrap().as_os_str().len() as u64
            );
            continue;
        }
        assert_eq!(sm.mode(), mm.mode(), "{rel:?} mode");
        if sm.is_dir() {
            let entries = fs::read_dir(&s).unwrap().count();
            if entries <= 256 {
                assert_eq!(sm.nlink(), mm.nlink(), "{rel:?} nlink");
            } else {
                assert_eq!(mm.nlink(), 1, "{rel:?} nlink of a large directory");
            }
            continue;
        }
        assert_eq!(sm.size(), mm.size(), "{rel:?} size");
        assert_eq!(
            (sm.mtime(), sm.mtime_nsec()),
            (mm.mtime(), mm.mtime_nsec()),
            "{rel:?} mtime"
        );
        assert_eq!(mm.nlink(), 1);
        assert_eq!(mm.blocks(), sm.size().div_ceil(512), "{rel:?} blocks");
        assert!(
            fs::read(&s).unwrap() == fs::read(&m).unwrap(),
            "{rel:?} content differs"
        );
    }
    a.len()
}

fn files(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| fs::symlink_metadata(root.join(p)).unwrap().is_file())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Publishing, serving, mounting

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// A store with the corpus published under `corpus/`.
    fn with_corpus() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        make_corpus(&dir.path().join("src/corpus"));
        let repo = Repo { dir };
        ok(run(&[
            &"init",
            &repo.store(),
            &"--name",
            &"test.depotfs.org",
        ]));
        ok(run(&[&"add", &repo.store(), &repo.src().join("corpus")]));
        repo
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn src(&self) -> PathBuf {
        self.path().join("src")
    }
    fn key(&self) -> PathBuf {
        self.store().join("public/repo.pub")
    }
    /// The object file holding the (single-chunk) content of `rel`.
    fn object_of(&self, mounted: &Path) -> PathBuf {
        let hash = xattr(mounted, "user.depotfs.hash");
        self.store()
            .join("public/objects")
            .join(&hash[..2])
            .join(&hash[2..])
    }
}

/// Send a signal to one process (the shell's builtin `kill`, so procps is not needed).
/// Returns whether it was delivered.
fn kill(sig: &str, pid: u32) -> bool {
    Command::new("sh")
        .args(["-c", &format!("kill {sig} {pid} 2>/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx serving `store/public`, one process (`master_process off`) so a signal reaches it all.
fn nginx(store: &Path, work: &Path) -> Served {
    let port = free_port();
    let site = format!(
        "server {{ listen 127.0.0.1:{port}; root {}; location / {{ }} }}\n",
        store.join("public").display()
    );
    Served::nginx(work, port, &site)
}

/// A depotfs mount, unmounted when dropped.
struct Mount {
    mp: PathBuf,
    _unmount: Mounted,
}

impl Mount {
    fn new(source: &str, mp: &Path, extra: &[&str]) -> Mount {
        let out = Mount::try_new(source, mp, extra);
        let m = Mount {
            mp: mp.to_path_buf(),
            _unmount: Mounted(mp.to_path_buf()),
        };
        ok(out);
        m
    }
    fn try_new(source: &str, mp: &Path, extra: &[&str]) -> Output {
        fs::create_dir_all(mp).unwrap();
        Command::new(BIN)
            .arg("mount")
            .arg(source)
            .arg(mp)
            .args(extra)
            .output()
            .unwrap()
    }
    fn path(&self) -> &Path {
        &self.mp
    }
    fn stat(&self, name: &str) -> u64 {
        xattr(&self.mp, &format!("user.depotfs.{name}"))
            .parse()
            .unwrap()
    }
    fn pid(&self) -> u32 {
        self.stat("pid") as u32
    }
}

fn mounted(mp: &Path) -> bool {
    let mp = mp.canonicalize().unwrap_or(mp.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
}

fn http_args<'a>(repo: &'a Repo, cache: &'a Path) -> Vec<String> {
    vec![
        "--key".into(),
        repo.key().display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Read every file of `rel_files` from `mnt` with `n` threads (each in its own order) and
/// check it against `src`. Returns the elapsed time.
fn parallel_read(src: &Path, mnt: &Path, rel_files: &[PathBuf], n: usize) -> Duration {
    let expected: Arc<BTreeMap<PathBuf, Vec<u8>>> = Arc::new(
        rel_files
            .iter()
            .map(|p| (p.clone(), fs::read(src.join(p)).unwrap()))
            .collect(),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let expected = expected.clone();
            let mnt = mnt.to_path_buf();
            std::thread::spawn(move || {
                let keys: Vec<&PathBuf> = expected.keys().collect();
                for i in 0..keys.len() {
                    let k = keys[(i * 7 + t * 13) % keys.len()];
                    let mut f = fs::File::open(mnt.join(k)).unwrap();
                    let mut got = Vec::new();
                    // Small reads, as a program parsing a file would do.
                    let mut buf = vec![0u8; 64 * 1024 + t * 4096];
                    loop {
                        let r = f.read(&mut buf).unwrap();
                        if r == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..r]);
                    }
                    assert!(got == expected[k], "{k:?}: wrong bytes in reader {t}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// Tests

/// Served by nginx: lazy at mount time, every byte and entry right, xattrs, EROFS, statfs,
/// status.
#[test]
fn fuse_nginx_mount_matches_source_lazily() {
    let repo = Repo::with_corpus();
    let server = nginx(&repo.store(), &repo.path().join("nginx"));
    let cache = repo.path().join("cache");
    let metrics_port = free_port();
    let mut args = http_args(&repo, &cache);
    args.extend([
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let m = Mount::new(&server.url(), &repo.path().join("mnt"), &strs(&args));

    // Only the manifest and the root directory have been fetched.
    assert_eq!(
        m.stat("misses"),
        1,
        "mount fetched more than the root directory"
    );
    // stat walks two directories (one node each), open fetches the chunk list, nothing more.
    let f = m.path().join("corpus/big/random-5M.sif");
    assert_eq!(fs::metadata(&f).unwrap().len(), 5 * (1 << 20) + 12345);
    assert_eq!(
        m.stat("misses"),
        3,
        "stat fetched more than the two directories"
    );
    let opened = fs::File::open(&f).unwrap();
    assert_eq!(m.stat("misses"), 4, "open fetched more than the chunk list");
    drop(opened);

    // A 4 KiB read fetches the chunks it touches, no more (the kernel may ask for up to
    // 128 KiB: two chunks at most); a sequential reader gets the next chunks read ahead.
    let cached = |f: &Path| -> u64 { xattr(f, "user.depotfs.cached_bytes").parse().unwrap() };
    let mut head = vec![0u8; 4096];
    let mut reader = fs::File::open(&f).unwrap();
    reader.read_exact(&mut head).unwrap();
    // The touched chunks reach the cache; then a readahead that must not start has 300 ms
    // to show itself before the upper bound is checked.
    poll(
        Duration::from_secs(10),
        "the chunks of a 4 KiB read cached",
        || cached(&f) > 0,
    );
    std::thread::sleep(Duration::from_millis(300));
    let after_4k = cached(&f);
    assert!(
        after_4k > 0 && after_4k <= 2 << 20,
        "{after_4k} bytes cached after reading 4 KiB"
    );
    let mut more = vec![0u8; 2 << 20];
    reader.read_exact(&mut more).unwrap();
    let start = Instant::now();
    let c = loop {
        let c = cached(&f);
        if c >= 4 << 20 || start.elapsed() > Duration::from_secs(5) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        c >= 4 << 20,
        "only {c} bytes cached after reading 2 MiB in sequence"
    );
    let n = compare_trees(&repo.src(), m.path());
    assert!(n > 750, "{n} entries");

    // Extended attributes.
    let f = m.path().join("corpus/big/random-5M.sif");
    assert_eq!(xattr(m.path(), "user.depotfs.revision"), "1");
    assert_eq!(xattr(&f, "user.depotfs.revision"), "1");
    assert_eq!(xattr(&f, "user.depotfs.source"), server.url());
    let manifest = fs::read_to_string(repo.store().join("public/manifest")).unwrap();
    assert!(manifest.contains(&format!("root {}", xattr(&f, "user.depotfs.root"))));
    assert_eq!(xattr(&f, "user.depotfs.hash").len(), 64);
    assert_eq!(
        xattr(&f, "user.depotfs.cached_bytes"),
        (5 * (1 << 20) + 12345).to_string()
    );
    assert!(try_xattr(&m.path().join("corpus/small"), "user.depotfs.hash").is_err());
    // An unknown user attribute is ENODATA; namespaces the file system does not have (what
    // `ls -l` asks of every file) are EOPNOTSUPP, so ls stops asking.
    let err = try_xattr(&f, "user.other").unwrap_err();
    assert!(err.contains("Errno 61"), "user.other: {err}");
    for ns in ["security.selinux", "system.posix_acl_access"] {
        let err = try_xattr(&f, ns).unwrap_err();
        assert!(err.contains("Errno 95"), "{ns}: {err}");
    }
    let list = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(' '.join(sorted(os.listxattr(sys.argv[1]))))",
        ])
        .arg(&f)
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    for a in ["revision", "root", "source", "hash", "cached_bytes"] {
        assert!(
            list.contains(&format!("user.depotfs.{a}")),
            "listxattr: {list}"
        );
    }

    // Read-only: every write answers EROFS.
    for attempt in [
        fs::create_dir(m.path().join("new")),
        fs::write(m.path().join("corpus/new-file"), b"x").map(|_| ()),
        fs::write(m.path().join("corpus/small/f000"), b"x").map(|_| ()),
        fs::remove_file(m.path().join("corpus/small/f000")),
        fs::rename(
            m.path().join("corpus/small/f000"),
            m.path().join("corpus/small/g"),
        ),
        fs::set_permissions(
            m.path().join("corpus/small/f000"),
            fs::Permissions::from_mode(0o777),
        ),
        symlink("x", m.path().join("corpus/l2")),
    ] {
        assert_eq!(
            attempt.unwrap_err().raw_os_error(),
            Some(libc_erofs()),
            "write allowed"
        );
    }

    // statfs answers.
    let st = Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(m.path())
        .output()
        .unwrap();
    assert!(st.status.success());

    // status prints what it promises.
    let out = String::from_utf8(ok(run(&[&"status", &m.path()])).stdout).unwrap();
    for k in [
        "revision:      1",
        "source:",
        "published:",
        "cache:",
        "hit rate:",
        "fetched:",
        "read:",
    ] {
        assert!(out.contains(k), "status lacks {k}:\n{out}");
    }
    assert!(m.stat("bytes_fetched") > 5 << 20);
    // Every file was read in full above: bytes returned to readers are counted too.
    assert!(m.stat("bytes_read") > 5 << 20);

    // The same counters, for Prometheus.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let misses = m.stat("misses");
    for line in [
        "depotfs_revision 1".to_string(),
        format!("depotfs_cache_misses_total {misses}"),
        "# TYPE depotfs_fetched_bytes_total counter".to_string(),
        format!(
            "depotfs_current_server_info{{server=\"{}\",proxy=\"DIRECT\"}} 1",
            server.url()
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(http_get(metrics_port, "/other").starts_with("HTTP/1.1 404"));
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}

/// A local STORE, no server at all; the key defaults to the store's own.
#[test]
fn fuse_local_store_without_server() {
    let repo = Repo::with_corpus();
    let m = Mount::new(
        repo.store().to_str().unwrap(),
        &repo.path().join("mnt"),
        &["--cache-dir", repo.path().join("cache").to_str().unwrap()],
    );
    compare_trees(&repo.src(), m.path());
    assert_eq!(
        xattr(m.path(), "user.depotfs.source"),
        repo.store().join("public").display().to_string()
    );
    // `depotfs umount` unmounts and returns once the mount process has exited.
    let pid = m.pid();
    ok(run(&[&"umount", &m.path()]));
    assert!(!mounted(m.path()));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "mount process still running"
    );
    std::mem::forget(m);
}

/// Served by `depotfs serve`: 16 readers on a cold cache, then on a warm one after a remount
/// (nothing downloaded the second time). Prints the timings.
#[test]
fn fuse_serve_16_readers_cold_and_warm() {
    let repo = Repo::with_corpus();
    let server = Served::start(&repo.store());
    let cache = repo.path().join("cache");
    let args = http_args(&repo, &cache);
    let src = repo.src();
    let rel = files(&src);
    let mp = repo.path().join("mnt");
    {
        let m = Mount::new(&server.url(), &mp, &strs(&args));
        compare_trees(&src, m.path());
    }
    // compare_trees warmed the cache through one mount; start again cold.
    fs::remove_dir_all(&cache).unwrap();
    let cold;
    {
        let m = Mount::new(&server.url(), &mp, &strs(&args));
        cold = parallel_read(&src, &mp, &rel, 16);
        let misses = m.stat("misses");
        let objects = fs::read_dir(repo.store().join("public/objects"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count() as u64)
            .sum::<u64>();
        // 16 readers of the same files: still one download per object.
        assert!(
            misses <= objects,
            "{misses} downloads for {objects} objects"
        );
    }
    let m = Mount::new(&server.url(), &mp, &strs(&args));
    let warm = parallel_read(&src, &mp, &rel, 16);
    assert_eq!(m.stat("misses"), 0, "a warm cache downloaded objects");
    // A second mount sharing the cache directory downloads nothing either, and inode numbers
    // are the same in both (they derive from the path).
    let mp2 = repo.path().join("mnt2");
    let m2 = Mount::new(&server.url(), &mp2, &strs(&args));
    parallel_read(&src, &mp2, &rel, 4);
    assert_eq!(m2.stat("misses"), 0);
    for p in rel.iter().step_by(17) {
        let (a, b) = (
            fs::metadata(mp.join(p)).unwrap(),
            fs::metadata(mp2.join(p)).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "{p:?}");
    }
    let warm_again = parallel_read(&src, &mp, &rel, 16);
    eprintln!(
        "16 readers x {} files: cold {cold:?}, warm cache after remount {warm:?}, page cache {warm_again:?}",
        rel.len()
    );
}

/// A cache limit far below the data: eviction under 16 concurrent readers, all bytes right,
/// the cache stays within its limit.
#[test]
fn fuse_cache_limit_smaller_than_data() {
    let repo = Repo::with_corpus();
    let server = nginx(&repo.store(), &repo.path().join("nginx"));
    let cache = repo.path().join("cache");
    let mut args = http_args(&repo, &cache);
    args.extend([
        "--cache-size".into(),
        "6M".into(),
        "--mem-size".into(),
        "4M".into(),
    ]);
    let m = Mount::new(&server.url(), &repo.path().join("mnt"), &strs(&args));
    let src = repo.src();
    let big: Vec<PathBuf> = files(&src)
        .into_iter()
        .filter(|p| p.starts_with("corpus/big"))
        .collect();
    parallel_read(&src, m.path(), &big, 16);
    let used = m.stat("cache_used");
    assert!(used <= 6 << 20, "cache uses {used} bytes");
    let on_disk: u64 = walk(&cache.join("objects"))
        .iter()
        .map(|p| fs::metadata(cache.join("objects").join(p)).unwrap())
        .filter(|md| md.is_file())
        .map(|md| md.len())
        .sum();
    assert!(on_disk <= 6 << 20, "{on_disk} bytes in the cache directory");
    // More came through than the cache can hold while it stayed within its limit: it evicted.
    assert!(m.stat("bytes_fetched") > 6 << 20);
}

/// kill -9 the mount; remount on the same cache; a torn cache file is refetched; with the
/// server stopped, the remount works from the cache (last verified manifest) and cached
/// files stay readable while uncached ones fail with EIO.
#[test]
fn fuse_kill9_remount_and_offline() {
    let repo = Repo::with_corpus();
    let mut server = nginx(&repo.store(), &repo.path().join("nginx"));
    let cache = repo.path().join("cache");
    let args = http_args(&repo, &cache);
    let mp = repo.path().join("mnt");
    let src = repo.src();
    let small: Vec<PathBuf> = files(&src)
        .into_iter()
        .filter(|p| p.starts_with("corpus/small"))
        .collect();
    let m = Mount::new(&server.url(), &mp, &strs(&args));
    parallel_read(&src, &mp, &small, 2);
    let torn = repo.object_of(&mp.join("corpus/small/f010"));
    // The cache is written after the reads are served: what kill -9 tests is a crash with
    // the cache complete (what a crash loses from the writer's queue is only refetched).
    poll(Duration::from_secs(10), "the cache's writer done", || {
        m.stat("cache_pending") == 0
    });
    let pid = m.pid();
    assert!(kill("-KILL", pid));
    poll(Duration::from_secs(10), "dead mount still answers", || {
        fs::metadata(mp.join("corpus")).is_err()
    });
    ok(run(&[&"umount", &"--lazy", &mp]));
    std::mem::forget(m);

    // A torn cache file (as a crash mid-write could leave if renames were not atomic).
    let cached = cache.join("objects").join(
        torn.strip_prefix(repo.store().join("public/objects"))
            .unwrap(),
    );
    let bytes = fs::read(&cached).unwrap();
    fs::write(&cached, &bytes[..bytes.len() / 2]).unwrap();
    {
        let m = Mount::new(&server.url(), &mp, &strs(&args));
        compare_trees(&src.join("corpus/small"), &mp.join("corpus/small"));
        assert_eq!(
            m.stat("misses"),
            1,
            "only the torn object should be downloaded again"
        );
    }

    server.stop();
    let m = Mount::new(&server.url(), &mp, &strs(&args));
    compare_trees(&src.join("corpus/small"), &mp.join("corpus/small"));
    assert_eq!(m.stat("bytes_fetched"), 0);
    let err = fs::read(mp.join("corpus/big/text-9M")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "uncached file offline: {err}");
}

/// A flipped byte in one object on the server: that file fails with EIO (after one refetch),
/// every other file is fine. A rolled-back manifest and a wrong key are refused at mount.
#[test]
fn fuse_corrupt_object_eio_and_manifest_checks() {
    let repo = Repo::with_corpus();
    let server = nginx(&repo.store(), &repo.path().join("nginx"));
    let cache = repo.path().join("cache");
    let args = http_args(&repo, &cache);
    let mp = repo.path().join("mnt");
    let victim = "corpus/deep/a/b/c/d/e/leaf.txt";
    // Find the victim's object through a first mount on a throwaway cache.
    let obj = {
        let other = repo.path().join("cache0");
        let m = Mount::new(&server.url(), &mp, &strs(&http_args(&repo, &other)));
        repo.object_of(&m.path().join(victim))
    };
    let mut bytes = fs::read(&obj).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    fs::write(&obj, &bytes).unwrap();
    {
        let m = Mount::new(&server.url(), &mp, &strs(&args));
        let err = fs::read(mp.join(victim)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "{err}");
        assert!(m.stat("corrupt") >= 2, "fetched once more before giving up");
        for p in files(&repo.src()) {
            if p != Path::new(victim) {
                assert!(fs::read(repo.src().join(&p)).unwrap() == fs::read(mp.join(&p)).unwrap());
            }
        }
        assert!(
            !cache
                .join("objects")
                .join(
                    obj.strip_prefix(repo.store().join("public/objects"))
                        .unwrap()
                )
                .exists()
        );
    }

    // Rollback: publish revision 2, mount it, then serve revision 1's manifest again.
    let old_manifest = fs::read(repo.store().join("public/manifest")).unwrap();
    fs::write(repo.path().join("extra"), b"x").unwrap();
    ok(run(&[&"add", &repo.store(), &repo.path().join("extra")]));
    drop(Mount::new(&server.url(), &mp, &strs(&args)));
    fs::write(repo.store().join("public/manifest"), &old_manifest).unwrap();
    let out = Mount::try_new(&server.url(), &mp, &strs(&args));
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("rollback"), "{why}");
    assert!(!mounted(&mp));

    // Another repository's key.
    let other = repo.path().join("other");
    ok(run(&[&"init", &other, &"--name", &"other.repo"]));
    let out = Mount::try_new(
        &server.url(),
        &mp,
        &[
            "--key",
            other.join("public/repo.pub").to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{out:?}"
    );
    // Over HTTP a key is required.
    let out = Mount::try_new(
        &server.url(),
        &mp,
        &["--cache-dir", cache.to_str().unwrap()],
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--key"));
}

/// A server that stops answering turns into EIO after the timeout, not a hung process.
#[test]
fn fuse_unresponsive_server_times_out() {
    let repo = Repo::with_corpus();
    let server = nginx(&repo.store(), &repo.path().join("nginx"));
    let mut args = http_args(&repo, &repo.path().join("cache"));
    args.extend(["--timeout".into(), "3".into()]);
    let mp = repo.path().join("mnt");
    let src = repo.src();
    let small: Vec<PathBuf> = files(&src)
        .into_iter()
        .filter(|p| p.starts_with("corpus/small"))
        .collect();
    // Put the small files into the disk cache, then remount: they are in depotfs's cache but
    // not in the kernel's page cache, so reading them goes through FUSE.
    {
        let _m = Mount::new(&server.url(), &mp, &strs(&args));
        parallel_read(&src, &mp, &small, 1);
    }
    let m = Mount::new(&server.url(), &mp, &strs(&args));
    server.signal("STOP");
    let p = m.path().join("corpus/big/random-5M.sif");
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || tx.send(fs::read(p).map(|_| ()).map_err(|e| e.raw_os_error())));
    poll(
        Duration::from_secs(10),
        "the read's request waiting at the stopped server",
        || http_suite::unread_at(server.port),
    );
    // While that read waits for the stalled server, cached files are served at once.
    let cached_took = parallel_read(&src, &mp, &small, 4);
    assert!(rx.try_recv().is_err(), "the stalled read finished early");
    let r = rx.recv_timeout(Duration::from_secs(20)).expect("read hung");
    let took = start.elapsed();
    server.signal("CONT");
    assert_eq!(r, Err(Some(5)));
    assert!(
        cached_took < Duration::from_millis(2500),
        "cached reads waited: {cached_took:?}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "{took:?}"
    );
    eprintln!(
        "unresponsive server: EIO after {took:?} (timeout 3 s); meanwhile {} cached files read in {cached_took:?}",
        small.len()
    );
    // Once the server answers again, the same file reads fine.
    assert!(
        fs::read(m.path().join("corpus/big/random-5M.sif")).unwrap()
            == fs::read(repo.src().join("corpus/big/random-5M.sif")).unwrap()
    );
}

/// `--foreground` mount; SIGTERM unmounts cleanly and the process exits 0.
#[test]
fn fuse_sigterm_and_sigint_unmount() {
    let repo = Repo::with_corpus();
    for sig in ["-TERM", "-INT"] {
        let mp = repo.path().join(format!("mnt{sig}"));
        fs::create_dir_all(&mp).unwrap();
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(repo.store())
            .arg(&mp)
            .args(["--foreground", "--cache-dir"])
            .arg(repo.path().join("cache"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let guard = Mount {
            mp: mp.clone(),
            _unmount: Mounted(mp.clone()),
        };
        let start = Instant::now();
        while try_xattr(&mp, "user.depotfs.revision").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "foreground mount never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            fs::read(mp.join("corpus/deep/a/b/c/d/e/leaf.txt")).unwrap(),
            b"deep leaf\n"
        );
        assert!(kill(sig, child.id()));
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mount did not exit on {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{sig}: {status}");
        assert!(!mounted(&mp), "{sig}: still mounted");
        std::mem::forget(guard);
    }
}

/// Run a container: a squashfs image with busybox-static, published into `all/`; squashfuse
/// mounts it from the depotfs mount and chroot runs a command inside.
#[test]
fn fuse_run_container_from_squashfs_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static must be installed");
    symlink("busybox", root.join("bin/sh")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/motd"), "inside the image\n").unwrap();
    let img = dir.path().join("busybox:1.36--h0_0");
    let st = Command::new("mksquashfs")
        .arg(&root)
        .arg(&img)
        .args(["-noappend", "-quiet", "-comp", "gzip"])
        .stdout(Stdio::null())
        .status()
        .expect("mksquashfs (squashfs-tools)");
    assert!(st.success());
    let store = dir.path().join("store");
    ok(run(&[&"init", &store, &"--name", &"containers.test"]));
    ok(run(&[&"add", &store, &"--to", &"all/", &img]));
    let m = Mount::new(
        store.to_str().unwrap(),
        &dir.path().join("mnt"),
        &["--cache-dir", dir.path().join("cache").to_str().unwrap()],
    );
    let sq = dir.path().join("sq");
    fs::create_dir_all(&sq).unwrap();
    let st = Command::new("squashfuse")
        .arg(m.path().join("all/busybox:1.36--h0_0"))
        .arg(&sq)
        .status();
    assert!(st.expect("squashfuse").success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        }
    }
    let _sq = Unmount(sq.clone());
    let out = Command::new("chroot")
        .arg(&sq)
        .args(["/bin/sh", "-c", "busybox cat /etc/motd; echo $((6 * 7))"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inside the image\n42\n"
    );
}

/// `--allow-other` lets other users in, with the published permissions enforced by the
/// kernel (`default_permissions`); without it they are kept out.
#[test]
fn fuse_allow_other_and_permissions() {
    let repo = Repo::with_corpus();
    fs::set_permissions(repo.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = repo.path().join("cache");
    let store = repo.store();
    let open_mp = repo.path().join("open");
    let closed_mp = repo.path().join("closed");
    let _open = Mount::new(
        store.to_str().unwrap(),
        &open_mp,
        &["--allow-other", "--cache-dir", cache.to_str().unwrap()],
    );
    let _closed = Mount::new(
        store.to_str().unwrap(),
        &closed_mp,
        &["--cache-dir", cache.to_str().unwrap()],
    );
    let as_nobody = |args: &[&Path]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .args(args)
            .output()
            .expect("setpriv (util-linux)")
    };
    let f = Path::new("corpus/small/f000"); // mode 0644
    let out = as_nobody(&[&open_mp.join(f)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, fs::read(repo.src().join(f)).unwrap());
    assert!(
        !as_nobody(&[&open_mp.join("corpus/private/secret")])
            .status
            .success()
    );
    assert!(
        !as_nobody(&[&open_mp.join("corpus/small/f002")])
            .status
            .success()
    ); // 0600
    assert!(!as_nobody(&[&closed_mp.join(f)]).status.success());
}

/// Two servers: the first one dies, reads continue from the second, which becomes current.
#[test]
fn fuse_failover_between_servers() {
    let repo = Repo::with_corpus();
    let mut first = nginx(&repo.store(), &repo.path().join("nginx"));
    let second = Served::start(&repo.store());
    let cache = repo.path().join("cache");
    let mut args = http_args(&repo, &cache);
    args.extend(["--timeout".into(), "3".into()]);
    let both = format!("{};{}", first.url(), second.url());
    let m = Mount::new(&both, &repo.path().join("mnt"), &strs(&args));
    let src = repo.src().join("corpus");
    compare_trees(&src.join("small"), &m.path().join("corpus/small"));
    assert_eq!(xattr(m.path(), "user.depotfs.host"), first.url());
    first.stop();
    compare_trees(&src.join("big"), &m.path().join("corpus/big"));
    assert_eq!(xattr(m.path(), "user.depotfs.host"), second.url());
    assert_eq!(xattr(m.path(), "user.depotfs.source"), both);
}

/// A new revision is published while mounted: after the manifest TTL the mount serves it
/// (changed, added and removed files), while a file opened before keeps its old content.
#[test]
fn fuse_switches_to_new_revision_open_files_keep_old() {
    let repo = Repo::with_corpus();
    let server = nginx(&repo.store(), &repo.path().join("nginx"));
    let mut args = http_args(&repo, &repo.path().join("cache"));
    args.extend(["--ttl".into(), "1".into()]);
    let m = Mount::new(&server.url(), &repo.path().join("mnt"), &strs(&args));
    let src = repo.src();
    let (held, changed) = ("corpus/small/f010", "corpus/small/f011");
    let old_held = fs::read(src.join(held)).unwrap();
    let mut handle = fs::File::open(m.path().join(held)).unwrap();
    assert_eq!(
        fs::read(m.path().join(changed)).unwrap(),
        fs::read(src.join(changed)).unwrap()
    );
    let old_ino = fs::metadata(m.path().join("corpus/small")).unwrap().ino();

    fs::write(src.join(held), b"held file, new content\n").unwrap();
    fs::write(src.join(changed), b"changed\n").unwrap();
    fs::write(src.join("corpus/small/added"), b"added\n").unwrap();
    fs::remove_file(src.join("corpus/small/f012")).unwrap();
    // Replace the tree in one new revision (rm stages, add publishes).
    ok(run(&[&"rm", &repo.store(), &"corpus", &"--no-publish"]));
    ok(run(&[&"add", &repo.store(), &src.join("corpus")]));
    let start = Instant::now();
    while xattr(m.path(), "user.depotfs.revision") != "2" {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "new revision not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // By path first (the kernel's cached entries must have been dropped), then everything.
    assert!(
        fs::read(m.path().join(changed)).unwrap() == b"changed\n",
        "stale after switch"
    );
    assert_eq!(
        fs::read(m.path().join("corpus/small/added")).unwrap(),
        b"added\n"
    );
    assert!(fs::metadata(m.path().join("corpus/small/f012")).is_err());
    compare_trees(&src, m.path());
    assert_eq!(
        fs::metadata(m.path().join("corpus/small")).unwrap().ino(),
        old_ino
    );
    let mut got = Vec::new();
    handle.read_to_end(&mut got).unwrap();
    assert!(got == old_held, "an open file changed under its reader");
}
