//! The store on disk: layout, the publisher lock, object files and the manifest.
//!
//! ```text
//! STORE/
//!   public/            the only part ever served
//!     manifest         signed, replaced atomically, written last
//!     repo.pub         the repository's public key
//!     objects/ab/cdef… immutable objects, created anonymous in their directory, linked when whole
//!   catalog.redb       the publisher's source of truth (see db.rs)
//!   repo.key           the ed25519 signing key, mode 0600
//!   lock               flock()ed by the one publisher at work; holds its pid
//!   tmp/               scratch space for files written under a temporary name
//!   public.url         only when the public side is a bucket: `s3://BUCKET/PREFIX`
//! ```
//!
//! With `depotfs init --public s3://BUCKET/PREFIX`, `manifest`, `repo.pub` and `objects/` are
//! in the bucket ([`crate::public`]); `STORE/public/` then holds only a copy of `repo.pub`.
//! [`Objects`] is the one place that tells the two apart.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use depotfs_catalog::object::{self, Encoded, EncodedParts, ObjectKind, Verified};
use depotfs_catalog::object_file;
use depotfs_catalog::{Manifest, ObjectId, PublicKey, SecretKey};

use crate::error::{Error, Result};
use crate::public::{BlockingBucket, CACHE_MANIFEST, CACHE_PUBLIC_KEY};

/// Paths of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    /// STORE itself.
    pub root: PathBuf,
    /// `STORE/public`, or the directory itself for a bare public directory.
    public: PathBuf,
}

