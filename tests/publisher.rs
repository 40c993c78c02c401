//! End-to-end tests of the publisher through the real `depotfs` binary: build a repository
//! from generated image-like files, publish, read back, change, roll back, gc, verify; the
//! lock; kill -9 at random moments; bad input.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use depotfs_catalog::{EntryKind, ObjectId};
use depotfs_publisher::reader::LocalTree;
use depotfs_publisher::store::{Layout, Objects};

mod http_suite;
use http_suite::random_bytes;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_depotfs"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run depotfs");
    assert!(
        out.status.success(),
        "depotfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn run_fail(args: &[&str]) -> String {
    let out = bin().args(args).output().expect("run depotfs");
    assert!(!out.status.success(), "depotfs {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An image-like file: shared "package" blocks (identical across images of one tool),
/// compressible text, and incompressible noise.
fn image(tool: u64, version: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let shared = random_bytes(600_000, tool);
    let text =
        format!("#!/bin/sh\n# tool {tool} version {version}\nexec something --flag\n").repeat(2000);
    while out.len() < len {
        out.extend_from_slice(&shared);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&random_bytes(
            200_000,
            tool * 1000 + version + out.len() as u64,
        ));
    }
    out.truncate(len);
    out
}

struct Corpus {
    dir: PathBuf,
}

fn make_corpus(root: &Path) -> Corpus {
    let dir = root.join("images");
    fs::create_dir_all(&dir).unwrap();
    for (i, (name, len)) in [
        ("samtools:1.9--h91753b0_8", 5_500_000usize),
        ("samtools:1.10--h2e538c0_3", 5_700_000),
        ("bwa:0.7.17--h5bf99c6_8", 3_100_000),
        ("tiny:1.0--0", 1_000),
        ("exactly-one-mib:1--0", 1 << 20),
        ("one-mib-plus-one:1--0", (1 << 20) + 1),
    ]
    .iter()
    .enumerate()
    {
        fs::write(dir.join(name), image(i as u64 % 2, i as u64, *len)).unwrap();
    }
    fs::write(dir.join("empty:0--0"), b"").unwrap();
    let tree = dir.join("rootfs");
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("emptydir")).unwrap();
    fs::write(tree.join("usr/bin/tool"), image(3, 3, 200_000)).unwrap();
    fs::set_permissions(tree.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(tree.join("etc/conf"), b"key=value\n").unwrap();
    std::os::unix::fs::symlink("usr/bin/tool", tree.join("tool-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", tree.join("dangling")).unwrap();
    Corpus { dir }
}

/// Every path below `src` as it should appear in the repository under `prefix`.
fn expected(src: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let p = format!("{prefix}/{}", e.file_name().to_str().unwrap());
        out.insert(p.clone(), e.path());
        if e.file_type().unwrap().is_dir() {
            expected(&e.path(), &p, out);
        }
    }
}

/// Read the published tree through the library reader and compare it with the sources.
fn assert_published_matches(store: &Path, want: &BTreeMap<String, PathBuf>) {
    let layout = Layout::new(store);
    let m = layout.load_manifest().unwrap();
    let tree = LocalTree::new(Objects::new(layout));
    let mut seen = BTreeMap::new();
    tree.walk(&m.root, "", &mut |path, e| {
        seen.insert(path.to_string(), e.clone());
        Ok(true)
    })
    .unwrap();
    for (path, src) in want {
        let e = seen
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| panic!("{path} missing"));
        let md = fs::symlink_metadata(src).unwrap();
        match &e.kind {
            EntryKind::File { size, content } => {
                assert!(md.is_file(), "{path}");
                assert_eq!(*size, md.len(), "{path} size");
                assert_eq!(e.mode, md.mode() & 0o7777, "{path} mode");
                assert_eq!(
                    e.mtime_ns,
                    md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    "{path} mtime"
                );
                let mut got = Vec::new();
                tree.copy_file(content, *size, &mut got).unwrap();
                assert!(got == fs::read(src).unwrap(), "{path} content differs");
            }
            EntryKind::Dir { .. } => assert!(md.is_dir(), "{path}"),
            EntryKind::Symlink { target } => {
                assert_eq!(Path::new(target), fs::read_link(src).unwrap(), "{path}")
            }
        }
    }
}

