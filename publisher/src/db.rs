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
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
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

    /// Create the tables of a new catalog with its settings; the (empty) root is dirty, so
    /// the first publish builds it.
    pub fn create(&self, settings: &[(&str, &[u8])]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            for (k, v) in settings {
                meta.insert(*k, *v)?;
            }
            txn.open_table(NODES)?;
            txn.open_table(DIRS)?;
            txn.open_table(REVISIONS)?;
            txn.open_table(TAGS)?;
            txn.open_table(DIRTY)?.insert("", ())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Change the staged tree: `f` runs inside one write transaction, committed (with the
    /// directories it marked dirty) when it returns `Ok`, abandoned when it fails.
    pub fn change<T>(&self, f: impl FnOnce(&mut Tree<'_>) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut tree = Tree {
                txn: &txn,
                nodes: txn.open_table(NODES)?,
                dirty: BTreeSet::new(),
                clear_dirty: false,
            };
            let out = f(&mut tree)?;
            let (dirty, clear) = (std::mem::take(&mut tree.dirty), tree.clear_dirty);
            drop(tree);
            if clear {
                txn.open_table(DIRTY)?.retain(|_, _| false)?;
            }
            add_dirty(&txn, &dirty)?;
            out
        };
        txn.commit()?;
        Ok(out)
    }

    /// Publish: `f` runs inside one write transaction over the publish tables and says
    /// whether to commit it (`(value, true)`); whatever must be durable before the catalog
    /// records the revision (the objects) `f` makes durable itself.
    pub fn publishing<T>(
        &self,
        f: impl FnOnce(&mut Publishing<'_>) -> Result<(T, bool)>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let (out, commit) = {
            let mut p = Publishing {
                txn: &txn,
                nodes: txn.open_table(NODES)?,
                dirs: txn.open_table(DIRS)?,
                dirty: txn.open_table(DIRTY)?,
                revs: txn.open_table(REVISIONS)?,
                tags: txn.open_table(TAGS)?,
            };
            f(&mut p)?
        };
        if commit {
            txn.commit()?;
        }
        Ok(out)
    }

    /// The children of directory `dir` in the staged tree, in name order (empty when it
    /// does not exist).
    pub fn children(&self, dir: &str) -> Result<Vec<(String, Node)>> {
        let txn = self.db.begin_read()?;
        children(&txn.open_table(NODES)?, dir)
    }

    /// Is `path` in the staged tree?
    pub fn has_node(&self, path: &str) -> Result<bool> {
        let Some((p, n)) = split(path) else {
            return Ok(true);
        };
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(NODES)?.get((p, n))?.is_some())
    }

    /// Is anything staged (a directory to rebuild)?
    pub fn has_dirty(&self) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(!txn.open_table(DIRTY)?.is_empty()?)
    }

    /// The latest revision, if any.
    pub fn latest_revision(&self) -> Result<Option<(u64, RevisionRecord)>> {
        let txn = self.db.begin_read()?;
        latest_revision(&txn.open_table(REVISIONS)?)
    }

    /// The record of imported layer `digest`, if any.
    pub fn layer(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(LAYERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(digest)?.map(|v| v.value().to_vec()))
    }

    /// Keep the record of imported layer `digest`.
    pub fn set_layer(&self, digest: &str, record: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(LAYERS)?.insert(digest, record)?;
        txn.commit()?;
        Ok(())
    }

    /// What is staged and by which runs.
    pub fn staged(&self) -> Result<crate::staged::Report> {
        crate::staged::Report::read(&self.db.begin_read()?)
    }

    /// Leave what `run` staged for a later publish, on purpose.
    pub fn keep_staged(&self, run: &crate::staged::RunId) -> Result<()> {
        let txn = self.db.begin_write()?;
        crate::staged::keep(&txn, run)?;
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

/// Add directory `dir` and its ancestors to `dirty`.
pub fn mark_dirty(dirty: &mut BTreeSet<String>, dir: &str) {
    let mut d = dir.to_string();
    loop {
        if !dirty.insert(d.clone()) {
            return;
        }
        match split(&d) {
            Some((p, _)) => d = p.to_string(),
            None => return,
        }
    }
}

/// Path components in `path` (the root: 0).
pub fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('/').count() + 1
    }
}

/// Key of a `nodes` row: (parent path, name).
type NodeKey = (&'static str, &'static str);

/// The staged tree inside one write transaction ([`Catalog::change`]): rows of `nodes`, and
/// the directories to rebuild at the next publish (added to `dirty` when the change commits).
pub struct Tree<'t> {
    txn: &'t redb::WriteTransaction,
    nodes: redb::Table<'t, NodeKey, &'static [u8]>,
    dirty: BTreeSet<String>,
    clear_dirty: bool,
}