impl Layout {
    /// The layout of the store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let public = root.join("public");
        Layout { root, public }
    }
    /// The layout of a bare public directory (a mirror, or what `depotfs serve` serves):
    /// only the paths under [`Layout::public`] are meaningful, for reading.
    pub fn of_public(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Layout {
            root: dir.clone(),
            public: dir,
        }
    }
    /// `STORE/public`.
    pub fn public(&self) -> PathBuf {
        self.public.clone()
    }
    /// `STORE/public/manifest`.
    pub fn manifest(&self) -> PathBuf {
        self.public().join("manifest")
    }
    /// `STORE/public/repo.pub`.
    pub fn public_key(&self) -> PathBuf {
        self.public().join("repo.pub")
    }
    /// `STORE/public/objects`.
    pub fn objects(&self) -> PathBuf {
        self.public().join("objects")
    }
    /// The file of object `id`.
    pub fn object(&self, id: &ObjectId) -> PathBuf {
        self.public().join(id.store_path())
    }
    /// `STORE/catalog.redb`.
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.redb")
    }
    /// `STORE/repo.key`.
    pub fn secret_key(&self) -> PathBuf {
        self.root.join("repo.key")
    }
    /// `STORE/lock`.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// `STORE/tmp`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Empty `STORE/tmp` (making it if it is missing). Only for a holder of the lock: every
    /// writer there holds it, so what is there was left by a killed command.
    pub fn clear_tmp(&self) -> Result<()> {
        let tmp = self.tmp();
        fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
        for f in fs::read_dir(&tmp).map_err(Error::io(&tmp))? {
            let f = f.map_err(Error::io(&tmp))?;
            let p = f.path();
            if f.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p).map_err(Error::io(&p))?;
            } else {
                fs::remove_file(&p).map_err(Error::io(&p))?;
            }
        }
        Ok(())
    }
    /// `STORE/public.url`: the bucket holding the public side, if it is one.
    pub fn bucket_file(&self) -> PathBuf {
        self.root.join("public.url")
    }
    /// The `s3://` URL of the bucket holding the public side, if it is one.
    pub fn bucket_url(&self) -> Result<Option<String>> {
        let path = self.bucket_file();
        match fs::read_to_string(&path) {
            Ok(url) => Ok(Some(url.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Create the directory skeleton and keys of a new store, its public side in `bucket` if
    /// given (then only `repo.pub`'s copy is under `public/`). Refuses a non-empty STORE.
    pub fn create(&self, bucket: Option<&str>) -> Result<SecretKey> {
        if let Ok(mut rd) = fs::read_dir(&self.root)
            && rd.next().is_some()
        {
            return Err(Error::Input(format!(
                "{} exists and is not empty; depotfs init needs a new or empty directory",
                self.root.display()
            )));
        }
        fs::create_dir_all(&self.root).map_err(Error::io(&self.root))?;
        fs::create_dir_all(self.public()).map_err(Error::io(self.public()))?;
        fs::create_dir_all(self.tmp()).map_err(Error::io(self.tmp()))?;
        if let Some(url) = bucket {
            write_atomic(self, &self.bucket_file(), format!("{url}\n").as_bytes())?;
        }
        for b in (0..=255u8).filter(|_| bucket.is_none()) {
            let d = self.objects().join(format!("{b:02x}"));
            fs::create_dir_all(&d).map_err(Error::io(&d))?;
        }
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(Error::io("/dev/urandom"))?;
        let key = SecretKey::from_seed(seed);
        let path = self.secret_key();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(&path))?;
        f.write_all(key.to_text().as_bytes())
            .map_err(Error::io(&path))?;
        write_atomic(self, &self.public_key(), key.public().to_text().as_bytes())?;
        Ok(key)
    }

    /// Check that STORE looks like a depotfs store.
    pub fn check(&self) -> Result<()> {
        if !self.catalog().is_file() || !(self.objects().is_dir() || self.bucket_file().is_file()) {
            return Err(Error::BadStore {
                path: self.root.clone(),
                what: "not a depotfs store (no catalog.redb or public/objects); create one with `depotfs init`".into(),
            });
        }
        Ok(())
    }

    /// The signing key.
    pub fn load_secret_key(&self) -> Result<SecretKey> {
        let path = self.secret_key();
        let text = fs::read_to_string(&path).map_err(Error::io(&path))?;
        SecretKey::from_text(&text).map_err(|e| Error::BadStore {
            path,
            what: e.to_string(),
        })
    }

    /// The public key.
    pub fn load_public_key(&self) -> Result<PublicKey> {
        let path = self.public_key();
        let text = fs::read_to_string(&path).map_err(Error::io(&path))?;
        PublicKey::from_text(&text).map_err(|e| Error::BadStore {
            path,
            what: e.to_string(),
        })
    }

    /// The published manifest of a public directory, verified with the store's own key.
    pub fn load_manifest(&self) -> Result<Manifest> {
        let path = self.manifest();
        let bytes = fs::read(&path).map_err(Error::io(&path))?;
        self.verify_manifest(&bytes, &path.display().to_string())
    }

    fn verify_manifest(&self, bytes: &[u8], from: &str) -> Result<Manifest> {
        Manifest::parse_verified(bytes, &self.load_public_key()?, None).map_err(|e| {
            Error::BadStore {
                path: from.into(),
                what: e.to_string(),
            }
        })
    }
}

/// Write `bytes` to `dest` through a temporary file in STORE/tmp and a rename, so readers see
/// the old file or the new one, never a part ([`object_file::replace`]).
pub fn write_atomic(layout: &Layout, dest: &Path, bytes: &[u8]) -> Result<()> {
    object_file::replace(dest, bytes, &layout.tmp(), false).map_err(Error::io(dest))
}

/// The public side of a store — objects, manifest, key — in `STORE/public/` or in a bucket
/// (`public.url`, [`crate::public`]): existence checks, writes, verified reads, the
/// barrier before a manifest, the manifest itself, gc's sweep. The rest of the publisher
/// does not know which.
#[derive(Debug, Clone)]
pub struct Objects {
    layout: Layout,
    /// The bucket, when the public side is one.
    bucket: Option<std::sync::Arc<BlockingBucket>>,
    /// Bytes of the objects this handle (and its clones) wrote, for the batch commands'
    /// metrics (`batch_metrics`).
    written: std::sync::Arc<AtomicU64>,
    /// Threads writing the objects put through this handle, when it was made by
    /// [`Objects::with_background_writes`].
    background: Option<std::sync::Arc<Background>>,
}

impl Objects {
    /// The objects of the public directory of `layout` (never a bucket: `depotfs serve`'s
    /// public directory, a mirror).
    pub fn new(layout: Layout) -> Self {
        Objects {
            layout,
            bucket: None,
            written: Default::default(),
            background: None,
        }
    }

    /// This store's objects, with the object files put through the returned handle written by
    /// [`BACKGROUND_WRITERS`] threads of their own: [`Objects::put`] and
    /// [`Objects::put_parts`] copy the object into a free buffer (waiting for one when all
    /// [`BACKGROUND_BUFFERS`] are queued or being written) and return; [`Objects::uploaded`]
    /// and [`Objects::flush`] wait until every object put so far is written (and report the
    /// first failure), as they wait for a bucket's uploads, so what the catalog records next
    /// is in the store, and `flush`'s `syncfs` makes it durable before a revision.
    /// [`Objects::has`] counts an object queued as present. A bucket's uploads are already in
    /// the background: for a bucket this is a plain clone.
    ///
    /// Why (`benches/RESULTS.md`, "#21 P1 on the disk (p1d, session 13)"): an ingest worker
    /// that writes its own objects waits for each direct write; with four workers on two
    /// cores, all four were often waiting at once, and the cores idled while the disk worked.
    pub fn with_background_writes(&self) -> Objects {
        if self.bucket.is_some() {
            return self.clone();
        }
        Objects {
            background: Some(std::sync::Arc::new(Background::start(
                self.layout.tmp(),
                self.written.clone(),
            ))),
            ..self.clone()
        }
    }

    /// The public side of the store at `layout`: its bucket if `STORE/public.url` names
    /// one, else `STORE/public/`.
    pub fn open(layout: Layout) -> Result<Self> {
        let bucket = match layout.bucket_url()? {
            Some(url) => Some(std::sync::Arc::new(BlockingBucket::open(&url)?)),
            None => None,
        };
        Ok(Objects {
            bucket,
            ..Objects::new(layout)
        })
    }

    /// The bucket `url` as the public side of `layout`'s store (before `STORE/public.url`
    /// is written: `init`).
    pub fn open_bucket(layout: &Layout, url: &str) -> Result<Self> {
        Ok(Objects {
            bucket: Some(std::sync::Arc::new(BlockingBucket::open(url)?)),
            ..Objects::new(layout.clone())
        })
    }

    /// Where the public side is, for messages: `STORE/public` or `s3://BUCKET/PREFIX`.
    pub fn describe(&self) -> String {
        match &self.bucket {
            Some(b) => b.url("").trim_end_matches('/').to_string(),
            None => self.layout.public().display().to_string(),
        }
    }

    /// Bytes of the objects written through this handle so far (present ones not counted).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Is object `id` present? (A bucket that cannot answer says no: the object is then
    /// uploaded again, which is harmless.)
    pub fn has(&self, id: &ObjectId) -> bool {
        match &self.bucket {
            Some(b) => b.has(id).unwrap_or_else(|e| {
                tracing::debug!("{e}");
                false
            }),
            None => {
                self.background.as_ref().is_some_and(|w| w.queued(id))
                    || self.layout.object(id).exists()
            }
        }
    }

    /// Store an encoded object unless it is present. Returns the bytes written (0 if present).
    /// A bucket's upload runs in the background: [`Objects::flush`] waits for it.
    pub fn put(&self, enc: &Encoded) -> Result<u64> {
        self.put_bytes(&enc.id, &[&enc.bytes])
    }

    /// [`Objects::put`] of an object encoded as header and payload (no joined copy made on
    /// disk; a bucket object is uploaded whole, so there they are joined).
    pub fn put_parts(&self, enc: &EncodedParts<'_>) -> Result<u64> {
        self.put_bytes(&enc.id, &[&enc.header, &enc.payload])
    }

    /// Store object `id` whose encoding is `parts` one after the other, unless present.
    fn put_bytes(&self, id: &ObjectId, parts: &[&[u8]]) -> Result<u64> {
        let len = parts.iter().map(|p| p.len() as u64).sum();
        if let Some(b) = &self.bucket {
            // A bucket object is uploaded whole: parts are joined (one copy) only if split.
            let joined;
            let bytes: &[u8] = match parts {
                [one] => one,
                _ => {
                    joined = parts.concat();
                    &joined
                }
            };
            if !b.put(id, bytes)? {
                return Ok(0);
            }
        } else {
            let dest = self.layout.object(id);
            if let Some(w) = &self.background {
                // Counted in `written` by the writer, once written.
                return w
                    .put(*id, dest, parts)
                    .map(|queued| if queued { len } else { 0 });
            }
            if dest.exists() {
                return Ok(0);
            }
            object_file::create_parts(&dest, parts, true, &self.layout.tmp())
                .map_err(Error::io(&dest))?;
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(len)
    }

    /// Make every object written so far durable (file system sync, or every upload done),
    /// so the manifest written next never names an object a reader cannot get.
    pub fn flush(&self) -> Result<()> {
        match &self.bucket {
            Some(b) => b.flush(),
            None => {
                self.uploaded()?;
                sync_filesystem(&self.layout)
            }
        }
    }

    /// Wait until every object put so far is in the public store: a bucket's background
    /// uploads (before the catalog records anything that references them); on disk, the
    /// writer threads of [`Objects::with_background_writes`], else they are there already
    /// (made durable by [`Objects::flush`] before a revision).
    pub fn uploaded(&self) -> Result<()> {
        match (&self.bucket, &self.background) {
            (Some(b), _) => b.flush(),
            (None, Some(w)) => w.wait(),
            (None, None) => Ok(()),
        }
    }

    /// Read and verify object `id`.
    pub fn get(&self, id: &ObjectId, kind: ObjectKind, max_len: u64) -> Result<Verified> {
        // A raw object is verified inside the buffer it was read into (no copy).
        Ok(object::decode_owned(*id, kind, self.read(id)?, max_len)?)
    }

    /// The encoded bytes of object `id`, **not verified**: for a caller that reads now and
    /// verifies later with `object::decode_owned` (the reader's `UnverifiedPiece`).
    pub fn read(&self, id: &ObjectId) -> Result<Vec<u8>> {
        match &self.bucket {
            Some(b) => {
                let rel = id.store_path();
                b.get(&rel)?
                    .map(|v| v.to_vec())
                    .ok_or_else(|| Error::Bucket {
                        url: b.url(&rel),
                        message: "no such object".into(),
                    })
            }
            None => {
                let path = self.layout.object(id);
                fs::read(&path).map_err(Error::io(&path))
            }
        }
    }

    /// Like [`Objects::read`], and whether the object was in the page cache (when `probe`:
    /// its first byte, asked for with `preadv2(RWF_NOWAIT)`, which fails rather than wait
    /// for the disk; without `probe`, `false`). The depot view reads with direct I/O once its
    /// reads are cold ([`Objects::read_direct`]). A bucket's object is never cached.
    ///
    /// `most` is the size the object can have at most (a chunk of `n` bytes is stored in at
    /// most [`object::HEADER_LEN`]` + n`): one buffer of that size plus a byte is allocated
    /// up front and read into without being zeroed, so a file is read in one `pread`, without
    /// the `statx`, `lseek` and end-finding `read` calls of a `read_to_end` (a third of the
    /// depot view's system calls). A read shorter than asked is the end of the file (what a
    /// regular file gives); a longer file is read as far as that extra byte, enough to fail
    /// its verification. Whatever was read, only bytes that verify are ever used.
    pub fn read_noting_cache(
        &self,
        id: &ObjectId,
        most: usize,
        probe: bool,
    ) -> Result<(Vec<u8>, bool)> {
        if self.bucket.is_some() {
            return Ok((self.read(id)?, false));
        }
        let path = self.layout.object(id);

        let file = File::open(&path).map_err(Error::io(&path))?;
        let mut one = [0u8; 1];
        // EAGAIN: not cached; EOPNOTSUPP/ENOSYS: the file system or kernel cannot say.
        let cached = probe
            && rustix::io::preadv2(
                &file,
                &mut [std::io::IoSliceMut::new(&mut one)],
                0,
                rustix::io::ReadWriteFlags::NOWAIT,
            )
            .is_ok();
        let mut buf = Vec::with_capacity(most.saturating_add(1));
        while buf.len() < buf.capacity() {
            let (at, want) = (buf.len(), buf.capacity() - buf.len());
            match rustix::io::pread(&file, rustix::buffer::spare_capacity(&mut buf), at as u64) {
                Ok(n) if n < want => break,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io(&path)(e.into())),
            }
        }
        Ok((buf, cached))
    }

    /// Read object `id` (at most `most` bytes) with direct I/O (`O_DIRECT`): from the disk
    /// into a reused buffer of this process, past the page cache, so the kernel neither fills
    /// the cache nor copies the bytes out of it. The depot view reads cold objects this way
    /// (module docs of `serve::depot`: what it costs the next download). `None` when the
    /// store is a bucket or its file system refuses direct I/O (then read it buffered).
    ///
    /// The buffer comes from a pool of [`DIRECT_BUF`]-byte buffers, zeroed once when made
    /// and never shrunk: the read goes to its first 4 KiB-aligned byte, for at most `most`
    /// bytes and one more, rounded up to 4 KiB (a longer file is read far enough to fail its
    /// verification); the file's end is where the read stops short. The buffer goes back to
    /// the pool when the [`DirectRead`] is dropped.
    pub fn read_direct(&self, id: &ObjectId, most: usize) -> Result<Option<DirectRead>> {
        if self.bucket.is_some() {
            return Ok(None);
        }
        let path = self.layout.object(id);
        let want = (most + 1).next_multiple_of(object_file::DIO_ALIGN);
        if want + object_file::DIO_ALIGN > DIRECT_BUF {
            return Ok(None);
        }
        let Some(fd) = object_file::open_direct(&path, false).map_err(Error::io(&path))? else {
            return Ok(None);
        };
        let mut buf = DirectRead::take_buf();
        let range = match object_file::read_direct(&fd, &mut buf, want) {
            Ok(Some(range)) => range,
            // Alignment the device wants and this read does not have: read it buffered.
            Ok(None) => {
                DirectRead::give_back(buf);
                return Ok(None);
            }
            Err(e) => {
                DirectRead::give_back(buf);
                return Err(Error::io(&path)(e));
            }
        };
        Ok(Some(DirectRead { buf, range }))
    }

    /// The published manifest, verified with the store's own key.
    pub fn load_manifest(&self) -> Result<Manifest> {
        match &self.bucket {
            Some(b) => {
                let bytes = b.get("manifest")?.ok_or_else(|| Error::Bucket {
                    url: b.url("manifest"),
                    message: "no manifest".into(),
                })?;
                self.layout.verify_manifest(&bytes, &b.url("manifest"))
            }
            None => self.layout.load_manifest(),
        }
    }

    /// Replace the manifest (a rename on disk, one `PUT` in a bucket: readers see the old
    /// one or the new one).
    pub fn write_manifest(&self, text: &[u8]) -> Result<()> {
        match &self.bucket {
            Some(b) => b.put_now("manifest", text, CACHE_MANIFEST),
            None => write_atomic(&self.layout, &self.layout.manifest(), text),
        }
    }

    /// Upload `STORE/public/repo.pub` to the bucket, if the public side is one.
    pub fn publish_key(&self) -> Result<()> {
        if let Some(b) = &self.bucket {
            let path = self.layout.public_key();
            let text = fs::read(&path).map_err(Error::io(&path))?;
            b.put_now("repo.pub", &text, CACHE_PUBLIC_KEY)?;
        }
        Ok(())
    }

    /// Does the public side already hold a manifest? (`init` refuses a bucket prefix that
    /// does: it belongs to another repository.)
    pub fn has_manifest(&self) -> Result<bool> {
        match &self.bucket {
            Some(b) => Ok(b.get("manifest")?.is_some()),
            None => Ok(self.layout.manifest().exists()),
        }
    }

    /// gc's sweep of fan-out directory `b` (`objects/ab/`): delete each object for which
    /// `live` says no. Returns (kept, removed, removed bytes).
    pub fn sweep_fanout(&self, b: u8, live: &dyn Fn(&ObjectId) -> bool) -> Result<(u64, u64, u64)> {
        let (mut kept, mut removed, mut removed_bytes) = (0, 0, 0);
        if let Some(bucket) = &self.bucket {
            let listing = bucket.block_on(bucket.bucket().list_fanout(b))?;
            for (id, rel, size) in listing {
                if id.as_ref().is_some_and(live) {
                    kept += 1;
                } else {
                    removed += 1;
                    removed_bytes += size;
                    bucket.block_on(bucket.bucket().delete(&rel))?;
                }
            }
            return Ok((kept, removed, removed_bytes));
        }
        let d = self.layout.objects().join(format!("{b:02x}"));
        for f in fs::read_dir(&d).map_err(Error::io(&d))? {
            let f = f.map_err(Error::io(&d))?;
            let name = format!("{b:02x}{}", f.file_name().to_string_lossy());
            if name.parse::<ObjectId>().is_ok_and(|id| live(&id)) {
                kept += 1;
            } else if f.file_type().is_ok_and(|t| t.is_dir()) {
                // Not an object (`lost+found`, an operator's): left alone, said.
                tracing::warn!(
                    "{}: a directory among the objects; left as it is",
                    f.path().display()
                );
            } else {
                removed += 1;
                removed_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(f.path()).map_err(Error::io(f.path()))?;
            }
        }
        Ok((kept, removed, removed_bytes))
    }
}

/// Threads of [`Objects::with_background_writes`]: enough that objects are always being
/// written while the ingest workers hash and compress the next ones.
pub const BACKGROUND_WRITERS: usize = 8;

/// Buffers of [`Objects::with_background_writes`]: objects copied and waiting to be written,
/// or being written (each as large as its largest object so far: a chunk is at most 1 MiB).
pub const BACKGROUND_BUFFERS: usize = 2 * BACKGROUND_WRITERS;

/// The writer threads of [`Objects::with_background_writes`] and what they share; when the
/// last handle is dropped, the threads finish what is queued and end.
#[derive(Debug)]
struct Background {
    shared: std::sync::Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// `STORE/tmp`, for filesystems without `O_TMPFILE` ([`object_file::create`]).
    tmp: PathBuf,
}

#[derive(Debug, Default)]
struct Shared {
    state: std::sync::Mutex<Queue>,
    /// Signalled when a job is queued or the writers are to end.
    work: std::sync::Condvar,
    /// Signalled when a job is done (a buffer is free, `pending` shrank).
    done: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// Buffers not in use.
    free: Vec<object_file::AlignedBuf>,
    /// Buffers made so far (at most [`BACKGROUND_BUFFERS`]).
    made: usize,
    /// Objects being copied, queued or written: present for [`Objects::has`].
    pending: std::collections::HashSet<ObjectId>,
    /// The first write that failed: its file and error (made again for every caller).
    failed: Option<(PathBuf, std::io::ErrorKind, String)>,
    /// The handle is gone: finish the queue and end.
    closed: bool,
}

#[derive(Debug)]
struct Job {
    id: ObjectId,
    dest: PathBuf,
    buf: object_file::AlignedBuf,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Queue {
    fn failure(&self) -> Option<Error> {
        self.failed.as_ref().map(|(path, kind, what)| Error::Io {
            path: path.clone(),
            error: std::io::Error::new(*kind, what.clone()),
        })
    }
}

impl Background {
    fn start(tmp: PathBuf, written: std::sync::Arc<AtomicU64>) -> Background {
        let shared = std::sync::Arc::new(Shared::default());
        let threads = (0..BACKGROUND_WRITERS)
            .filter_map(|i| {
                let (shared, tmp, written) = (shared.clone(), tmp.clone(), written.clone());
                std::thread::Builder::new()
                    .name(format!("objects-{i}"))
                    .spawn(move || Background::write(&shared, &tmp, &written))
                    .ok()
            })
            .collect::<Vec<_>>();
        if threads.is_empty() {
            // No thread to be had: `put` writes itself.
            shared.lock().closed = true;
        }
        Background {
            shared,
            threads,
            tmp,
        }
    }

    /// A writer thread: write queued objects until the handle is dropped and the queue empty.
    fn write(shared: &Shared, tmp: &Path, written: &AtomicU64) {
        let mut q = shared.lock();
        loop {
            let Some(job) = q.jobs.pop_front() else {
                if q.closed {
                    return;
                }
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            drop(q);
            let res = object_file::create(&job.dest, job.buf.bytes(), true, tmp);
            q = shared.lock();
            match res {
                Ok(()) => {
                    written.fetch_add(job.buf.bytes().len() as u64, Ordering::Relaxed);
                }
                Err(e) if q.failed.is_none() => {
                    q.failed = Some((job.dest, e.kind(), e.to_string()));
                }
                Err(_) => {}
            }
            q.pending.remove(&job.id);
            q.free.push(job.buf);
            shared.done.notify_all();
        }
    }

    fn queued(&self, id: &ObjectId) -> bool {
        self.shared.lock().pending.contains(id)
    }

    /// Queue object `id`, whose encoding is `parts`, to be written to `dest` unless present or
    /// queued already (then `false`). An earlier write's failure is returned here too, so an
    /// ingest stops.
    fn put(&self, id: ObjectId, dest: PathBuf, parts: &[&[u8]]) -> Result<bool> {
        let mut q = self.shared.lock();
        if let Some(e) = q.failure() {
            return Err(e);
        }
        if q.pending.contains(&id) {
            return Ok(false);
        }
        drop(q);
        if dest.exists() {
            return Ok(false);
        }
        q = self.shared.lock();
        if q.closed {
            // No writer threads: write here.
            drop(q);
            return object_file::create_parts(&dest, parts, true, &self.tmp)
                .map(|()| true)
                .map_err(Error::io(&dest));
        }
        if !q.pending.insert(id) {
            return Ok(false);
        }
        let mut buf = loop {
            if let Some(b) = q.free.pop() {
                break b;
            }
            if q.made < BACKGROUND_BUFFERS {
                q.made += 1;
                break object_file::AlignedBuf::new();
            }
            q = self.shared.done.wait(q).unwrap_or_else(|e| e.into_inner());
        };
        drop(q);
        buf.fill(parts);
        self.shared.lock().jobs.push_back(Job { id, dest, buf });
        self.shared.work.notify_one();
        Ok(true)
    }

    /// Wait until every object put so far is written; the first failure, if any.
    fn wait(&self) -> Result<()> {
        let mut q = self.shared.lock();
        while !q.pending.is_empty() {
            q = self.shared.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        match q.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Take the publisher lock of a store, or fail naming the pid that holds it.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Lock `layout`'s store for this process.
    pub fn acquire(layout: &Layout) -> Result<Lock> {
        let path = layout.lock();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(&path))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            // The kernel knows the holder even before it has written its pid into the file
            // (or when the file still holds a previous holder's pid): ask it first.
            let pid = lock_holder(&file).map(|p| p.to_string()).or_else(|| {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_string()).filter(|p| !p.is_empty())
            });
            return Err(Error::Locked {
                store: layout.root.clone(),
                pid: pid.unwrap_or_else(|| {
                    "unknown (not in /proc/locks, none in the lock file)".into()
                }),
            });
        }
        file.set_len(0).map_err(Error::io(&path))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(Error::io(&path))?;
        Ok(Lock { _file: file })
    }
}

/// The pid holding a `flock` on `file`, from `/proc/locks` (lines such as
/// `1: FLOCK  ADVISORY  WRITE 4242 fd:01:131090 0 EOF`: pid, then device major:minor in hex
/// and inode). Matched by device and inode; by inode alone if that is unique (overlay file
/// systems report another device there than `fstat` does).
fn lock_holder(file: &File) -> Option<u32> {
    let st = rustix::fs::fstat(file).ok()?;
    let dev = format!(
        "{:02x}:{:02x}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev)
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    // "N:" FLOCK ADVISORY WRITE PID DEV:INO START END ("->" in place of FLOCK: a waiter).
    let holders: Vec<(&str, u32)> = locks
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") {
                return None;
            }
            let (d, ino) = f.get(5)?.rsplit_once(':')?;
            (ino.parse::<u64>().ok()? == st.st_ino).then_some((d, f.get(4)?.parse().ok()?))
        })
        .collect();
    match holders.iter().find(|(d, _)| *d == dev) {
        Some((_, pid)) => Some(*pid),
        None if holders.len() == 1 => Some(holders[0].1),
        None => None,
    }
}

/// The pid of the publisher holding `layout`'s lock, if one is at work (checked with a
/// shared lock attempt, released at once; the pid as it wrote it).
pub fn holder(layout: &Layout) -> Result<Option<String>> {
    let path = layout.lock();
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
        return Ok(None);
    }
    let mut pid = String::new();
    file.read_to_string(&mut pid).map_err(Error::io(&path))?;
    Ok(Some(pid.trim().to_string()))
}

