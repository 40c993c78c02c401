//! The file system's operations, as plain methods returning `Result<T, Error>`: inodes,
//! attributes, lookup, listing, open files, reads, extended attributes. `fuse.rs` adapts
//! them to fuser; nothing here touches the network except through [`ObjectStore`].
//!
//! Inode numbers are derived from the path (`blake3(parent inode ‖ name)`, plus the content
//! id for files), so they are stable across remounts, and across revisions for everything
//! that did not change. Per-open-file state keeps the [`Tree`] (revision) it was opened in,
//! so switching to a new revision ([`DepotFs::switch`]) leaves open files intact.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use depotfs_catalog::dir::{self, NodeSource, SINGLE_LEAF_MAX};
use depotfs_catalog::graph;
use depotfs_catalog::{DirNode, Entry, EntryKind, FileContent, Manifest, ObjectId};
use fuser::{FileAttr, FileType, INodeNo};
use tokio::runtime::Handle;

use crate::error::{Error, Fast, Result, Stop};
use crate::prefetch::{self, Readahead};
use crate::record::Recorder;
use crate::status::{Status, XATTRS_ANY, XATTRS_ROOT};
use crate::store::{Chunks, ObjectStore};
/// Directory-tree nodes a listing fetches ahead at once.
const DIR_PARALLEL: usize = 8;
/// The most nodes the background walk of a directory of `entries` entries fetches. An honest
/// tree has fewer than `entries / 12` plus its depth: every leaf but the last holds at least
/// 16 entries and every index node but the last of a level at least 4 children.
fn dir_walk_budget(entries: u64) -> usize {
    (entries / 8 + 64).min(1 << 20) as usize
}
/// Block size reported by stat: large, so readers ask for large pieces.
const BLKSIZE: u32 = 128 * 1024;

/// One revision of the repository: what a mount serves.
#[derive(Debug)]
pub struct Tree {
    /// The verified manifest.
    pub manifest: Manifest,
    /// Its signed text, as fetched (handed to a new daemon by `depotfs reload`, which
    /// verifies it again).
    pub signed: Vec<u8>,
}

impl Tree {
    fn root_entry(&self) -> Entry {
        let m = &self.manifest;
        Entry {
            name: String::new(),
            mode: 0o755,
            mtime_ns: m.root_mtime_ns,
            kind: EntryKind::Dir {
                tree: m.root,
                entries: m.root_entries,
            },
        }
    }
}

/// A known inode: a directory entry and where it hangs.
#[derive(Debug)]
pub struct Node {
    ino: u64,
    parent: u64,
    entry: Entry,
    /// The revision whose tree `entry` comes from. A directory node of an older revision is
    /// re-resolved against the current tree when used ([`DepotFs::current_node`]).
    rev: u64,
    nlink: OnceLock<u32>,
}

impl Node {
    /// The inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }
    /// The directory entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

#[derive(Debug)]
enum Content {
    Empty,
    Single(ObjectId),
    Chunked(Arc<Chunks>),
}

/// Per-open-file state.
#[derive(Debug)]
struct OpenFile {
    size: u64,
    /// Where its bytes are (the entry's), and the same ready to read.
    file: FileContent,
    content: Content,
    /// The revision the file was opened in.
    tree: Arc<Tree>,
    /// Sequential-read detection and the readahead window.
    ra: Readahead,
    /// The path relative to the root, when reads are recorded (`--record`).
    path: Option<String>,
    /// The last failed read: when, its range and its error (see [`RETRY_FAILS_FOR`]).
    failed: Mutex<Option<(std::time::Instant, u64, u64, Error)>>,
}

/// A read of an open file that overlaps a read of it that failed less than this ago fails
/// at once with the same error. The kernel asks again for a page whose readahead failed,
/// at once and through the same open file; without this its reader waited a second request
/// bound (a drip-feeding server: 4.0 s for a 2 s bound). A new `open` tries afresh.
const RETRY_FAILS_FOR: Duration = Duration::from_secs(1);

/// Static facts shown by `status` and the xattrs.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// What was mounted (URL or path).
    pub source: String,
    /// When the daemon started serving, Unix nanoseconds (`status`: uptime).
    pub started_ns: i64,
}