impl<'t> Tree<'t> {
    /// The transaction (for the record of the change: [`crate::staged::Recorder`]).
    pub fn txn(&self) -> &'t redb::WriteTransaction {
        self.txn
    }

    /// The node at `path`, if any.
    pub fn node(&self, path: &str) -> Result<Option<Node>> {
        match split(path) {
            Some((parent, name)) => get_node(&self.nodes, parent, name),
            None => Ok(None),
        }
    }

    /// The children of `dir` as (name, node), in name order.
    pub fn children(&self, dir: &str) -> Result<Vec<(String, Node)>> {
        children(&self.nodes, dir)
    }

    /// Set the node at `path` (not the root). Marks nothing dirty: see [`Tree::mark_dirty`].
    pub fn put(&mut self, path: &str, node: &Node) -> Result<()> {
        let (parent, name) =
            split(path).ok_or_else(|| Error::Input("cannot replace the root".into()))?;
        self.nodes.insert((parent, name), enc(node).as_slice())?;
        Ok(())
    }

    /// Mark directory `dir` and its ancestors to rebuild at the next publish.
    pub fn mark_dirty(&mut self, dir: &str) {
        mark_dirty(&mut self.dirty, dir);
    }

    /// Remove `path` and, if it is a directory, everything below it; mark what changed
    /// dirty. Returns the bytes of the files removed. (Depth first with a stack of its own,
    /// not by recursion: a tree is as deep as its paths, and a thread's stack is not.)
    pub fn remove_subtree(&mut self, path: &str) -> Result<u64> {
        let (p, n) = split(path).ok_or_else(|| Error::Input("cannot remove the root".into()))?;
        let mut bytes = match get_node(&self.nodes, p, n) {
            Ok(Some(Node {
                kind: NodeKind::File { size, .. },
                ..
            })) => size,
            _ => 0,
        };
        let mut dirs = vec![path.to_string()];
        while let Some(dir) = dirs.pop() {
            for (name, node) in children(&self.nodes, &dir)? {
                match node.kind {
                    NodeKind::Dir => dirs.push(join(&dir, &name)),
                    NodeKind::File { size, .. } => bytes += size,
                    NodeKind::Symlink { .. } => {}
                }
                self.nodes.remove((dir.as_str(), name.as_str()))?;
            }
            self.dirty.insert(dir);
        }
        self.nodes.remove((p, n))?;
        self.mark_dirty(p);
        Ok(bytes)
    }

    /// Replace the whole tree with `rows` (path, node), marking nothing.
    pub fn replace_all(&mut self, rows: &[(String, Node)]) -> Result<()> {
        self.nodes.retain(|_, _| false)?;
        for (path, node) in rows {
            self.put(path, node)?;
        }
        Ok(())
    }

    /// Mark every directory published so far dirty (a rollback rebuilds them all).
    pub fn mark_published_dirty(&mut self) -> Result<()> {
        for row in self.txn.open_table(DIRS)?.iter()? {
            self.dirty.insert(row?.0.value().to_string());
        }
        self.dirty.insert(String::new());
        Ok(())
    }

    /// Forget every directory marked dirty, committed ones too (an abort: the tree is the
    /// latest revision's again).
    pub fn clear_dirty(&mut self) {
        self.dirty.clear();
        self.clear_dirty = true;
    }
}

impl std::fmt::Debug for Tree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree").field("dirty", &self.dirty).finish()
    }
}

/// The tables a publish reads and writes, inside one write transaction
/// ([`Catalog::publishing`]).
pub struct Publishing<'t> {
    txn: &'t redb::WriteTransaction,
    nodes: redb::Table<'t, NodeKey, &'static [u8]>,
    dirs: redb::Table<'t, &'static str, &'static [u8]>,
    dirty: redb::Table<'t, &'static str, ()>,
    revs: redb::Table<'t, u64, &'static [u8]>,
    tags: redb::Table<'t, &'static str, u64>,
}

impl std::fmt::Debug for Publishing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publishing").finish_non_exhaustive()
    }
}

impl Publishing<'_> {
    /// The revision tag `tag` names, if any.
    pub fn tagged(&self, tag: &str) -> Result<Option<u64>> {
        Ok(self.tags.get(tag)?.map(|r| r.value()))
    }

    /// The directories to rebuild, deepest first (a directory after its subdirectories).
    pub fn dirty(&self) -> Result<Vec<String>> {
        let mut dirty: Vec<String> = Vec::new();
        for row in self.dirty.iter()? {
            dirty.push(row?.0.value().to_string());
        }
        let depth = |p: &str| {
            if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            }
        };
        dirty.sort_by_key(|p| std::cmp::Reverse(depth(p)));
        Ok(dirty)
    }

    /// The latest revision, if any.
    pub fn latest(&self) -> Result<Option<(u64, RevisionRecord)>> {
        latest_revision(&self.revs)
    }

    /// Is `path` a directory of the staged tree (the root always is)?
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(match split(path) {
            None => true,
            Some((p, n)) => {
                get_node(&self.nodes, p, n)?.is_some_and(|n| matches!(n.kind, NodeKind::Dir))
            }
        })
    }

    /// The children of `dir` in the staged tree.
    pub fn children(&self, dir: &str) -> Result<Vec<(String, Node)>> {
        children(&self.nodes, dir)
    }

    /// Directory `path` as last published (or built by this publish).
    pub fn dir(&self, path: &str) -> Result<Option<DirState>> {
        get_dir(&self.dirs, path)
    }

    /// Record directory `path` as built (`Some`) or gone (`None`).
    pub fn set_dir(&mut self, path: &str, state: Option<&DirState>) -> Result<()> {
        match state {
            Some(s) => self.dirs.insert(path, enc(s).as_slice())?,
            None => self.dirs.remove(path)?,
        };
        Ok(())
    }

    /// Record revision `rev` (and its tag), and clear what was staged for it.
    pub fn add_revision(&mut self, rev: u64, rec: &RevisionRecord) -> Result<()> {
        self.revs.insert(rev, enc(rec).as_slice())?;
        if let Some(tag) = &rec.tag {
            self.tags.insert(tag.as_str(), rev)?;
        }
        self.dirty.retain(|_, _| false)?;
        crate::staged::clear(self.txn)
    }

    /// Tag existing revision `rev` (whose record is `rec`) as `tag`.
    pub fn tag(&mut self, rev: u64, mut rec: RevisionRecord, tag: &str) -> Result<()> {
        self.tags.insert(tag, rev)?;
        rec.tag = Some(tag.to_string());
        self.revs.insert(rev, enc(&rec).as_slice())?;
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
