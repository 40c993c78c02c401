//! The object store: the one place an object is fetched, verified and cached.
//!
//! `get` answers from memory, else from the disk cache (verified again on load: a torn or
//! corrupt cache file is deleted and refetched), else from the backend. A downloaded object
//! that fails verification is fetched once more with caches bypassed; if that copy is bad
//! too the request fails ([`Error::Corrupt`], EIO) and nothing is cached. Concurrent requests
//! for one object wait for a single download. Parsed directory nodes and chunk lists, and
//! recently decompressed chunks, stay in memory (the kernel reads in 128 KiB pieces).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use depotfs_catalog::chunking::{CHUNK_MAX, SMALL_FILE_MAX};
use depotfs_catalog::dir::NODE_MAX_BYTES;
use depotfs_catalog::object::{self, ObjectKind, Verified};
use depotfs_catalog::{ChunkList, DirNode, ObjectId};
use tokio::sync::OnceCell;

use crate::backend::Backend;
use crate::cache::{DiskCache, Encoded, ROOM_WAIT_MAX};
use crate::error::{Error, Result};
use crate::lru::Lru;
use crate::stages::{Stage, Stages};

/// Largest chunk list accepted (the format's bound).
use depotfs_catalog::graph::CHUNK_LIST_MAX;
/// Largest chunk accepted: a chunk of a large file, or a whole small file.
const CHUNK_PLAIN_MAX: u64 = if CHUNK_MAX as u64 > SMALL_FILE_MAX {
    CHUNK_MAX as u64
} else {
    SMALL_FILE_MAX
};
/// Parsed directory nodes kept in memory, bytes (estimated: plaintext plus the parsed
/// entries). The 118,594-entry Galaxy directory takes ~15 MB; counting nodes instead let 20
/// hostile nodes of 60 MiB each hold 1.4 GB.
const NODES_MEM: u64 = 32 << 20;

/// A chunk list with its offsets precomputed.
#[derive(Debug)]
pub struct Chunks {
    /// The list.
    pub list: ChunkList,
    /// [`ChunkList::offsets`].
    pub offsets: Vec<u64>,
    /// Per chunk: is it on the list's access list (`prefetch`)?
    on_list: Vec<bool>,
}

impl Chunks {
    /// `list` with its offsets and access-list membership worked out.
    pub fn new(list: ChunkList) -> Self {
        let offsets = list.offsets();
        let mut on_list = vec![false; list.chunks.len()];
        for &i in &list.prefetch {
            if let Some(b) = on_list.get_mut(i as usize) {
                *b = true;
            }
        }
        Chunks {
            list,
            offsets,
            on_list,
        }
    }

    /// Are all the chunks holding bytes `from..to` on the access list? (Never for an empty
    /// access list or range.)
    pub fn listed(&self, from: u64, to: u64) -> bool {
        let Some(at) = self.list.locate(&self.offsets, from) else {
            return false;
        };
        let last = self.offsets.partition_point(|&o| o < to).saturating_sub(1);
        from < to && (at.index..=last).all(|i| self.on_list.get(i) == Some(&true))
    }
}

/// Counters for `status` (read together as a [`crate::status::Status`]).
#[derive(Debug, Default)]
pub struct Stats {
    /// Objects answered from memory or disk.
    pub hits: AtomicU64,
    /// Objects downloaded.
    pub misses: AtomicU64,
    /// Encoded bytes downloaded.
    pub bytes_fetched: AtomicU64,
    /// File bytes returned to readers (to compare with what was fetched).
    pub bytes_read: AtomicU64,
    /// Downloads that failed verification.
    pub corrupt: AtomicU64,
    /// Chunks loaded (downloaded or from disk) by readahead for a sequential reader, each
    /// load counted once (see [`crate::prefetch`], "Counting").
    pub readahead_objects: AtomicU64,
    /// Their plaintext bytes.
    pub readahead_bytes: AtomicU64,
    /// Encoded bytes readahead downloaded (a part of `bytes_fetched`).
    pub readahead_fetched: AtomicU64,
    /// Chunks loaded from access lists (`add --trace`) when an image was opened.
    pub list_objects: AtomicU64,
    /// Their plaintext bytes.
    pub list_bytes: AtomicU64,
    /// Encoded bytes access-list prefetch downloaded (a part of `bytes_fetched`).
    pub list_fetched: AtomicU64,
    /// File bytes of access lists put into the kernel's page cache (whole pages).
    pub list_pushed: AtomicU64,
    /// Manifests refused at a revision check, by reason (`older`, `signature`, `name`, …).
    pub manifest_refused: Mutex<std::collections::BTreeMap<depotfs_catalog::Refusal, u64>>,
    /// Revision checks started (TTL, probe or `depotfs remount`; one at a time).
    pub checks_started: AtomicU64,
    /// Revision checks finished.
    pub checks: AtomicU64,
    /// The outcome of the last check.
    pub last_check: Mutex<Option<crate::status::LastCheck>>,
}

