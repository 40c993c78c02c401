//! The publisher's store under damage and odd input (#16 items 3, 10, 11), through the real
//! `depotfs` binary: object kind collisions, stores of another format, damaged catalog pages
//! and `rebuild-catalog`, over-long names, a manifest that cannot be written, the lock holder.

mod cli_run;
mod http_suite;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cli_run::{depotfs, fails, ok, ok_stdout};
use depotfs_catalog::{EntryKind, FileContent};
use depotfs_publisher::db::{Node, NodeKind};

/// A store with a few directories, files and a link, published as revision 1. Returns
/// (tempdir, store, source tree).
fn sample_store() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    fs::create_dir_all(src.join("tools/samtools")).unwrap();
    fs::create_dir_all(src.join("tools/empty")).unwrap();
    for i in 0..40 {
        fs::write(
            src.join(format!("tools/samtools/1.{i}")),
            format!("image {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    fs::write(
        src.join("tools/big"),
        http_suite::random_bytes(700 << 10, 3),
    )
    .unwrap();
    std::os::unix::fs::symlink("samtools/1.3", src.join("tools/latest")).unwrap();
    ok(depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "damage.test".as_ref(),
    ]));
    add(&store, "all/", &src.join("tools"));
    (t, store, src)
}

fn add(store: &Path, to: &str, path: &Path) -> Output {
    ok(depotfs(&[
        "add".as_ref(),
        store.as_os_str(),
        "--to".as_ref(),
        to.as_ref(),
        path.as_os_str(),
    ]))
}

fn cmd(args: &[&str], store: &Path) -> Output {
    let mut a: Vec<&std::ffi::OsStr> = vec![args[0].as_ref(), store.as_os_str()];
    a.extend(args[1..].iter().map(|s| std::ffi::OsStr::new(*s)));
    depotfs(&a)
}

/// Every path of the published tree with its kind, mode, size and content (`cat` of every
/// file): what a client would see.
fn published_tree(store: &Path) -> Vec<String> {
    let reader = depotfs_publisher::reader::LocalTree::new(depotfs_publisher::store::Objects::new(
        depotfs_publisher::store::Layout::new(store),
    ));
    let m = depotfs_publisher::store::Layout::new(store)
        .load_manifest()
        .unwrap();
    let mut out = Vec::new();
    reader
        .walk(&m.root, "", &mut |path, e| {
            let what = match &e.kind {
                EntryKind::File { size, .. } => {
                    let body = ok(cmd(&["cat", path], store)).stdout;
                    assert_eq!(body.len() as u64, *size);
                    format!("file {size} {}", blake3::hash(&body).to_hex())
                }
                EntryKind::Dir { entries, .. } => format!("dir {entries}"),
                EntryKind::Symlink { target } => format!("link {target}"),
            };
            out.push(format!("{path} {:o} {} {what}", e.mode, e.mtime_ns));
            Ok(true)
        })
        .unwrap();
    out
}

/// #16 item 3: a file whose bytes are an encoded directory node (two NUL bytes are the
/// empty directory) next to an empty directory: both readable, `verify` clean. In format 1
/// they shared one id, so the file read "is a DirNode, expected a Chunk".
#[test]
fn a_file_equal_to_a_directory_node_is_its_own_object() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d/empty")).unwrap();
    fs::write(src.join("d/two-nuls"), [0u8, 0]).unwrap();
    ok(depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "kinds.test".as_ref(),
    ]));
    add(&store, "/", &src.join("d"));
    assert_eq!(ok(cmd(&["cat", "d/two-nuls"], &store)).stdout, [0, 0]);
    assert_eq!(ok_stdout(cmd(&["ls", "d/empty"], &store)).trim(), "");
    assert!(ok_stdout(cmd(&["ls", "d"], &store)).contains("two-nuls"));
    ok(cmd(&["verify"], &store));
}

