//! The file system's operations, as plain methods returning `Result<T, Error>` (or
//! [`Fast`] where an operation may stop for a download), with no FUSE types: `fuse.rs`
//! adapts them to fuser; nothing here touches the network except through [`ObjectStore`].
//!
//! Here: the revision served and switching it ([`DepotFs::switch`]), lookup, open files and
//! reads (with the readahead, access-list prefetch and `--record` they trigger). Beside it:
//! [`inodes`] (the inode table, [`Ino`]), [`attr`] (attributes), [`listing`] (readdir and
//! the background fetch of a large directory's tree), [`xattr`] (extended attributes; the
//! root's are the mount's [`crate::status::Status`]) and [`state`] (what `depotfs reload`
//! hands to the next daemon). Per-open-file state keeps the [`Tree`] (revision) it was
//! opened in, so switching to a new revision leaves open files intact.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use depotfs_catalog::dir::{self, NodeSource};
use depotfs_catalog::{DirNode, Entry, EntryKind, FileContent, Manifest, ObjectId};
use tokio::runtime::Handle;

use crate::error::{Error, Fast, Result};
use crate::prefetch::{self, Readahead};
use crate::record::Recorder;
use crate::store::{Chunks, ObjectStore};

pub mod attr;
pub mod inodes;
pub mod listing;
pub mod state;
pub mod xattr;

pub use attr::{Attr, Kind};
use inodes::Inodes;
pub use inodes::{Ino, Node};
pub use listing::DirItem;
pub use state::FsState;

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
    /// Where access-list chunks go into the kernel's page cache (set by the mount once its
    /// FUSE session exists).
    page_push: OnceLock<prefetch::PagePush>,
    /// Known inodes and the kernel's lookup count of each.
    inodes: Inodes,
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
/// in memory ([`Stop::Blocking`](crate::Stop::Blocking)) is it run again with [`Wait::Yes`] on the blocking pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Memory only; stop with [`Stop::Blocking`](crate::Stop::Blocking) on a miss.
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
        // Within the request bound `status` prints, a corrupt node's refetch included.
        let fetch = self.store.dir_node(*id);
        let what = || format!("directory node {id}");
        // The timer is made in the runtime: inside the future.
        let r = self.rt.block_on(self.store.within_bound(what, fetch));
        r.map_err(|e| depotfs_catalog::Error::Fetch {
            id: *id,
            message: e.to_string(),
        })
    }
}