type Shared = Arc<OnceCell<Result<Arc<Verified>>>>;

/// Fetch, verify, cache.
#[derive(Debug)]
pub struct ObjectStore {
    backend: Backend,
    disk: Option<Arc<DiskCache>>,
    /// A local store's cache directory, which caches no object but holds the machine's
    /// rollback guard ([`ObjectStore::guard`]).
    guard_only: Option<DiskCache>,
    chunks: Mutex<Lru<ObjectId, Arc<Verified>>>,
    lists: Mutex<Lru<ObjectId, Arc<Chunks>>>,
    nodes: Mutex<Lru<ObjectId, Arc<DirNode>>>,
    inflight: Mutex<HashMap<ObjectId, Shared>>,
    /// Counters.
    pub stats: Stats,
    /// Where the read path's time goes ([`crate::stages`]).
    pub stages: Arc<Stages>,
}

impl ObjectStore {
    /// A store over `backend`, caching on disk in `disk` (none for a local store) and keeping
    /// up to `mem_bytes` of decompressed chunks in memory.
    pub fn new(backend: Backend, disk: Option<DiskCache>, mem_bytes: u64) -> Self {
        let stages = Arc::<Stages>::default();
        ObjectStore {
            backend,
            disk: disk.map(|d| Arc::new(d.with_stages(stages.clone()))),
            guard_only: None,
            chunks: Mutex::new(Lru::new(mem_bytes)),
            lists: Mutex::new(Lru::new(64 << 20)),
            nodes: Mutex::new(Lru::new(NODES_MEM)),
            inflight: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            stages,
        }
    }

