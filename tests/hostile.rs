//! A compromised mirror, with real parts: a real store published by the `depotfs` binary,
//! served by the hostile server of `tests/hostile_server/` (bodies too long, short or endless,
//! drips, resets, error statuses per path, crafted metadata that hashes right and is signed
//! with the store's own key), and real FUSE mounts. Each test is one failure class of
//! issue 16 and what the client promises for it: EIO or a refusal, never a panic, never
//! wrong bytes, never unbounded memory or time, and the mount stays up. Needs root and
//! /dev/fuse (and `mount -t tmpfs` for the full-cache case).

mod cli_run;
mod hostile_server;
mod http_suite;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_run::{ok, poll, run};
use depotfs_catalog::dir::{self, ChildRef, DirNode, NODE_MAX_BYTES};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{
    ChunkList, Entry, EntryKind, FileContent, Manifest, ObjectId, PublicKey, SecretKey,
};
use hostile_server::{Answer, Hostile};
use http_suite::random_bytes;

const EIO: i32 = 5;

/// A store published by `depotfs add` (`d/small` 100 KB, `d/big` 3 MB in chunks, `d/f00`…
/// `d/f19` 30 KB each), its key, and a hostile server in front of its `public/`.
struct Repo {
    dir: tempfile::TempDir,
    server: Hostile,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/d");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("small"), random_bytes(100_000, 1)).unwrap();
        fs::write(src.join("big"), random_bytes(3 << 20, 2)).unwrap();
        for i in 0..20 {
            fs::write(src.join(format!("f{i:02}")), random_bytes(30_000, 10 + i)).unwrap();
        }
        let store = dir.path().join("store");
        ok(run(&[&"init", &store, &"--name", &"hostile.depotfs.org"]));
        ok(run(&[&"add", &store, &src]));
        let server = Hostile::start(&store.join("public"));
        Repo { dir, server }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn public(&self) -> PathBuf {
        self.path().join("store/public")
    }
    fn src(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path().join("src/d").join(rel)).unwrap()
    }
    fn key(&self) -> PublicKey {
        PublicKey::from_text(&fs::read_to_string(self.public().join("repo.pub")).unwrap()).unwrap()
    }
    fn secret(&self) -> SecretKey {
        SecretKey::from_text(&fs::read_to_string(self.path().join("store/repo.key")).unwrap())
            .unwrap()
    }
    /// The manifest the store publishes.
    fn manifest(&self) -> Manifest {
        let bytes = fs::read(self.public().join("manifest")).unwrap();
        Manifest::parse_verified(&bytes, &self.key(), None).unwrap()
    }
    /// A directory node of the real store.
    fn node(&self, id: ObjectId) -> DirNode {
        let bytes = fs::read(self.public().join(id.store_path())).unwrap();
        let v = object::decode(id, ObjectKind::DirNode, &bytes, NODE_MAX_BYTES).unwrap();
        DirNode::from_verified(&v).unwrap()
    }
    /// The entries of the real store's `d/` (one leaf: it has 22 entries).
    fn d_entries(&self) -> Vec<Entry> {
        let DirNode::Leaf(root) = self.node(self.manifest().root) else {
            panic!("root is one leaf")
        };
        let EntryKind::Dir { tree, .. } = root[0].kind else {
            panic!("d is a directory")
        };
        let DirNode::Leaf(es) = self.node(tree) else {
            panic!("d is one leaf")
        };
        es
    }
    fn entry(&self, name: &str) -> Entry {
        self.d_entries()
            .into_iter()
            .find(|e| e.name == name)
            .unwrap()
    }
    /// Serve `object` (encoded) at its path.
    fn put(&self, enc: object::Encoded) -> ObjectId {
        self.server.put(&enc.id.store_path(), enc.bytes);
        enc.id
    }
    /// Build a directory of `entries` (sorted here), serve its nodes; its entry `name`.
    fn dir(&self, name: &str, mut entries: Vec<Entry>) -> Entry {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let n = entries.len() as u64;
        let built = dir::build(entries, 3, &mut |enc| {
            self.put(enc);
            Ok(())
        })
        .unwrap();
        assert_eq!(built.entries, n);
        Entry {
            name: name.into(),
            mode: 0o755,
            mtime_ns: 1,
            kind: EntryKind::Dir {
                tree: built.tree,
                entries: n,
            },
        }
    }
    /// Serve a signed manifest whose root holds `root` (revision: the store's + `ahead`).
    fn publish(&self, root: Vec<Entry>, ahead: u64) {
        let top = self.dir("", root);
        let EntryKind::Dir { tree, entries } = top.kind else {
            unreachable!()
        };
        let mut m = self.manifest();
        m.revision += ahead;
        m.root = tree;
        m.root_entries = entries;
        self.server
            .put("manifest", m.sign(&self.secret()).into_bytes());
    }
    /// `depotfs mount URL MP --key … --cache-dir CACHE EXTRA…` with a metrics port.
    fn mount(&self, name: &str, cache: &str, extra: &[&str]) -> Mount {
        let cache = self.path().join(cache);
        let key = self.public().join("repo.pub");
        let mut after = vec![
            OsStr::new("--key"),
            key.as_os_str(),
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
        ];
        after.extend(extra.iter().map(OsStr::new));
        let m = cli_run::Mount::start(&[self.server.url()], &self.path().join(name), &after);
        Mount {
            log: m.log_file(&cache),
            m,
        }
    }
}