/// #16 item 3, `verify`: a tree that uses one id as two kinds (a file whose content id is a
/// directory node's, as a format-1 collision left behind) is reported, not skipped because
/// the id was already seen as the other kind.
#[test]
fn verify_reports_an_id_used_as_two_kinds() {
    let (_t, store, _src) = sample_store();
    let empty = {
        let out = ok_stdout(cmd(&["ls", "all/tools"], &store));
        assert!(out.contains("empty"), "{out}");
        let reader = depotfs_publisher::reader::LocalTree::new(
            depotfs_publisher::store::Objects::new(depotfs_publisher::store::Layout::new(&store)),
        );
        let m = depotfs_publisher::store::Layout::new(&store)
            .load_manifest()
            .unwrap();
        match reader
            .resolve(&m.root, "all/tools/empty")
            .unwrap()
            .unwrap()
            .kind
        {
            EntryKind::Dir { tree, .. } => tree,
            k => panic!("{k:?}"),
        }
    };
    {
        let repo = depotfs_publisher::Repo::open(&store).unwrap();
        let node = Node {
            mode: 0o644,
            mtime_ns: 0,
            kind: NodeKind::File {
                size: 2,
                content: FileContent::Single(empty),
            },
        };
        repo.stage_add("all/tools", vec![("all/tools/collides".into(), node)])
            .unwrap();
        repo.publish(None, false).unwrap();
    }
    let out = cmd(&["verify"], &store);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "verify passed: {text}");
    assert!(
        text.contains(&empty.to_hex()) && text.contains("is a DirNode, expected a Chunk"),
        "{text}"
    );
}

/// #16 item 3: a format-1 store (its catalog has no `format` row) is refused by name, with
/// what to do.
#[test]
fn a_format_1_store_is_refused_naming_it() {
    let (_t, store, _src) = sample_store();
    {
        let db = redb::Database::open(store.join("catalog.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(depotfs_publisher::db::META)
            .unwrap()
            .remove("format")
            .unwrap();
        txn.commit().unwrap();
    }
    for args in [&["log"][..], &["verify"], &["publish"], &["gc"]] {
        let err = fails(cmd(args, &store));
        assert!(
            err.contains(&store.display().to_string())
                && err.contains("store format 1 is older")
                && err.contains("depotfs init"),
            "{args:?}: {err}"
        );
    }
}

/// Zero 4 KiB page `page` of `file`.
fn zero_page(file: &Path, page: u64) {
    let st = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", file.display()),
            "bs=4096",
            &format!("seek={page}"),
            "count=1",
            "conv=notrunc",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

/// #16 item 10: every 4 KiB page of the catalog zeroed in turn: `log`, `verify`, `gc` and
/// `add` never panic (redb's `unreachable`, exit 101); they work (a free page) or say the
/// catalog is damaged and name `depotfs rebuild-catalog STORE`.
#[test]
fn a_zeroed_catalog_page_never_panics() {
    let (t, store, src) = sample_store();
    let catalog = store.join("catalog.redb");
    let good = t.path().join("good.redb");
    fs::copy(&catalog, &good).unwrap();
    let pages = fs::metadata(&good).unwrap().len() / 4096;
    assert!(pages >= 4, "{pages} pages");
    // The manifest goes back with the catalog (see a_page_zeroed_after_a_clean_close_is_found).
    let good_manifest = fs::read(store.join("public/manifest")).unwrap();
    let mut damaged = 0;
    for page in 0..pages {
        for args in [
            vec!["log"],
            vec!["verify"],
            vec!["gc", "--keep", "5"],
            vec![
                "add",
                "--to",
                "more/",
                src.join("tools/big").to_str().unwrap(),
            ],
        ] {
            fs::copy(&good, &catalog).unwrap();
            fs::write(store.join("public/manifest"), &good_manifest).unwrap();
            zero_page(&catalog, page);
            let out = cmd(&args, &store);
            damaged += usize::from(failed_on_damage(&out, &store, page, &args));
        }
    }
    assert!(damaged > 0, "no zeroed page was noticed");
}

/// `out` of `args` on `store` whose catalog has page `page` zeroed: never a panic (redb's
/// `unreachable`, exit 101). True if it failed (other than `verify`, which may fail listing
/// what it found), and then it says the catalog is damaged and names `depotfs
/// rebuild-catalog STORE`.
fn failed_on_damage(out: &Output, store: &Path, page: u64, args: &[&str]) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "page {page}, {args:?}: {err}");
    assert!(!err.contains("panicked"), "page {page}, {args:?}: {err}");
    if out.status.success() || args.contains(&"verify") {
        return false;
    }
    assert!(
        err.contains("the catalog is damaged")
            && err.contains(&format!("depotfs rebuild-catalog {}", store.display())),
        "page {page}, {args:?}: {err}"
    );
    true
}

/// #16 item 10: `rebuild-catalog` after a damaged page: the same published tree, `verify`
/// clean, and `add` publishes the next revision on top with unchanged directories keeping
/// their mtimes.
#[test]
fn rebuild_catalog_after_a_zeroed_page() {
    let (t, store, _src) = sample_store();
    let before = published_tree(&store);
    let catalog = store.join("catalog.redb");
    let good = t.path().join("good.redb");
    fs::copy(&catalog, &good).unwrap();
    let pages = fs::metadata(&good).unwrap().len() / 4096;
    let page = (1..pages)
        .find(|&p| {
            fs::copy(&good, &catalog).unwrap();
            zero_page(&catalog, p);
            !cmd(&["log"], &store).status.success()
        })
        .expect("some page is in use");
    assert!(fails(cmd(&["verify"], &store)).contains("the catalog is damaged"));
    let out = ok_stdout(cmd(&["rebuild-catalog"], &store));
    assert!(out.contains("from revision 1"), "{out}");
    assert!(store.join("catalog.redb.damaged").exists());
    ok(cmd(&["verify"], &store));
    assert_eq!(published_tree(&store), before, "after zeroing page {page}");
    let log = ok_stdout(cmd(&["log"], &store));
    assert!(log.contains("     1  "), "{log}");
    // Work goes on: a new file, revision 2; everything else as it was.
    let extra = t.path().join("extra");
    fs::write(&extra, b"new image\n").unwrap();
    add(&store, "all/tools/samtools", &extra);
    ok(cmd(&["verify"], &store));
    let after = published_tree(&store);
    assert!(ok_stdout(cmd(&["log"], &store)).contains("     2  "));
    let unchanged = |p: &str| after.iter().find(|l| l.starts_with(p)).cloned();
    for p in ["all/tools/big ", "all/tools/empty ", "all/tools/latest "] {
        assert_eq!(
            unchanged(p),
            before.iter().find(|l| l.starts_with(p)).cloned(),
            "{p}"
        );
    }
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("all/tools/samtools/extra ") && l.contains(" file 10 ")),
        "{after:?}"
    );
    assert_eq!(after.len(), before.len() + 1);
}

