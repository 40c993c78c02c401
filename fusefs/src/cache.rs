//! The disk cache: content-addressed object files under one directory, bounded by a byte
//! limit with LRU eviction. This module is the one place the cache evicts.
//!
//! ```text
//! DIR/objects/ab/cdef…       an object exactly as fetched (header + payload, still encoded)
//! DIR/tmp/<name>.<pid>.<n>   a file being written under a temporary name (only where the
//!                            file system has no O_TMPFILE, and for revision records)
//! DIR/revisions/<repo name>  the highest revision this machine has accepted (rollback guard)
//! ```
//!
//! - **kill -9**: a file appears under `objects/` only whole, linked from an anonymous file
//!   or renamed from a complete temp file ([`depotfs_catalog::object_file`]), and every load
//!   is verified again ([`depotfs_catalog::object::decode`]) by the caller,
//!   which discards a torn or corrupt file and refetches. Temp files of dead processes are
//!   removed when a mount starts.
//! - **LRU across restarts**: a file's mtime is its last use; the index is rebuilt from the
//!   files' sizes and mtimes at start, oldest first.
//! - **Sharing**: mounts that use the same directory share the files; each mount keeps its own
//!   index and adopts files other mounts wrote when it first loads them. Each mount enforces
//!   the limit over what it knows, so the directory stays within the limit while mounts
//!   use it in turn, and within (mounts × limit) in the worst case.
//! - **A disk slower than the network** makes downloads wait: each takes its room in the
//!   writer's queue ([`QUEUE_MAX`] bytes) before it starts ([`DiskCache::room`]), so a cold
//!   read goes at the disk's pace and every object it fetched is cached. A writer that stores
//!   nothing for [`WRITER_STALL`] (a hung disk) does not hang reads: objects are then served
//!   uncached (`cache_dropped`) until it has caught up.
//! - **A full file system** (or any failed write) never fails a read: the verified object
//!   is served from memory without being cached, the cache says so once (log, `status`,
//!   `depotfs_cache_storing`) and tries one store a minute until it can store again
//!   ([`DiskCache::keep`]).
//! - **Reads in progress** never break: a read holds the decoded bytes in memory (an
//!   `Arc`), and on Unix a file being read stays readable after it is unlinked anyway.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use depotfs_catalog::object::Verified;
use depotfs_catalog::{ObjectId, object_file};

use crate::error::{Error, Result};
use crate::lru::Lru;
use crate::stages::{Stage, Stages};

/// The default cache directory.
pub const DEFAULT_DIR: &str = "/var/cache/depotfs";
/// The default cache limit: 4 GiB, as CernVM-FS.
pub const DEFAULT_LIMIT: u64 = 4 << 30;

/// A bounded, content-addressed directory of encoded objects.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    index: Mutex<Lru<ObjectId, ()>>,
    /// Objects evicted to stay within the limit since open.
    evictions: AtomicU64,
    /// Set while the cache cannot store (see [`DiskCache::keep`]).
    not_storing: Mutex<Option<NotStoring>>,
    /// Stores that failed since open.
    store_failures: AtomicU64,
    /// Verified objects waiting for the writer thread ([`DiskCache::keep_later`]).
    queue: Arc<Queue>,
    /// Where the writer counts its `cache_write` time.
    stages: Option<Arc<Stages>>,
    /// Objects are read back with direct I/O ([`read_touching`]) until the file system
    /// refuses it.
    direct_reads: AtomicBool,
    /// The span current at open (the mount's: `mp=...`), entered by the writer thread, so
    /// what it logs (the cache full, a failed store) names the mount like every other line.
    span: tracing::Span,
}

