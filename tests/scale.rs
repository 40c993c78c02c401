//! #18: `gc` and `verify` at scale — marked in bounded memory, interruptible and resumable,
//! `verify --since` checking only what changed. Real binary, real store; the process is
//! stepped with SIGSTOP/SIGCONT until its checkpoint is on disk and then killed with
//! SIGKILL, so the kill lands mid-sweep deterministically, however fast the machine.

mod cli_run;
mod http_suite;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_run::{BIN, depotfs, fails, ok, ok_stdout};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{FileContent, ObjectId};
use depotfs_publisher::Repo;
use depotfs_publisher::db::{META, Node, NodeKind};
use depotfs_publisher::store::Layout;
use redb::ReadableDatabase;

/// The small data object number `k` (distinct for every `k`).
fn put(repo: &Repo, k: u64) -> ObjectId {
    let mut plain = [0u8; 24];
    plain[..8].copy_from_slice(&k.to_le_bytes());
    plain[8..].copy_from_slice(&blake3::hash(&k.to_le_bytes()).as_bytes()[..16]);
    let id = ObjectId::of(&plain);
    repo.objects
        .put(&object::encode_with_id(id, ObjectKind::Chunk, &plain, 1))
        .unwrap();
    id
}

/// Stage files `dir/fK` for K in `ks`, each its own object; returns the objects.
fn stage(repo: &Repo, dir: &str, ks: std::ops::Range<u64>) -> Vec<ObjectId> {
    let mut ids = Vec::new();
    let nodes = ks
        .map(|k| {
            let id = put(repo, k);
            ids.push(id);
            let node = Node {
                mode: 0o644,
                mtime_ns: 0,
                kind: NodeKind::File {
                    size: 24,
                    content: FileContent::Single(id),
                },
            };
            (format!("{dir}/f{k:07}"), node)
        })
        .collect();
    repo.stage_add(dir, nodes).unwrap();
    ids
}

fn meta_row(store: &Path, key: &str) -> bool {
    let Ok(db) = depotfs_publisher::repo::open_read_only(&Layout::new(store)) else {
        return false;
    };
    let txn = db.begin_read().unwrap();
    txn.open_table(META).unwrap().get(key).unwrap().is_some()
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig}");
}

/// Run `depotfs ARGS`, letting it run 2 ms at a time until it logs that a checkpoint is
/// saved (committed), then SIGKILL it. Panics if it exits first. (The catalog is not read
/// while the child is stopped: a stopped writer may hold redb's file lock.)
fn kill_once_checkpointed(args: &[&str]) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "depotfs_publisher=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("checkpoint saved") {
                let _ = tx.send(());
            }
        }
    });
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(2));
        signal(&child, "-STOP");
        if rx.try_recv().is_ok() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "depotfs {args:?} ended before its first checkpoint"
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint");
        signal(&child, "-CONT");
    }
    signal(&child, "-KILL");
    child.wait().unwrap();
}

/// A store with 3 directories of 4,000 objects published (revision 1), one of them removed
/// in revision 2, 500 files staged and kept (`--no-publish`), and 3,000 orphan objects.
struct Sample {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
    live: Vec<ObjectId>,
    removed_dir: Vec<ObjectId>,
    staged: Vec<ObjectId>,
    orphans: Vec<ObjectId>,
}

fn sample() -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let repo = Repo::init(&store, "scale-test").unwrap();
    let mut live = stage(&repo, "a", 0..4000);
    live.extend(stage(&repo, "b", 4000..8000));
    let removed_dir = stage(&repo, "c", 8000..12000);
    repo.publish(None, false).unwrap();
    repo.stage_rm(&["c".to_string()]).unwrap();
    repo.publish(None, false).unwrap();
    let staged = stage(&repo, "s", 20000..20500);
    repo.keep_staged().unwrap();
    let orphans = (30000..33000).map(|k| put(&repo, k)).collect();
    drop(repo);
    Sample {
        _dir: dir,
        store,
        live,
        removed_dir,
        staged,
        orphans,
    }
}

