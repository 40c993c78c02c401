//! The inode table: the inodes the kernel knows, with its lookup count of each.
//!
//! Inode numbers are derived from the path ([`path_hash`] of the parent inode and the name,
//! plus the content id for files), so they are stable across remounts, and across revisions
//! for everything that did not change; a 64-bit collision probes to the next free number.
//!
//! The numbers are made for every entry of every listing (readdir reports each entry's
//! inode), so their cost is per name listed: blake3, which made them until 2026-12, cost
//! ~175 ns per name and was half of the daemon's CPU in a warm `ls -f` of 118,594 names.
//! [`path_hash`] costs a few multiplications per 8 bytes. It need not resist an adversary:
//! the names come from the signed tree, and a collision only probes on.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use depotfs_catalog::{Entry, EntryKind, FileContent, ObjectId};
use serde::{Deserialize, Serialize};

/// An inode number. Never 0; 1 is the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// The next number to probe after a collision: never 0 or the root.
    fn probe_next(self) -> Ino {
        Ino(self.0.wrapping_add(1).max(2))
    }
}

/// A known inode: a directory entry and where it hangs.
#[derive(Debug)]
pub struct Node {
    pub(super) ino: Ino,
    pub(super) parent: Ino,
    pub(super) entry: Entry,
    /// The revision whose tree `entry` comes from. A directory node of an older revision is
    /// re-resolved against the current tree when used ([`super::DepotFs::current_node`]).
    pub(super) rev: u64,
    pub(super) nlink: OnceLock<u32>,
}

impl Node {
    /// A node of revision `rev`.
    pub(super) fn new(ino: Ino, parent: Ino, entry: Entry, rev: u64) -> Node {
        Node {
            ino,
            parent,
            entry,
            rev,
            nlink: OnceLock::new(),
        }
    }

    /// The inode number.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// The directory entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// What distinguishes two versions of one path: a file's content object. Directories and
/// symlinks keep their inode across revisions; a file whose content changes gets a new one,
/// so the kernel never mixes the page cache of two versions.
fn content_key(e: &Entry) -> Option<ObjectId> {
    static EMPTY: LazyLock<ObjectId> = LazyLock::new(|| ObjectId::of(b""));
    match e.kind {
        EntryKind::File {
            content: FileContent::Empty,
            ..
        } => Some(*EMPTY),
        EntryKind::File {
            content: FileContent::Single(id) | FileContent::Chunked(id),
            ..
        } => Some(id),
        _ => None,
    }
}

fn same_path_and_content(n: &Node, parent: Ino, e: &Entry) -> bool {
    n.parent == parent && n.entry.name == e.name && content_key(&n.entry) == content_key(e)
}

/// `path_hash(parent inode ‖ name ‖ 0 ‖ file content id)`, never 0 or 1.
fn child_ino(parent: Ino, e: &Entry) -> Ino {
    // Parent, the longest name a verified node holds, and a content id fit on the stack.
    let mut buf = [0u8; 8 + depotfs_catalog::dir::NAME_MAX + 1 + 32];
    let name = e.name.as_bytes();
    let len = 8 + name.len() + content_key(e).map_or(0, |_| 33);
    let mut heap;
    let bytes: &mut [u8] = if len <= buf.len() {
        &mut buf[..len]
    } else {
        heap = vec![0u8; len];
        &mut heap
    };
    bytes[..8].copy_from_slice(&parent.0.to_le_bytes());
    bytes[8..8 + name.len()].copy_from_slice(name);
    if let Some(id) = content_key(e) {
        bytes[8 + name.len()] = 0;
        bytes[9 + name.len()..].copy_from_slice(&id.0);
    }
    // 0 is invalid and 1 is the root.
    Ino(path_hash(bytes).max(2))
}

/// A 64-bit hash of `bytes` for inode numbers, defined here so that the numbers do not change
/// with a library or compiler version: each 8-byte little-endian word (the last one padded
/// with zeros) is mixed into the state by a folded multiplication (the two halves of the
/// 128-bit product xored), then the length, then once more. Every input bit reaches every
/// output bit; it is not a cryptographic hash.
pub(super) fn path_hash(bytes: &[u8]) -> u64 {
    /// 2^64 / φ and 2^64 / π (odd): constants with no structure in their bits.
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0x517c_c1b7_2722_0a95;
    fn fold(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }
    let mut h = K2;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = fold(h ^ u64::from_le_bytes(w.try_into().expect("8 bytes")), K1);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(last), K1);
    }
    fold(fold(h ^ bytes.len() as u64, K2), K1)
}