/// #16 item 11: a `--to` component longer than 255 bytes is refused (the kernel could never
/// look such a name up); 255 bytes is fine.
#[test]
fn to_components_longer_than_255_bytes_are_refused() {
    let (t, store, _src) = sample_store();
    let f = t.path().join("f");
    fs::write(&f, b"x").unwrap();
    let long = "a".repeat(256);
    let err = fails(depotfs(&[
        "add".as_ref(),
        store.as_os_str(),
        "--to".as_ref(),
        format!("all/{long}/").as_ref(),
        f.as_os_str(),
    ]));
    assert!(
        err.contains("256 bytes long") && err.contains("255"),
        "{err}"
    );
    add(&store, &format!("all/{}/", "b".repeat(255)), &f);
}

/// #16 item 11: `add` whose manifest cannot be written says exactly that the revision is
/// committed and when it will be published; the next command publishes it.
#[test]
fn a_failed_manifest_write_says_the_revision_is_committed() {
    let (t, store, _src) = sample_store();
    let f = t.path().join("f");
    fs::write(&f, b"x").unwrap();
    // The manifest is written through STORE/tmp: make that impossible.
    fs::remove_dir_all(store.join("tmp")).unwrap();
    fs::write(store.join("tmp"), b"not a directory").unwrap();
    let err = fails(depotfs(&[
        "add".as_ref(),
        store.as_os_str(),
        "--to".as_ref(),
        "all/".as_ref(),
        f.as_os_str(),
    ]));
    assert!(
        err.contains("revision 2 is committed in the catalog")
            && err.contains("it is not served yet")
            && err.contains("the next depotfs command that opens this store"),
        "{err}"
    );
    let manifest = || fs::read_to_string(store.join("public/manifest")).unwrap();
    assert!(manifest().contains("\nrevision 1\n"));
    fs::remove_file(store.join("tmp")).unwrap();
    fs::create_dir(store.join("tmp")).unwrap();
    ok(cmd(&["log"], &store));
    assert!(manifest().contains("\nrevision 2\n"), "{}", manifest());
    ok(cmd(&["verify"], &store));
}

