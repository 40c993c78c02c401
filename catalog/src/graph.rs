//! The object graph: which objects a verified object refers to.
//!
//! A published revision is a graph of objects under its root directory node: index nodes
//! point to the nodes of the same directory, leaves to subdirectories' top nodes, to chunk
//! lists and to single-chunk files; chunk lists point to chunks. Everything that walks it —
//! `replicate` (fetch what is missing), `gc` (mark what is live), `verify` (check what is
//! retained) and the client's directory prefetch — asks [`children`] (or [`node_children`] for
//! a node it has already parsed) for the next step, so the kind and the size bound each
//! reference carries are decided here once.

use crate::chunking::ChunkList;
use crate::dir::{DirNode, EntryKind, FileContent, NODE_MAX_BYTES};
use crate::object::{ObjectKind, Verified};
use crate::{Error, ObjectId};

/// Largest chunk-list plaintext accepted (a 10 GiB file has ~40,000 chunks of ~40 bytes).
pub const CHUNK_LIST_MAX: u64 = 64 << 20;

/// How a child is reached from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edge {
    /// Another node of the same directory's tree (from an index node).
    Index,
    /// The top node of a subdirectory (from a leaf).
    Subdir,
    /// A chunked file's chunk list (from a leaf).
    ChunkList,
    /// File data: a single-chunk file (from a leaf) or one chunk of a chunk list.
    Data,
}

/// One reference from an object to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Child {
    /// The object referred to.
    pub id: ObjectId,
    /// The kind it must be.
    pub kind: ObjectKind,
    /// The largest plaintext it may have (its exact length for data).
    pub max_len: u64,
    /// How it is reached.
    pub edge: Edge,
}

impl Child {
    /// Is the child a leaf of the graph (data: it refers to nothing)?
    pub fn is_data(&self) -> bool {
        self.kind == ObjectKind::Chunk
    }
}

/// The objects a verified object refers to, in the order they appear in it.
pub fn children(v: &Verified) -> Result<Vec<Child>, Error> {
    Ok(match v.kind() {
        ObjectKind::Chunk => Vec::new(),
        ObjectKind::ChunkList => list_children(&ChunkList::from_verified(v)?),
        ObjectKind::DirNode => node_children(&DirNode::from_verified(v)?),
    })
}

/// The chunks of a chunk list.
pub fn list_children(list: &ChunkList) -> Vec<Child> {
    list.chunks
        .iter()
        .map(|c| Child {
            id: c.id,
            kind: ObjectKind::Chunk,
            max_len: u64::from(c.len),
            edge: Edge::Data,
        })
        .collect()
}

/// The references of a parsed directory node.
pub fn node_children(node: &DirNode) -> Vec<Child> {
    match node {
        DirNode::Index(cs) => cs
            .iter()
            .map(|c| Child {
                id: c.id,
                kind: ObjectKind::DirNode,
                max_len: NODE_MAX_BYTES,
                edge: Edge::Index,
            })
            .collect(),
        DirNode::Leaf(es) => es.iter().filter_map(|e| entry_child(&e.kind)).collect(),
    }
}

/// What one directory entry refers to, if anything (empty files and symlinks refer to
/// nothing).
pub fn entry_child(kind: &EntryKind) -> Option<Child> {
    match kind {
        EntryKind::Dir { tree, .. } => Some(Child {
            id: *tree,
            kind: ObjectKind::DirNode,
            max_len: NODE_MAX_BYTES,
            edge: Edge::Subdir,
        }),
        EntryKind::File { size, content } => content_child(content, *size),
        EntryKind::Symlink { .. } => None,
    }
}

/// What a file's content refers to, given the file's size.
pub fn content_child(content: &FileContent, size: u64) -> Option<Child> {
    match content {
        FileContent::Empty => None,
        FileContent::Single(id) => Some(Child {
            id: *id,
            kind: ObjectKind::Chunk,
            max_len: size,
            edge: Edge::Data,
        }),
        FileContent::Chunked(id) => Some(Child {
            id: *id,
            kind: ObjectKind::ChunkList,
            max_len: CHUNK_LIST_MAX,
            edge: Edge::ChunkList,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChunkRef;
    use crate::dir::{ChildRef, Entry};
    use crate::object;

    fn verified(kind: ObjectKind, plain: &[u8]) -> Verified {
        let enc = object::encode(kind, plain, 1);
        object::decode(enc.id, kind, &enc.bytes, 1 << 30).unwrap()
    }

    #[test]
    fn every_kind_of_reference() {
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let leaf = DirNode::Leaf(vec![
            Entry {
                name: "d".into(),
                mode: 0o755,
                mtime_ns: 0,
                kind: EntryKind::Dir {
                    tree: a,
                    entries: 1,
                },
            },
            Entry {
                name: "e".into(),
                mode: 0o644,
                mtime_ns: 0,
                kind: EntryKind::File {
                    size: 0,
                    content: FileContent::Empty,
                },
            },
            Entry {
                name: "l".into(),
                mode: 0o644,
                mtime_ns: 0,
                kind: EntryKind::File {
                    size: 9,
                    content: FileContent::Chunked(b),
                },
            },
            Entry {
                name: "s".into(),
                mode: 0o644,
                mtime_ns: 0,
                kind: EntryKind::File {
                    size: 7,
                    content: FileContent::Single(a),
                },
            },
            Entry {
                name: "sym".into(),
                mode: 0o777,
                mtime_ns: 0,
                kind: EntryKind::Symlink { target: "d".into() },
            },
        ]);
        let kids = children(&verified(ObjectKind::DirNode, &leaf.to_bytes())).unwrap();
        let got: Vec<_> = kids
            .iter()
            .map(|c| (c.id, c.kind, c.max_len, c.edge))
            .collect();
        assert_eq!(
            got,
            vec![
                (a, ObjectKind::DirNode, NODE_MAX_BYTES, Edge::Subdir),
                (b, ObjectKind::ChunkList, CHUNK_LIST_MAX, Edge::ChunkList),
                (a, ObjectKind::Chunk, 7, Edge::Data),
            ]
        );
        let index = DirNode::Index(vec![ChildRef {
            first: "a".into(),
            count: 3,
            id: b,
        }]);
        let kids = children(&verified(ObjectKind::DirNode, &index.to_bytes())).unwrap();
        assert_eq!(kids[0].edge, Edge::Index);
        let list = ChunkList {
            chunks: vec![ChunkRef { id: a, len: 5 }, ChunkRef { id: b, len: 4 }],
            prefetch: vec![],
        };
        let kids = children(&verified(ObjectKind::ChunkList, &list.to_bytes())).unwrap();
        assert!(kids.iter().all(Child::is_data));
        assert_eq!(kids[1].max_len, 4);
        assert!(
            children(&verified(ObjectKind::Chunk, b"x"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_object_is_an_error() {
        assert!(children(&verified(ObjectKind::DirNode, b"\xff\xff\xff")).is_err());
        assert!(children(&verified(ObjectKind::ChunkList, b"\xff\xff\xff")).is_err());
    }
}