/// The writer's queue: objects served already and not yet stored, bounded in bytes.
#[derive(Debug)]
struct Queue {
    state: Mutex<Waiting>,
    /// [`QUEUE_MAX`] bytes of room: a queued object holds its bytes' worth until it is
    /// stored, a download about to be cached holds its largest size's worth from before it
    /// starts ([`DiskCache::room`]).
    room: Arc<Semaphore>,
    /// Objects the writer has finished (stored or failed): its progress.
    finished: AtomicU64,
    /// A download gave up waiting for room (the writer stalled): until the writer empties
    /// its queue, downloads do not wait (see [`DiskCache::room`]).
    behind: AtomicBool,
    /// Signalled when a job is queued, when the writer finishes one, and when the cache is
    /// dropped.
    changed: Condvar,
    /// Held by the writer while it stores one object; a test holds it to stall the writer
    /// as a slow disk would.
    gate: Mutex<()>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            state: Mutex::default(),
            room: Arc::new(Semaphore::new(QUEUE_MAX as usize)),
            finished: AtomicU64::new(0),
            behind: AtomicBool::new(false),
            changed: Condvar::new(),
            gate: Mutex::new(()),
        }
    }
}

#[derive(Debug, Default)]
struct Waiting {
    /// Each with its room in the queue, given back once it is stored.
    jobs: VecDeque<(ObjectId, Encoded, OwnedSemaphorePermit)>,
    /// Their ids, so the object counts as cached while it waits ([`DiskCache::contains`]).
    ids: HashSet<ObjectId>,
    /// Their bytes.
    bytes: u64,
    /// Is the writer storing one (taken off `jobs`)?
    writing: bool,
    /// Is there a writer thread?
    started: bool,
    /// The cache was dropped: the writer ends.
    closed: bool,
    /// Objects not cached because the queue was full.
    dropped: u64,
}

/// Room for one object in the cache writer's queue, taken before its download starts
/// ([`DiskCache::room`]) and handed to [`DiskCache::keep_later`] with it.
#[derive(Debug)]
pub struct Room(OwnedSemaphorePermit);

/// The encoded bytes of a verified object, to be stored: the served object itself where its
/// buffer is its encoded form (a raw chunk, not copied again), else the encoded bytes.
#[derive(Debug)]
pub enum Encoded {
    /// A raw object decoded in place ([`Verified::encoded`]).
    InPlace(Arc<Verified>),
    /// A compressed object's encoded bytes.
    Owned(Vec<u8>),
}

impl Encoded {
    fn bytes(&self) -> &[u8] {
        match self {
            Encoded::InPlace(v) => v.encoded().unwrap_or_default(),
            Encoded::Owned(b) => b,
        }
    }
}

/// Bytes of served objects that may wait for the writer, counting the downloads that will
/// join them ([`DiskCache::room`]). When the disk is slower than the network, a download
/// waits for room before it starts (backpressure): a cold read then goes at the disk's pace
/// and leaves every object it fetched in the cache, as CernVM-FS's does. (Serving past the
/// bound uncached instead left 40 % of a 1 GiB image uncached on a slow disk, and the next
/// read fetched it again: benches/RESULTS.md, #21 P5.) The queue is memory the mount holds
/// on top of its chunk cache (a queued raw object keeps its decoded buffer alive after the
/// chunk cache lets it go): at 64 MiB the mount's peak RSS in P9 rose from 150 to 214 MB,
/// past the 200 MB target (benches/RESULTS.md, 2026-12-07).
pub const QUEUE_MAX: u64 = 32 << 20;

/// A download waiting for room gives up (and its object is served uncached, counted in
/// `cache_dropped`) when the writer finished nothing for this long: a stalled disk must not
/// hang reads. Until the writer has emptied its queue again, downloads do not wait.
pub const WRITER_STALL: Duration = Duration::from_secs(1);

/// The longest one download waits for room, however steadily the writer moves: a read must
/// finish within the request bound `status` prints, so the store waits at most a quarter of
/// that bound, and at most this.
pub const ROOM_WAIT_MAX: Duration = Duration::from_secs(5);

/// Why the cache stopped storing objects.
#[derive(Debug)]
struct NotStoring {
    /// Unix seconds of the first failure.
    since: u64,
    /// The last attempt, failed.
    tried: std::time::Instant,
    reason: String,
}

/// While the cache cannot store, one store is tried at most this often.
pub const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_object_path(sub: &str, file: &str) -> Option<ObjectId> {
    if sub.len() != 2 || file.len() != 62 {
        return None;
    }
    format!("{sub}{file}").parse().ok()
}