#[test]
fn gc_killed_mid_sweep_resumes_and_keeps_every_live_object() {
    let s = sample();
    let st = s.store.to_str().unwrap();
    kill_once_checkpointed(&["gc", st, "--keep", "1"]);
    let layout = Layout::new(&s.store);
    // Whatever the killed run deleted, it deleted no live or staged object.
    for id in s.live.iter().chain(&s.staged) {
        assert!(layout.object(id).exists(), "live object {id} deleted");
    }
    let out = ok(depotfs(&["gc", st, "--keep", "1"]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("resuming an interrupted sweep"), "{log}");
    let text = String::from_utf8_lossy(&out.stdout);
    let removed: u64 = text
        .strip_prefix("removed ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // The orphans and the removed directory's files (plus old directory nodes), less what
    // the killed run deleted after its last checkpoint (uncounted: at most one fan-out
    // directory's share).
    assert!(
        removed >= (s.orphans.len() + s.removed_dir.len()) as u64 * 9 / 10,
        "{text}"
    );
    for id in s.live.iter().chain(&s.staged) {
        assert!(layout.object(id).exists(), "live object {id} deleted");
    }
    for id in s.orphans.iter().chain(&s.removed_dir) {
        assert!(!layout.object(id).exists(), "garbage {id} kept");
    }
    assert!(!meta_row(&s.store, "gc_sweep"), "checkpoint left behind");
    // A second gc finds nothing more to remove.
    let again = ok_stdout(depotfs(&["gc", st, "--keep", "1"]));
    assert!(again.starts_with("removed 0 objects"), "{again}");
    // The staged files still publish, and everything verifies.
    ok(depotfs(&["publish", st]));
    assert!(ok_stdout(depotfs(&["verify", st])).starts_with("ok:"));
}

#[test]
fn verify_killed_midway_resumes_to_the_same_result() {
    let s = sample();
    let st = s.store.to_str().unwrap();
    let clean = ok_stdout(depotfs(&["verify", st]));
    assert!(clean.starts_with("ok:"), "{clean}");
    kill_once_checkpointed(&["verify", st]);
    let out = ok(depotfs(&["verify", st]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("verify: resuming an interrupted run after"),
        "{log}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), clean);
    assert!(!meta_row(&s.store, "verify_progress"));
}

fn corrupt(store: &Path, id: &ObjectId) {
    let p = Layout::new(store).object(id);
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&p, b).unwrap();
}

#[test]
fn verify_since_checks_only_what_changed() {
    let s = sample();
    let st = s.store.to_str().unwrap();
    ok(depotfs(&["publish", st]));
    // No full verify yet: `--since last` says so.
    let msg = fails(depotfs(&["verify", st, "--since", "last"]));
    assert!(msg.contains("no clean full verify yet"), "{msg}");
    assert!(ok_stdout(depotfs(&["verify", st])).starts_with("ok:"));
    let rev_verified = 3;
    // Revision 4: ten new files in `b`, next to its 4,000 old ones.
    let new = {
        let repo = Repo::open(&s.store).unwrap();
        let ids = stage(&repo, "b", 50000..50010);
        repo.publish(None, false).unwrap();
        ids
    };
    // An old object goes bad: `--since` does not look at it (only the full verify does)...
    corrupt(&s.store, &s.live[4001]);
    let out = ok_stdout(depotfs(&["verify", st, "--since", "last"]));
    assert!(
        out.contains(&format!("changed since revision {rev_verified}")),
        "{out}"
    );
    // ...it read the ten new files and the directory nodes on their paths, not 8,500 files.
    let objects: u64 = out
        .strip_prefix("ok: ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((10..100).contains(&objects), "{out}");
    let full = depotfs(&["verify", st]);
    assert!(!full.status.success());
    assert!(String::from_utf8_lossy(&full.stdout).contains(&s.live[4001].to_hex()));
    // A new object goes bad: `--since 3` finds it.
    corrupt(&s.store, &new[3]);
    let out = depotfs(&["verify", st, "--since", "3"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&new[3].to_hex()), "{text}");
    assert!(!text.contains(&s.live[4001].to_hex()), "{text}");
    let msg = fails(depotfs(&["verify", st, "--since", "x"]));
    assert!(
        msg.contains("expected a revision number or `last`"),
        "{msg}"
    );
}

/// `benches/scale --smoke`: the benchmark's whole sequence at 10,000 objects (gen, publish
/// one more, log, ls, verify, gc, replicate, verify --since, incremental replicate, a mount's
/// cold listing), so the by-hand runs at millions of objects do not rot. Checks what does not depend on speed:
/// every step ran, one more 64 MiB image adds a few KiB of metadata, and the incremental
/// replicate fetched that image's objects only (≈ 256 chunks of 256 KiB), not the store's.
#[test]
fn bench_scale_smoke() {
    let work = tempfile::tempdir().unwrap();
    let scale_gen = Path::new(BIN).parent().unwrap().join("examples/scale_gen");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scale"))
        .args(["--smoke", "--work"])
        .arg(work.path())
        .env("DEPOTFS_BIN", BIN)
        .env("SCALE_GEN", &scale_gen)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("| 10000 |"))
        .unwrap_or_else(|| panic!("no result row: {text}"))
        .split('|')
        .map(str::trim)
        .collect();
    // Columns: 5 publish+1 meta KiB, 16 replicate+1 fetched.
    let meta_kib: u64 = row[5].split(' ').next().unwrap().parse().unwrap();
    assert!(meta_kib <= 64, "{text}");
    let fetched: u64 = row[16].parse().unwrap();
    assert!((100..400).contains(&fetched), "{text}");
    // 19, 20: the mount's cold listing of gen/ (10 directories) and the walk of them.
    assert!(
        row[19].ends_with("(10)") && row[20].ends_with("(10000)"),
        "{text}"
    );
}

/// Objects (files) in the `public/objects` tree of `root`.
fn object_files(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in std::fs::read_dir(root.join("objects")).unwrap() {
        let d = d.unwrap();
        for f in std::fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap().file_name();
            out.insert(format!(
                "{}{}",
                d.file_name().to_string_lossy(),
                f.to_string_lossy()
            ));
        }
    }
    out
}

/// `depotfs replicate URL DEST --key KEY` under `/usr/bin/time`: (its report line, its peak
/// RSS in KiB).
fn replicate_measured(url: &str, dest: &Path, key: &Path) -> (String, u64) {
    let rss = tempfile::NamedTempFile::new().unwrap();
    let out = ok(Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss.path())
        .args([BIN, "replicate", url])
        .arg(dest)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap());
    let kib = std::fs::read_to_string(rss.path()).unwrap();
    let kib = kib.lines().last().unwrap().trim().parse().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), kib)
}

