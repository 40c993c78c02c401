//! The parts of staging and publishing that need no store: paths, the dirty set, and the
//! digest that decides whether a directory's mtime moves.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::*;
use crate::db::{depth, mark_dirty};

fn file(size: u64, mtime_ns: i64) -> Node {
    Node {
        mode: 0o644,
        mtime_ns,
        kind: NodeKind::File {
            size,
            content: FileContent::Single(ObjectId::of(b"x")),
        },
    }
}

fn dir_node() -> Node {
    Node {
        mode: 0o755,
        mtime_ns: 0,
        kind: NodeKind::Dir,
    }
}

fn digest(entries: &[(&str, &Node)]) -> blake3::Hash {
    let mut d = blake3::Hasher::new();
    for (name, node) in entries {
        digest_entry(&mut d, name, node);
    }
    d.finalize()
}

#[test]
fn depth_counts_path_components() {
    assert_eq!(depth(""), 0);
    assert_eq!(depth("a"), 1);
    assert_eq!(depth("a/b/c"), 3);
}

/// Marking a directory dirty marks every ancestor up to the root, and stops early at one
/// already marked (its ancestors are then marked too).
#[test]
fn marking_dirty_reaches_the_root() {
    let mut dirty = BTreeSet::new();
    mark_dirty(&mut dirty, "a/b/c");
    assert_eq!(
        dirty.iter().map(String::as_str).collect::<Vec<_>>(),
        ["", "a", "a/b", "a/b/c"]
    );
    mark_dirty(&mut dirty, "a/x");
    assert!(dirty.contains("a/x"));
    assert_eq!(dirty.len(), 5);
    mark_dirty(&mut dirty, "");
    assert_eq!(dirty.len(), 5);
}

/// A file's size, mode and mtime move its directory's digest; a subdirectory counts by name
/// and mode only, so a change deep below does not move every ancestor's mtime.
#[test]
fn the_digest_sees_file_changes_but_not_subdirectory_contents() {
    let base = digest(&[("f", &file(1, 0))]);
    assert_eq!(base, digest(&[("f", &file(1, 0))]));
    assert_ne!(base, digest(&[("f", &file(2, 0))]));
    assert_ne!(base, digest(&[("f", &file(1, 5))]));
    assert_ne!(base, digest(&[("g", &file(1, 0))]));
    let dir = |mode, mtime_ns| Node {
        mode,
        mtime_ns,
        kind: NodeKind::Dir,
    };
    assert_eq!(
        digest(&[("d", &dir(0o755, 1))]),
        digest(&[("d", &dir(0o755, 2))])
    );
    assert_ne!(
        digest(&[("d", &dir(0o755, 1))]),
        digest(&[("d", &dir(0o700, 1))])
    );
}

#[test]
fn panic_text_reads_both_kinds_of_message() {
    let owned = std::panic::catch_unwind(|| panic!("{}", String::from("owned"))).unwrap_err();
    assert_eq!(panic_text(&owned), "owned");
    let fixed = std::panic::catch_unwind(|| std::panic::panic_any("fixed")).unwrap_err();
    assert_eq!(panic_text(&fixed), "fixed");
    let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
    assert_eq!(panic_text(&other), "no message");
}

/// A new store at `dir/store` with revision 1 holding the file `a` (its content need not
/// exist: publishing writes directory nodes only).
fn store_with_a(dir: &Path) -> Repo {
    let repo = Repo::init(&dir.join("store"), "test").unwrap();
    repo.stage_add("", vec![("a".into(), file(1, 1))]).unwrap();
    assert_eq!(repo.publish(None, false).unwrap().unwrap().0, 1);
    repo
}

/// Revisions recorded in the catalog, and the revision the served manifest shows.
fn revisions(repo: &Repo) -> (Vec<u64>, u64) {
    let recorded = repo.revisions().unwrap().iter().map(|r| r.0).collect();
    (recorded, repo.layout.load_manifest().unwrap().revision)
}

/// `STORE/tmp` made unusable (a file in its place), so the manifest cannot be written (objects
/// are written without it); [`restore_tmp`] puts it back.
fn break_tmp(repo: &Repo) {
    let tmp = repo.layout.tmp();
    fs::remove_dir_all(&tmp).unwrap();
    fs::write(&tmp, b"not a directory").unwrap();
}

fn restore_tmp(repo: &Repo) {
    let tmp = repo.layout.tmp();
    fs::remove_file(&tmp).unwrap();
    fs::create_dir(&tmp).unwrap();
}

