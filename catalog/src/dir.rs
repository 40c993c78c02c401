//! Directory entries and the directory tree.
//!
//! A directory is stored as a content-defined B-tree (a "prolly tree") of [`DirNode`]
//! objects. Leaves hold entries sorted by name (byte order); index nodes hold, per child,
//! its first name, its entry count and its id. Where a leaf ends is decided by the names
//! themselves: a leaf is cut after an entry whose name hashes to a boundary
//! (`blake3(level ‖ name) mod target == 0`), never by position. Adding or removing one name
//! therefore changes one leaf and the index path above it, and leaves everything else
//! byte-identical, which is what makes publishing one image into a 118,594-entry directory
//! write a few tens of KiB. Directories of at most [`SINGLE_LEAF_MAX`] entries are one leaf.
//!
//! Readers need only [`NodeSource`]: [`lookup`] descends one path of the tree (binary search
//! in each node), [`list_from`] streams entries from any position, fetching leaves as it goes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::object::{self, Encoded, ObjectKind, Verified};
use crate::{Error, ObjectId};

/// Directories with at most this many entries are stored as a single leaf.
pub const SINGLE_LEAF_MAX: usize = 256;
/// Average entries per leaf in larger directories.
pub const LEAF_TARGET: u32 = 256;
/// Average children per index node.
pub const INDEX_TARGET: u32 = 64;
/// Hard caps that bound a node however the names fall.
pub const LEAF_MAX: usize = 2048;
/// Hard cap on children of one index node.
pub const INDEX_MAX: usize = 512;
/// Longest name a node may hold, in bytes (Linux's `NAME_MAX`: the kernel refuses longer
/// names before a lookup reaches the file system, so a longer one could be published but
/// never opened).
pub const NAME_MAX: usize = 255;
/// Longest symlink target a node may hold, in bytes (Linux's `PATH_MAX` less its NUL).
pub const TARGET_MAX: usize = 4095;
/// Largest plaintext a client accepts for one directory node: a full leaf of the longest
/// names and targets ([`LEAF_MAX`] × ([`NAME_MAX`] + [`TARGET_MAX`] + the other fields), 9 MB)
/// fits; a node that inflates further is refused before it is parsed.
pub const NODE_MAX_BYTES: u64 = 10 << 20;

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name: UTF-8, not empty, no `/` or NUL, not `.` or `..`, at most [`NAME_MAX`] bytes.
    pub name: String,
    /// Permission bits (`0o7777` at most); the type is in `kind`.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch. For a directory: the time of the
    /// last publish that changed its entries.
    pub mtime_ns: i64,
    /// What the name refers to.
    pub kind: EntryKind,
}

/// The type of an entry and what it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Where its bytes are.
        content: FileContent,
    },
    /// A directory.
    Dir {
        /// The top node of its tree.
        tree: ObjectId,
        /// How many entries it has.
        entries: u64,
    },
    /// A symbolic link (never followed by the publisher).
    Symlink {
        /// The link target, as stored.
        target: String,
    },
}

/// Where a file's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileContent {
    /// An empty file: no object.
    Empty,
    /// One [`ObjectKind::Chunk`] object holds the whole file.
    Single(ObjectId),
    /// A [`ObjectKind::ChunkList`] object lists the file's chunks.
    Chunked(ObjectId),
}

impl Entry {
    /// Is this a directory?
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir { .. })
    }
}