/// Flush everything written to the store's filesystem, so the manifest written next never
/// names objects a power loss could take back.
pub fn sync_filesystem(layout: &Layout) -> Result<()> {
    let dir = File::open(layout.public()).map_err(Error::io(layout.public()))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::Io {
        path: layout.public(),
        error: e.into(),
    })
}

/// Size of a direct-read buffer: the largest chunk object plus a byte, rounded up, and
/// room to align the start.
pub const DIRECT_BUF: usize = (object::HEADER_LEN + depotfs_catalog::chunking::CHUNK_MAX + 1)
    .next_multiple_of(object_file::DIO_ALIGN)
    + object_file::DIO_ALIGN;
/// Direct-read buffers kept for reuse, at most (a fresh one is zeroed, and faulted in by the
/// read: as costly as the copy direct reads save).
const DIRECT_POOL: usize = 32;
static DIRECT_BUFS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// An object read by [`Objects::read_direct`]: `bytes()` are the file's bytes, not yet
/// verified. Owns its pooled buffer, which goes back to the pool when dropped.
#[derive(Debug)]
pub struct DirectRead {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl DirectRead {
    /// The bytes read (the object file as it is on disk).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    /// Narrow to `range` of [`DirectRead::bytes`] (the part to keep: a verified plaintext;
    /// only the reader, which verifies first, narrows).
    pub(crate) fn narrow(mut self, range: std::ops::Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.range.len());
        self.range = self.range.start + range.start..self.range.start + range.end;
        self
    }