fn dir_mtime(store: &Path, path: &str) -> i64 {
    let layout = Layout::new(store);
    let m = layout.load_manifest().unwrap();
    if path.is_empty() {
        return m.root_mtime_ns;
    }
    let tree = LocalTree::new(Objects::new(layout));
    tree.resolve(&m.root, path).unwrap().unwrap().mtime_ns
}

fn object_count(store: &Path) -> usize {
    walkdir(&store.join("public/objects"))
}

fn walkdir(p: &Path) -> usize {
    fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walkdir(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn publish_change_rollback_gc_verify() {
    let t = tempfile::tempdir().unwrap();
    let c = make_corpus(t.path());
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    run(&["init", s, "--name", "test.depotfs"]);
    assert!(run_fail(&["init", s, "--name", "x"]).contains("not empty"));
    let key_mode = fs::metadata(store.join("repo.key")).unwrap().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    let sources: Vec<String> = fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    let mut args = vec!["add", s, "--to", "all/"];
    args.extend(sources.iter().map(String::as_str));
    run(&args);
    let mut want = BTreeMap::new();
    expected(&c.dir, "all", &mut want);
    assert_published_matches(&store, &want);
    assert!(
        String::from_utf8(run(&["verify", s]).stdout)
            .unwrap()
            .starts_with("ok:")
    );

    // cat and ls through the binary.
    let cat = run(&["cat", s, "all/samtools:1.9--h91753b0_8"]).stdout;
    assert!(cat == fs::read(c.dir.join("samtools:1.9--h91753b0_8")).unwrap());
    let ls = String::from_utf8(run(&["ls", s, "/all/rootfs"]).stdout).unwrap();
    assert!(ls.contains("tool-link -> usr/bin/tool"), "{ls}");
    assert!(ls.contains("dangling -> /nonexistent/target"), "{ls}");
    assert!(run_fail(&["cat", s, "all/nope"]).contains("all/nope"));

    // Directory mtimes move exactly when a directory's entries change.
    let all_1 = dir_mtime(&store, "all");
    let root_1 = dir_mtime(&store, "");
    let etc_1 = dir_mtime(&store, "all/rootfs/etc");
    let extra = t.path().join("samtools:1.11--h0_0");
    fs::write(&extra, image(0, 99, 2_000_000)).unwrap();
    run(&["add", s, "--to", "all", extra.to_str().unwrap()]);
    let all_2 = dir_mtime(&store, "all");
    assert!(
        all_2 >= all_1 + 1000,
        "all/ mtime must move by at least 1 µs"
    );
    assert_eq!(
        dir_mtime(&store, ""),
        root_1,
        "root's entries did not change"
    );
    assert_eq!(dir_mtime(&store, "all/rootfs/etc"), etc_1);

    // Replace a file; remove a directory; stage without publishing.
    fs::write(c.dir.join("tiny:1.0--0"), b"new content").unwrap();
    run(&[
        "add",
        s,
        "--to",
        "all",
        "--no-publish",
        c.dir.join("tiny:1.0--0").to_str().unwrap(),
    ]);
    run(&["rm", s, "--no-publish", "all/rootfs/etc"]);
    let revs_before = String::from_utf8(run(&["log", s]).stdout)
        .unwrap()
        .lines()
        .count();
    run(&["publish", s, "--tag", "update-1"]);
    let log = String::from_utf8(run(&["log", s]).stdout).unwrap();
    assert_eq!(log.lines().count(), revs_before + 1);
    assert!(log.contains("update-1"));
    assert_eq!(run(&["cat", s, "all/tiny:1.0--0"]).stdout, b"new content");
    assert!(run_fail(&["cat", s, "all/rootfs/etc/conf"]).contains("no such"));
    assert!(dir_mtime(&store, "all/rootfs") > all_2);

    // Roll back to revision 1: the original tree again, in a new revision.
    run(&["rollback", s, "1"]);
    assert_published_matches(&store, &{
        let mut w = want.clone();
        w.remove("all/tiny:1.0--0");
        w
    });
    assert_eq!(
        run(&["cat", s, "all/tiny:1.0--0"]).stdout,
        image(3 % 2, 3, 1_000),
        "rolled back content"
    );
    let m = Layout::new(&store).load_manifest().unwrap();
    assert_eq!(
        m.revision, 4,
        "0 init, 1 add, 2 extra, 3 tagged, 4 rollback"
    );

    // gc keeping 1 revision removes the objects only revisions 2..4 needed (the replaced
    // tiny file, the extra image) but not the tagged revision's, then verify holds.
    let before = object_count(&store);
    let out = String::from_utf8(run(&["gc", s, "--keep", "1"]).stdout).unwrap();
    let after = object_count(&store);
    assert!(after < before, "gc removed nothing: {out}");
    assert!(
        String::from_utf8(run(&["verify", s]).stdout)
            .unwrap()
            .starts_with("ok:")
    );
    // The tagged revision 3 is retained: roll back to it.
    run(&["rollback", s, "3"]);
    assert_eq!(run(&["cat", s, "all/tiny:1.0--0"]).stdout, b"new content");
    // Revision 2 (untagged, old) was pruned.
    assert!(run_fail(&["rollback", s, "2"]).contains("garbage-collected"));

    // Corrupt one object: verify names it and fails.
    let victim = first_object(&store);
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() - 1;
    bytes[at] ^= 0xff;
    fs::write(&victim, bytes).unwrap();
    let out = bin().args(["verify", s]).output().unwrap();
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        report.contains(name),
        "verify did not name the corrupt object: {report}"
    );
    // What it says to do, done: the damaged object deleted, its file added again.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("delete its file") && said.contains("`depotfs add` the file"),
        "{said}"
    );
    fs::remove_file(&victim).unwrap();
    let again = c.dir.join("samtools:1.9--h91753b0_8");
    run(&["add", s, "--to", "all/", again.to_str().unwrap()]);
    assert!(victim.is_file(), "the add did not write the missing object");
    assert!(
        String::from_utf8(run(&["verify", s]).stdout)
            .unwrap()
            .starts_with("ok:")
    );
}