/// Check that `name` can be one path component.
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Invalid(format!("{name:?} is not a valid file name")));
    }
    if name.len() > NAME_MAX {
        return Err(Error::Invalid(format!(
            "{:?}… is {} bytes long, more than a file name may have ({NAME_MAX})",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    Ok(())
}

/// A reference from an index node to a child node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRef {
    /// The first name in the child's subtree.
    pub first: String,
    /// Entries in the child's subtree.
    pub count: u64,
    /// The child node.
    pub id: ObjectId,
}

/// One node of a directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirNode {
    /// Entries, sorted by name.
    Leaf(Vec<Entry>),
    /// Children, sorted by their first name.
    Index(Vec<ChildRef>),
}

impl DirNode {
    /// Serialize to the object plaintext.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing to a Vec cannot fail")
    }

    /// Parse a verified directory-node object, checking names and order.
    pub fn from_verified(v: &Verified) -> Result<Self, Error> {
        let bad = |what: String| Error::BadObject { id: v.id(), what };
        if v.kind() != ObjectKind::DirNode {
            return Err(bad("not a directory node".into()));
        }
        let node: DirNode = postcard::from_bytes(v.data()).map_err(|e| bad(format!("{e}")))?;
        let (names, max): (Vec<&str>, usize) = match &node {
            DirNode::Leaf(es) => (es.iter().map(|e| e.name.as_str()).collect(), LEAF_MAX),
            DirNode::Index(cs) => (cs.iter().map(|c| c.first.as_str()).collect(), INDEX_MAX),
        };
        if names.len() > max {
            return Err(bad(format!("{} items, more than {max}", names.len())));
        }
        for n in &names {
            validate_name(n).map_err(|e| bad(e.to_string()))?;
            if n.len() > NAME_MAX {
                return Err(bad(format!(
                    "a name of {} bytes (at most {NAME_MAX})",
                    n.len()
                )));
            }
        }
        if let DirNode::Leaf(es) = &node
            && let Some(t) = es.iter().find_map(|e| match &e.kind {
                EntryKind::Symlink { target } if target.len() > TARGET_MAX => Some(target),
                _ => None,
            })
        {
            return Err(bad(format!(
                "a symlink target of {} bytes (at most {TARGET_MAX})",
                t.len()
            )));
        }
        if names.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("names not strictly sorted".into()));
        }
        Ok(node)
    }

    /// Number of entries in this node's subtree.
    pub fn count(&self) -> u64 {
        match self {
            DirNode::Leaf(es) => es.len() as u64,
            DirNode::Index(cs) => cs.iter().map(|c| c.count).sum(),
        }
    }
}

/// The result of [`build`]: the top node and how many entries the directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltDir {
    /// The id to put in the parent's entry (or the manifest, for the root).
    pub tree: ObjectId,
    /// Number of entries.
    pub entries: u64,
}

fn is_boundary(level: u8, name: &str, target: u32) -> bool {
    let mut h = blake3::Hasher::new();
    h.update(&[level]);
    h.update(name.as_bytes());
    let b = h.finalize();
    let x = u32::from_le_bytes(b.as_bytes()[..4].try_into().expect("4 bytes"));
    x % target == 0
}

/// Build the tree of a directory from its entries (sorted by name, unique), handing every
/// node object to `emit` (children before parents). `level` is the zstd level.
pub fn build(
    entries: Vec<Entry>,
    level: i32,
    emit: &mut dyn FnMut(Encoded) -> Result<(), Error>,
) -> Result<BuiltDir, Error> {
    if let Some(w) = entries.windows(2).find(|w| w[0].name >= w[1].name) {
        return Err(Error::Invalid(format!(
            "directory entries not sorted or not unique at {:?}",
            w[1].name
        )));
    }
    let total = entries.len() as u64;
    let mut store = |node: DirNode| -> Result<ObjectId, Error> {
        let enc = object::encode(ObjectKind::DirNode, &node.to_bytes(), level);
        let id = enc.id;
        emit(enc)?;
        Ok(id)
    };
    if entries.len() <= SINGLE_LEAF_MAX {
        let tree = store(DirNode::Leaf(entries))?;
        return Ok(BuiltDir {
            tree,
            entries: total,
        });
    }
    // Level 0: leaves.
    let mut refs: Vec<ChildRef> = Vec::new();
    let mut leaf: Vec<Entry> = Vec::new();
    let n = entries.len();
    for (i, e) in entries.into_iter().enumerate() {
        let cut = is_boundary(0, &e.name, LEAF_TARGET);
        leaf.push(e);
        if (cut && leaf.len() >= 16) || leaf.len() >= LEAF_MAX || i + 1 == n {
            let first = leaf[0].name.clone();
            let count = leaf.len() as u64;
            let id = store(DirNode::Leaf(std::mem::take(&mut leaf)))?;
            refs.push(ChildRef { first, count, id });
        }
    }
    // Index levels until one node remains.
    let mut level_no = 1u8;
    while refs.len() > 1 {
        let mut next = Vec::new();
        let mut node: Vec<ChildRef> = Vec::new();
        let n = refs.len();
        for (i, r) in refs.into_iter().enumerate() {
            let cut = is_boundary(level_no, &r.first, INDEX_TARGET);
            node.push(r);
            if (cut && node.len() >= 4) || node.len() >= INDEX_MAX || i + 1 == n {
                let first = node[0].first.clone();
                let count = node.iter().map(|c| c.count).sum();
                let id = store(DirNode::Index(std::mem::take(&mut node)))?;
                next.push(ChildRef { first, count, id });
            }
        }
        refs = next;
        level_no = level_no.saturating_add(1);
    }
    Ok(BuiltDir {
        tree: refs[0].id,
        entries: total,
    })
}

