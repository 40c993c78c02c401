//! Listing a directory (readdir), and fetching a large directory's tree ahead of the
//! listing.

use std::collections::HashSet;

use depotfs_catalog::dir::{self, SINGLE_LEAF_MAX};
use depotfs_catalog::{Entry, EntryKind, ObjectId, graph};

use super::{DepotFs, Ino, Node, Wait};
use crate::error::{Result, Stop};

/// Directory-tree nodes a listing fetches ahead at once.
const DIR_PARALLEL: usize = 8;
/// The most nodes the background walk of a directory of `entries` entries fetches. An honest
/// tree has fewer than `entries / 12` plus its depth: every leaf but the last holds at least
/// 16 entries and every index node but the last of a level at least 4 children.
fn dir_walk_budget(entries: u64) -> usize {
    (entries / 8 + 64).min(1 << 20) as usize
}
/// One item of a directory listing.
#[derive(Debug)]
pub enum DirItem<'a> {
    /// `.` or `..`: the inode it refers to and the name.
    Dot(Ino, &'static str),
    /// A real entry of directory (parent, entry).
    Entry(&'a Node, &'a Entry),
}

impl DepotFs {
    /// List directory `ino` from readdir offset `offset`: `.` is offset 0, `..` 1, entry at
    /// position p is p + 2; `add(ino, next_offset, entry-or-dot)` returns true when full.
    pub fn readdir(
        &self,
        ino: Ino,
        offset: u64,
        add: &mut dyn FnMut(DirItem<'_>, u64) -> Result<bool>,
    ) -> Result<()> {
        let node = self
            .current_node(ino, Wait::Yes)
            .map_err(Stop::into_error)?;
        let top = Self::dir_tree(&node)?;
        if offset == 0
            && let EntryKind::Dir { entries, .. } = node.entry.kind
            && entries as usize > SINGLE_LEAF_MAX
        {
            self.prefetch_dir_tree(top, entries);
        }
        if offset == 0 && add(DirItem::Dot(node.ino, "."), 1)? {
            return Ok(());
        }
        if offset <= 1 && add(DirItem::Dot(node.parent, ".."), 2)? {
            return Ok(());
        }
        let mut err = None;
        dir::list_from(
            &self.src(Wait::Yes),
            &top,
            offset.saturating_sub(2),
            &mut |pos, e| match add(DirItem::Entry(&node, e), pos + 3) {
                Ok(full) => !full,
                Err(x) => {
                    err = Some(x);
                    false
                }
            },
        )?;
        err.map_or(Ok(()), Err)
    }

    /// Fetch the nodes of a large directory's tree in the background, a level at a time,
    /// [`DIR_PARALLEL`] at once, while the listing walks them in order: it then finds each
    /// node in memory or joins its download (`ls -f` of 118,594 entries over HTTP: 0.68 s
    /// one node at a time, 0.42 s this way). The walk fetches each node once (a hostile
    /// tree may be a DAG: 512 references to one node, twice over, made 262,144 requests) and
    /// at most [`dir_walk_budget`] nodes in all.
    fn prefetch_dir_tree(&self, top: ObjectId, entries: u64) {
        let store = self.store.clone();
        let budget = dir_walk_budget(entries);
        self.rt.spawn(async move {
            let mut seen = HashSet::from([top]);
            let mut level = vec![top];
            while !level.is_empty() {
                // The children of each node, kept in name order (the order of the listing).
                let mut children: Vec<Vec<ObjectId>> = vec![Vec::new(); level.len()];
                let mut todo = level.into_iter().enumerate();
                let mut running = tokio::task::JoinSet::new();
                loop {
                    while running.len() < DIR_PARALLEL
                        && let Some((i, id)) = todo.next()
                    {
                        let store = store.clone();
                        running.spawn(async move { (i, store.dir_node(id).await) });
                    }
                    let Some(done) = running.join_next().await else {
                        break;
                    };
                    match done {
                        Ok((i, Ok(n))) => {
                            children[i] = graph::node_children(&n)
                                .into_iter()
                                .filter(|c| c.edge == graph::Edge::Index)
                                .map(|c| c.id)
                                .filter(|id| seen.len() < budget && seen.insert(*id))
                                .collect();
                        }
                        // The listing itself reports what fails.
                        Ok((_, Err(e))) => tracing::debug!("directory prefetch: {e}"),
                        Err(e) => tracing::debug!("directory prefetch: {e}"),
                    }
                }
                level = children.into_iter().flatten().collect();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The background walk of a directory is bounded by its entry count, and capped.
    #[test]
    fn directory_walk_budget_grows_with_entries_and_is_capped() {
        assert_eq!(dir_walk_budget(0), 64);
        assert_eq!(dir_walk_budget(800), 164);
        assert!(
            dir_walk_budget(800) as u64 > 800 / 12,
            "an honest tree fits"
        );
        assert_eq!(dir_walk_budget(u64::MAX), 1 << 20);
    }
}