/// A mount of a [`Repo`], unmounted when dropped.
struct Mount {
    log: PathBuf,
    m: cli_run::Mount,
}

impl Mount {
    fn mp(&self) -> &Path {
        &self.m.mp
    }
    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        fs::read(self.mp().join(rel))
    }
    fn eio(&self, rel: &str) {
        let r = self.read(rel);
        assert_eq!(
            r.as_ref().map_err(|e| e.raw_os_error()).err(),
            Some(Some(EIO)),
            "{rel}: {:?}",
            r.map(|b| b.len())
        );
    }
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn xattr(&self, name: &str) -> String {
        self.m.xattr(name)
    }
    fn status(&self) -> String {
        self.m.status()
    }
    fn metric(&self, series: &str) -> f64 {
        let text = cli_run::http_get(self.m.metrics, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }
    /// `VmRSS` or `VmHWM` of the mount process, in MB.
    fn mem_mb(&self, field: &str) -> u64 {
        let pid = self.xattr("pid");
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap();
        kb / 1024
    }
    /// The mount is alive and serves right bytes, and nothing panicked.
    fn healthy(&self, repo: &Repo) {
        assert_eq!(self.read("d/f19").unwrap(), repo.src("f19"));
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }
}

fn file(name: &str, size: u64, content: FileContent) -> Entry {
    Entry {
        name: name.into(),
        mode: 0o644,
        mtime_ns: 1,
        kind: EntryKind::File { size, content },
    }
}

/// Item 2: a directory entry or chunk list whose length disagrees with the chunk's real
/// length is EIO whether the chunk is in memory, in the disk cache or downloaded: never a
/// panic, never bytes.
#[test]
fn hostile_length_lies_are_eio_from_memory_disk_and_network() {
    let repo = Repo::new();
    let small = repo.entry("small");
    let EntryKind::File {
        content: FileContent::Single(sid),
        ..
    } = small.kind
    else {
        panic!("small is one object")
    };
    let big = repo.entry("big");
    let EntryKind::File {
        content: FileContent::Chunked(lid),
        ..
    } = big.kind
    else {
        panic!("big is chunked")
    };
    let bytes = fs::read(repo.public().join(lid.store_path())).unwrap();
    let v = object::decode(lid, ObjectKind::ChunkList, &bytes, 1 << 26).unwrap();
    let list = ChunkList::from_verified(&v).unwrap();
    // The first chunk said 1000 bytes longer, the second 1000 shorter: same total.
    let mut lie = list.clone();
    lie.chunks[0].len += 1000;
    lie.chunks[1].len -= 1000;
    let lie_id = repo.put(object::encode(ObjectKind::ChunkList, &lie.to_bytes(), 3));
    let mut d = repo.d_entries();
    d.push(file("short", 50_000, FileContent::Single(sid)));
    d.push(file("long", 150_000, FileContent::Single(sid)));
    d.push(file("chunks", 3 << 20, FileContent::Chunked(lie_id)));
    let root = vec![repo.dir("d", d)];
    repo.publish(root, 1);
    let lies = ["d/short", "d/long", "d/chunks"];
    {
        // Downloaded: nothing is in memory or on disk yet.
        let m = repo.mount("mnt-cold", "cache", &[]);
        for l in lies {
            m.eio(l);
        }
        m.healthy(&repo);
    }
    {
        // In memory: the honest files first, then the lies (same chunks).
        let m = repo.mount("mnt-warm", "cache", &[]);
        assert_eq!(m.read("d/small").unwrap(), repo.src("small"));
        assert_eq!(m.read("d/big").unwrap(), repo.src("big"));
        for l in lies {
            m.eio(l);
        }
        m.healthy(&repo);
    }
    // From the disk cache: a new mount (empty memory) over the same cache directory.
    let m = repo.mount("mnt-disk", "cache", &[]);
    for l in lies {
        m.eio(l);
    }
    m.healthy(&repo);
    assert_eq!(m.read("d/small").unwrap(), repo.src("small"));
}

