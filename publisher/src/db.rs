//! The catalog database (redb): the publisher's source of truth.
//!
//! | table       | key                     | value                        | meaning |
//! |-------------|-------------------------|------------------------------|---------|
//! | `nodes`     | (parent path, name)     | postcard [`Node`]            | the current (staged) tree, one row per path |
//! | `dirs`      | directory path          | postcard [`DirState`]        | each directory as last published: tree id, mtime, digest |
//! | `dirty`     | directory path          | ()                           | directories changed since the last publish (and their ancestors) |
//! | `revisions` | revision number         | postcard [`RevisionRecord`]  | every published revision |
//! | `tags`      | tag name                | revision number              | tagged revisions (never garbage-collected) |
//! | `meta`      | key                     | bytes                        | `name`, `ttl` |
//! | `staged`    | path                    | postcard `StagedChange`      | staged, unpublished changes ([`crate::staged`]) |
//! | `runs`      | start time (ns)         | postcard `Run`               | the runs that staged them |
//! | `layers`    | layer digest            | postcard `import::layers::Changes` | image layers already imported (`depotfs import` replays them instead of fetching) |
//!
//! | `meta` rows of maintenance | `verify_full`, `verify_progress`, `gc_sweep` | | the revision of the last clean full `verify`; checkpoints of an interrupted `verify` / `gc` |
//!
//! [`Catalog`] owns the database and speaks in these records; the `get_*` helpers read one
//! decoded row from a table inside a caller's transaction.
//!
//! Paths are relative to the repository root, `/`-separated, without a leading slash; the
//! root is `""`. Keying `nodes` by (parent, name) makes "the children of a directory" one
//! contiguous range, which is what publishing a directory needs.

use std::collections::BTreeSet;

use depotfs_catalog::{FileContent, ObjectId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The current tree.
pub const NODES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("nodes");
/// Directories as last published.
pub const DIRS: TableDefinition<&str, &[u8]> = TableDefinition::new("dirs");
/// Directories to rebuild at the next publish.
pub const DIRTY: TableDefinition<&str, ()> = TableDefinition::new("dirty");
/// Published revisions.
pub const REVISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revisions");
/// Tags.
pub const TAGS: TableDefinition<&str, u64> = TableDefinition::new("tags");
/// Image layers already imported: digest → their changes (see `import`).
pub const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");
/// Repository settings.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// One path of the current tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Permission bits.
    pub mode: u32,
    /// Modification time (files and symlinks: from the source; directories: unused, the
    /// published mtime is computed at publish time).
    pub mtime_ns: i64,
    /// What it is.
    pub kind: NodeKind,
}

/// The type of a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    File {
        /// Length.
        size: u64,
        /// Its stored content.
        content: FileContent,
    },
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink {
        /// Its target.
        target: String,
    },
}

/// A directory as last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirState {
    /// Top node of its tree.
    pub tree: ObjectId,
    /// Entries.
    pub entries: u64,
    /// Its published mtime.
    pub mtime_ns: i64,
    /// Digest of its entries, ignoring subdirectory contents: the mtime moves when it changes.
    pub digest: [u8; 32],
    /// Regular files in the subtree.
    pub files: u64,
    /// Bytes of regular files in the subtree.
    pub bytes: u64,
}

/// A published revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// Top node of the root directory.
    pub root: ObjectId,
    /// The root's mtime.
    pub root_mtime_ns: i64,
    /// Entries in the root.
    pub root_entries: u64,
    /// Publish time.
    pub published_ns: i64,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of regular files in the tree.
    pub bytes: u64,
    /// Set when `gc` has deleted this revision's objects.
    pub pruned: bool,
}

/// Encode a record.
pub fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("serializing to a Vec cannot fail")
}

/// Decode a record.
pub fn dec<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Db(format!("corrupt {what} record: {e}")))
}

/// Join a parent path and a name.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Split a path into (parent, name). The root has no parent.
pub fn split(path: &str) -> Option<(&str, &str)> {
    if path.is_empty() {
        return None;
    }
    Some(match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    })
}

/// Normalize a user-given repository path (`/all/`, `all`, `./all` → `all`) and check
/// every component.
pub fn normalize(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::Input(format!(
                    "repository path {path:?} may not contain '..'"
                )));
            }
            c => {
                depotfs_catalog::dir::validate_name(c)
                    .map_err(|e| Error::Input(format!("repository path {path:?}: {e}")))?;
                parts.push(c);
            }
        }
    }
    Ok(parts.join("/"))
}

