//! Attributes of an inode, as plain values ([`Attr`]); `fuse.rs` turns them into fuser's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use depotfs_catalog::dir::{self, SINGLE_LEAF_MAX};
use depotfs_catalog::{Entry, EntryKind, ObjectId};

use super::{DepotFs, Ino, Node, Wait};
use crate::error::{Fast, Stop};

/// What kind of inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl Kind {
    /// The kind of an entry.
    pub fn of(e: &Entry) -> Kind {
        match e.kind {
            EntryKind::File { .. } => Kind::File,
            EntryKind::Dir { .. } => Kind::Dir,
            EntryKind::Symlink { .. } => Kind::Symlink,
        }
    }
}

/// The attributes `stat` shows. Times are all the entry's mtime: content never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The inode number.
    pub ino: Ino,
    /// Bytes (a directory: 4096; a symlink: its target's length).
    pub size: u64,
    /// Modification time (and access, change, birth time).
    pub mtime: SystemTime,
    /// The kind.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    /// Links: 1, or 2 + subdirectories for a counted directory.
    pub nlink: u32,
    /// Owner: the mounting user.
    pub uid: u32,
    /// Group: the mounting user's.
    pub gid: u32,
}

/// A time from Unix nanoseconds, either side of the epoch.
fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl DepotFs {
    /// The attributes of `node`.
    pub fn attr(&self, node: &Node, wait: Wait) -> Fast<Attr> {
        let nlink = match &node.entry.kind {
            EntryKind::Dir { tree, entries } => self.dir_nlink(node, tree, *entries, wait)?,
            _ => 1,
        };
        Ok(self.attr_with(node, nlink))
    }

    /// The attributes of `node` as an entry of a listing (READDIRPLUS): a subdirectory
    /// whose own tree cannot be had (a missing or bad node) is listed with nlink 1 ("not
    /// counted") instead of failing the whole listing; using it then fails by itself.
    pub fn listed_attr(&self, node: &Node, wait: Wait) -> Fast<Attr> {
        match self.attr(node, wait) {
            Err(Stop::Failed(e)) if node.entry.is_dir() => {
                tracing::debug!(
                    "directory {:?} listed without its link count: {e}",
                    node.entry.name
                );
                Ok(self.attr_with(node, 1))
            }
            r => r,
        }
    }

    /// [`DepotFs::listed_attr`] without waiting for a download, for a listing whose time is
    /// up: a subdirectory whose tree is not in memory is listed with nlink 1.
    pub fn listed_attr_unwaited(&self, node: &Node) -> Attr {
        match self.listed_attr(node, Wait::No) {
            Ok(a) => a,
            Err(_) => self.attr_with(node, 1),
        }
    }

    fn attr_with(&self, node: &Node, nlink: u32) -> Attr {
        let e = &node.entry;
        let size = match &e.kind {
            EntryKind::File { size, .. } => *size,
            EntryKind::Symlink { target } => target.len() as u64,
            EntryKind::Dir { .. } => 4096,
        };
        Attr {
            ino: node.ino,
            size,
            mtime: time(e.mtime_ns),
            kind: Kind::of(e),
            perm: (e.mode & 0o7777) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// 2 + subdirectories, as local file systems report. Counting needs the directory's
    /// entries, so it is done for one-leaf directories (one small fetch); larger ones report
    /// 1, the Linux convention for "not counted" (`find` then does not rely on it).
    fn dir_nlink(&self, node: &Node, tree: &ObjectId, entries: u64, wait: Wait) -> Fast<u32> {
        if let Some(n) = node.nlink.get() {
            return Ok(*n);
        }
        let n = if entries as usize <= SINGLE_LEAF_MAX {
            let mut subdirs = 0u32;
            dir::list_from(&self.src(wait), tree, 0, &mut |_, e| {
                subdirs += e.is_dir() as u32;
                true
            })?;
            2 + subdirs
        } else {
            1
        };
        Ok(*node.nlink.get_or_init(|| n))
    }

    /// `getattr`.
    pub fn getattr(&self, ino: Ino, wait: Wait) -> Fast<Attr> {
        let n = self.current_node(ino, wait)?;
        self.attr(&n, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times before the epoch are kept (negative nanoseconds), as are those after it.
    #[test]
    fn times_either_side_of_the_epoch() {
        assert_eq!(time(0), UNIX_EPOCH);
        assert_eq!(
            time(1_500_000_000),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
        assert_eq!(time(-2_000_000_000), UNIX_EPOCH - Duration::from_secs(2));
        assert_eq!(time(i64::MIN), UNIX_EPOCH - Duration::from_nanos(1 << 63));
    }
}
