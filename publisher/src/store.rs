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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use depotfs_catalog::object::{self, Encoded, ObjectKind, Verified};
use depotfs_catalog::{Manifest, ObjectId, PublicKey, SecretKey};

use crate::error::{Error, Result};

/// Paths of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    /// STORE itself.
    pub root: PathBuf,
}

impl Layout {
    /// The layout of the store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    /// `STORE/public`.
    pub fn public(&self) -> PathBuf {
        self.root.join("public")
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

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `dest` through a temporary file in STORE/tmp and a rename, so readers see
/// the old file or the new one, never a part.
pub fn write_atomic(layout: &Layout, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = layout.tmp().join(format!(
        "{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(Error::io(&tmp))?;
    fs::rename(&tmp, dest).map_err(Error::io(dest))
}

/// Direct I/O failed once with EINVAL on this filesystem (or its alignment): write buffered.
static DIRECT_IO_OFF: AtomicBool = AtomicBool::new(false);

/// Alignment of direct-I/O buffers and lengths: the largest logical block size in common use.
const DIO_ALIGN: usize = 4096;

/// Objects smaller than this are written buffered: a direct write waits for the device, which
/// for small files costs more than it saves (118,594 small files: 18.7 s buffered, 25.6 s all
/// direct).
const DIO_MIN: usize = 64 * 1024;

thread_local! {
    /// This thread's buffer for direct writes, grown as needed and reused.
    static DIO_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Create the immutable object file `dest` holding `bytes`, which appears whole or not at all.
///
/// The file is made anonymous in its final directory (`O_TMPFILE`), written, and then linked
/// under its name; an existing `dest` (another writer of the same object) is success. A crash
/// leaves nothing behind, and there is no rename across directories, whose global rename lock
/// showed up in `perf` with two writers. Data goes straight to the disk (`O_DIRECT`, padded to
/// [`DIO_ALIGN`], then truncated to its length): the publisher never reads an object back, the
/// `syncfs` before each publish would wait for the writeback anyway, and on this project's
/// VMs a page-cache page touched for the first time is slow (buffered writes of 1.5 GiB of new
/// objects spent half the publisher's time in the kernel's copy into the page cache). Falls
/// back to buffered writes where direct I/O is refused (tmpfs, some network filesystems).
///
/// [`std::io::ErrorKind::Unsupported`] means this filesystem cannot make anonymous files or
/// link them (no `O_TMPFILE`, no `/proc`): the caller writes through a temporary name instead.
fn write_object(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let dir = dest.parent().unwrap_or(Path::new("."));
    let open = |direct: bool| {
        let mut flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        if direct {
            flags |= OFlags::DIRECT;
        }
        rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o644)).map_err(|e| {
            if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR {
                std::io::Error::from(std::io::ErrorKind::Unsupported)
            } else {
                e.into()
            }
        })
    };
    let mut written = None;
    if bytes.len() >= DIO_MIN && !DIRECT_IO_OFF.load(Ordering::Relaxed) {
        match open(true) {
            Ok(fd) => match write_direct(&fd, bytes) {
                Ok(()) => written = Some(fd),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    DIRECT_IO_OFF.store(true, Ordering::Relaxed);
                    tracing::debug!(dir = %dir.display(), "direct I/O refused; writing objects buffered");
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                DIRECT_IO_OFF.store(true, Ordering::Relaxed);
                tracing::debug!(dir = %dir.display(), "direct I/O refused; writing objects buffered");
            }
            Err(e) => return Err(e),
        }
    }
    let fd = match written {
        Some(fd) => fd,
        None => {
            let fd = open(false)?;
            File::from(fd.try_clone()?).write_all(bytes)?;
            fd
        }
    };
    // The mode given to open() passed through the umask; objects must be world-readable.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    match rustix::fs::linkat(CWD, proc_path.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Ok(()),
        // No /proc mounted: the anonymous file cannot be named.
        Err(rustix::io::Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Write `bytes` to the fresh direct-I/O file `fd` from an aligned buffer, padded to
/// [`DIO_ALIGN`], and cut the file back to `bytes.len()`.
fn write_direct(fd: &std::os::fd::OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    let padded = bytes.len().div_ceil(DIO_ALIGN) * DIO_ALIGN;
    DIO_BUF.with_borrow_mut(|buf| {
        if buf.len() < padded + DIO_ALIGN {
            buf.resize(padded + DIO_ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(DIO_ALIGN);
        let block = &mut buf[start..start + padded];
        block[..bytes.len()].copy_from_slice(bytes);
        block[bytes.len()..].fill(0);
        let mut done = 0;
        while done < padded {
            // A short direct write ends at a block boundary; continue from there.
            match rustix::io::pwrite(fd, &block[done..], done as u64) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })?;
    rustix::fs::ftruncate(fd, bytes.len() as u64)?;
    Ok(())
}

/// Objects in a store: existence checks, writes, verified reads.
#[derive(Debug, Clone)]
pub struct Objects {
    layout: Layout,
}

impl Objects {
    /// The objects of the store at `layout`.
    pub fn new(layout: Layout) -> Self {
        Objects { layout }
    }

    /// Is object `id` present?
    pub fn has(&self, id: &ObjectId) -> bool {
        self.layout.object(id).exists()
    }

    /// Store an encoded object unless it is present. Returns the bytes written (0 if present).
    pub fn put(&self, enc: &Encoded) -> Result<u64> {
        let dest = self.layout.object(&enc.id);
        if dest.exists() {
            return Ok(0);
        }
        match write_object(&dest, &enc.bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                write_atomic(&self.layout, &dest, &enc.bytes)?
            }
            Err(e) => return Err(Error::io(&dest)(e)),
        }
        Ok(enc.bytes.len() as u64)
    }

    /// Read and verify object `id`.
    pub fn get(&self, id: &ObjectId, kind: ObjectKind, max_len: u64) -> Result<Verified> {
        let path = self.layout.object(id);
        let bytes = fs::read(&path).map_err(Error::io(&path))?;
        Ok(object::decode(*id, kind, &bytes, max_len)?)
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
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = if pid.trim().is_empty() {
                "unknown".to_string()
            } else {
                pid.trim().to_string()
            };
            return Err(Error::Locked {
                store: layout.root.clone(),
                pid,
            });
        }
        file.set_len(0).map_err(Error::io(&path))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(Error::io(&path))?;
        Ok(Lock { _file: file })
    }
}

/// Flush everything written to the store's filesystem, so the manifest written next never
/// names objects a power loss could take back.
pub fn sync_filesystem(layout: &Layout) -> Result<()> {
    let dir = File::open(layout.public()).map_err(Error::io(layout.public()))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::Io {
        path: layout.public(),
        source: e.into(),
    })
}