/// Item 4: an endless body for an object, one padded far past its bound, and an endless
/// manifest are cut once past what they can legitimately be (the client does not collect
/// them first); truncated bodies and resets are plain failures. EIO, the mount stays up.
#[test]
fn hostile_bodies_are_cut_at_their_bound() {
    let repo = Repo::new();
    let m = repo.mount("mnt", "cache", &["--timeout", "20", "--retries", "0"]);
    let hash = |rel: &str| m.xattr_of(rel);
    let obj = |rel: &str| {
        let h = hash(rel);
        format!("objects/{}/{}", &h[..2], &h[2..])
    };
    const BIG: u64 = 512 << 20;
    repo.server.rule(&obj("d/f00"), Answer::Endless(BIG));
    m.eio("d/f00");
    repo.server.rule(&obj("d/f01"), Answer::Pad(BIG as usize));
    m.eio("d/f01");
    let sent = repo
        .server
        .sent_garbage
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 64 << 20,
        "the client took {} MB of garbage",
        sent >> 20
    );
    assert!(m.mem_mb("VmHWM") < 300, "peak RSS {} MB", m.mem_mb("VmHWM"));
    repo.server.rule(&obj("d/f02"), Answer::Truncate(1000));
    m.eio("d/f02");
    repo.server.rule(&obj("d/f03"), Answer::Reset);
    m.eio("d/f03");
    // The manifest: refused at the check, the mount stays on its revision.
    repo.server.rule("manifest", Answer::Endless(BIG));
    let out = run(&[&"remount", &m.mp()]);
    assert!(!out.status.success());
    let sent2 = repo
        .server
        .sent_garbage
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent2 - sent < 64 << 20,
        "manifest: {} MB taken",
        (sent2 - sent) >> 20
    );
    assert!(m.mem_mb("VmHWM") < 300, "peak RSS {} MB", m.mem_mb("VmHWM"));
    assert_eq!(m.xattr("revision"), "1");
    repo.server.clear_rules();
    for f in ["f00", "f01", "f02", "f03", "f04"] {
        // A failure is remembered for a moment (the kernel's retry of a failed read).
        poll(Duration::from_secs(15), f, || {
            m.read(&format!("d/{f}")).is_ok_and(|b| b == repo.src(f))
        });
    }
    m.healthy(&repo);
}

impl Mount {
    fn xattr_of(&self, rel: &str) -> String {
        cli_run::xattr(&self.mp().join(rel), "user.depotfs.hash")
    }
}