/// Object GETs `depotfs serve` answered with 200, from its metrics.
fn object_gets(served: &cli_run::Served) -> u64 {
    let text = cli_run::http_get(served.port, "/metrics");
    cli_run::prom_value(
        &text,
        r#"depotfs_serve_requests_total{kind="object",method="GET",status="200"}"#,
    )
    .unwrap_or(0.0) as u64
}

/// "fetched N objects" of a replicate report.
fn fetched_of(report: &str) -> u64 {
    report
        .split("fetched ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"))
}

/// #18: a first `replicate` holds a bounded frontier, not the tree: mirroring 8× more
/// objects (16,000 against 2,000, with shared subtrees and shared chunks) costs no more
/// than a few MiB more peak memory (the walk that held a task and a cell per object took
/// ~2 KiB an object: ~28 MiB more here). Then an incremental run after one change fetches
/// that change, and the source answered exactly those requests.
#[test]
fn replicate_frontier_is_bounded_and_an_incremental_run_costs_the_change() {
    let make = |dirs: u64| {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let repo = Repo::init(&store, "scale-rep").unwrap();
        for d in 0..dirs {
            stage(&repo, &format!("d{d:03}"), d * 2000..(d + 1) * 2000);
        }
        // Shared: an identical copy of d000 (one tree, two paths) and files sharing chunks.
        stage(&repo, "copy", 0..2000);
        stage(&repo, "again", 2000..2100);
        repo.publish(None, false).unwrap();
        drop(repo);
        dir
    };
    let peak = |dirs: u64| {
        let dir = make(dirs);
        let store = dir.path().join("store");
        let served = cli_run::Served::start(&store);
        let mirror = dir.path().join("mirror");
        let key = store.join("public/repo.pub");
        let (report, kib) = replicate_measured(&served.url(), &mirror, &key);
        same_objects(&mirror, &store);
        assert_eq!(fetched_of(&report), object_gets(&served), "{report}");
        (dir, served, report, kib)
    };
    let (_, _, small_report, small) = peak(1);
    let (dir, served, report, big) = peak(8);
    assert!(fetched_of(&report) > 16_000, "{report}");
    eprintln!("replicate peak RSS: {small} KiB ({small_report}), {big} KiB ({report})");
    assert!(
        big < small + 10 * 1024,
        "peak RSS {big} KiB for 16,000 objects against {small} KiB for 2,000 \
         ({small_report} / {report})"
    );
    // One change: ten new files in d005 (of 2,000) and a new revision.
    let store = dir.path().join("store");
    {
        let repo = Repo::open(&store).unwrap();
        stage(&repo, "d005", 900_000..900_010);
        repo.publish(None, false).unwrap();
    }
    let mirror = dir.path().join("mirror");
    let before = object_files(&mirror);
    let gets = object_gets(&served);
    let (again, _) = replicate_measured(&served.url(), &mirror, &store.join("public/repo.pub"));
    let new = object_files(&mirror).len() - before.len();
    assert_eq!(fetched_of(&again) as usize, new, "{again}");
    assert_eq!(object_gets(&served) - gets, new as u64, "{again}");
    // The ten files and the directory nodes on their path (d005's leaf and index nodes,
    // the root's), not the store's 18,000 objects.
    assert!((10..30).contains(&new), "{again}");
    same_objects(&mirror, &store);
}

/// The mirror holds the store's objects, but for revision 0's empty root directory (the
/// mirror starts at the latest revision).
fn same_objects(mirror: &Path, store: &Path) {
    let (m, s) = (object_files(mirror), object_files(&store.join("public")));
    assert!(m.is_subset(&s), "the mirror has objects the source lacks");
    assert!(
        s.len() - m.len() <= 1,
        "{} objects missing",
        s.len() - m.len()
    );
}