/// How reads are served beyond what is asked (see [`crate::prefetch`], [`crate::record`]).
#[derive(Debug, Default)]
pub struct Reading {
    /// Bandwidth cap of access-list prefetch, bytes per second; 0 turns it off.
    pub prefetch_rate: u64,
    /// Record every read to a trace file (`--record`).
    pub recorder: Option<Recorder>,
}

/// The mounted file system.
#[derive(Debug)]
pub struct DepotFs {
    store: Arc<ObjectStore>,
    tree: RwLock<Arc<Tree>>,
    info: MountInfo,
    reading: Reading,
    /// Chunk lists whose access list has been prefetched (once per mount).
    listed: Mutex<HashSet<ObjectId>>,
    /// Known inodes and the kernel's lookup count of each.
    nodes: Mutex<HashMap<u64, (Arc<Node>, u64)>>,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    rt: Handle,
    uid: u32,
    gid: u32,
}

/// May an operation wait for a download?
///
/// The FUSE adapter first runs an operation with [`Wait::No`] on the FUSE thread: answered
/// from memory, that is the fast path (no thread hop). Only if it needs an object that is not
/// in memory ([`Stop::Blocking`]) is it run again with [`Wait::Yes`] on the blocking pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Memory only; stop with [`Stop::Blocking`] on a miss.
    No,
    /// May block this thread on a download (blocking-pool threads only).
    Yes,
}

/// [`NodeSource`] over the object store, for the catalog's directory readers. With
/// [`Wait::Yes`] a miss waits for the download on the runtime.
struct Nodes<'a> {
    store: &'a ObjectStore,
    rt: &'a Handle,
    wait: Wait,
}

impl NodeSource for Nodes<'_> {
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, depotfs_catalog::Error> {
        if let Some(n) = self.store.dir_node_cached(id) {
            return Ok(n);
        }
        if self.wait == Wait::No {
            return Err(depotfs_catalog::Error::Pending(*id));
        }
        self.rt
            .block_on(self.store.dir_node(*id))
            .map_err(|e| depotfs_catalog::Error::Fetch {
                id: *id,
                message: e.to_string(),
            })
    }
}

/// What distinguishes two versions of one path: a file's content object. Directories and
/// symlinks keep their inode across revisions; a file whose content changes gets a new one,
/// so the kernel never mixes the page cache of two versions (ready for revision switching).
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

fn same_path_and_content(n: &Node, parent: u64, e: &Entry) -> bool {
    n.parent == parent && n.entry.name == e.name && content_key(&n.entry) == content_key(e)
}

/// `blake3(parent inode ‖ name ‖ file content id)`, never 0 or 1.
fn child_ino(parent: u64, e: &Entry) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&parent.to_le_bytes());
    h.update(e.name.as_bytes());
    if let Some(id) = content_key(e) {
        h.update(&[0]);
        h.update(&id.0);
    }
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    // 0 is invalid and 1 is the root.
    x.max(2)
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// The file type of an entry.
pub fn file_type(e: &Entry) -> FileType {
    match e.kind {
        EntryKind::File { .. } => FileType::RegularFile,
        EntryKind::Dir { .. } => FileType::Directory,
        EntryKind::Symlink { .. } => FileType::Symlink,
    }
}

/// Attribute names offered on regular files.
const XATTRS_FILE: [&str; 2] = ["user.depotfs.hash", "user.depotfs.cached_bytes"];

/// The node of the root directory (inode 1) of `tree`.
fn root_node(tree: &Tree) -> Arc<Node> {
    Arc::new(Node {
        ino: 1,
        parent: 1,
        entry: tree.root_entry(),
        rev: tree.manifest.revision,
        nlink: OnceLock::new(),
    })
}