/// Already handled, kept so: a zstd bomb (a frame that inflates far past the length its
/// header claims) is refused without inflating it; a replayed older manifest is refused and
/// the mount stays on its revision.
#[test]
fn hostile_zstd_bomb_and_replayed_manifest_are_refused() {
    let repo = Repo::new();
    // A header that claims 1000 bytes, then a frame of 256 MiB of zeros.
    let mut bomb = object::encode(ObjectKind::Chunk, &vec![0u8; 256 << 20], 3).bytes;
    bomb[8..16].copy_from_slice(&1000u64.to_le_bytes());
    let id = ObjectId::of(b"whatever the bomb claims to be");
    repo.server.put(&id.store_path(), bomb);
    let mut d = repo.d_entries();
    d.push(file("bomb", 1000, FileContent::Single(id)));
    let old = fs::read(repo.public().join("manifest")).unwrap();
    repo.publish(vec![repo.dir("d", d)], 1);
    let m = repo.mount("mnt", "cache", &["--ttl", "3600"]);
    m.eio("d/bomb");
    assert!(m.mem_mb("VmHWM") < 300, "peak RSS {} MB", m.mem_mb("VmHWM"));
    assert_eq!(m.xattr("revision"), "2");
    repo.server.put("manifest", old);
    let out = run(&[&"remount", &m.mp()]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("older than revision 2"), "{why}");
    assert_eq!(m.xattr("revision"), "2");
    m.healthy(&repo);
}

/// Item 6: the manifest failing (500) while objects are served does not take the mount
/// offline: uncached files of the current revision stay readable.
#[test]
fn hostile_manifest_failure_keeps_the_current_revision_readable() {
    let repo = Repo::new();
    let m = repo.mount(
        "mnt",
        "cache",
        &["--ttl", "1", "--timeout", "2", "--retries", "0"],
    );
    assert_eq!(m.read("d/f00").unwrap(), repo.src("f00"));
    repo.server.rule("manifest", Answer::Status(500));
    let checks: u64 = m.xattr("checks").parse().unwrap();
    poll(Duration::from_secs(20), "two failed checks", || {
        m.xattr("checks").parse::<u64>().unwrap() >= checks + 2
    });
    assert!(
        m.xattr("last_check").contains("HTTP 500"),
        "{}",
        m.xattr("last_check")
    );
    for i in 1..20 {
        let f = format!("f{i:02}");
        assert_eq!(m.read(&format!("d/{f}")).unwrap(), repo.src(&f), "{f}");
    }
    assert_eq!(m.metric("depotfs_offline"), 0.0);
    assert!(
        m.status().contains("state:         online"),
        "{}",
        m.status()
    );
}

