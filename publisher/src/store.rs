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
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use depotfs_catalog::object::{self, Encoded, EncodedParts, ObjectKind, Verified};
use depotfs_catalog::object_file;
use depotfs_catalog::{Manifest, ObjectId, PublicKey, SecretKey};

use crate::error::{Error, Result};

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

    /// Create the directory skeleton and keys of a new store. Refuses a non-empty STORE.
    pub fn create(&self) -> Result<SecretKey> {
        if let Ok(mut rd) = fs::read_dir(&self.root)
            && rd.next().is_some()
        {
            return Err(Error::Input(format!(
                "{} exists and is not empty; depotfs init needs a new or empty directory",
                self.root.display()
            )));
        }
        fs::create_dir_all(&self.root).map_err(Error::io(&self.root))?;
        for b in 0..=255u8 {
            let d = self.objects().join(format!("{b:02x}"));
            fs::create_dir_all(&d).map_err(Error::io(&d))?;
        }
        fs::create_dir_all(self.tmp()).map_err(Error::io(self.tmp()))?;
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
        if !self.catalog().is_file() || !self.objects().is_dir() {
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

    /// The published manifest, verified with the store's own key.
    pub fn load_manifest(&self) -> Result<Manifest> {
        let path = self.manifest();
        let bytes = fs::read(&path).map_err(Error::io(&path))?;
        Manifest::parse_verified(&bytes, &self.load_public_key()?, None).map_err(|e| {
            Error::BadStore {
                path,
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

/// Objects in a store: existence checks, writes, verified reads.
#[derive(Debug, Clone)]
pub struct Objects {
    layout: Layout,
    /// Bytes of the objects this handle (and its clones) wrote, for the batch commands'
    /// metrics (`batch_metrics`).
    written: std::sync::Arc<AtomicU64>,
}

impl Objects {
    /// The objects of the store at `layout`.
    pub fn new(layout: Layout) -> Self {
        Objects {
            layout,
            written: Default::default(),
        }
    }

    /// Bytes of the objects written through this handle so far (present ones not counted).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Is object `id` present?
    pub fn has(&self, id: &ObjectId) -> bool {
        self.layout.object(id).exists()
    }

    /// Store an encoded object unless it is present. Returns the bytes written (0 if present).
    pub fn put(&self, enc: &Encoded) -> Result<u64> {
        self.put_bytes(&enc.id, &[&enc.bytes])
    }

    /// [`Objects::put`] of an object encoded as header and payload (no joined copy made).
    pub fn put_parts(&self, enc: &EncodedParts<'_>) -> Result<u64> {
        self.put_bytes(&enc.id, &[&enc.header, &enc.payload])
    }

    /// Store object `id` whose encoding is `parts` one after the other, unless present.
    fn put_bytes(&self, id: &ObjectId, parts: &[&[u8]]) -> Result<u64> {
        let dest = self.layout.object(id);
        if dest.exists() {
            return Ok(0);
        }
        object_file::create_parts(&dest, parts, true, &self.layout.tmp())
            .map_err(Error::io(&dest))?;
        let len = parts.iter().map(|p| p.len() as u64).sum();
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(len)
    }

    /// Read and verify object `id`.
    pub fn get(&self, id: &ObjectId, kind: ObjectKind, max_len: u64) -> Result<Verified> {
        // A raw object is verified inside the buffer it was read into (no copy).
        Ok(object::decode_owned(*id, kind, self.read(id)?, max_len)?)
    }

    /// The encoded bytes of object `id`, **not verified**: for a caller that reads now and
    /// verifies later with `object::decode_owned` (the reader's `UnverifiedPiece`).
    pub fn read(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let path = self.layout.object(id);
        fs::read(&path).map_err(Error::io(&path))
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
