//! The parts of staging and publishing that need no store: paths, the dirty set, and the
//! digest that decides whether a directory's mtime moves.

use std::collections::BTreeSet;

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