    fn take_buf() -> Vec<u8> {
        let pooled = DIRECT_BUFS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| vec![0; DIRECT_BUF])
    }

    fn give_back(buf: Vec<u8>) {
        let mut pool = DIRECT_BUFS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < DIRECT_POOL && buf.len() == DIRECT_BUF {
            pool.push(buf);
        }
    }
}

impl AsRef<[u8]> for DirectRead {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for DirectRead {
    fn drop(&mut self) {
        DirectRead::give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects put through a background-writing handle are all written, with exactly their
    /// encoded bytes, once `uploaded` returns; each counts as present from its `put` on, and
    /// is written once. A write that fails is reported by `uploaded` and by every later `put`.
    #[test]
    fn background_writes_are_whole_and_failures_reported() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("store"));
        layout.create(None).unwrap();
        let plain = Objects::new(layout.clone());
        let objects = plain.with_background_writes();
        // More objects than buffers, of sizes on both sides of the direct-I/O threshold.
        let encoded: Vec<Encoded> = (0..3 * BACKGROUND_BUFFERS)
            .map(|i| {
                let data: Vec<u8> = (0..(i * 37_001) % 300_000 + 1)
                    .map(|j| ((j as u64 * 2_654_435_761) >> (i % 7)) as u8)
                    .collect();
                object::encode(ObjectKind::Chunk, &data, 3)
            })
            .collect();
        for enc in &encoded {
            assert_eq!(objects.put(enc).unwrap(), enc.bytes.len() as u64);
            assert!(objects.has(&enc.id));
            assert_eq!(objects.put(enc).unwrap(), 0, "queued or present: not again");
        }
        objects.uploaded().unwrap();
        for enc in &encoded {
            assert_eq!(fs::read(layout.object(&enc.id)).unwrap(), enc.bytes);
            assert!(plain.has(&enc.id));
        }
        let total: u64 = encoded.iter().map(|e| e.bytes.len() as u64).sum();
        assert_eq!(
            plain.written(),
            total,
            "counted once each, in the shared count"
        );
        assert_eq!(fs::read_dir(layout.tmp()).unwrap().count(), 0);

        // An object whose fan-out directory is gone cannot be written.
        let lost = object::encode(ObjectKind::Chunk, b"its directory is gone", 3);
        let fanout = layout.object(&lost.id).parent().unwrap().to_path_buf();
        fs::remove_dir_all(&fanout).unwrap();
        objects.put(&lost).unwrap();
        let e = objects.uploaded().unwrap_err().to_string();
        assert!(e.contains(&fanout.display().to_string()), "{e}");
        let other = object::encode(ObjectKind::Chunk, b"another object", 3);
        assert!(objects.put(&other).is_err(), "a later put fails too");
        assert!(
            objects.flush().is_err(),
            "and so does the barrier before a revision"
        );
        drop(objects);
        assert!(!layout.object(&other.id).exists());
    }
}