/// Item 7: a subdirectory whose node is missing does not break its parent's listing (with
/// attributes, READDIRPLUS): the parent lists, only the broken child fails.
#[test]
fn hostile_missing_subdirectory_node_fails_only_that_child() {
    let repo = Repo::new();
    let good = repo.dir("good", vec![file("x", 0, FileContent::Empty)]);
    let broken = Entry {
        name: "broken".into(),
        mode: 0o755,
        mtime_ns: 1,
        kind: EntryKind::Dir {
            tree: ObjectId::of(b"a node no server has"),
            entries: 3,
        },
    };
    let parent = repo.dir("parent", vec![good, broken]);
    let mut root = vec![repo.dir("d", repo.d_entries()), parent];
    root.sort_by(|a, b| a.name.cmp(&b.name));
    repo.publish(root, 1);
    let m = repo.mount("mnt", "cache", &["--timeout", "2", "--retries", "0"]);
    let mut names: Vec<String> = fs::read_dir(m.mp().join("parent"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["broken", "good"]);
    // `ls -l`: lstat of each entry; only the broken one fails.
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.mp().join("parent"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(out.contains("good"), "{out}");
    assert!(fs::read_dir(m.mp().join("parent/good")).unwrap().count() == 1);
    let err = fs::read_dir(m.mp().join("parent/broken")).and_then(|mut r| r.next().transpose());
    assert!(err.is_err(), "listing the broken child must fail");
    m.healthy(&repo);
}

/// Item 5: directory nodes that inflate to megabytes each are kept in memory by their size,
/// not their number: looking a name up in 24 of them leaves the daemon's memory bounded.
/// (A lookup, not a listing: a listing with attributes makes every entry an inode the
/// kernel holds, which is memory of another kind.)
#[test]
fn hostile_inflating_nodes_are_counted_in_bytes() {
    let repo = Repo::new();
    let target = "t".repeat(4000);
    let mut root = vec![repo.dir("d", repo.d_entries())];
    for k in 0..24 {
        // 2048 symlinks (a leaf's most) with 4000-byte targets: ~8 MiB plaintext, a few
        // KiB compressed. Built by hand: one leaf, as a hostile publisher would.
        let es: Vec<Entry> = (0..2048)
            .map(|i| Entry {
                name: format!("{k:02}-{i:05}"),
                mode: 0o777,
                mtime_ns: 1,
                kind: EntryKind::Symlink {
                    target: target.clone(),
                },
            })
            .collect();
        let node = DirNode::Leaf(es);
        let id = repo.put(object::encode(ObjectKind::DirNode, &node.to_bytes(), 3));
        root.push(Entry {
            name: format!("big{k:02}"),
            mode: 0o755,
            mtime_ns: 1,
            kind: EntryKind::Dir {
                tree: id,
                entries: 2048,
            },
        });
    }
    repo.publish(root, 1);
    let m = repo.mount("mnt", "cache", &["--mem-size", "16M"]);
    let before = m.mem_mb("VmRSS");
    for k in 0..24 {
        let link = m.mp().join(format!("big{k:02}/{k:02}-02047"));
        assert_eq!(fs::read_link(link).unwrap().as_os_str().len(), 4000);
    }
    let after = m.mem_mb("VmRSS");
    assert!(
        after < before + 100,
        "24 inflating directory nodes: RSS {before} -> {after} MB"
    );
    assert_eq!(fs::read_dir(m.mp().join("big00")).unwrap().count(), 2048);
    m.healthy(&repo);
}

/// Item 5: the background prefetch of a large directory's tree visits each node once, so a
/// DAG of index nodes (512 references to one node, twice over) costs three fetches, not
/// 262,144 expansions.
#[test]
fn hostile_dag_of_index_nodes_is_prefetched_once() {
    let repo = Repo::new();
    let leaf = repo.put(object::encode(
        ObjectKind::DirNode,
        &DirNode::Leaf(vec![file("x", 0, FileContent::Empty)]).to_bytes(),
        3,
    ));
    let fan = |child: ObjectId, count: u64| {
        DirNode::Index(
            (0..512)
                .map(|i| ChildRef {
                    first: format!("n{i:04}"),
                    count,
                    id: child,
                })
                .collect(),
        )
    };
    let mid = repo.put(object::encode(
        ObjectKind::DirNode,
        &fan(leaf, 1).to_bytes(),
        3,
    ));
    let top = repo.put(object::encode(
        ObjectKind::DirNode,
        &fan(mid, 512).to_bytes(),
        3,
    ));
    let root = vec![
        repo.dir("d", repo.d_entries()),
        Entry {
            name: "dag".into(),
            mode: 0o755,
            mtime_ns: 1,
            kind: EntryKind::Dir {
                tree: top,
                entries: 512 * 512,
            },
        },
    ];
    repo.publish(root, 1);
    let m = repo.mount("mnt", "cache", &[]);
    let hits =
        || m.xattr("hits").parse::<u64>().unwrap() + m.xattr("misses").parse::<u64>().unwrap();
    let before = hits();
    // Open the listing and take a few entries: the prefetch starts with it.
    let first: Vec<_> = fs::read_dir(m.mp().join("dag")).unwrap().take(3).collect();
    assert_eq!(first.len(), 3);
    // Let the background walk run its course.
    let mut last = hits();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let now = hits();
        if now == last {
            break;
        }
        last = now;
    }
    let used = hits() - before;
    assert!(
        used < 2000,
        "the directory prefetch made {used} node requests"
    );
    m.healthy(&repo);
}

/// Item 8: a server that drip-feeds an object (1 byte/s) is cut at the bound `status`
/// prints, for a buffered read through the kernel (which asks again after a failed
/// readahead): the reader gets EIO within that bound, not twice it.
#[test]
fn hostile_drip_feed_is_cut_at_the_printed_bound() {
    let repo = Repo::new();
    let m = repo.mount("mnt", "cache", &["--timeout", "2", "--retries", "0"]);
    assert!(
        m.status().contains("reads give up: after 2.00 s"),
        "{}",
        m.status()
    );
    let bound = Duration::from_millis(m.xattr("request_bound_ms").parse().unwrap());
    let drip = |id: ObjectId| {
        repo.server
            .rule(&id.store_path(), Answer::Drip(Duration::from_secs(1)))
    };
    // `f05` is one object; `big`'s chunk list is fetched honestly at open, its chunks drip.
    let EntryKind::File {
        content: FileContent::Chunked(lid),
        ..
    } = repo.entry("big").kind
    else {
        panic!("big is chunked")
    };
    let bytes = fs::read(repo.public().join(lid.store_path())).unwrap();
    let v = object::decode(lid, ObjectKind::ChunkList, &bytes, 1 << 26).unwrap();
    ChunkList::from_verified(&v)
        .unwrap()
        .chunks
        .iter()
        .for_each(|c| drip(c.id));
    drip(m.xattr_of("d/f05").parse().unwrap());
    for f in ["d/f05", "d/big"] {
        let start = Instant::now();
        m.eio(f);
        let took = start.elapsed();
        assert!(
            took < bound + Duration::from_millis(900),
            "{f}: EIO after {took:?} for a bound of {bound:?}"
        );
    }
    repo.server.clear_rules();
    poll(Duration::from_secs(15), "online again", || {
        m.read("d/f06").is_ok()
    });
    // A directory node that arrives within the timeout but corrupt is fetched once more
    // (from the next server, fresh): both tries together are held to the bound.
    let sub = repo.dir("sub", vec![file("x", 0, FileContent::Empty)]);
    let EntryKind::Dir { tree, .. } = sub.kind else {
        unreachable!()
    };
    let mut root = vec![repo.dir("d", repo.d_entries()), sub];
    root.sort_by(|a, b| a.name.cmp(&b.name));
    repo.publish(root, 1);
    ok(run(&[&"remount", &m.mp()]));
    // The node as `repo.dir` built it (one leaf, nothing shared with the store).
    let mut bad = Vec::new();
    dir::build(vec![file("x", 0, FileContent::Empty)], 3, &mut |enc| {
        if enc.id == tree {
            bad = enc.bytes;
        }
        Ok(())
    })
    .unwrap();
    assert!(!bad.is_empty());
    let last = bad.len() - 1;
    bad[last] ^= 1;
    repo.server.rule(
        &tree.store_path(),
        Answer::SlowBody(bad, Duration::from_millis(1800)),
    );
    let start = Instant::now();
    assert!(fs::read_dir(m.mp().join("sub")).is_err());
    let took = start.elapsed();
    assert!(
        took < bound + Duration::from_millis(900),
        "a corrupt directory node: EIO after {took:?} for a bound of {bound:?}"
    );
    repo.server.clear_rules();
    m.healthy(&repo);
}

/// Item 1 (the cache half): the cache directory's file system fills up (a 16 MB tmpfs, a 24 MB
/// file): reads still return the right bytes, without caching; it is
/// said once in the log, in `status` and in the metrics; the mount lives on.
#[test]
fn hostile_full_cache_filesystem_reads_without_caching() {
    let repo = Repo::new();
    // A file larger than the cache's file system.
    let src = repo.path().join("src2/e");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(24 << 20, 99);
    fs::write(src.join("huge"), &data).unwrap();
    ok(run(&[&"add", &repo.path().join("store"), &src]));
    let cache = repo.path().join("cache");
    let objects = cache.join("objects");
    fs::create_dir_all(&objects).unwrap();
    let tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&objects)
        .status()
        .unwrap();
    assert!(tmpfs.success(), "mount -t tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(objects.clone());
    {
        let m = repo.mount("mnt", "cache", &["--cache-size", "1G"]);
        for _ in 0..2 {
            assert!(m.read("e/huge").unwrap() == data, "wrong bytes");
        }
        // The cache is written after the reads are served: wait for its writer.
        poll(Duration::from_secs(30), "the cache's writer done", || {
            m.xattr("cache_pending") == "0"
        });
        let log = m.log();
        assert_eq!(
            log.matches("cache: not storing").count(),
            1,
            "said once:\n{log}"
        );
        assert!(log.contains("No space left on device"), "{log}");
        let st = m.status();
        assert!(st.contains("NOT STORING"), "{st}");
        assert_eq!(m.metric("depotfs_cache_storing"), 0.0);
        assert!(m.metric("depotfs_cache_store_failures_total") >= 1.0);
        m.healthy(&repo);
    }
}

/// 150 listings at once of directories not fetched yet, from a slow but correct server: all
/// finish. (Each listing waited on the blocking pool for a download that loads and verifies
/// on the same pool; with the pool's 64 threads all taken by waiting listings, nothing moved
/// and the mount hung for good. At most half the pool now serves metadata operations.)
#[test]
fn hostile_many_slow_listings_at_once_all_finish() {
    let repo = Repo::new();
    let dirs: Vec<Entry> = (0..150)
        .map(|i| {
            repo.dir(
                &format!("s{i:03}"),
                vec![file(&format!("x{i}"), 0, FileContent::Empty)],
            )
        })
        .collect();
    let mut root = vec![repo.dir("d", repo.d_entries()), repo.dir("many", dirs)];
    root.sort_by(|a, b| a.name.cmp(&b.name));
    repo.publish(root, 1);
    let m = repo.mount("mnt", "cache", &["--timeout", "30", "--retries", "0"]);
    // Not listed: a listing with attributes would fetch every subdirectory's node now.
    assert!(m.mp().join("many").is_dir());
    // Every object from now on takes about 2 s: one byte every 15 ms.
    repo.server
        .rule("objects/", Answer::Drip(Duration::from_millis(15)));
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..150 {
        let p = m.mp().join(format!("many/s{i:03}"));
        let tx = tx.clone();
        std::thread::spawn(move || {
            let names: std::io::Result<Vec<String>> = fs::read_dir(&p).and_then(|r| {
                r.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            });
            let _ = tx.send((i, names));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..150 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, names)) = rx.recv_timeout(left) else {
            // Hung: abort the FUSE connection so the stuck threads (and this test) can end.
            abort_fuse(m.mp());
            panic!("listings still hanging after 120 s:\n{}", m.log());
        };
        assert_eq!(names.unwrap(), [format!("x{i}")], "many/s{i:03}");
    }
    repo.server.clear_rules();
    m.healthy(&repo);
}

/// Abort the FUSE connection of the mount at `mp` (`/sys/fs/fuse/connections/N/abort`).
fn abort_fuse(mp: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mp = mp.to_string_lossy();
    if let Some(dev) = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == mp)
        .and_then(|f| f[2].split(':').nth(1).map(str::to_string))
    {
        let _ = fs::write(format!("/sys/fs/fuse/connections/{dev}/abort"), "1");
    }
}