fn first_object(store: &Path) -> PathBuf {
    let layout = Layout::new(store);
    let m = layout.load_manifest().unwrap();
    let tree = LocalTree::new(Objects::new(layout.clone()));
    let e = tree
        .resolve(&m.root, "all/samtools:1.9--h91753b0_8")
        .unwrap()
        .unwrap();
    let EntryKind::File {
        content: depotfs_catalog::FileContent::Chunked(list),
        ..
    } = e.kind
    else {
        panic!("expected a chunked file")
    };
    let id: ObjectId = tree.chunk_list(&list).unwrap().chunks[1].id;
    layout.object(&id)
}

#[test]
fn second_publisher_is_refused_with_pid() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    run(&["init", s, "--name", "lock.test"]);
    let held = depotfs_publisher::Repo::open(&store).unwrap();
    let err = run_fail(&["publish", s]);
    assert!(
        err.contains(&format!("locked by pid {}", std::process::id())),
        "{err}"
    );
    // `log` reads beside the publisher at work.
    let log = String::from_utf8(run(&["log", s]).stdout).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    drop(held);
    run(&["publish", s]);
}

#[test]
fn kill_9_at_random_moments_never_loses_the_last_revision() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    run(&["init", s, "--name", "crash.test"]);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40u64 {
        fs::write(
            src.join(format!("img{i}:1--0")),
            image(i % 3, i, 400_000 + (i as usize * 7919) % 900_000),
        )
        .unwrap();
    }
    for i in 0..400u64 {
        fs::write(
            src.join(format!("small{i}:1--0")),
            format!("small file {i}\n").repeat(i as usize % 50),
        )
        .unwrap();
    }
    let baseline = t.path().join("baseline.img");
    fs::write(&baseline, b"baseline").unwrap();
    run(&["add", s, baseline.to_str().unwrap()]);
    let mut published = 1u64;
    let mut rng = 12345u64;
    for round in 0..12 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis((rng >> 33) % 400);
        let mut child = bin()
            .args([
                "add",
                s,
                "--to",
                &format!("round{round}"),
                src.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed at a random moment of its run.
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Whatever happened, the store verifies, and it shows either the last revision we
        // know of or (if the add completed) the next one.
        let out = run(&["verify", s]);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ok:"),
            "round {round}"
        );
        let m = Layout::new(&store).load_manifest().unwrap();
        assert!(
            m.revision == published || m.revision == published + 1,
            "round {round}: revision {}",
            m.revision
        );
        if m.revision == published + 1 {
            published += 1;
        }
        assert_eq!(
            run(&["cat", s, "baseline.img"]).stdout,
            b"baseline",
            "round {round}"
        );
        let _ = (killed, status);
        // A run killed after staging leaves its changes staged: named and refused until
        // the operator discards them (or publishes them with --include-interrupted).
        let st = String::from_utf8_lossy(&run(&["status", s]).stdout).into_owned();
        if st.contains("INTERRUPTED") {
            let err = run_fail(&["add", s, baseline.to_str().unwrap()]);
            assert!(err.contains("interrupted run"), "round {round}: {err}");
            run(&["abort", s]);
        }
    }
    // Running the command again completes; gc removes what the killed runs orphaned.
    run(&["add", s, "--to", "final", src.to_str().unwrap()]);
    run(&["gc", s, "--keep", "1"]);
    assert!(String::from_utf8_lossy(&run(&["verify", s]).stdout).starts_with("ok:"));
    assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    let got = run(&["cat", s, "final/src/img7:1--0"]).stdout;
    assert!(got == fs::read(src.join("img7:1--0")).unwrap());
}