    /// The backend (for the manifest and `describe`).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The disk cache, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_deref()
    }

    /// Keep `cache` (of a local store, which caches no object) for its rollback guard.
    pub fn with_guard(mut self, cache: DiskCache) -> Self {
        self.guard_only = Some(cache);
        self
    }

    /// The cache directory holding the rollback guard of this machine's mounts: the object
    /// cache's, or a local store's.
    pub fn guard(&self) -> Option<&DiskCache> {
        self.disk.as_deref().or(self.guard_only.as_ref())
    }

    /// A chunk of `len` plaintext bytes. A chunk that is not `len` bytes long fails
    /// ([`Error::Corrupt`], EIO) however it is found — in memory, on disk or downloaded —
    /// so a directory entry or chunk list that lies about a length can never make a read
    /// return bytes, or slice past a chunk's end.
    pub async fn chunk(&self, id: ObjectId, len: u64) -> Result<Arc<Verified>> {
        let in_memory = self.chunks.lock().expect("poisoned").get(&id);
        let v = match in_memory {
            Some(v) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                v
            }
            None => {
                if len > CHUNK_PLAIN_MAX {
                    return Err(Error::Corrupt(format!(
                        "chunk {id}: {len} bytes is more than a chunk may hold"
                    )));
                }
                // Bounded by what any chunk may hold, not by `len`: a referrer that lies
                // about the length must not make a good object look corrupt (refetched,
                // its server failed over, its cached copy deleted).
                self.get(id, ObjectKind::Chunk, CHUNK_PLAIN_MAX, Some(len))
                    .await?
            }
        };
        if v.data().len() as u64 != len {
            return Err(Error::Corrupt(format!(
                "chunk {id} holds {} bytes, its file says {len}",
                v.data().len()
            )));
        }
        Ok(v)
    }

    /// Is chunk `id` decompressed in memory? (Not a use.)
    pub fn chunk_in_memory(&self, id: &ObjectId) -> bool {
        self.chunks.lock().expect("poisoned").contains(id)
    }

    /// Is chunk `id` in memory or on disk? (Not a use.)
    pub fn has_chunk(&self, id: &ObjectId) -> bool {
        self.chunks.lock().expect("poisoned").contains(id)
            || self.disk.as_ref().is_some_and(|d| d.contains(id))
            || self.backend.is_local()
    }

    /// A parsed chunk list, if it is in memory.
    pub fn chunk_list_cached(&self, id: &ObjectId) -> Option<Arc<Chunks>> {
        self.lists.lock().expect("poisoned").get(id)
    }

    /// A parsed chunk list.
    pub async fn chunk_list(&self, id: ObjectId) -> Result<Arc<Chunks>> {
        if let Some(c) = self.lists.lock().expect("poisoned").get(&id) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        let v = self
            .get(id, ObjectKind::ChunkList, CHUNK_LIST_MAX, None)
            .await?;
        let c = Arc::new(Chunks::new(ChunkList::from_verified(&v)?));
        let weight = v.data().len() as u64 + 8 * c.offsets.len() as u64;
        self.lists
            .lock()
            .expect("poisoned")
            .insert(id, c.clone(), weight);
        Ok(c)
    }

    /// A parsed directory node, if it is in memory.
    pub fn dir_node_cached(&self, id: &ObjectId) -> Option<Arc<DirNode>> {
        self.nodes.lock().expect("poisoned").get(id)
    }

    /// A parsed directory node.
    pub async fn dir_node(&self, id: ObjectId) -> Result<Arc<DirNode>> {
        if let Some(n) = self.dir_node_cached(&id) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(n);
        }
        let v = self
            .get(id, ObjectKind::DirNode, NODE_MAX_BYTES, None)
            .await?;
        let n = Arc::new(DirNode::from_verified(&v)?);
        let parsed = match &*n {
            DirNode::Leaf(es) => es.len() * std::mem::size_of::<depotfs_catalog::Entry>(),
            DirNode::Index(cs) => cs.len() * std::mem::size_of::<depotfs_catalog::dir::ChildRef>(),
        };
        let weight = v.data().len() as u64 + parsed as u64;
        self.nodes
            .lock()
            .expect("poisoned")
            .insert(id, n.clone(), weight);
        Ok(n)
    }

    /// One verified object, downloaded at most once however many ask at the same time. `plain`
    /// is the plaintext length its referrer gives (a chunk's), if any: a download of it waits
    /// for room in the disk cache's writer queue (see [`DiskCache::room`]).
    async fn get(
        &self,
        id: ObjectId,
        kind: ObjectKind,
        max_len: u64,
        plain: Option<u64>,
    ) -> Result<Arc<Verified>> {
        let cell = self
            .inflight
            .lock()
            .expect("poisoned")
            .entry(id)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        // Only the request that runs the load counts it for a prefetch (not one that joins).
        // A chunk goes into memory before the download is no longer in flight: in between,
        // a request found it in neither and loaded it again from the disk cache (counted
        // again when it was a readahead).
        let result = cell
            .get_or_init(|| async {
                let loaded = self.load_or_fetch(id, kind, max_len, plain).await;
                if let Ok(v) = &loaded {
                    if kind == ObjectKind::Chunk {
                        let weight = (v.data().len() as u64).max(1);
                        self.chunks
                            .lock()
                            .expect("poisoned")
                            .insert(id, v.clone(), weight);
                    }
                    if let Some(by) = crate::prefetch::ahead() {
                        crate::prefetch::count_load(&self.stats, by, v.data().len() as u64);
                    }
                }
                loaded
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().expect("poisoned");
        if inflight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&id);
        }
        result
    }

    /// The longest one download may take before it fails (HTTP backends).
    pub fn request_bound(&self) -> Option<std::time::Duration> {
        self.backend.net().map(|h| h.options().request_bound())
    }

    /// `work`, failed with [`Error::Timeout`] (naming `what()`) once it has taken the request
    /// bound `status` prints; as it is for a local store.
    pub async fn within_bound<T>(
        &self,
        what: impl FnOnce() -> String,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.request_bound() {
            Some(bound) => tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: what(),
                    secs: bound.as_secs(),
                })
            }),
            None => work.await,
        }
    }

    async fn load_or_fetch(
        &self,
        id: ObjectId,
        kind: ObjectKind,
        max_len: u64,
        plain: Option<u64>,
    ) -> Result<Arc<Verified>> {
        if let Some(disk) = &self.disk {
            // Reading the file and verifying it (a hash, maybe a decompression) block: on the
            // blocking pool, so a slow disk cannot stall the runtime's few workers and the
            // loads of the chunks a reader needs next can wait on the disk side by side.
            // (Warm reads of the 1 GiB image were no faster for it here, within the spread.)
            let (d, stages) = (disk.clone(), self.stages.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                // In place: a raw chunk's plaintext is not copied out of the file's bytes.
                let t = std::time::Instant::now();
                let loaded = d.load(&id)?;
                stages.add(Stage::CacheLoad, t.elapsed(), loaded.encoded().len() as u64);
                let v = decode_timed(&stages, id, kind, loaded.bytes, loaded.at, max_len);
                Some(v.map(|(v, _)| v))
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("loading cached object {id} failed: {e}");
                None
            });
            match loaded {
                Some(Ok(v)) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Arc::new(v));
                }
                Some(Err(e)) => {
                    tracing::warn!("cached object {id} is bad ({e}); refetching");
                    disk.remove(&id);
                }
                None => {}
            }
        }
        let path = id.store_path();
        let mut last_err = None;
        // Room in the cache writer's queue, taken before the download: when the disk is
        // slower than the network, downloads wait for it rather than be served uncached (an
        // object's encoded form is at most its header and its plaintext).
        let mut room = None;
        if let (Some(disk), Some(plain)) = (&self.disk, plain) {
            let most = self
                .request_bound()
                .map_or(ROOM_WAIT_MAX, |b| (b / 4).min(ROOM_WAIT_MAX));
            room = disk.room(object::HEADER_LEN as u64 + plain, most).await;
        }
        for fresh in [false, true] {
            // An honest object is never longer than its header and its plaintext (zstd is
            // kept only when it saves space): a longer body is cut while it arrives.
            let limit = object::HEADER_LEN as u64 + max_len;
            let t = std::time::Instant::now();
            let fetched = self.backend.get(&path, fresh, limit).await?;
            let bytes = fetched.bytes;
            self.stages
                .add(Stage::Http, t.elapsed(), bytes.len() as u64);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            crate::prefetch::count_download(&self.stats, bytes.len() as u64);
            // Verifying blocks too (see above); a raw chunk is verified in the fetched
            // buffer itself (copying it out was 2 % of the daemon's samples for 16 cold
            // readers).
            let stages = self.stages.clone();
            let decoded = tokio::task::spawn_blocking(move || {
                decode_timed(&stages, id, kind, bytes, 0, max_len)
            })
            .await
            .unwrap_or_else(|e| {
                Err(depotfs_catalog::Error::BadObject {
                    id,
                    what: format!("verification did not finish: {e}"),
                })
            });
            match decoded {
                Ok((v, encoded)) => {
                    let v = Arc::new(v);
                    // Cached only once verified, and after: the reader does not wait for
                    // the file to be written (see DiskCache::keep_later).
                    if let Some(disk) = &self.disk {
                        disk.keep_later(
                            id,
                            match encoded {
                                Some(e) => Encoded::Owned(e),
                                None => Encoded::InPlace(v.clone()),
                            },
                            room.take(),
                        );
                    }
                    return Ok(v);
                }
                Err(e) => {
                    self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "object {id} from {} failed verification: {e}",
                        self.backend.current()
                    );
                    // The refetch goes to the next server (if there is one).
                    self.backend.corrupt(fetched.route, &format!("object {id}"));
                    last_err = Some(e);
                }
            }
        }
        Err(Error::Corrupt(
            last_err.map(|e| e.to_string()).unwrap_or_default(),
        ))
    }
}