/// A listing (`ls -l`) of 20 subdirectories whose nodes all arrive slowly and corrupt takes
/// at most about twice the printed bound, not the bound 20 times over: once the listing's
/// time is up, the subdirectories left are listed without their link count.
#[test]
fn hostile_a_listing_of_slow_subdirectories_is_bounded() {
    let repo = Repo::new();
    let mut bad = Vec::new();
    let subs: Vec<Entry> = (0..20)
        .map(|i| {
            let entries = vec![file(&format!("x{i}"), 0, FileContent::Empty)];
            let e = repo.dir(&format!("s{i:02}"), entries.clone());
            let EntryKind::Dir { tree, .. } = e.kind else {
                unreachable!()
            };
            dir::build(entries, 3, &mut |enc| {
                if enc.id == tree {
                    let mut b = enc.bytes;
                    let last = b.len() - 1;
                    b[last] ^= 1;
                    bad.push((tree, b));
                }
                Ok(())
            })
            .unwrap();
            e
        })
        .collect();
    let mut root = vec![repo.dir("d", repo.d_entries()), repo.dir("many", subs)];
    root.sort_by(|a, b| a.name.cmp(&b.name));
    repo.publish(root, 1);
    let m = repo.mount("mnt", "cache", &["--timeout", "2", "--retries", "0"]);
    let bound = Duration::from_millis(m.xattr("request_bound_ms").parse().unwrap());
    assert!(m.mp().join("many").is_dir());
    assert_eq!(bad.len(), 20);
    for (tree, b) in bad {
        repo.server.rule(
            &tree.store_path(),
            Answer::SlowBody(b, Duration::from_millis(900)),
        );
    }
    let start = Instant::now();
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.mp().join("many"))
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("s19"),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(
        took < 2 * bound + Duration::from_secs(1),
        "ls -l of 20 slow corrupt subdirectories took {took:?} for a bound of {bound:?}"
    );
    repo.server.clear_rules();
    m.healthy(&repo);
}
