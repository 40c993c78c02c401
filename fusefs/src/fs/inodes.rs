//! The inode table: the inodes the kernel knows, with its lookup count of each.
//!
//! Inode numbers are derived from the path (`blake3(parent inode ‖ name)`, plus the content
//! id for files), so they are stable across remounts, and across revisions for everything
//! that did not change; a 64-bit collision probes to the next free number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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
    match e.kind {
        EntryKind::File {
            content: FileContent::Empty,
            ..
        } => Some(ObjectId::of(b"")),
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

/// `blake3(parent inode ‖ name ‖ file content id)`, never 0 or 1.
fn child_ino(parent: Ino, e: &Entry) -> Ino {
    let mut h = blake3::Hasher::new();
    h.update(&parent.0.to_le_bytes());
    h.update(e.name.as_bytes());
    if let Some(id) = content_key(e) {
        h.update(&[0]);
        h.update(&id.0);
    }
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    // 0 is invalid and 1 is the root.
    Ino(x.max(2))
}

/// The known inodes and the kernel's lookup count of each. The root is always there.
#[derive(Debug)]
pub(super) struct Inodes(Mutex<HashMap<Ino, (Arc<Node>, u64)>>);

impl Inodes {
    /// A table holding only `root`.
    pub(super) fn new(root: Arc<Node>) -> Inodes {
        Inodes(Mutex::new(HashMap::from([(Ino::ROOT, (root, 1))])))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, (Arc<Node>, u64)>> {
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
        let mut table: HashMap<Ino, (Arc<Node>, u64)> = nodes
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
