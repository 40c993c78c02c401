//! What `depotfs reload` hands to the next daemon ([`FsState`]), and taking it over.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use depotfs_catalog::{Entry, FileContent, ObjectId};

use super::{DepotFs, Ino, Node, OpenFile, Tree, root_node};
use crate::error::{Error, Result};
use crate::prefetch::Readahead;

/// What a new daemon needs of this one to serve its mount on (`depotfs reload`, see
/// [`crate::reload`]): the revisions in use as their signed manifest texts (verified again by
/// the receiver), the inode table with the kernel's lookup counts, the open files and the
/// revision each was opened in, and the next file handle. Encoded with postcard.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FsState {
    /// Signed manifest texts: the revision served first, then those open files were opened
    /// in.
    pub manifests: Vec<Vec<u8>>,
    nodes: Vec<NodeState>,
    open: Vec<OpenState>,
    next_fh: u64,
    /// Chunk lists whose access list was prefetched already.
    listed: Vec<ObjectId>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NodeState {
    ino: Ino,
    parent: Ino,
    entry: Entry,
    rev: u64,
    lookups: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OpenState {
    fh: u64,
    size: u64,
    file: FileContent,
    /// Index into [`FsState::manifests`].
    tree: usize,
    path: Option<String>,
}

impl FsState {
    /// The encoded state.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serialising to memory cannot fail")
    }

    /// Decode a state; an error says what is wrong, never a panic.
    pub fn from_bytes(b: &[u8]) -> Result<FsState> {
        postcard::from_bytes(b).map_err(|e| Error::Io(format!("handed-over state: {e}")))
    }
}

impl DepotFs {
    /// This file system's state, for a daemon taking over (call it once requests have
    /// stopped).
    pub fn state(&self) -> FsState {
        let current = self.tree();
        let mut trees = vec![current.clone()];
        let open = self
            .open
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(fh, of)| {
                let tree = match trees.iter().position(|t| Arc::ptr_eq(t, &of.tree)) {
                    Some(i) => i,
                    None => {
                        trees.push(of.tree.clone());
                        trees.len() - 1
                    }
                };
                OpenState {
                    fh: *fh,
                    size: of.size,
                    file: of.file,
                    tree,
                    path: of.path.clone(),
                }
            })
            .collect();
        let nodes = self
            .inodes
            .all()
            .into_iter()
            .map(|(n, lookups)| NodeState {
                ino: n.ino,
                parent: n.parent,
                entry: n.entry.clone(),
                rev: n.rev,
                lookups,
            })
            .collect();
        FsState {
            manifests: trees.iter().map(|t| t.signed.clone()).collect(),
            nodes,
            open,
            next_fh: self.next_fh.load(Ordering::Relaxed),
            listed: self
                .listed
                .lock()
                .expect("poisoned")
                .iter()
                .copied()
                .collect(),
        }
    }

    /// Take over `state` from the daemon before: `trees` are its manifests, verified, in
    /// order (the first is the revision to serve). Open files get their chunk lists again
    /// (from the cache, normally).
    pub async fn restore(&self, state: FsState, trees: Vec<Tree>) -> Result<()> {
        let trees: Vec<Arc<Tree>> = trees.into_iter().map(Arc::new).collect();
        let current = trees
            .first()
            .ok_or_else(|| Error::Io("handed-over state has no manifest".into()))?;
        let root = root_node(current);
        let mut open = HashMap::new();
        for o in state.open {
            let tree = trees.get(o.tree).ok_or_else(|| {
                Error::Io(format!("handed-over file handle {} has no revision", o.fh))
            })?;
            let of = OpenFile {
                size: o.size,
                file: o.file,
                content: self.content(o.size, o.file).await?,
                tree: tree.clone(),
                ra: Readahead::default(),
                path: o.path,
                failed: Mutex::new(None),
            };
            open.insert(o.fh, Arc::new(of));
        }
        *self.tree.write().expect("poisoned") = current.clone();
        self.inodes.replace(
            state
                .nodes
                .into_iter()
                .map(|n| (Node::new(n.ino, n.parent, n.entry, n.rev), n.lookups)),
            root,
        );
        *self.open.lock().expect("poisoned") = open;
        self.next_fh.store(state.next_fh.max(1), Ordering::Relaxed);
        self.listed.lock().expect("poisoned").extend(state.listed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depotfs_catalog::EntryKind;

    #[test]
    fn handed_over_state_round_trips_and_short_bytes_are_an_error() {
        let id = ObjectId::of(b"content");
        let entry = Entry {
            name: "a".into(),
            mode: 0o644,
            mtime_ns: 7,
            kind: EntryKind::File {
                size: 7,
                content: FileContent::Single(id),
            },
        };
        let state = FsState {
            manifests: vec![b"signed manifest".to_vec()],
            nodes: vec![NodeState {
                ino: Ino(42),
                parent: Ino::ROOT,
                entry: entry.clone(),
                rev: 3,
                lookups: 2,
            }],
            open: vec![OpenState {
                fh: 5,
                size: 7,
                file: FileContent::Single(id),
                tree: 0,
                path: Some("a".into()),
            }],
            next_fh: 6,
            listed: vec![id],
        };
        let bytes = state.to_bytes();
        let back = FsState::from_bytes(&bytes).unwrap();
        assert_eq!(back.manifests, state.manifests);
        let n = &back.nodes[0];
        assert_eq!(
            (n.ino, n.parent, n.rev, n.lookups),
            (Ino(42), Ino::ROOT, 3, 2)
        );
        assert_eq!(n.entry, entry);
        let o = &back.open[0];
        assert_eq!((o.fh, o.size, o.tree), (5, 7, 0));
        assert_eq!((back.next_fh, back.listed.clone()), (6, vec![id]));
        for cut in 0..bytes.len() {
            assert!(FsState::from_bytes(&bytes[..cut]).is_err(), "{cut} bytes");
        }
    }
}