/// A tag that already names a revision refuses the whole publish: no revision is added,
/// what was staged stays staged, and the next publish takes it.
#[test]
fn a_taken_tag_refuses_the_publish_and_keeps_the_staged_changes() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    assert_eq!(repo.publish(Some("v1"), false).unwrap(), None, "tags rev 1");
    repo.stage_add("", vec![("b".into(), file(2, 2))]).unwrap();
    let err = repo.publish(Some("v1"), false).unwrap_err().to_string();
    assert!(err.contains("\"v1\" already names revision 1"), "{err}");
    assert_eq!(revisions(&repo), (vec![0, 1], 1));
    assert!(repo.has_staged().unwrap());
    let (rev, rec) = repo.publish(Some("v2"), false).unwrap().unwrap();
    assert_eq!((rev, rec.files, rec.tag.as_deref()), (2, 2, Some("v2")));
}

/// A publish whose directory nodes cannot be written records nothing: the catalog keeps
/// the last revision, the manifest still shows it, and the change stays staged for the
/// next publish.
#[test]
fn a_failed_object_write_keeps_the_last_revision_and_the_staged_change() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    repo.stage_add("", vec![("b".into(), file(2, 2))]).unwrap();
    // `public/objects` a file: no new directory node can be written.
    let objects = repo.layout.public().join("objects");
    let aside = repo.layout.public().join("objects.aside");
    fs::rename(&objects, &aside).unwrap();
    fs::write(&objects, b"not a directory").unwrap();
    let err = repo.publish(None, false).unwrap_err();
    assert!(
        !matches!(err, Error::ManifestPending { .. }),
        "failed before the commit, not at the manifest: {err}"
    );
    assert_eq!(revisions(&repo), (vec![0, 1], 1));
    assert!(repo.has_staged().unwrap());
    fs::remove_file(&objects).unwrap();
    fs::rename(&aside, &objects).unwrap();
    let (rev, rec) = repo.publish(None, false).unwrap().unwrap();
    assert_eq!((rev, rec.files), (2, 2));
    assert_eq!(revisions(&repo), (vec![0, 1, 2], 2));
}

/// A publish that committed its revision but could not write the manifest says so
/// (`ManifestPending`, naming the revision); the manifest keeps showing the previous
/// revision until the store is opened again, which writes the recorded one.
#[test]
fn a_failed_manifest_write_is_finished_by_the_next_open() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    // Removing `a` brings back revision 0's empty root: no new object, so only the
    // manifest goes through the broken tmp directory.
    repo.stage_rm(&["a".into()]).unwrap();
    break_tmp(&repo);
    match repo.publish(None, false).unwrap_err() {
        Error::ManifestPending { rev, .. } => assert_eq!(rev, 2),
        other => panic!("not ManifestPending: {other}"),
    }
    assert_eq!(revisions(&repo), (vec![0, 1, 2], 1));
    assert!(!repo.has_staged().unwrap());
    restore_tmp(&repo);
    drop(repo);
    let repo = Repo::open(&t.path().join("store")).unwrap();
    assert_eq!(revisions(&repo), (vec![0, 1, 2], 2));
    assert_eq!(
        repo.layout.load_manifest().unwrap().root,
        repo.revisions().unwrap()[0].1.root
    );
}

/// Replacing a subtree is one transaction: when staging the new subtree fails, the old one is
/// still there, and nothing of the removal is staged (`depotfs import` of an image that
/// fails keeps the image imported before).
#[test]
fn a_replacement_that_fails_keeps_the_old_subtree() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    let dir = dir_node();
    repo.stage_replace(
        "img/x",
        vec![
            ("img/x".into(), dir.clone()),
            ("img/x/f".into(), file(3, 3)),
        ],
    )
    .unwrap();
    assert_eq!(repo.publish(None, false).unwrap().unwrap().0, 2);
    // The second node names the root, which no subtree may replace: staging fails after the
    // old subtree was removed inside the transaction.
    let err = repo
        .stage_replace(
            "img/x",
            vec![("img/x".into(), dir), ("".into(), file(4, 4))],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot replace the root"), "{err}");
    assert!(!repo.has_staged().unwrap(), "nothing staged");
    assert_eq!(
        repo.list_dir("img/x").unwrap(),
        vec![("f".to_string(), file(3, 3))]
    );
}

/// Removing a subtree deeper than a thread's stack would allow by recursion: a chain of
/// 3,000 directories, removed on a thread with a 256 KiB stack.
#[test]
fn a_very_deep_subtree_is_removed_without_recursion() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    let dir = dir_node();
    let mut nodes = Vec::new();
    let mut path = String::from("deep");
    for _ in 0..3000 {
        nodes.push((path.clone(), dir.clone()));
        path.push_str("/d");
    }
    nodes.push((path, file(5, 5)));
    repo.stage_add("", nodes).unwrap();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn_scoped(s, || repo.stage_rm(&["deep".to_string()]).unwrap())
            .unwrap()
            .join()
            .unwrap()
    });
    assert!(repo.list_dir("deep").unwrap().is_empty());
    assert_eq!(repo.list_dir("").unwrap().len(), 1, "only a is left");
}