#[test]
fn bad_input_is_refused_naming_the_path() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    run(&["init", s, "--name", "bad.input"]);
    // A name that is not UTF-8.
    let bad = t.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    fs::write(&bad, b"x").unwrap();
    let err = run_fail(&["add", s, bad.to_str().unwrap_or(&bad.to_string_lossy())]);
    assert!(
        err.contains("bad") && (err.contains("UTF-8") || err.contains("No such")),
        "{err}"
    );
    let d = t.path().join("withbad");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(std::ffi::OsStr::from_bytes(b"x\xfe")), b"x").unwrap();
    let err = run_fail(&["add", s, d.to_str().unwrap()]);
    assert!(
        err.contains("withbad/x") && err.contains("not UTF-8"),
        "{err}"
    );
    // A vanished file (named in --from-list but gone).
    let list = t.path().join("list");
    fs::write(&list, format!("{}\n", t.path().join("gone.img").display())).unwrap();
    let err = run_fail(&["add", s, "--from-list", list.to_str().unwrap()]);
    assert!(err.contains("gone.img"), "{err}");
    // An unreadable file (root reads anything chmod'ed, so use one the kernel refuses).
    let err = run_fail(&["add", s, "/proc/self/mem"]);
    assert!(err.contains("/proc/self/mem"), "{err}");
    // Fifos are skipped with a warning; the rest is added.
    let d2 = t.path().join("mixed");
    fs::create_dir_all(&d2).unwrap();
    fs::write(d2.join("ok"), b"fine").unwrap();
    let fifo = d2.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = bin()
        .env("RUST_LOG", "warn")
        .args(["add", s, d2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mixed/fifo"));
    assert_eq!(run(&["cat", s, "mixed/ok"]).stdout, b"fine");
    // Nothing of the failed adds was published; the store verifies.
    assert!(String::from_utf8_lossy(&run(&["verify", s]).stdout).starts_with("ok:"));
    assert!(run_fail(&["add", s, "--to", "../x", d2.to_str().unwrap()]).contains(".."));
}

#[test]
fn sparse_file_over_4_gib_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    run(&["init", s, "--name", "big.test"]);
    let big = t.path().join("big.img");
    let len: u64 = (4 << 30) + 12345;
    {
        let f = fs::File::create(&big).unwrap();
        f.set_len(len).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail of a file beyond 4 GiB", len - 27)
            .unwrap();
    }
    run(&["add", s, big.to_str().unwrap()]);
    let mut child = bin()
        .args(["cat", s, "big.img"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut stdout, &mut h).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(n, len);
    let mut src = fs::File::open(&big).unwrap();
    let mut h2 = blake3::Hasher::new();
    std::io::copy(&mut src, &mut h2).unwrap();
    assert_eq!(h.finalize(), h2.finalize());
    // Zeros dedupe: the store holds far less than the file.
    let stored: u64 = du(&store.join("public/objects"));
    assert!(stored < 16 << 20, "stored {stored} bytes for a sparse file");
}

fn du(p: &Path) -> u64 {
    fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                du(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