/// How stale a cache file's mtime (the LRU clock that survives restarts) may be before a
/// load refreshes it. While the mount runs, the in-memory index keeps the exact order; the
/// mtime only orders files at the next start, so an hour's granularity costs nothing and
/// spares warm reads a metadata write per chunk.
const TOUCH_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// An object file read back: the object is `bytes[at..]` (still encoded, unverified).
#[derive(Debug)]
pub struct Loaded {
    /// The buffer read into.
    pub bytes: Vec<u8>,
    /// Where the object starts in it (the first aligned byte of a direct read; else 0).
    pub at: usize,
}

impl Loaded {
    /// The object's bytes as stored.
    pub fn encoded(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
}

/// Read file `p` whole, one open for both reading and (when stale) touching its mtime; with
/// direct I/O while `direct` holds, which a file system that refuses it clears.
///
/// Direct I/O reads from the device into this buffer, which the caller verifies and keeps. A
/// loaded chunk is served from memory and from the FUSE file's own page cache afterwards, so
/// keeping the cache file's pages too would hold the same bytes twice, and filling and copying
/// them cost CPU: reading back the 587 MiB of a 1 GiB image's objects took 0.30 CPU s buffered
/// and 0.13 direct here (`benches/RESULTS.md`, "Session 14 (lead)"). The price: a second load
/// of the same file reads the device again. Files under [`object_file::DIO_MIN`] are read
/// buffered: the buffer of a direct read is a page larger than the file and starts up to a
/// page in, which for a small object would be more memory than the object, held as long as
/// it is in the memory cache (which weighs the object's bytes).
fn read_touching(p: &Path, direct: &AtomicBool) -> std::io::Result<Loaded> {
    use std::io::Read;
    let mut opened = None;
    if direct.load(Ordering::Relaxed) {
        opened = object_file::open_direct(p, true)?;
        if opened.is_none() {
            direct.store(false, Ordering::Relaxed);
        }
    }
    let is_direct = opened.is_some();
    let mut f = match opened {
        Some(f) => f,
        None => fs::File::options()
            .read(true)
            .write(true)
            .open(p)
            .or_else(|_| fs::File::open(p))?,
    };
    let meta = f.metadata()?;
    if is_direct {
        if meta.len() >= object_file::DIO_MIN as u64 {
            // One block more than the file: a file that grew meanwhile is read far enough to
            // fail its verification.
            let want = (meta.len() as usize + 1).next_multiple_of(object_file::DIO_ALIGN);
            let mut bytes = vec![0; want + object_file::DIO_ALIGN];
            if let Some(range) = object_file::read_direct(&f, &mut bytes, want)? {
                bytes.truncate(range.end);
                touch_if_stale(&f, &meta);
                return Ok(Loaded {
                    bytes,
                    at: range.start,
                });
            }
            direct.store(false, Ordering::Relaxed);
        }
        // Small, or the device refused the read: this one buffered.
        object_file::clear_direct(&f)?;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes)?;
    touch_if_stale(&f, &meta);
    Ok(Loaded { bytes, at: 0 })
}

/// Set `f`'s mtime to now if it is older than [`TOUCH_AFTER`] (the LRU clock across restarts).
fn touch_if_stale(f: &fs::File, meta: &fs::Metadata) {
    let now = SystemTime::now();
    let stale = meta.modified().map_or(true, |m| {
        now.duration_since(m).unwrap_or_default() > TOUCH_AFTER
    });
    if stale {
        let _ = f.set_modified(now);
    }
}

impl DiskCache {
    /// Open (creating) the cache at `dir` with a `limit` in bytes, indexing what is there.
    pub fn open(dir: &Path, limit: u64) -> Result<Self> {
        for sub in ["objects", "tmp", "revisions"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub).display(), e))?;
        }
        // Temp files of processes that no longer run are leftovers of a crash.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
                let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut found: Vec<(SystemTime, ObjectId, u64)> = Vec::new();
        if let Ok(rd) = fs::read_dir(dir.join("objects")) {
            for sub in rd.flatten() {
                let sub_name = sub.file_name().to_string_lossy().into_owned();
                let Ok(files) = fs::read_dir(sub.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let fname = f.file_name().to_string_lossy().into_owned();
                    let (Some(id), Ok(md)) = (parse_object_path(&sub_name, &fname), f.metadata())
                    else {
                        continue;
                    };
                    found.push((
                        md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        id,
                        md.len(),
                    ));
                }
            }
        }
        found.sort();
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            index: Mutex::new(Lru::new(limit)),
            evictions: AtomicU64::new(0),
            not_storing: Mutex::new(None),
            store_failures: AtomicU64::new(0),
            queue: Arc::default(),
            stages: None,
            direct_reads: AtomicBool::new(true),
            span: tracing::Span::current(),
        };
        let mut evict = Vec::new();
        {
            let mut idx = cache.index.lock().expect("poisoned");
            for (_, id, len) in found {
                evict.extend(idx.insert(id, (), len));
            }
        }
        for (id, ()) in evict {
            let _ = fs::remove_file(cache.path(&id));
        }
        Ok(cache)
    }

    /// Count the writer's stores in `stages` (`cache_write`).
    pub fn with_stages(mut self, stages: Arc<Stages>) -> Self {
        self.stages = Some(stages);
        self
    }

    /// Objects evicted since the cache was opened.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.store_path())
    }

    /// The stored bytes of `id`, if present (unverified: the caller decodes them).
    pub fn load(&self, id: &ObjectId) -> Option<Loaded> {
        let p = self.path(id);
        match read_touching(&p, &self.direct_reads) {
            Ok(loaded) => {
                let known = self.index.lock().expect("poisoned").get(id).is_some();
                if !known {
                    self.adopt(id, loaded.encoded().len() as u64);
                }
                Some(loaded)
            }
            Err(_) => {
                self.index.lock().expect("poisoned").remove(id);
                None
            }
        }
    }

    /// Is `id` stored? (For `user.depotfs.cached_bytes`; not a use.)
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.lock().expect("poisoned").contains(id)
            || self.queue.state.lock().expect("poisoned").ids.contains(id)
            || self.path(id).exists()
    }

    fn adopt(&self, id: &ObjectId, len: u64) {
        let evicted = self.index.lock().expect("poisoned").insert(*id, (), len);
        for (old, ()) in evicted {
            if self.evictions.fetch_add(1, Ordering::Relaxed) == 0 {
                let (used, limit) = self.usage();
                tracing::warn!(
                    "cache {} full ({used} of {limit} bytes): evicting the least recently used objects from now on",
                    self.dir.display()
                );
            }
            let _ = fs::remove_file(self.path(&old));
        }
    }

    /// Store the encoded bytes of `id` (already verified by the caller), then evict the
    /// least recently used objects until the cache is within its limit.
    pub fn store(&self, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        let fin = self.path(id);
        let tmp = self.dir.join("tmp");
        // Anonymous, then linked whole (see object_file). Buffered: a direct write would make
        // the reader wait for the device (16 parallel cold readers: 260-280 MiB/s direct,
        // 340-360 buffered, the writeback coming after). The fan-out directory is made only
        // when missing: a `mkdir` of an existing one on every store was 3 % of the daemon's
        // samples with 16 cold readers.
        let mut created = object_file::create(&fin, bytes, false, &tmp);
        if matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            created = fs::create_dir_all(fin.parent().expect("objects/ab"))
                .and_then(|()| object_file::create(&fin, bytes, false, &tmp));
        }
        created.map_err(|e| Error::io(fin.display(), e))?;
        self.adopt(id, bytes.len() as u64);
        Ok(())
    }

    /// Store `id` if the cache can: a cache whose file system is full (or otherwise refuses
    /// writes) degrades to serving reads without caching. The first failure is logged once
    /// (with its reason) and shown by [`DiskCache::state`]; further objects are not written
    /// until [`STORE_RETRY`] has passed, when one store is tried again, and on success the
    /// cache says it is storing again. Never fails: the caller has the verified bytes.
    pub fn keep(&self, id: &ObjectId, bytes: &[u8]) {
        if !self.may_store() {
            return;
        }
        let began = std::time::Instant::now();
        let stored = self.store(id, bytes);
        self.note_store(began, stored);
    }

    /// Room in the writer's queue for an object of at most `bytes` encoded bytes, taken
    /// before its download starts, so that downloads cannot outrun the disk: while the queue
    /// is full this waits for the writer (backpressure; counted as `cache_wait`). `None` when
    /// the object will not be cached (the cache is not storing), or when the writer finished
    /// nothing for [`WRITER_STALL`] or the wait reached `most` (see [`ROOM_WAIT_MAX`]): the
    /// download then goes ahead and [`DiskCache::keep_later`] queues the object only if
    /// there is room by then.
    pub async fn room(&self, bytes: u64, most: Duration) -> Option<Room> {
        let q = &self.queue;
        if !self.may_store() || bytes > QUEUE_MAX {
            return None;
        }
        let n = u32::try_from(bytes).ok()?;
        if let Ok(p) = q.room.clone().try_acquire_many_owned(n) {
            return Some(Room(p));
        }
        if q.behind.load(Ordering::Relaxed) {
            return None;
        }
        let began = Instant::now();
        let waited = |room| {
            if let Some(s) = &self.stages {
                s.add(Stage::CacheWait, began.elapsed(), bytes);
            }
            room
        };
        loop {
            let finished = q.finished.load(Ordering::Relaxed);
            let slice = WRITER_STALL.min(most.saturating_sub(began.elapsed()));
            match tokio::time::timeout(slice, q.room.clone().acquire_many_owned(n)).await {
                Ok(Ok(p)) => return waited(Some(Room(p))),
                Ok(Err(_closed)) => return waited(None),
                Err(_) => {
                    let moving = q.finished.load(Ordering::Relaxed) != finished;
                    if moving && began.elapsed() < most {
                        continue;
                    }
                    if !q.behind.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "cache {}: the writer is behind ({} bytes waited {:.1} s for room); \
                             objects are served without caching until it catches up (counted \
                             in cache_dropped)",
                            self.dir.display(),
                            bytes,
                            began.elapsed().as_secs_f64()
                        );
                    }
                    return waited(None);
                }
            }
        }
    }

    /// [`DiskCache::keep`] on the cache's writer thread, so that the reader of a fetched
    /// object gets its bytes without waiting for a file to be created (a fresh `ls -f` of
    /// 118,594 entries spent a third of the daemon's CPU making cache files, on the listing's
    /// path). `object` must be verified; `room` is what [`DiskCache::room`] reserved for it
    /// before its download (what it does not need is given back). Returns at once. Without
    /// room (no reservation, and no [`QUEUE_MAX`] room left now), or while the cache is not
    /// storing, the object is not cached.
    pub fn keep_later(self: &Arc<Self>, id: ObjectId, object: Encoded, room: Option<Room>) {
        if !self.may_store() {
            return;
        }
        let len = object.bytes().len() as u64;
        let mut w = self.queue.state.lock().expect("poisoned");
        if w.ids.contains(&id) {
            return;
        }
        let Some(permit) = self.fit(len, room) else {
            w.dropped += 1;
            if w.dropped == 1 {
                tracing::info!(
                    "cache {}: {} bytes wait to be written; objects are served without caching \
                     until the writer catches up (counted in cache_dropped)",
                    self.dir.display(),
                    w.bytes
                );
            }
            return;
        };
        w.bytes += len;
        w.ids.insert(id);
        w.jobs.push_back((id, object, permit));
        if !w.started {
            w.started = true;
            let (cache, queue) = (Arc::downgrade(self), self.queue.clone());
            let span = self.span.clone();
            let spawned = std::thread::Builder::new()
                .name("depotfs-cache".into())
                .spawn(move || span.in_scope(|| write_queued(&cache, &queue)));
            if let Err(e) = spawned {
                // Served anyway; the jobs stay queued until a later object starts a writer.
                tracing::warn!("cache: starting the writer thread: {e}");
                w.started = false;
            }
        }
        drop(w);
        self.queue.changed.notify_all();
    }

    /// Exactly `len` bytes of room: `room` trimmed (or topped up, if there is room), or taken
    /// now.
    fn fit(&self, len: u64, room: Option<Room>) -> Option<OwnedSemaphorePermit> {
        let len = usize::try_from(len).ok()?;
        let take = |n: usize| {
            u32::try_from(n)
                .ok()
                .and_then(|n| self.queue.room.clone().try_acquire_many_owned(n).ok())
        };
        match room {
            None => take(len),
            Some(Room(mut p)) => {
                let have = p.num_permits();
                if have > len {
                    drop(p.split(have - len));
                } else if have < len {
                    p.merge(take(len - have)?);
                }
                Some(p)
            }
        }
    }

    /// Wait until every object queued by [`DiskCache::keep_later`] is stored (or failed to
    /// be): at unmount, so a clean exit leaves the cache complete, and in tests.
    pub fn flush(&self) {
        let mut w = self.queue.state.lock().expect("poisoned");
        while w.started && (!w.jobs.is_empty() || w.writing) {
            w = self.queue.changed.wait(w).expect("poisoned");
        }
    }

    /// Objects waiting for the writer.
    pub fn pending(&self) -> u64 {
        self.queue.state.lock().expect("poisoned").jobs.len() as u64
    }

    /// Objects served without caching because the writer's queue stayed full (see
    /// [`DiskCache::room`]).
    pub fn dropped(&self) -> u64 {
        self.queue.state.lock().expect("poisoned").dropped
    }

    /// Stall the writer until the guard is dropped (as a slow disk would).
    #[cfg(test)]
    pub(crate) fn stall_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.queue.gate.lock().expect("poisoned")
    }

    /// Not in the minute after a failed store (see [`DiskCache::keep`]).
    fn may_store(&self) -> bool {
        self.not_storing
            .lock()
            .expect("poisoned")
            .as_ref()
            .is_none_or(|n| n.tried.elapsed() >= STORE_RETRY)
    }

    /// Record the outcome of a store that began at `began` (see [`DiskCache::keep`]).
    fn note_store(&self, began: std::time::Instant, stored: Result<()>) {
        let mut not = self.not_storing.lock().expect("poisoned");
        match stored {
            Ok(()) => {
                // Only a store that began after the last failure proves the cache can store
                // again: one that raced the failure (begun before it, on a file system that
                // had room for it then) proves nothing, and flipping back would say it twice.
                if let Some(n) = not.take_if(|n| began > n.tried) {
                    tracing::warn!(
                        "cache: storing again in {} (after {} s without: {})",
                        self.dir.display(),
                        unix_now().saturating_sub(n.since),
                        n.reason
                    );
                }
            }
            Err(e) => {
                self.store_failures.fetch_add(1, Ordering::Relaxed);
                match &mut *not {
                    Some(n) => n.tried = std::time::Instant::now(),
                    None => {
                        tracing::warn!(
                            "cache: not storing objects in {}: {e}; reads are served without \
                             caching (a store is tried again every {} s)",
                            self.dir.display(),
                            STORE_RETRY.as_secs()
                        );
                        *not = Some(NotStoring {
                            since: unix_now(),
                            tried: std::time::Instant::now(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Whether the cache stores (for `status`).
    pub fn state(&self) -> crate::status::CacheState {
        use crate::status::CacheState;
        match &*self.not_storing.lock().expect("poisoned") {
            None => CacheState::Storing,
            Some(n) => CacheState::NotStoring {
                since: n.since,
                reason: n.reason.clone(),
            },
        }
    }

    /// Is the cache storing what is fetched (see [`DiskCache::keep`])?
    pub fn storing(&self) -> bool {
        self.not_storing.lock().expect("poisoned").is_none()
    }

    /// Stores that failed since the cache was opened.
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    /// Forget and delete `id` (it failed verification).
    pub fn remove(&self, id: &ObjectId) {
        self.index.lock().expect("poisoned").remove(id);
        let _ = fs::remove_file(self.path(id));
    }

    /// Bytes in use and the limit.
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index.lock().expect("poisoned");
        (idx.weight(), idx.limit())
    }

    /// The highest revision of repository `name` ever accepted with this cache: `None` when
    /// none was. A guard file that cannot be read or does not hold a revision number is an
    /// error, not "none": silently resetting it would let a replayed old revision in.
    pub fn accepted_revision(&self, name: &str) -> Result<Option<u64>> {
        let p = self.revision_path(name);
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(p.display(), e)),
        };
        std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                Error::Manifest(format!(
                    "the rollback guard {} holds {:?}, not a revision number: the cache directory \
                     is damaged or was written by something else; depotfs will not guess the last \
                     revision accepted. If the server's current revision is trusted, delete the file \
                     (it is recreated with that revision)",
                    p.display(),
                    String::from_utf8_lossy(&text[..text.len().min(64)])
                ))
            })
    }

    /// Record that revision `rev` of `name` was accepted (never lowers the record).
    pub fn accept_revision(&self, name: &str, rev: u64) -> Result<()> {
        if self.accepted_revision(name)?.is_some_and(|r| r >= rev) {
            return Ok(());
        }
        let p = self.revision_path(name);
        object_file::replace(
            &p,
            format!("{rev}\n").as_bytes(),
            &self.dir.join("tmp"),
            false,
        )
        .map_err(|e| Error::io(p.display(), e))
    }

    fn revision_path(&self, name: &str) -> PathBuf {
        self.dir.join("revisions").join(guard_file_name(name))
    }
}

/// The file name of repository `name`'s rollback guard: the name itself when it is DNS-like
/// (letters, digits, `.`, `_`, `-`, not starting with `.`), as before; every other byte
/// `%XX`-escaped, so distinct names never share a guard and none names a directory (`..`).
fn guard_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        // Downloads waiting for room go ahead uncached.
        self.queue.room.close();
        self.queue.state.lock().expect("poisoned").closed = true;
        self.queue.changed.notify_all();
    }
}