/// #16 item 11: the lock message names the holder's pid even when the holder has not
/// written it into the lock file (here `flock(1)`, which writes nothing).
#[test]
fn the_lock_message_names_a_holder_that_wrote_no_pid() {
    let (_t, store, _src) = sample_store();
    let lock = store.join("lock");
    fs::write(&lock, b"").unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    cli_run::poll(std::time::Duration::from_secs(10), "flock taken", || {
        fs::read_to_string("/proc/locks")
            .unwrap()
            .contains(&format!(" {} ", holder.id()))
    });
    let err = fails(cmd(&["publish"], &store));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        err.contains(&format!("locked by pid {}", holder.id())),
        "{err}"
    );
}

/// `cmd` with the publisher's debug log on stderr (what `open_catalog` decided).
fn logged(args: &[&str], store: &Path) -> Output {
    let mut a: Vec<&std::ffi::OsStr> = vec![args[0].as_ref(), store.as_os_str()];
    a.extend(args[1..].iter().map(|s| std::ffi::OsStr::new(*s)));
    Command::new(cli_run::BIN)
        .args(a)
        .env("RUST_LOG", "depotfs_publisher=debug")
        .output()
        .unwrap()
}

const CHECK_SKIPPED: &str = "unchanged since the last clean close: integrity check skipped";
const CHECK_FULL: &str = "checking every page of the catalog";

/// #18: the integrity check reads the whole catalog; an open of a catalog exactly as the last
/// clean close left it skips it, `verify` and `gc` never do, and an outside write (same
/// inode, same size) makes the next open check in full again.
#[test]
fn a_catalog_unchanged_since_a_clean_close_is_not_checked_again() {
    let (_t, store, _src) = sample_store();
    assert!(store.join("catalog.redb.clean").is_file());
    for _ in 0..2 {
        let err = String::from_utf8(ok(logged(&["log"], &store)).stderr).unwrap();
        assert!(
            err.contains(CHECK_SKIPPED) && !err.contains(CHECK_FULL),
            "{err}"
        );
    }
    for args in [&["verify"][..], &["gc", "--keep", "5"]] {
        let err = String::from_utf8(ok(logged(args, &store)).stderr).unwrap();
        assert!(
            err.contains(&format!("{CHECK_FULL} (asked for)")),
            "{args:?}: {err}"
        );
    }
    let catalog = store.join("catalog.redb");
    fs::write(&catalog, fs::read(&catalog).unwrap()).unwrap();
    let err = String::from_utf8(ok(logged(&["log"], &store)).stderr).unwrap();
    assert!(
        err.contains(&format!(
            "{CHECK_FULL} (not as the last clean close left it)"
        )),
        "{err}"
    );
    let err = String::from_utf8(ok(logged(&["log"], &store)).stderr).unwrap();
    assert!(err.contains(CHECK_SKIPPED), "{err}");
}

/// #18 with #16 item 10: a page zeroed after a clean close (the record of that close in
/// place) is still found: `log` and `add` say the catalog is damaged or work, never panic.
#[test]
fn a_page_zeroed_after_a_clean_close_is_found() {
    let (t, store, src) = sample_store();
    let big = src.join("tools/big");
    let big = big.to_str().unwrap();
    let good = t.path().join("good.redb");
    let catalog = store.join("catalog.redb");
    fs::copy(&catalog, &good).unwrap();
    // An `add` that got through publishes revision 2: the manifest goes back with the
    // catalog (a catalog older than the manifest is refused, not "recovered").
    let good_manifest = fs::read(store.join("public/manifest")).unwrap();
    let mut damaged = 0;
    for page in 0..fs::metadata(&good).unwrap().len() / 4096 {
        for args in [&["log"][..], &["add", "--to", "more/", big]] {
            fs::copy(&good, &catalog).unwrap();
            fs::write(store.join("public/manifest"), &good_manifest).unwrap();
            // A clean close of the good catalog, recorded; then the outside write.
            ok(cmd(&["log"], &store));
            assert!(store.join("catalog.redb.clean").is_file());
            zero_page(&catalog, page);
            damaged += usize::from(failed_on_damage(&cmd(args, &store), &store, page, args));
        }
    }
    assert!(damaged > 0, "no zeroed page was noticed");
}