impl DepotFs {
    /// A file system serving `tree` from `store`; blocking work waits on `rt`.
    pub fn new(store: Arc<ObjectStore>, tree: Tree, info: MountInfo, rt: Handle) -> Self {
        let tree = Arc::new(tree);
        let root = root_node(&tree);
        DepotFs {
            store,
            tree: RwLock::new(tree),
            info,
            reading: Reading::default(),
            listed: Mutex::new(HashSet::new()),
            nodes: Mutex::new(HashMap::from([(1, (root, 1))])),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            rt,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// Serve reads as `reading` says (prefetch, recording); the default is readahead only.
    pub fn with_reading(mut self, reading: Reading) -> Self {
        self.reading = reading;
        self
    }

    /// Write out what is buffered (the `--record` trace); called when the mount ends and
    /// every [`crate::record::FLUSH_EVERY`].
    pub fn flush(&self) {
        if let Some(r) = &self.reading.recorder {
            r.flush();
        }
    }

    /// The path of `ino` relative to the root, from the known inodes (the kernel holds
    /// every ancestor of an inode it uses); `None` if a link is missing.
    fn path_of(&self, ino: u64) -> Option<String> {
        let nodes = self.nodes.lock().expect("poisoned");
        let mut parts = Vec::new();
        let mut at = ino;
        while at != 1 {
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

    /// What was mounted, and when.
    pub fn info(&self) -> &MountInfo {
        &self.info
    }

    /// The object store.
    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    /// The manifest being served.
    pub fn manifest(&self) -> Manifest {
        self.tree().manifest.clone()
    }

    /// Serve `manifest`'s tree from now on. Open files keep the tree they were opened in;
    /// directories known from the old tree are re-resolved when next used. Returns the
    /// `(parent inode, name)` of every known entry, for the kernel to drop its cached
    /// dentries.
    pub fn switch(&self, manifest: Manifest, signed: Vec<u8>) -> Vec<(u64, String)> {
        let tree = Arc::new(Tree { manifest, signed });
        let root = root_node(&tree);
        let mut nodes = self.nodes.lock().expect("poisoned");
        *self.tree.write().expect("poisoned") = tree;
        nodes.entry(1).or_insert_with(|| (root.clone(), 1)).0 = root.clone();
        nodes
            .iter()
            .filter(|(ino, _)| **ino != 1)
            .map(|(_, (n, _))| (n.parent, n.entry.name.clone()))
            .collect()
    }

    /// The runtime that answers requests.
    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    fn tree(&self) -> Arc<Tree> {
        self.tree.read().expect("poisoned").clone()
    }

    fn src(&self, wait: Wait) -> Nodes<'_> {
        Nodes {
            store: &self.store,
            rt: &self.rt,
            wait,
        }
    }

    /// The node of `ino`.
    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes
            .lock()
            .expect("poisoned")
            .get(&ino)
            .map(|(n, _)| n.clone())
            .ok_or(Error::Stale)
    }

    /// The node of `ino`, as of the current revision: a directory known from an older
    /// revision is looked up again (its parent first), so lookups and listings see the new
    /// tree. Files need no update: their inode number includes their content.
    pub fn current_node(&self, ino: u64, wait: Wait) -> Fast<Arc<Node>> {
        let n = self.node(ino)?;
        if ino == 1 || !n.entry.is_dir() || n.rev == self.tree().manifest.revision {
            return Ok(n);
        }
        let parent = self.current_node(n.parent, wait)?;
        let top = Self::dir_tree(&parent)?;
        let entry = dir::lookup(&self.src(wait), &top, &n.entry.name)?.ok_or(Error::NotFound)?;
        if !entry.is_dir() {
            return Err(Error::NotFound.into());
        }
        let fresh = Arc::new(Node {
            ino,
            parent: n.parent,
            entry,
            rev: parent.rev,
            nlink: OnceLock::new(),
        });
        if let Some(slot) = self.nodes.lock().expect("poisoned").get_mut(&ino)
            && slot.0.rev < fresh.rev
        {
            slot.0 = fresh.clone();
        }
        Ok(fresh)
    }

    fn register(&self, parent_node: &Node, entry: Entry) -> Arc<Node> {
        let parent = parent_node.ino;
        let mut nodes = self.nodes.lock().expect("poisoned");
        let mut ino = child_ino(parent, &entry);
        loop {
            match nodes.get_mut(&ino) {
                Some((n, _)) if same_path_and_content(n, parent, &entry) => {
                    if n.rev < parent_node.rev && n.entry != entry {
                        // Same path (and content, for a file) in a newer revision.
                        *n = Arc::new(Node {
                            ino,
                            parent,
                            entry,
                            rev: parent_node.rev,
                            nlink: OnceLock::new(),
                        });
                    }
                    return n.clone();
                }
                // A 64-bit collision: probe deterministically.
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => break,
            }
        }
        let n = Arc::new(Node {
            ino,
            parent,
            entry,
            rev: parent_node.rev,
            nlink: OnceLock::new(),
        });
        nodes.insert(ino, (n.clone(), 0));
        n
    }

    fn dir_tree(node: &Node) -> Result<ObjectId> {
        match node.entry.kind {
            EntryKind::Dir { tree, .. } => Ok(tree),
            _ => Err(Error::NotDir),
        }
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str, wait: Wait) -> Fast<Arc<Node>> {
        let p = self.current_node(parent, wait)?;
        let top = Self::dir_tree(&p)?;
        let entry = dir::lookup(&self.src(wait), &top, name)?.ok_or(Error::NotFound)?;
        Ok(self.register(&p, entry))
    }

    /// The attributes of `node`.
    pub fn attr(&self, node: &Node, wait: Wait) -> Fast<FileAttr> {
        let nlink = match &node.entry.kind {
            EntryKind::Dir { tree, entries } => self.dir_nlink(node, tree, *entries, wait)?,
            _ => 1,
        };
        Ok(self.attr_with(node, nlink))
    }

    /// The attributes of `node` as an entry of a listing (READDIRPLUS): a subdirectory
    /// whose own tree cannot be had (a missing or bad node) is listed with nlink 1 ("not
    /// counted") instead of failing the whole listing; using it then fails by itself.
    pub fn listed_attr(&self, node: &Node, wait: Wait) -> Fast<FileAttr> {
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

    fn attr_with(&self, node: &Node, nlink: u32) -> FileAttr {
        let e = &node.entry;
        let size = match &e.kind {
            EntryKind::File { size, .. } => *size,
            EntryKind::Symlink { target } => target.len() as u64,
            EntryKind::Dir { .. } => 4096,
        };
        let t = time(e.mtime_ns);
        FileAttr {
            ino: INodeNo(node.ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(e),
            perm: (e.mode & 0o7777) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
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
    pub fn getattr(&self, ino: u64, wait: Wait) -> Fast<FileAttr> {
        let n = self.current_node(ino, wait)?;
        self.attr(&n, wait)
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match &self.node(ino)?.entry.kind {
            EntryKind::Symlink { target } => Ok(target.clone().into_bytes()),
            _ => Err(Error::NotSymlink),
        }
    }

    /// List directory `ino` from readdir offset `offset`: `.` is offset 0, `..` 1, entry at
    /// position p is p + 2; `add(ino, next_offset, entry-or-dot)` returns true when full.
    pub fn readdir(
        &self,
        ino: u64,
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

    /// The kernel now holds one more reference to `node` (a LOOKUP or READDIRPLUS reply
    /// carried it). Re-inserts it if a concurrent FORGET just dropped it.
    pub fn remember(&self, node: &Arc<Node>) {
        let mut nodes = self.nodes.lock().expect("poisoned");
        let slot = nodes.entry(node.ino).or_insert_with(|| (node.clone(), 0));
        slot.1 += 1;
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode is forgotten (the root
    /// never is). Inode numbers derive from paths, so a later lookup gets the same number.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let mut nodes = self.nodes.lock().expect("poisoned");
        if let Some(slot) = nodes.get_mut(&ino) {
            slot.1 = slot.1.saturating_sub(n);
            if slot.1 == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Number of inodes held (for tests and status).
    pub fn inode_count(&self) -> usize {
        self.nodes.lock().expect("poisoned").len()
    }

    /// The inode number `e` in directory `parent` has or will have, without registering it
    /// (a plain READDIR does not count as a lookup).
    pub fn ino_of(&self, parent: &Node, e: &Entry) -> u64 {
        let parent = parent.ino;
        let nodes = self.nodes.lock().expect("poisoned");
        let mut ino = child_ino(parent, e);
        while let Some((n, _)) = nodes.get(&ino) {
            if same_path_and_content(n, parent, e) {
                break;
            }
            ino = ino.wrapping_add(1).max(2);
        }
        ino
    }

    /// Register a listed entry as an inode (READDIRPLUS; count it with [`Self::remember`]).
    pub fn adopt(&self, parent: &Node, e: &Entry) -> Arc<Node> {
        self.register(parent, e.clone())
    }

    /// Open file `ino`: fetch its chunk list (if any) and remember the revision.
    pub async fn open(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        let (size, file) = match &node.entry.kind {
            EntryKind::File { size, content } => (*size, *content),
            EntryKind::Dir { .. } => return Err(Error::IsDir),
            EntryKind::Symlink { .. } => return Err(Error::NotFound),
        };
        let content = self.content(size, file).await?;
        let path = self.reading.recorder.as_ref().and_then(|_| {
            let p = self.path_of(ino);
            if p.is_none() {
                tracing::warn!(
                    "--record: the path of inode {ino} is unknown; its reads are not recorded"
                );
            }
            p
        });
        let of = Arc::new(OpenFile {
            size,
            file,
            content,
            tree: self.tree(),
            ra: Readahead::default(),
            path,
            failed: Mutex::new(None),
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("poisoned").insert(fh, of);
        Ok(fh)
    }

    /// A file's content ready to read: its chunk list fetched and checked against `size`.
    async fn content(&self, size: u64, content: FileContent) -> Result<Content> {
        Ok(match content {
            FileContent::Empty => Content::Empty,
            FileContent::Single(id) => Content::Single(id),
            FileContent::Chunked(id) => {
                let c = self.store.chunk_list(id).await?;
                if c.list.total_len() != size {
                    return Err(Error::Corrupt(format!(
                        "chunk list {id} covers {} bytes, the file has {size}",
                        c.list.total_len()
                    )));
                }
                // The first open of an image with an access list starts its prefetch.
                if self.reading.prefetch_rate > 0
                    && !c.list.prefetch.is_empty()
                    && self.listed.lock().expect("poisoned").insert(id)
                {
                    prefetch::spawn_list(
                        &self.store,
                        &self.rt,
                        c.clone(),
                        self.reading.prefetch_rate,
                    );
                }
                Content::Chunked(c)
            }
        })
    }

    /// Forget an open file.
    pub fn release(&self, fh: u64) {
        self.open.lock().expect("poisoned").remove(&fh);
    }

    /// Read up to `size` bytes at `offset` from open file `fh`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let of = self
            .open
            .lock()
            .expect("poisoned")
            .get(&fh)
            .cloned()
            .ok_or(Error::Stale)?;
        if offset >= of.size {
            return Ok(Vec::new());
        }
        let end = of.size.min(offset + size as u64);
        if let (Some(rec), Some(path)) = (&self.reading.recorder, &of.path) {
            rec.read(path, offset, end - offset);
        }
        // Readahead starts before this read's own downloads, so they overlap.
        if let Content::Chunked(c) = &of.content
            && let Some((from, to)) = of.ra.on_read(offset, end)
        {
            prefetch::spawn_range(&self.store, &self.rt, c, from, to);
        }
        if let Some((at, from, to, e)) = &*of.failed.lock().expect("poisoned")
            && at.elapsed() < RETRY_FAILS_FOR
            && offset < *to
            && *from < end
        {
            return Err(e.clone());
        }
        // The reader waits at most the request bound `status` prints, even when the read
        // spans several chunks or joins a download that started earlier.
        let data = match self.store.request_bound() {
            Some(bound) => tokio::time::timeout(bound, self.read_range(&of, offset, end))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout {
                        what: format!("{} bytes at offset {offset}", end - offset),
                        secs: bound.as_secs(),
                    })
                }),
            None => self.read_range(&of, offset, end).await,
        }
        .inspect_err(|e| {
            *of.failed.lock().expect("poisoned") =
                Some((std::time::Instant::now(), offset, end, e.clone()));
        })?;
        self.store
            .stats
            .bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// The bytes `offset..end` of open file `of`.
    async fn read_range(&self, of: &OpenFile, offset: u64, end: u64) -> Result<Vec<u8>> {
        match &of.content {
            Content::Empty => Ok(Vec::new()),
            Content::Single(id) => {
                let v = self.store.chunk(*id, of.size).await?;
                Ok(piece(&v, offset, end)?.to_vec())
            }
            Content::Chunked(c) => {
                let mut out = Vec::with_capacity((end - offset) as usize);
                let mut i = c.list.locate(&c.offsets, offset).ok_or(Error::Stale)?.index;
                while c.offsets[i] < end {
                    let r = c.list.chunks[i];
                    let v = self.store.chunk(r.id, r.len as u64).await?;
                    let from = offset.max(c.offsets[i]) - c.offsets[i];
                    let to = end.min(c.offsets[i + 1]) - c.offsets[i];
                    out.extend_from_slice(piece(&v, from, to)?);
                    i += 1;
                }
                Ok(out)
            }
        }
    }

    /// The value of extended attribute `name` on `ino`.
    pub fn getxattr(&self, ino: u64, name: &str, wait: Wait) -> Fast<Vec<u8>> {
        if !name.starts_with("user.") {
            // `ls -l` asks for the SELinux label and the ACLs of every file. ENODATA would
            // only say "this file has none", and ls would ask again for the next one;
            // EOPNOTSUPP says the file system has no such namespace, and ls (coreutils
            // remembers it per device) stops asking: `ls -l` of 118,594 entries went from
            // 4.6 s to 0.7 s warm (benches/RESULTS.md, P3).
            return Err(Error::NotSupported.into());
        }
        if !name.starts_with("user.depotfs.") {
            return Err(Error::NoAttr.into());
        }
        let node = self.node(ino)?;
        if let EntryKind::File { size, content } = &node.entry.kind {
            match name {
                "user.depotfs.hash" => {
                    let id = match content {
                        FileContent::Empty => ObjectId::of(b""),
                        FileContent::Single(id) | FileContent::Chunked(id) => *id,
                    };
                    return Ok(id.to_string().into_bytes());
                }
                "user.depotfs.cached_bytes" => {
                    let n = self.cached_bytes(*size, content, wait)?;
                    return Ok(n.to_string().into_bytes());
                }
                _ => {}
            }
        }
        if ino == 1 || XATTRS_ANY.contains(&name) {
            // The root's attributes are the mount's status, one value each.
            if let Some(v) = Status::of(self).xattr(name) {
                return Ok(v.into_bytes());
            }
        }
        Err(Error::NoAttr.into())
    }

    fn cached_bytes(&self, size: u64, content: &FileContent, wait: Wait) -> Fast<u64> {
        Ok(match content {
            FileContent::Empty => 0,
            FileContent::Single(id) => {
                if self.store.has_chunk(id) {
                    size
                } else {
                    0
                }
            }
            FileContent::Chunked(id) => {
                let c = match (self.store.chunk_list_cached(id), wait) {
                    (Some(c), _) => c,
                    (None, Wait::No) => return Err(Stop::Blocking),
                    (None, Wait::Yes) => self.rt.block_on(self.store.chunk_list(*id))?,
                };
                c.list
                    .chunks
                    .iter()
                    .filter(|r| self.store.has_chunk(&r.id))
                    .map(|r| r.len as u64)
                    .sum()
            }
        })
    }

    /// The NUL-separated attribute names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let mut names: Vec<&str> = XATTRS_ANY.to_vec();
        if matches!(node.entry.kind, EntryKind::File { .. }) {
            names.extend(XATTRS_FILE);
        }
        if ino == 1 {
            names.extend(XATTRS_ROOT);
        }
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// `statfs`: blocks are the cache (limit and free), files the root's entries.
    pub fn statfs(&self) -> (u64, u64, u64) {
        let (used, limit) = self.store.disk().map_or((0, 0), |d| d.usage());
        (
            limit / 4096,
            limit.saturating_sub(used) / 4096,
            self.tree().manifest.root_entries,
        )
    }
}

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
    ino: u64,
    parent: u64,
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
            .nodes
            .lock()
            .expect("poisoned")
            .values()
            .map(|(n, lookups)| NodeState {
                ino: n.ino,
                parent: n.parent,
                entry: n.entry.clone(),
                rev: n.rev,
                lookups: *lookups,
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
        let mut nodes: HashMap<u64, (Arc<Node>, u64)> = state
            .nodes
            .into_iter()
            .filter(|n| n.ino != 1)
            .map(|n| {
                let node = Node {
                    ino: n.ino,
                    parent: n.parent,
                    entry: n.entry,
                    rev: n.rev,
                    nlink: OnceLock::new(),
                };
                (n.ino, (Arc::new(node), n.lookups))
            })
            .collect();
        nodes.insert(1, (root, 1));
        *self.tree.write().expect("poisoned") = current.clone();
        *self.nodes.lock().expect("poisoned") = nodes;
        *self.open.lock().expect("poisoned") = open;
        self.next_fh.store(state.next_fh.max(1), Ordering::Relaxed);
        self.listed.lock().expect("poisoned").extend(state.listed);
        Ok(())
    }
}

/// Bytes `from..to` of a verified chunk (whose length the store checked against its
/// referrer); an out-of-range piece is an error, never a panic.
fn piece(v: &depotfs_catalog::Verified, from: u64, to: u64) -> Result<&[u8]> {
    usize::try_from(from)
        .ok()
        .zip(usize::try_from(to).ok())
        .and_then(|(a, b)| v.data().get(a..b))
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "chunk {} has {} bytes, a read wants {from}..{to}",
                v.id(),
                v.data().len()
            ))
        })
}

/// One item of a directory listing.
#[derive(Debug)]
pub enum DirItem<'a> {
    /// `.` or `..`: the inode it refers to and the name.
    Dot(u64, &'static str),
    /// A real entry of directory (parent, entry).
    Entry(&'a Node, &'a Entry),
}

#[cfg(test)]
mod tests {
    use super::*;

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
                ino: 42,
                parent: 1,
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
        assert_eq!((n.ino, n.parent, n.rev, n.lookups), (42, 1, 3, 2));
        assert_eq!(n.entry, entry);
        let o = &back.open[0];
        assert_eq!((o.fh, o.size, o.tree), (5, 7, 0));
        assert_eq!((back.next_fh, back.listed.clone()), (6, vec![id]));
        for cut in 0..bytes.len() {
            assert!(FsState::from_bytes(&bytes[..cut]).is_err(), "{cut} bytes");
        }
    }
    use depotfs_catalog::object::{self, ObjectKind};

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

    /// An inode number depends on the parent, the name and a file's content, never on a
    /// directory's tree (a directory keeps its inode across revisions), and is never 0 or 1.
    #[test]
    fn inode_numbers_follow_path_and_file_content() {
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let f = child_ino(1, &file("x", FileContent::Single(a)));
        assert!(f >= 2);
        assert_eq!(f, child_ino(1, &file("x", FileContent::Single(a))));
        assert_ne!(f, child_ino(1, &file("x", FileContent::Single(b))));
        assert_ne!(f, child_ino(1, &file("y", FileContent::Single(a))));
        assert_ne!(f, child_ino(2, &file("x", FileContent::Single(a))));
        // The same content object, whole or chunked, is the same version of the path.
        assert_eq!(f, child_ino(1, &file("x", FileContent::Chunked(a))));
        assert_eq!(
            child_ino(1, &dir("d", a)),
            child_ino(1, &dir("d", b)),
            "a directory whose entries change keeps its inode"
        );
        assert_eq!(
            content_key(&file("e", FileContent::Empty)),
            Some(ObjectId::of(b""))
        );
    }

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

    /// A piece inside a chunk is its bytes; one outside (a lying chunk list) is an error
    /// naming the chunk, never a panic.
    #[test]
    fn pieces_out_of_range_are_errors() {
        let enc = object::encode(ObjectKind::Chunk, b"0123456789", 1);
        let v = object::decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20).unwrap();
        assert_eq!(piece(&v, 2, 5).unwrap(), b"234");
        assert_eq!(piece(&v, 10, 10).unwrap(), b"");
        for (from, to) in [(5, 11), (11, 12), (6, 5), (0, u64::MAX)] {
            let e = piece(&v, from, to).unwrap_err().to_string();
            assert!(e.contains(&enc.id.to_string()), "{e}");
        }
    }
}