/// The writer thread: store each queued object in turn until the cache is dropped.
fn write_queued(cache: &Weak<DiskCache>, queue: &Queue) {
    loop {
        let (id, object, room) = {
            let mut w = queue.state.lock().expect("poisoned");
            loop {
                if w.closed {
                    return;
                }
                if let Some(job) = w.jobs.pop_front() {
                    w.writing = true;
                    break job;
                }
                w = queue.changed.wait(w).expect("poisoned");
            }
        };
        let len = object.bytes().len() as u64;
        if let Some(cache) = cache.upgrade() {
            let _stored = queue.gate.lock().expect("poisoned");
            let t = std::time::Instant::now();
            cache.keep(&id, object.bytes());
            if let Some(s) = &cache.stages {
                s.add(Stage::CacheWrite, t.elapsed(), len);
            }
        }
        drop(object);
        let mut w = queue.state.lock().expect("poisoned");
        w.writing = false;
        w.bytes -= len;
        w.ids.remove(&id);
        queue.finished.fetch_add(1, Ordering::Relaxed);
        if w.jobs.is_empty() {
            // Caught up: downloads wait for room again.
            queue.behind.store(false, Ordering::Relaxed);
        }
        drop(room);
        drop(w);
        queue.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_evict_reopen() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 250).unwrap();
        let ids: Vec<ObjectId> = (0..3u8).map(|i| ObjectId::of(&[i])).collect();
        c.store(&ids[0], &[0; 100]).unwrap();
        c.store(&ids[1], &[1; 100]).unwrap();
        assert!(c.load(&ids[0]).is_some()); // ids[1] is now the oldest
        c.store(&ids[2], &[2; 100]).unwrap();
        assert!(c.load(&ids[1]).is_none());
        let l = c.load(&ids[2]).unwrap();
        assert_eq!(l.bytes[l.at..], vec![2; 100]);
        assert_eq!(c.usage(), (200, 250));
        // A leftover temp file of a dead process is cleaned; the index is rebuilt.
        fs::write(d.path().join("tmp/abc.999999999.0"), b"torn").unwrap();
        drop(c);
        let c = DiskCache::open(d.path(), 250).unwrap();
        assert_eq!(c.usage().0, 200);
        assert!(!d.path().join("tmp/abc.999999999.0").exists());
        c.accept_revision("a.b", 5).unwrap();
        c.accept_revision("a.b", 3).unwrap();
        assert_eq!(c.accepted_revision("a.b").unwrap(), Some(5));
    }

    /// Objects are read back whole, with direct I/O where the file system allows it (into an
    /// aligned place of the buffer) and buffered where it does not, or where the object is
    /// small; a file changed on disk is read as it is now (the caller's verification then
    /// refuses it).
    #[test]
    fn loads_are_whole_direct_or_buffered() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 1 << 30).unwrap();
        let sizes = [0, 1, 4095, 4096, 4097, 300_000, 1 << 20];
        let objects: Vec<(ObjectId, Vec<u8>)> = sizes
            .iter()
            .map(|&n| {
                let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
                (ObjectId::of(&bytes), bytes)
            })
            .collect();
        for (id, bytes) in &objects {
            c.store(id, bytes).unwrap();
        }
        let direct_here = object_file::open_direct(&c.path(&objects[0].0), false)
            .unwrap()
            .is_some();
        for direct in [true, false] {
            c.direct_reads.store(direct, Ordering::Relaxed);
            for (id, bytes) in &objects {
                let l = c.load(id).unwrap();
                assert_eq!(&l.bytes[l.at..], &bytes[..], "{} bytes", bytes.len());
                if direct && direct_here && bytes.len() >= object_file::DIO_MIN {
                    assert_eq!(
                        l.bytes[l.at..]
                            .as_ptr()
                            .align_offset(object_file::DIO_ALIGN),
                        0
                    );
                } else {
                    assert_eq!(l.at, 0);
                }
            }
        }
        // Changed behind the cache's back (through the page cache): read as it is now.
        c.direct_reads.store(true, Ordering::Relaxed);
        let (id, bytes) = &objects[5];
        let mut bad = bytes.clone();
        bad[150_000] ^= 1;
        fs::write(c.path(id), &bad).unwrap();
        let l = c.load(id).unwrap();
        assert_eq!(&l.bytes[l.at..], &bad[..]);
        // Gone: none, and forgotten.
        fs::remove_file(c.path(id)).unwrap();
        assert!(c.load(id).is_none());
    }

    /// A garbage rollback guard is refused, naming the file, never read as "no revision yet"
    /// (which would let a replayed older revision in); it is not overwritten either.
    #[test]
    fn guard_names_are_distinct_and_stay_in_their_directory() {
        assert_eq!(
            guard_file_name("singularity.galaxyproject.org"),
            "singularity.galaxyproject.org"
        );
        assert_eq!(guard_file_name(".."), "%2E.");
        assert_eq!(guard_file_name("."), "%2E");
        assert_ne!(guard_file_name("a/b"), guard_file_name("a_b"));
        assert_eq!(guard_file_name("a/b"), "a%2Fb");
        assert_eq!(guard_file_name("%"), "%25");
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 250).unwrap();
        c.accept_revision("..", 3).unwrap();
        c.accept_revision("a/b", 5).unwrap();
        assert_eq!(c.accepted_revision("..").unwrap(), Some(3));
        assert_eq!(c.accepted_revision("a_b").unwrap(), None);
        assert_eq!(c.accepted_revision("a/b").unwrap(), Some(5));
    }

    #[test]
    fn garbage_rollback_guard_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 250).unwrap();
        assert_eq!(c.accepted_revision("a.b").unwrap(), None);
        let guard = d.path().join("revisions/a.b");
        fs::write(&guard, b"\x00\xffgarbage").unwrap();
        let e = c.accepted_revision("a.b").unwrap_err().to_string();
        assert!(e.contains(&guard.display().to_string()), "{e}");
        assert!(e.contains("not a revision number"), "{e}");
        assert!(c.accept_revision("a.b", 1).is_err());
        assert_eq!(fs::read(&guard).unwrap(), b"\x00\xffgarbage");
    }

    /// A store that began before the cache's first failure and finished after it (parallel
    /// readers on a file system that just filled up) does not flip the cache back to storing:
    /// only a store begun after the failure does. (CI of stop 23 saw "not storing" said twice.)
    #[test]
    fn a_store_racing_the_first_failure_does_not_say_storing_again() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 1 << 20).unwrap();
        let raced = std::time::Instant::now();
        let full = Error::io(
            "objects/ab/cd",
            std::io::Error::other("No space left on device"),
        );
        c.note_store(std::time::Instant::now(), Err(full));
        assert!(!c.storing());
        c.note_store(raced, Ok(()));
        assert!(
            !c.storing(),
            "a store begun before the failure proves nothing"
        );
        assert_eq!(c.store_failures(), 1);
        c.note_store(std::time::Instant::now(), Ok(()));
        assert!(c.storing(), "a store begun after it does");
    }
}
