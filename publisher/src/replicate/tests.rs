//! The walk's step from a verified object to the objects below it, without a server.

use super::*;

/// A verified object of `kind` holding `plaintext`.
fn verified(kind: ObjectKind, plaintext: &[u8]) -> object::Verified {
    let enc = object::encode(kind, plaintext, 1);
    object::decode(enc.id, kind, &enc.bytes, 64 << 20).unwrap()
}

/// A directory leaf names its subdirectories' trees, its files' single chunks (bounded by
/// the file size) and chunk lists; empty files and symlinks have no object. A chunk list
/// names its chunks with their lengths; a chunk has no children.
#[test]
fn children_carry_the_kind_and_bound_their_referrer_gives() {
    let (tree, chunk, list) = (
        ObjectId::of(b"tree"),
        ObjectId::of(b"chunk"),
        ObjectId::of(b"list"),
    );
    let entry = |name: &str, kind: EntryKind| depotfs_catalog::Entry {
        name: name.into(),
        mode: 0o644,
        mtime_ns: 0,
        kind,
    };
    let leaf = DirNode::Leaf(vec![
        entry("a", EntryKind::Dir { tree, entries: 3 }),
        entry(
            "b",
            EntryKind::File {
                size: 0,
                content: FileContent::Empty,
            },
        ),
        entry(
            "c",
            EntryKind::File {
                size: 10,
                content: FileContent::Single(chunk),
            },
        ),
        entry(
            "d",
            EntryKind::File {
                size: 5 << 20,
                content: FileContent::Chunked(list),
            },
        ),
        entry("e", EntryKind::Symlink { target: "a".into() }),
    ]);
    let v = verified(ObjectKind::DirNode, &leaf.to_bytes());
    assert_eq!(
        children(&v).unwrap(),
        [
            (tree, ObjectKind::DirNode, NODE_MAX_BYTES),
            (chunk, ObjectKind::Chunk, 10),
            (list, ObjectKind::ChunkList, CHUNK_LIST_MAX),
        ]
    );

    let cl = ChunkList {
        chunks: vec![
            depotfs_catalog::ChunkRef { id: chunk, len: 7 },
            depotfs_catalog::ChunkRef { id: tree, len: 9 },
        ],
        prefetch: Vec::new(),
    };
    let v = verified(ObjectKind::ChunkList, &cl.to_bytes());
    assert_eq!(
        children(&v).unwrap(),
        [(chunk, ObjectKind::Chunk, 7), (tree, ObjectKind::Chunk, 9)]
    );
    assert!(
        children(&verified(ObjectKind::Chunk, b"bytes"))
            .unwrap()
            .is_empty()
    );
}

/// A directory node whose bytes do not parse is an error for the walk to report, not a
/// panic and not an empty list (which would make a broken subtree look complete).
#[test]
fn an_unparsable_node_is_an_error() {
    let v = verified(ObjectKind::DirNode, b"not a directory node");
    assert!(children(&v).is_err());
}