/// The inode table's hasher: an inode number is already a hash ([`path_hash`]), so it is its
/// own hash (SipHash of every key was 4 % of a warm listing's CPU).
#[derive(Debug, Default)]
pub(super) struct InoHasher(u64);

impl Hasher for InoHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (`Ino` hashes as one u64); anything else still hashes.
        self.0 = path_hash(bytes) ^ self.0.rotate_left(5);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Maps keyed by inode number.
pub(super) type InoMap<V> = HashMap<Ino, V, BuildHasherDefault<InoHasher>>;

/// The known inodes and the kernel's lookup count of each. The root is always there.
#[derive(Debug)]
pub(super) struct Inodes(Mutex<InoMap<(Arc<Node>, u64)>>);

impl Inodes {
    /// A table holding only `root`.
    pub(super) fn new(root: Arc<Node>) -> Inodes {
        Inodes(Mutex::new(InoMap::from_iter([(Ino::ROOT, (root, 1))])))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InoMap<(Arc<Node>, u64)>> {
        self.0.lock().expect("poisoned")
    }

    /// The node of `ino`, if known.
    pub(super) fn get(&self, ino: Ino) -> Option<Arc<Node>> {
        self.lock().get(&ino).map(|(n, _)| n.clone())
    }

    /// Replace the node of `fresh.ino` by `fresh` if it is of a newer revision.
    pub(super) fn refresh(&self, fresh: &Arc<Node>) {
        if let Some(slot) = self.lock().get_mut(&fresh.ino)
            && slot.0.rev < fresh.rev
        {
            slot.0 = fresh.clone();
        }
    }

    /// The node of `entry` in directory `parent_node`: the known one, or a new one (with no
    /// lookups counted yet).
    pub(super) fn register(&self, parent_node: &Node, entry: Entry) -> Arc<Node> {
        let parent = parent_node.ino;
        let mut nodes = self.lock();
        let mut ino = child_ino(parent, &entry);
        loop {
            match nodes.get_mut(&ino) {
                Some((n, _)) if same_path_and_content(n, parent, &entry) => {
                    if n.rev < parent_node.rev && n.entry != entry {
                        // Same path (and content, for a file) in a newer revision.
                        *n = Arc::new(Node::new(ino, parent, entry, parent_node.rev));
                    }
                    return n.clone();
                }
                // A 64-bit collision: probe deterministically.
                Some(_) => ino = ino.probe_next(),
                None => break,
            }
        }
        let n = Arc::new(Node::new(ino, parent, entry, parent_node.rev));
        nodes.insert(ino, (n.clone(), 0));
        n
    }

    /// The inode number `e` in directory `parent` has or will have, without registering it.
    pub(super) fn ino_of(&self, parent: Ino, e: &Entry) -> Ino {
        let nodes = self.lock();
        let mut ino = child_ino(parent, e);
        while let Some((n, _)) = nodes.get(&ino) {
            if same_path_and_content(n, parent, e) {
                break;
            }
            ino = ino.probe_next();
        }
        ino
    }

    /// One more kernel reference to `node`; re-inserts it if a FORGET just dropped it.
    pub(super) fn remember(&self, node: &Arc<Node>) {
        let mut nodes = self.lock();
        let slot = nodes.entry(node.ino).or_insert_with(|| (node.clone(), 0));
        slot.1 += 1;
    }

    /// `n` kernel references to `ino` fewer; at zero it is dropped (the root never is).
    pub(super) fn forget(&self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let mut nodes = self.lock();
        if let Some(slot) = nodes.get_mut(&ino) {
            slot.1 = slot.1.saturating_sub(n);
            if slot.1 == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Number of inodes held.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The path of `ino` relative to the root, from the known inodes (the kernel holds
    /// every ancestor of an inode it uses); `None` if a link is missing.
    pub(super) fn path_of(&self, ino: Ino) -> Option<String> {
        let nodes = self.lock();
        let mut parts = Vec::new();
        let mut at = ino;
        while at != Ino::ROOT {
            let (n, _) = nodes.get(&at)?;
            parts.push(n.entry.name.clone());
            at = n.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// Make `root` the root, running `switch` (the revision change) under the table's
    /// lock; returns the `(parent inode, name)` of every other known entry, for the kernel
    /// to drop its cached dentries.
    pub(super) fn switch_root(&self, root: Arc<Node>, switch: impl FnOnce()) -> Vec<(Ino, String)> {
        let mut nodes = self.lock();
        switch();
        nodes
            .entry(Ino::ROOT)
            .or_insert_with(|| (root.clone(), 1))
            .0 = root.clone();
        nodes
            .iter()
            .filter(|(ino, _)| **ino != Ino::ROOT)
            .map(|(_, (n, _))| (n.parent, n.entry.name.clone()))
            .collect()
    }

    /// Every node with its lookup count (for a daemon taking over).
    pub(super) fn all(&self) -> Vec<(Arc<Node>, u64)> {
        self.lock().values().cloned().collect()
    }

    /// Replace the table by `nodes` and `root`.
    pub(super) fn replace(&self, nodes: impl IntoIterator<Item = (Node, u64)>, root: Arc<Node>) {
        let mut table: InoMap<(Arc<Node>, u64)> = nodes
            .into_iter()
            .filter(|(n, _)| n.ino != Ino::ROOT)
            .map(|(n, lookups)| (n.ino, (Arc::new(n), lookups)))
            .collect();
        table.insert(Ino::ROOT, (root, 1));
        *self.lock() = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: FileContent) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o644,
            mtime_ns: 0,
            kind: EntryKind::File { size: 1, content },
        }
    }

    fn dir(name: &str, tree: ObjectId) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o755,
            mtime_ns: 0,
            kind: EntryKind::Dir { tree, entries: 1 },
        }
    }

    fn table(rev: u64) -> (Inodes, Arc<Node>) {
        let root = Arc::new(Node::new(
            Ino::ROOT,
            Ino::ROOT,
            dir("", ObjectId::of(b"root")),
            rev,
        ));
        (Inodes::new(root.clone()), root)
    }

    /// An inode number depends on the parent, the name and a file's content, never on a
    /// directory's tree (a directory keeps its inode across revisions), and is never 0 or 1.
    #[test]
    fn inode_numbers_follow_path_and_file_content() {
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let root = Ino::ROOT;
        let f = child_ino(root, &file("x", FileContent::Single(a)));
        assert!(f.0 >= 2);
        assert_eq!(f, child_ino(root, &file("x", FileContent::Single(a))));
        assert_ne!(f, child_ino(root, &file("x", FileContent::Single(b))));
        assert_ne!(f, child_ino(root, &file("y", FileContent::Single(a))));
        assert_ne!(f, child_ino(Ino(2), &file("x", FileContent::Single(a))));
        // The same content object, whole or chunked, is the same version of the path.
        assert_eq!(f, child_ino(root, &file("x", FileContent::Chunked(a))));
        assert_eq!(
            child_ino(root, &dir("d", a)),
            child_ino(root, &dir("d", b)),
            "a directory whose entries change keeps its inode"
        );
        assert_eq!(
            content_key(&file("e", FileContent::Empty)),
            Some(ObjectId::of(b""))
        );
    }

    /// The numbers are fixed by this file, not by a library: these values must never change
    /// (they would renumber every inode of every mount after an upgrade).
    #[test]
    fn path_hash_is_pinned() {
        assert_eq!(path_hash(b""), PINNED[0]);
        assert_eq!(path_hash(b"samtools:1.9--h91753b0_8"), PINNED[1]);
        assert_eq!(path_hash(&[0xff; 301]), PINNED[2]);
        let mut long = file(&"n".repeat(300), FileContent::Empty);
        assert!(
            child_ino(Ino::ROOT, &long).0 >= 2,
            "a name longer than NAME_MAX still hashes"
        );
        long.name.push('x');
        assert_ne!(
            child_ino(Ino::ROOT, &long),
            child_ino(Ino::ROOT, &file(&"n".repeat(300), FileContent::Empty))
        );
    }
    const PINNED: [u64; 3] = [
        11_924_510_365_641_309_230,
        6_923_400_307_551_336_592,
        11_042_489_952_225_079_034,
    ];

    /// The real listing's 118,594 names in one directory: no two get the same number, and
    /// the low and the high 20 bits (a hash table's bucket, its tag) take as many distinct
    /// values as uniformly random numbers would (within 1 %).
    #[test]
    fn inode_numbers_of_the_real_names_are_spread() {
        let listing = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz"
        );
        let out = std::process::Command::new("gzip")
            .args(["-dc", listing])
            .output()
            .expect("gzip");
        let text = String::from_utf8(out.stdout).expect("UTF-8 listing");
        let inos: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .map(|n| child_ino(Ino::ROOT, &file(n, FileContent::Empty)).0)
            .collect();
        assert!(inos.len() > 100_000, "{} names", inos.len());
        let n = inos.len() as f64;
        let all: std::collections::HashSet<u64> = inos.iter().copied().collect();
        assert_eq!(all.len(), inos.len(), "two names got one number");
        let m = f64::from(1u32 << 20);
        let expected = m * (1.0 - (-n / m).exp());
        for (what, bits) in [
            ("low", inos.iter().map(|i| i & 0xf_ffff).collect::<Vec<_>>()),
            ("high", inos.iter().map(|i| i >> 44).collect()),
        ] {
            let distinct = bits.iter().collect::<std::collections::HashSet<_>>().len() as f64;
            assert!(
                (distinct / expected - 1.0).abs() < 0.01,
                "{what} 20 bits: {distinct} distinct values, random numbers give {expected:.0}"
            );
        }
    }

    /// Registering is idempotent, counts nothing until the kernel is told (remember), and
    /// the lookup count decides when FORGET drops an inode; the root is never dropped.
    #[test]
    fn lookups_and_forgets_are_counted() {
        let (t, root) = table(1);
        let e = file("x", FileContent::Single(ObjectId::of(b"x")));
        let n = t.register(&root, e.clone());
        assert!(Arc::ptr_eq(&n, &t.register(&root, e.clone())));
        assert_eq!(t.ino_of(Ino::ROOT, &e), n.ino());
        assert_eq!(t.len(), 2);
        t.remember(&n);
        t.remember(&n);
        t.forget(n.ino(), 1);
        assert!(t.get(n.ino()).is_some(), "one lookup left");
        t.forget(n.ino(), 1);
        assert!(t.get(n.ino()).is_none(), "forgotten at zero");
        // A FORGET racing the reply that carried the node: it comes back when remembered.
        t.remember(&n);
        assert!(t.get(n.ino()).is_some());
        t.forget(Ino::ROOT, 100);
        assert!(t.get(Ino::ROOT).is_some(), "the root is never forgotten");
    }

    /// Two entries whose numbers collide get distinct inodes, each found again by its
    /// path; a path's route to the root is known while its ancestors are.
    #[test]
    fn collisions_probe_and_paths_follow_parents() {
        let (t, root) = table(1);
        let d = t.register(&root, dir("d", ObjectId::of(b"d")));
        let e = file("x", FileContent::Single(ObjectId::of(b"x")));
        let f = t.register(&d, e.clone());
        assert_eq!(t.path_of(f.ino()).as_deref(), Some("d/x"));
        assert_eq!(t.path_of(Ino::ROOT).as_deref(), Some(""));
        // Occupy the number `g` would get with another path.
        let g = file("y", FileContent::Single(ObjectId::of(b"y")));
        let taken = child_ino(d.ino(), &g);
        t.replace(
            [
                (Node::new(d.ino(), Ino::ROOT, d.entry().clone(), 1), 1),
                (Node::new(f.ino(), d.ino(), e, 1), 1),
                (
                    Node::new(taken, Ino::ROOT, dir("z", ObjectId::of(b"z")), 1),
                    1,
                ),
            ],
            root.clone(),
        );
        let gn = t.register(&d, g.clone());
        assert_eq!(gn.ino(), taken.probe_next());
        assert_eq!(t.ino_of(d.ino(), &g), gn.ino());
        assert_eq!(t.path_of(gn.ino()).as_deref(), Some("d/y"));
        t.forget(d.ino(), 1);
        assert_eq!(t.path_of(gn.ino()), None, "an ancestor is missing");
    }

    /// A revision switch replaces the root and names every other known entry (for the
    /// kernel to drop); a node of a newer revision replaces the old one, an older never.
    #[test]
    fn switching_revisions_replaces_the_root_and_refreshes_nodes() {
        let (t, root) = table(1);
        let d = t.register(&root, dir("d", ObjectId::of(b"d1")));
        let new_root = Arc::new(Node::new(
            Ino::ROOT,
            Ino::ROOT,
            dir("", ObjectId::of(b"r2")),
            2,
        ));
        let mut switched = false;
        let stale = t.switch_root(new_root.clone(), || switched = true);
        assert!(switched);
        assert_eq!(stale, vec![(Ino::ROOT, "d".to_string())]);
        assert!(Arc::ptr_eq(&t.get(Ino::ROOT).unwrap(), &new_root));
        let fresh = Arc::new(Node::new(
            d.ino(),
            Ino::ROOT,
            dir("d", ObjectId::of(b"d2")),
            2,
        ));
        t.refresh(&fresh);
        assert!(Arc::ptr_eq(&t.get(d.ino()).unwrap(), &fresh));
        t.refresh(&d);
        assert!(
            Arc::ptr_eq(&t.get(d.ino()).unwrap(), &fresh),
            "older kept out"
        );
        // Registering the same directory from the new root keeps its inode number.
        assert_eq!(
            t.register(&new_root, dir("d", ObjectId::of(b"d2"))).ino(),
            d.ino()
        );
    }
}