/// Supplies directory nodes to the readers below: from a local store, a cache, or the network.
pub trait NodeSource {
    /// The verified, parsed node `id`.
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, Error>;
}

/// Look up `name` in the directory whose top node is `top`.
pub fn lookup(src: &dyn NodeSource, top: &ObjectId, name: &str) -> Result<Option<Entry>, Error> {
    let mut id = *top;
    loop {
        let node = src.node(&id)?;
        match &*node {
            DirNode::Leaf(es) => {
                return Ok(es
                    .binary_search_by(|e| e.name.as_str().cmp(name))
                    .ok()
                    .map(|i| es[i].clone()));
            }
            DirNode::Index(cs) => {
                let i = cs.partition_point(|c| c.first.as_str() <= name);
                if i == 0 {
                    return Ok(None);
                }
                id = cs[i - 1].id;
            }
        }
    }
}

/// Call `f(position, entry)` for the entries of directory `top` from position `start` on,
/// in name order, until `f` returns `false`. Fetches only the nodes it passes through.
pub fn list_from(
    src: &dyn NodeSource,
    top: &ObjectId,
    start: u64,
    f: &mut dyn FnMut(u64, &Entry) -> bool,
) -> Result<(), Error> {
    fn walk(
        src: &dyn NodeSource,
        id: &ObjectId,
        base: u64,
        start: u64,
        f: &mut dyn FnMut(u64, &Entry) -> bool,
    ) -> Result<bool, Error> {
        let node = src.node(id)?;
        match &*node {
            DirNode::Leaf(es) => {
                let skip = start.saturating_sub(base) as usize;
                for (i, e) in es.iter().enumerate().skip(skip) {
                    if !f(base + i as u64, e) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            DirNode::Index(cs) => {
                let mut at = base;
                for c in cs {
                    // Counts come from the network: saturating, never an overflow.
                    if at.saturating_add(c.count) > start && !walk(src, &c.id, at, start, f)? {
                        return Ok(false);
                    }
                    at = at.saturating_add(c.count);
                }
                Ok(true)
            }
        }
    }
    walk(src, top, 0, start, f).map(|_| ())
}

/// Every node id of directory `top`'s tree (not of its subdirectories), for gc and verify.
pub fn node_ids(src: &dyn NodeSource, top: &ObjectId) -> Result<Vec<ObjectId>, Error> {
    let mut out = vec![*top];
    let mut i = 0;
    while i < out.len() {
        if let DirNode::Index(cs) = &*src.node(&out[i])? {
            out.extend(cs.iter().map(|c| c.id));
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Mem(Mutex<HashMap<ObjectId, Vec<u8>>>, Mutex<usize>);
    impl NodeSource for Mem {
        fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, Error> {
            *self.1.lock().unwrap() += 1;
            let bytes = self
                .0
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .expect("node present");
            let v = object::decode(*id, ObjectKind::DirNode, &bytes, NODE_MAX_BYTES)?;
            Ok(Arc::new(DirNode::from_verified(&v)?))
        }
    }
    impl Mem {
        fn build(&self, entries: Vec<Entry>) -> (BuiltDir, Vec<(ObjectId, usize)>) {
            let mut new = Vec::new();
            let b = build(entries, 3, &mut |enc| {
                let mut m = self.0.lock().unwrap();
                if let std::collections::hash_map::Entry::Vacant(v) = m.entry(enc.id) {
                    new.push((enc.id, enc.bytes.len()));
                    v.insert(enc.bytes);
                }
                Ok(())
            })
            .unwrap();
            (b, new)
        }
    }

    fn file(name: &str, i: u64) -> Entry {
        Entry {
            name: name.to_string(),
            mode: 0o644,
            mtime_ns: 1_600_000_000_000_000_000 + i as i64,
            kind: EntryKind::File {
                size: i,
                content: FileContent::Single(ObjectId::of(name.as_bytes())),
            },
        }
    }

    fn names(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "tool{}:{}.{}--h{:07x}_{}",
                    i % 997,
                    i % 13,
                    i % 7,
                    i * 7919,
                    i % 5
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn small_directory_is_one_leaf() {
        let m = Mem::default();
        let (b, new) = m.build(
            names(100)
                .iter()
                .enumerate()
                .map(|(i, n)| file(n, i as u64))
                .collect(),
        );
        assert_eq!(new.len(), 1);
        assert_eq!(b.entries, 100);
    }

    #[test]
    fn large_directory_lookup_and_listing() {
        let m = Mem::default();
        let ns = names(50_000);
        let (b, new) = m.build(
            ns.iter()
                .enumerate()
                .map(|(i, n)| file(n, i as u64))
                .collect(),
        );
        assert!(new.len() > 100, "split into {} nodes", new.len());
        for (i, n) in ns.iter().enumerate().step_by(997) {
            *m.1.lock().unwrap() = 0;
            let e = lookup(&m, &b.tree, n).unwrap().unwrap();
            assert_eq!(e, file(n, i as u64));
            assert!(*m.1.lock().unwrap() <= 4, "a lookup touched too many nodes");
        }
        assert!(lookup(&m, &b.tree, "zzz-not-there").unwrap().is_none());
        assert!(lookup(&m, &b.tree, "000").unwrap().is_none());
        let mut listed = Vec::new();
        list_from(&m, &b.tree, 0, &mut |pos, e| {
            assert_eq!(pos as usize, listed.len());
            listed.push(e.name.clone());
            true
        })
        .unwrap();
        assert_eq!(listed, ns);
        // Resume in the middle, as readdir does.
        let mut from = Vec::new();
        list_from(&m, &b.tree, 31_337, &mut |_, e| {
            from.push(e.name.clone());
            from.len() < 10
        })
        .unwrap();
        assert_eq!(from, ns[31_337..31_347]);
    }

    #[test]
    fn one_insert_rewrites_few_small_nodes() {
        let m = Mem::default();
        let ns = names(118_594);
        let entries: Vec<Entry> = ns
            .iter()
            .enumerate()
            .map(|(i, n)| file(n, i as u64))
            .collect();
        m.build(entries.clone());
        let mut more = entries;
        more.push(file("samtools:1.99--h00000_0", 1));
        more.sort_by(|a, b| a.name.cmp(&b.name));
        let (_, new) = m.build(more);
        let bytes: usize = new.iter().map(|n| n.1).sum();
        assert!(new.len() <= 5, "{} new nodes", new.len());
        assert!(bytes < 48 * 1024, "{bytes} new bytes");
    }

    #[test]
    fn nodes_beyond_the_bounds_are_refused() {
        let parse = |n: &DirNode| {
            let enc = object::encode(ObjectKind::DirNode, &n.to_bytes(), 3);
            let v = object::decode(enc.id, ObjectKind::DirNode, &enc.bytes, NODE_MAX_BYTES)?;
            DirNode::from_verified(&v)
        };
        let leaf = |n: usize| DirNode::Leaf(names(n * 2)[..n].iter().map(|s| file(s, 1)).collect());
        assert!(parse(&leaf(LEAF_MAX)).is_ok());
        let e = parse(&leaf(LEAF_MAX + 1)).unwrap_err().to_string();
        assert!(e.contains("more than 2048"), "{e}");
        let long = DirNode::Leaf(vec![file(&"n".repeat(NAME_MAX + 1), 1)]);
        assert!(parse(&long).unwrap_err().to_string().contains("256 bytes"));
        let link = |len: usize| {
            DirNode::Leaf(vec![Entry {
                name: "l".into(),
                mode: 0o777,
                mtime_ns: 0,
                kind: EntryKind::Symlink {
                    target: "t".repeat(len),
                },
            }])
        };
        assert!(parse(&link(TARGET_MAX)).is_ok());
        assert!(parse(&link(TARGET_MAX + 1)).is_err());
        // The largest legitimate leaf fits the plaintext bound.
        let full = DirNode::Leaf(
            (0..LEAF_MAX)
                .map(|i| Entry {
                    name: format!("{i:05}{}", "n".repeat(NAME_MAX - 5)),
                    mode: 0o777,
                    mtime_ns: i64::MAX,
                    kind: EntryKind::Symlink {
                        target: "t".repeat(TARGET_MAX),
                    },
                })
                .collect(),
        );
        assert!(parse(&full).is_ok());
    }

    #[test]
    fn rejects_unsorted() {
        let r = build(vec![file("b", 1), file("a", 2)], 3, &mut |_| Ok(()));
        assert!(r.is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn any_name_set_round_trips(set in proptest::collection::btree_set("[a-z0-9:._-]{1,12}", 0..1500)) {
            let m = Mem::default();
            let ns: Vec<String> = set.into_iter().filter(|n| n != "." && n != "..").collect();
            let (b, _) = m.build(ns.iter().enumerate().map(|(i, n)| file(n, i as u64)).collect());
            let mut listed = Vec::new();
            list_from(&m, &b.tree, 0, &mut |_, e| { listed.push(e.name.clone()); true }).unwrap();
            proptest::prop_assert_eq!(&listed, &ns);
            for n in &ns {
                proptest::prop_assert!(lookup(&m, &b.tree, n).unwrap().is_some());
            }
        }
    }
}