/// A gc keeping more revisions than an earlier gc did skips the revisions that one pruned
/// (their objects are gone) instead of failing on a missing object.
#[test]
fn a_gc_keeping_more_than_an_earlier_one_skips_pruned_revisions() {
    let t = tempfile::tempdir().unwrap();
    let repo = store_with_a(t.path());
    for i in 2..=6u64 {
        repo.stage_add(&format!("d{i}"), vec![(format!("f{i}"), file(i, i as i64))])
            .unwrap();
        repo.publish(None, false).unwrap().unwrap();
    }
    repo.gc(2).unwrap();
    let root1 = repo
        .revisions()
        .unwrap()
        .into_iter()
        .find(|r| r.0 == 1)
        .unwrap()
        .1;
    assert!(root1.pruned);
    assert!(
        !repo.layout.object(&root1.root).exists(),
        "the first gc deleted revision 1's root"
    );
    repo.gc(10).unwrap();
    repo.gc(3).unwrap();

    // A directory among the objects is left alone; a missing object a kept revision needs
    // stops gc before it deletes anything, naming the revision.
    let stray = repo.layout.objects().join("80/lost+found");
    fs::create_dir_all(&stray).unwrap();
    repo.gc(3).unwrap();
    assert!(stray.is_dir());
    let (rev, rec) = repo
        .revisions()
        .unwrap()
        .into_iter()
        .find(|r| r.0 == 5)
        .unwrap();
    let node = repo.layout.object(&rec.root);
    let aside = t.path().join("aside");
    fs::rename(&node, &aside).unwrap();
    let err = repo.gc(3).unwrap_err().to_string();
    assert!(
        err.contains("gc deleted nothing") && err.contains(&format!("revision {rev} needs")),
        "{err}"
    );
    fs::rename(&aside, &node).unwrap();
    repo.gc(3).unwrap();
}

/// A catalog older than the published manifest (put back from a copy) is refused with what
/// to do, and the manifest is left as it was: a revision number is never published again
/// with another tree.
#[test]
fn a_catalog_older_than_the_manifest_is_refused_not_rewound() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let repo = store_with_a(t.path());
    let catalog = repo.layout.catalog();
    drop(repo);
    let copy = t.path().join("catalog.copy");
    fs::copy(&catalog, &copy).unwrap();
    let repo = Repo::open(&store).unwrap();
    repo.stage_add("", vec![("b".into(), file(2, 2))]).unwrap();
    repo.publish(None, false).unwrap().unwrap();
    let manifest = fs::read(repo.layout.manifest()).unwrap();
    drop(repo);
    fs::copy(&copy, &catalog).unwrap();
    let err = Repo::open(&store).unwrap_err().to_string();
    assert!(
        err.contains("the catalog is damaged or older than what was published")
            && err.contains("rebuild-catalog"),
        "{err}"
    );
    assert_eq!(fs::read(Layout::new(&store).manifest()).unwrap(), manifest);
}

/// A missing `public/repo.pub` is made again from the signing key, and the manifest, which
/// then verifies, is not rewritten; a deleted `STORE/tmp` is made again, and what a killed
/// command left in it is removed.
#[test]
fn a_missing_public_key_and_tmp_are_made_again_at_open() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let repo = store_with_a(t.path());
    let layout = repo.layout.clone();
    let key = fs::read(layout.public_key()).unwrap();
    let manifest = fs::read(layout.manifest()).unwrap();
    drop(repo);
    fs::remove_file(layout.public_key()).unwrap();
    drop(Repo::open(&store).unwrap());
    assert_eq!(fs::read(layout.public_key()).unwrap(), key);
    assert_eq!(fs::read(layout.manifest()).unwrap(), manifest);

    fs::create_dir_all(layout.tmp().join("mark-1234/runs")).unwrap();
    fs::write(layout.tmp().join("manifest.99.1"), b"half").unwrap();
    drop(Repo::open(&store).unwrap());
    assert_eq!(fs::read_dir(layout.tmp()).unwrap().count(), 0);
    fs::remove_dir_all(layout.tmp()).unwrap();
    let repo = Repo::open(&store).unwrap();
    repo.stage_add("", vec![("b".into(), file(2, 2))]).unwrap();
    assert_eq!(repo.publish(None, false).unwrap().unwrap().0, 2);
}