/// The node of the root directory (inode 1) of `tree`.
fn root_node(tree: &Tree) -> Arc<Node> {
    Arc::new(Node::new(
        Ino::ROOT,
        Ino::ROOT,
        tree.root_entry(),
        tree.manifest.revision,
    ))
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
            page_push: OnceLock::new(),
            inodes: Inodes::new(root),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            rt,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// Put access lists' chunks into the kernel's page cache with `push` from now on (see
    /// [`prefetch`]); once.
    pub fn set_page_push(&self, push: prefetch::PagePush) {
        let _ = self.page_push.set(push);
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

    /// [`Self::flush`], and wait for the disk cache's writer to store what it holds (when
    /// the daemon stops serving: not on the runtime).
    pub fn flush_all(&self) {
        self.flush();
        if let Some(d) = self.store.disk() {
            d.flush();
        }
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
    pub fn switch(&self, manifest: Manifest, signed: Vec<u8>) -> Vec<(Ino, String)> {
        let tree = Arc::new(Tree { manifest, signed });
        let root = root_node(&tree);
        self.inodes.switch_root(root, || {
            *self.tree.write().expect("poisoned") = tree;
        })
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
    pub fn node(&self, ino: Ino) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or(Error::Stale)
    }

    /// The node of `ino`, as of the current revision: a directory known from an older
    /// revision is looked up again (its parent first), so lookups and listings see the new
    /// tree. Files need no update: their inode number includes their content.
    pub fn current_node(&self, ino: Ino, wait: Wait) -> Fast<Arc<Node>> {
        let n = self.node(ino)?;
        if ino == Ino::ROOT || !n.entry.is_dir() || n.rev == self.tree().manifest.revision {
            return Ok(n);
        }
        let parent = self.current_node(n.parent, wait)?;
        let top = Self::dir_tree(&parent)?;
        let entry = dir::lookup(&self.src(wait), &top, &n.entry.name)?.ok_or(Error::NotFound)?;
        if !entry.is_dir() {
            return Err(Error::NotFound.into());
        }
        let fresh = Arc::new(Node::new(ino, n.parent, entry, parent.rev));
        self.inodes.refresh(&fresh);
        Ok(fresh)
    }

    fn dir_tree(node: &Node) -> Result<ObjectId> {
        match node.entry.kind {
            EntryKind::Dir { tree, .. } => Ok(tree),
            _ => Err(Error::NotDir),
        }
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str, wait: Wait) -> Fast<Arc<Node>> {
        let p = self.current_node(parent, wait)?;
        let top = Self::dir_tree(&p)?;
        let entry = dir::lookup(&self.src(wait), &top, name)?.ok_or(Error::NotFound)?;
        Ok(self.inodes.register(&p, entry))
    }

    /// `readlink`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match &self.node(ino)?.entry.kind {
            EntryKind::Symlink { target } => Ok(target.clone().into_bytes()),
            _ => Err(Error::NotSymlink),
        }
    }

    /// The kernel now holds one more reference to `node` (a LOOKUP or READDIRPLUS reply
    /// carried it). Re-inserts it if a concurrent FORGET just dropped it.
    pub fn remember(&self, node: &Arc<Node>) {
        self.inodes.remember(node);
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode is forgotten (the root
    /// never is). Inode numbers derive from paths, so a later lookup gets the same number.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Number of inodes held (for tests and status).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The inode number `e` in directory `parent` has or will have, without registering it
    /// (a plain READDIR does not count as a lookup).
    pub fn ino_of(&self, parent: &Node, e: &Entry) -> Ino {
        self.inodes.ino_of(parent.ino, e)
    }

    /// Register a listed entry as an inode (READDIRPLUS; count it with [`Self::remember`]).
    pub fn adopt(&self, parent: &Node, e: &Entry) -> Arc<Node> {
        self.inodes.register(parent, e.clone())
    }

    /// Open file `ino`: fetch its chunk list (if any) and remember the revision.
    pub async fn open(&self, ino: Ino) -> Result<u64> {
        let node = self.node(ino)?;
        let (size, file) = match &node.entry.kind {
            EntryKind::File { size, content } => (*size, *content),
            EntryKind::Dir { .. } => return Err(Error::IsDir),
            EntryKind::Symlink { .. } => return Err(Error::NotFound),
        };
        let content = self.content(size, file).await?;
        if let (Content::Chunked(c), FileContent::Chunked(id)) = (&content, file) {
            self.start_list(ino, id, c);
        }
        let path = self.reading.recorder.as_ref().and_then(|_| {
            let p = self.inodes.path_of(ino);
            if p.is_none() {
                tracing::warn!(
                    "--record: the path of inode {} is unknown; its reads are not recorded",
                    ino.0
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
                Content::Chunked(c)
            }
        })
    }

    /// The first open of an image with an access list (file `ino`, chunk list `id`, parsed
    /// as `c`) starts its prefetch, which also fills the file's page cache once the mount can.
    fn start_list(&self, ino: Ino, id: ObjectId, c: &Arc<Chunks>) {
        if self.reading.prefetch_rate > 0
            && !c.list.prefetch.is_empty()
            && self.listed.lock().expect("poisoned").insert(id)
        {
            let push = self.page_push.get().map(|p| prefetch::PushTo {
                ino,
                push: p.clone(),
            });
            prefetch::spawn_list(
                &self.store,
                &self.rt,
                c.clone(),
                self.reading.prefetch_rate,
                push,
            );
        }
    }

    /// Forget an open file.
    pub fn release(&self, fh: u64) {
        self.open.lock().expect("poisoned").remove(&fh);
    }

    /// Read up to `size` bytes at `offset` from open file `fh`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadData> {
        let of = self
            .open
            .lock()
            .expect("poisoned")
            .get(&fh)
            .cloned()
            .ok_or(Error::Stale)?;
        if offset >= of.size {
            return Ok(ReadData::default());
        }
        let end = of.size.min(offset + size as u64);
        if let (Some(rec), Some(path)) = (&self.reading.recorder, &of.path) {
            rec.read(path, offset, end - offset);
        }
        // Readahead starts before this read's own downloads, so they overlap. Reads of an
        // access list being prefetched are not speculated on (see `prefetch`).
        if let Content::Chunked(c) = &of.content
            && !(self.reading.prefetch_rate > 0 && c.listed(offset, end))
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
        let what = || {
            format!(
                "{} bytes at offset {offset} of {}",
                end - offset,
                match (&of.path, of.file) {
                    (Some(p), _) => p.clone(),
                    (None, FileContent::Single(id) | FileContent::Chunked(id)) => {
                        format!("the file of object {id}")
                    }
                    (None, FileContent::Empty) => "an empty file".into(),
                }
            )
        };
        let data = self
            .store
            .within_bound(what, self.read_range(&of, offset, end))
            .await
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
    async fn read_range(&self, of: &OpenFile, offset: u64, end: u64) -> Result<ReadData> {
        let mut out = ReadData::default();
        match &of.content {
            Content::Empty => Ok(out),
            Content::Single(id) => {
                let v = self.store.chunk(*id, of.size).await?;
                out.push(v, offset, end)?;
                Ok(out)
            }
            Content::Chunked(c) => {
                let mut i = c.list.locate(&c.offsets, offset).ok_or(Error::Stale)?.index;
                // The chunks after the first load side by side with it (a 1 MiB request
                // spans ~4 chunks: one after another, 4 round trips for the reader).
                let last = c.offsets.partition_point(|&o| o < end) - 1;
                for r in c.list.chunks.get(i + 1..=last).unwrap_or_default() {
                    prefetch::spawn_load(&self.store, &self.rt, *r, None);
                }
                while c.offsets[i] < end {
                    let r = c.list.chunks[i];
                    let v = self.store.chunk(r.id, r.len as u64).await?;
                    let from = offset.max(c.offsets[i]) - c.offsets[i];
                    let to = end.min(c.offsets[i + 1]) - c.offsets[i];
                    out.push(v, from, to)?;
                    i += 1;
                }
                Ok(out)
            }
        }
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

/// What a read returns: pieces of verified chunks, in file order. The FUSE reply hands them
/// to the kernel as they are (one `writev`); copying them into one buffer first cost 5.6 %
/// of the daemon's samples during a cold 1 GiB read (issue 21, P4).
#[derive(Debug, Default)]
pub struct ReadData {
    pieces: Vec<(Arc<depotfs_catalog::Verified>, std::ops::Range<usize>)>,
    len: usize,
}

impl ReadData {
    /// Append bytes `from..to` of chunk `v` ([`piece`]'s checks).
    fn push(&mut self, v: Arc<depotfs_catalog::Verified>, from: u64, to: u64) -> Result<()> {
        let n = piece(&v, from, to)?.len();
        // In range: `piece` checked both ends, so these conversions succeed.
        let from = from as usize;
        if n > 0 {
            self.pieces.push((v, from..from + n));
            self.len += n;
        }
        Ok(())
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bytes (a read at or past the end).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.pieces.iter().map(|(v, r)| &v.data()[r.clone()])
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

#[cfg(test)]
mod tests {
    use super::*;
    use depotfs_catalog::object::{self, ObjectKind};

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

    /// A read's data is its pieces in order, empty ones left out; a bad piece fails it.
    #[test]
    fn read_data_is_its_pieces_in_order() {
        let chunk = |b: &[u8]| {
            let enc = object::encode(ObjectKind::Chunk, b, 1);
            Arc::new(object::decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20).unwrap())
        };
        let (a, b) = (chunk(b"0123456789"), chunk(b"abcdef"));
        let mut d = ReadData::default();
        assert!(d.is_empty());
        d.push(a.clone(), 7, 10).unwrap();
        d.push(b.clone(), 0, 0).unwrap();
        d.push(b.clone(), 0, 4).unwrap();
        assert_eq!(d.len(), 7);
        assert_eq!(d.slices().collect::<Vec<_>>(), [&b"789"[..], b"abcd"]);
        assert_eq!(d.slices().count(), 2);
        assert!(d.push(b, 4, 7).is_err());
        assert_eq!(d.len(), 7);
    }
}