/// The children of `parent` as (name, node), in name order.
pub fn children(
    nodes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    parent: &str,
) -> Result<Vec<(String, Node)>> {
    let mut out = Vec::new();
    for row in nodes.range((parent, "")..)? {
        let (k, v) = row?;
        let (p, name) = k.value();
        if p != parent {
            break;
        }
        out.push((name.to_string(), dec("node", v.value())?));
    }
    Ok(out)
}

/// The latest revision number and record, if any.
pub fn latest_revision(
    revs: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<(u64, RevisionRecord)>> {
    match revs.last()? {
        Some((k, v)) => Ok(Some((k.value(), dec("revision", v.value())?))),
        None => Ok(None),
    }
}

/// All revisions, oldest first.
pub fn all_revisions(
    revs: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<(u64, RevisionRecord)>> {
    let mut out = Vec::new();
    for row in revs.iter()? {
        let (k, v) = row?;
        out.push((k.value(), dec("revision", v.value())?));
    }
    Ok(out)
}

/// The row of `nodes` for `name` in directory `parent`, decoded.
pub fn get_node(
    nodes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    parent: &str,
    name: &str,
) -> Result<Option<Node>> {
    nodes
        .get((parent, name))?
        .map(|v| dec("node", v.value()))
        .transpose()
}

/// One row of `dirs`, decoded.
pub fn get_dir(
    dirs: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &str,
) -> Result<Option<DirState>> {
    dirs.get(path)?.map(|v| dec("dir", v.value())).transpose()
}

/// Record directories as dirty (to rebuild at the next publish).
pub fn add_dirty(txn: &redb::WriteTransaction, dirty: &BTreeSet<String>) -> Result<()> {
    let mut d = txn.open_table(DIRTY)?;
    for p in dirty {
        d.insert(p.as_str(), ())?;
    }
    Ok(())
}

/// The catalog database, for the operations that need no staging transaction of their own
/// (`gc`, `verify`, `log`, settings).
#[derive(Debug)]
pub struct Catalog {
    db: Database,
}

impl Catalog {
    /// Wrap an opened database.
    pub fn new(db: Database) -> Self {
        Catalog { db }
    }

    /// A read transaction (for staging code that reads several tables at once).
    pub fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// A write transaction (for staging and publishing).
    pub fn begin_write(&self) -> Result<redb::WriteTransaction> {
        Ok(self.db.begin_write()?)
    }

    /// A `meta` value, if set.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Set (`Some`) or remove (`None`) a `meta` value, committed.
    pub fn set_meta(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(META)?;
            match value {
                Some(v) => t.insert(key, v)?,
                None => t.remove(key)?,
            };
        }
        txn.commit()?;
        Ok(())
    }

    /// All revisions, oldest first.
    pub fn revisions(&self) -> Result<Vec<(u64, RevisionRecord)>> {
        let txn = self.db.begin_read()?;
        all_revisions(&txn.open_table(REVISIONS)?)
    }

    /// Flag revisions whose objects `gc` deletes.
    pub fn mark_pruned(&self, revs: &[u64]) -> Result<()> {
        if revs.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(REVISIONS)?;
            for rev in revs {
                let Some(v) = t.get(*rev)?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut rec: RevisionRecord = dec("revision", &v)?;
                rec.pruned = true;
                t.insert(*rev, enc(&rec).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Call `f(content, size)` for every regular file of the staged tree.
    pub fn for_each_staged_file(
        &self,
        f: &mut dyn FnMut(&FileContent, u64) -> Result<()>,
    ) -> Result<()> {
        let txn = self.db.begin_read()?;
        for row in txn.open_table(NODES)?.iter()? {
            let node: Node = dec("node", row?.1.value())?;
            if let NodeKind::File { size, content } = node.kind {
                f(&content, size)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normalize("/all/").unwrap(), "all");
        assert_eq!(normalize("./a//b").unwrap(), "a/b");
        assert_eq!(normalize("").unwrap(), "");
        assert!(normalize("a/../b").is_err());
        assert_eq!(split("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split("a"), Some(("", "a")));
        assert_eq!(split(""), None);
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
    }
}