/// [`object::decode_owned_at`], counting its decompression and hashing in `stages`.
fn decode_timed(
    stages: &Stages,
    id: ObjectId,
    kind: ObjectKind,
    bytes: Vec<u8>,
    at: usize,
    max_len: u64,
) -> std::result::Result<(Verified, Option<Vec<u8>>), depotfs_catalog::Error> {
    let mut times = object::DecodeTimes::default();
    let r = object::decode_owned_at(id, kind, bytes, at, max_len, &mut times);
    let plain = r.as_ref().map_or(0, |(v, _)| v.data().len() as u64);
    if !times.inflate.is_zero() {
        stages.add(Stage::Decompress, times.inflate, plain);
    }
    stages.add(Stage::Hash, times.hash, plain);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn put(public: &Path, kind: ObjectKind, data: &[u8]) -> (ObjectId, std::path::PathBuf) {
        let enc = object::encode(kind, data, 3);
        let p = public.join(enc.id.store_path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &enc.bytes).unwrap();
        (enc.id, p)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_requests_download_once() {
        let d = tempfile::tempdir().unwrap();
        let data = b"one object, many readers ".repeat(40_000);
        let (id, _) = put(&d.path().join("public"), ObjectKind::Chunk, &data);
        let disk = DiskCache::open(&d.path().join("cache"), 1 << 30).unwrap();
        // A "remote" backend over the directory: the disk cache is in use.
        let store = Arc::new(ObjectStore::new(
            Backend::Local(d.path().join("public")),
            Some(disk),
            64 << 20,
        ));
        let rt = rt();
        let len = data.len() as u64;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                rt.spawn(async move { store.chunk(id, len).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(rt.block_on(t).unwrap().data().len(), data.len());
        }
        assert_eq!(store.stats.misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn corrupt_download_is_refetched_once_then_refused_and_not_cached() {
        let d = tempfile::tempdir().unwrap();
        let (id, path) = put(&d.path().join("public"), ObjectKind::Chunk, &[7u8; 5000]);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let disk = DiskCache::open(&d.path().join("cache"), 1 << 30).unwrap();
        let store = ObjectStore::new(Backend::Local(d.path().join("public")), Some(disk), 1 << 20);
        let err = rt().block_on(store.chunk(id, 5000)).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert_eq!(err.to_errno(), fuser::Errno::EIO);
        assert_eq!(store.stats.corrupt.load(Ordering::Relaxed), 2);
        assert!(!store.disk().unwrap().contains(&id));
    }

    #[test]
    fn torn_cache_file_is_discarded_and_refetched() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![3u8; 100_000];
        let (id, path) = put(&d.path().join("public"), ObjectKind::Chunk, &data);
        let cache = d.path().join("cache");
        let disk = DiskCache::open(&cache, 1 << 30).unwrap();
        let good = std::fs::read(&path).unwrap();
        disk.store(&id, &good[..good.len() / 2]).unwrap();
        let store = ObjectStore::new(Backend::Local(d.path().join("public")), Some(disk), 1 << 20);
        let v = rt().block_on(store.chunk(id, data.len() as u64)).unwrap();
        assert_eq!(v.data(), &data[..]);
        assert_eq!(store.stats.misses.load(Ordering::Relaxed), 1);
        store.disk().unwrap().flush();
        assert_eq!(std::fs::read(cache.join(id.store_path())).unwrap(), good);
    }

    /// A cache write that cannot finish (the writer stalled as on a slow disk) does not
    /// delay the read: the verified bytes are served at once, the object counts as cached
    /// while it waits, and once the writer runs the cache holds exactly the fetched (verified)
    /// object, which a later mount serves without the server.
    #[test]
    fn a_stalled_cache_write_does_not_delay_the_read() {
        let d = tempfile::tempdir().unwrap();
        let public = d.path().join("public");
        let text = b"compressible ".repeat(10_000);
        let noise: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (zid, zpath) = put(&public, ObjectKind::Chunk, &text);
        let (rid, rpath) = put(&public, ObjectKind::Chunk, &noise);
        let cache = d.path().join("cache");
        let store = Arc::new(ObjectStore::new(
            Backend::Local(public.clone()),
            Some(DiskCache::open(&cache, 1 << 30).unwrap()),
            1 << 20,
        ));
        let rt = rt();
        let disk = store.disk().unwrap();
        let stalled = disk.stall_writer();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        let (zlen, rlen) = (text.len() as u64, noise.len() as u64);
        rt.spawn(async move {
            let z = s.chunk(zid, zlen).await.map(|v| v.data().to_vec());
            let r = s.chunk(rid, rlen).await.map(|v| v.data().to_vec());
            tx.send((z, r)).unwrap();
        });
        // Without the writer off the read path the reads wait for the stalled store: hung.
        let (z, r) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the read waited for the cache write");
        assert_eq!(z.unwrap(), text);
        assert_eq!(r.unwrap(), noise);
        assert!(
            disk.contains(&zid) && disk.contains(&rid),
            "queued counts as cached"
        );
        assert!(
            !cache.join(zid.store_path()).exists(),
            "not written while stalled"
        );
        drop(stalled);
        disk.flush();
        assert_eq!(disk.pending(), 0);
        for (id, path) in [(zid, &zpath), (rid, &rpath)] {
            assert_eq!(
                std::fs::read(cache.join(id.store_path())).unwrap(),
                std::fs::read(path).unwrap()
            );
        }
        // A later mount with the server gone reads both from the cache.
        std::fs::remove_dir_all(&public).unwrap();
        let again = ObjectStore::new(
            Backend::Local(public),
            Some(DiskCache::open(&cache, 1 << 30).unwrap()),
            1 << 20,
        );
        assert_eq!(
            rt.block_on(again.chunk(zid, zlen)).unwrap().data(),
            &text[..]
        );
        assert_eq!(
            rt.block_on(again.chunk(rid, rlen)).unwrap().data(),
            &noise[..]
        );
    }

    /// A cache write that fails (the cache's `objects` is a file: every store fails) does
    /// not fail the read; the failure is counted, nothing is cached.
    #[test]
    fn a_failing_cache_write_does_not_fail_the_read() {
        let d = tempfile::tempdir().unwrap();
        let public = d.path().join("public");
        let data = vec![9u8; 70_000];
        let (id, _) = put(&public, ObjectKind::Chunk, &data);
        let cache = d.path().join("cache");
        let disk = DiskCache::open(&cache, 1 << 30).unwrap();
        std::fs::remove_dir(cache.join("objects")).unwrap();
        std::fs::write(cache.join("objects"), b"not a directory").unwrap();
        let store = ObjectStore::new(Backend::Local(public), Some(disk), 1 << 20);
        let v = rt().block_on(store.chunk(id, data.len() as u64)).unwrap();
        assert_eq!(v.data(), &data[..]);
        let disk = store.disk().unwrap();
        disk.flush();
        assert_eq!(disk.store_failures(), 1);
        assert!(!disk.storing());
        assert!(!disk.contains(&id));
    }

    /// `n` incompressible chunks of `len` bytes in `public` (stored raw: each object is its
    /// data and a header).
    fn noise_chunks(public: &Path, n: usize, len: usize) -> Vec<(ObjectId, Vec<u8>)> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                (put(public, ObjectKind::Chunk, &data).0, data)
            })
            .collect()
    }

    /// 48 incompressible chunks of 1 MiB (more than the writer's queue holds) in DIR/public,
    /// a store over them (a "remote" backend) caching in DIR/cache, and a runtime.
    #[allow(clippy::type_complexity)]
    fn many_chunks() -> (
        tempfile::TempDir,
        Vec<(ObjectId, Vec<u8>)>,
        Arc<ObjectStore>,
        tokio::runtime::Runtime,
    ) {
        let d = tempfile::tempdir().unwrap();
        let public = d.path().join("public");
        let chunks = noise_chunks(&public, 48, 1 << 20);
        let store = Arc::new(ObjectStore::new(
            Backend::Local(public),
            Some(DiskCache::open(&d.path().join("cache"), 1 << 30).unwrap()),
            64 << 20,
        ));
        (d, chunks, store, rt())
    }

    /// A chunk being fetched in the background.
    type Fetching = tokio::task::JoinHandle<Result<Arc<Verified>>>;

    /// Fetch every chunk of `chunks` at once on `rt`; the count of those finished so far
    /// and the tasks.
    fn fetch_all(
        rt: &tokio::runtime::Runtime,
        store: &Arc<ObjectStore>,
        chunks: &[(ObjectId, Vec<u8>)],
    ) -> (Arc<AtomicU64>, Vec<Fetching>) {
        let done = Arc::new(AtomicU64::new(0));
        let tasks = chunks
            .iter()
            .map(|(id, data)| {
                let (store, done, id, len) = (store.clone(), done.clone(), *id, data.len() as u64);
                rt.spawn(async move {
                    let v = store.chunk(id, len).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    v
                })
            })
            .collect();
        (done, tasks)
    }

    /// Downloads that outrun the disk wait for the cache's writer instead of being served
    /// uncached: with the writer stalled (a slow disk) for less than WRITER_STALL, the
    /// downloads beyond the queue's QUEUE_MAX bytes wait; once it moves they finish, and the
    /// cache ends up holding every object fetched, none dropped. (Before, everything past
    /// 32 MiB was served at once and never cached: 17 of these 48.)
    #[test]
    fn downloads_wait_for_a_slow_writer_and_all_are_cached() {
        let (d, chunks, store, rt) = many_chunks();
        let (public, cache) = (d.path().join("public"), d.path().join("cache"));
        let disk = store.disk().unwrap();
        let stalled = disk.stall_writer();
        let (done, tasks) = fetch_all(&rt, &store, &chunks);
        std::thread::sleep(crate::cache::WRITER_STALL / 2);
        let served = done.load(Ordering::Relaxed);
        assert!(
            served < 40,
            "{served} of 48 MiB served while the writer could store nothing (queue {} MiB)",
            crate::cache::QUEUE_MAX >> 20
        );
        drop(stalled);
        for (t, (_, data)) in tasks.into_iter().zip(&chunks) {
            assert_eq!(rt.block_on(t).unwrap().unwrap().data(), &data[..]);
        }
        disk.flush();
        assert_eq!(disk.dropped(), 0);
        for (id, _) in &chunks {
            assert_eq!(
                std::fs::read(cache.join(id.store_path())).unwrap(),
                std::fs::read(public.join(id.store_path())).unwrap()
            );
        }
        assert!(store.stages.get(Stage::CacheWait).calls > 0);
    }

    /// A writer that does not move (a hung disk) does not hang downloads: those waiting for
    /// room give up after WRITER_STALL and are served uncached (counted); what was queued
    /// is stored once the writer moves again.
    #[test]
    fn a_stalled_writer_does_not_hang_downloads() {
        let (d, chunks, store, rt) = many_chunks();
        let cache = d.path().join("cache");
        let disk = store.disk().unwrap();
        let stalled = disk.stall_writer();
        let (_, tasks) = fetch_all(&rt, &store, &chunks);
        let (tx, rx) = std::sync::mpsc::channel();
        let data: Vec<_> = chunks.iter().map(|(_, d)| d.clone()).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let ok = tasks
                .into_iter()
                .zip(&data)
                .all(|(t, d)| rt.block_on(t).unwrap().unwrap().data() == &d[..]);
            tx.send(ok).unwrap();
        });
        let ok = rx
            .recv_timeout(crate::cache::WRITER_STALL * 10)
            .expect("downloads hung on a stalled cache writer");
        assert!(ok, "wrong bytes");
        let dropped = disk.dropped();
        assert!(dropped > 0 && dropped < 48, "{dropped}");
        drop(stalled);
        disk.flush();
        let stored = chunks
            .iter()
            .filter(|(id, _)| cache.join(id.store_path()).exists())
            .count() as u64;
        assert_eq!(stored + dropped, 48);
    }

    #[test]
    fn wrong_kind_or_length_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (id, _) = put(&d.path().join("public"), ObjectKind::Chunk, b"abc");
        let store = ObjectStore::new(Backend::Local(d.path().join("public")), None, 1 << 20);
        let rt = rt();
        assert!(rt.block_on(store.dir_node(id)).is_err());
        assert!(rt.block_on(store.chunk(id, 4)).is_err());
        assert_eq!(rt.block_on(store.chunk(id, 3)).unwrap().data(), b"abc");
    }
}
