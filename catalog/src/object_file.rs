//! Writing files atomically: the one way depotfs writes a file that a reader must see whole
//! or not at all (the only I/O in this crate), used by the publisher's store, the client's
//! cache and its saved manifests and revision records.
//!
//! - [`create`]: an immutable object file, named by its content, so a second writer of the
//!   same object has nothing to do. Made anonymous in its final directory (`O_TMPFILE`),
//!   written (large objects with direct I/O on request), and linked under its name; through
//!   [`replace`] on filesystems without `O_TMPFILE`.
//! - [`replace`]: a file whose content changes (a manifest, a key, a record), written under
//!   a temporary name and renamed over the old one, so readers see the old file or the new.
//!
//! And reading an object file past the page cache ([`open_direct`], [`read_direct`]), which
//! the depot view and the client's disk cache do with the bytes they verify anyway.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Makes the temporary names of [`replace`] unique within this process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Direct I/O failed once with EINVAL on this filesystem (or its alignment): write buffered.
static DIRECT_IO_OFF: AtomicBool = AtomicBool::new(false);

/// Alignment of direct-I/O buffers and lengths: the largest logical block size in common use.
pub const DIO_ALIGN: usize = 4096;

/// Objects smaller than this are written buffered: a direct write waits for the device, which
/// for small files costs more than it saves (publishing 118,594 small files by hand: 10 s with
/// this threshold, 20 s with every object direct).
pub const DIO_MIN: usize = 64 * 1024;

thread_local! {
    /// This thread's buffer for direct writes of parts not already aligned, grown as needed
    /// and reused.
    static DIO_BUF: std::cell::RefCell<AlignedBuf> = const { std::cell::RefCell::new(AlignedBuf::new()) };
}

/// Create the immutable object file `dest` holding `bytes`, which appears whole or not at all.
///
/// The file is made anonymous in its final directory (`O_TMPFILE`), written, and then linked
/// under its name; an existing `dest` (another writer of the same object) is success. A crash
/// leaves nothing behind, and there is no rename across directories, whose global rename lock
/// showed up in `perf` with two writers.
///
/// With `direct`, objects of [`DIO_MIN`] bytes or more go straight to the disk (`O_DIRECT`
/// for their whole [`DIO_ALIGN`] blocks, the last partial block buffered). The publisher asks for it: it
/// never reads an object back, and its `syncfs` before each publish waits for the writeback
/// anyway; on this project's VMs a page-cache page touched for the first time is slow, and
/// buffered writes of 1.5 GiB of new objects spent half the publisher's time in the kernel's
/// copy into the page cache. (The client's cache does not: a reader waiting on its chunk
/// would wait for the device too.) Falls back to buffered writes where direct I/O is refused
/// (tmpfs, some network filesystems).
///
/// Where this filesystem cannot make anonymous files or link them (no `O_TMPFILE`, no
/// `/proc`), the object is written through [`replace`] with a temporary file in `tmp_dir`
/// (on the same filesystem as `dest`).
pub fn create(dest: &Path, bytes: &[u8], direct: bool, tmp_dir: &Path) -> std::io::Result<()> {
    create_parts(dest, &[bytes], direct, tmp_dir)
}

/// [`create`] of a file whose bytes are `parts` one after the other (an object's header and
/// payload, not joined first: a direct write copies each part once into its aligned buffer).
pub fn create_parts(
    dest: &Path,
    parts: &[&[u8]],
    direct: bool,
    tmp_dir: &Path,
) -> std::io::Result<()> {
    match create_anonymous(dest, parts, direct) {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            replace(dest, &parts.concat(), tmp_dir, false)
        }
        done => done,
    }
}

/// Write `bytes` to `dest` so that readers see the old file or the new one, never a part:
/// a temporary file in `tmp_dir` (on the same filesystem as `dest`), made world-readable
/// (0644) and renamed over `dest`. With `durable`, the file is synced before the rename and
/// `dest`'s directory after it, so the new file survives a power loss (a manifest).
///
/// The temporary file is named `NAME.PID.SEQ` after `dest`'s file name, so a cleaner can tell
/// the leftovers of a process that no longer runs; it is removed when the write fails.
pub fn replace(dest: &Path, bytes: &[u8], tmp_dir: &Path, durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = dest
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy());
    let tmp = tmp_dir.join(format!(
        "{name}.{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        let dir = dest.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// [`create`] without the fallback: [`std::io::ErrorKind::Unsupported`] where the filesystem
/// cannot make or link anonymous files.
fn create_anonymous(dest: &Path, parts: &[&[u8]], direct: bool) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let dir = dest.parent().unwrap_or(Path::new("."));
    let open = |direct: bool| {
        let mut flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        if direct {
            flags |= OFlags::DIRECT;
        }
        rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o644))
            .map(File::from)
            .map_err(|e| {
                if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR {
                    std::io::Error::from(std::io::ErrorKind::Unsupported)
                } else {
                    e.into()
                }
            })
    };
    let mut written = None;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if direct && len >= DIO_MIN && !DIRECT_IO_OFF.load(Ordering::Relaxed) {
        match open(true).and_then(|f| write_direct(&f, parts).map(|()| f)) {
            Ok(f) => written = Some(f),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                DIRECT_IO_OFF.store(true, Ordering::Relaxed);
                tracing::debug!(dir = %dir.display(), "direct I/O refused; writing objects buffered");
            }
            Err(e) => return Err(e),
        }
    }
    let fd = match written {
        Some(f) => f,
        None => {
            let mut f = open(false)?;
            for p in parts {
                f.write_all(p)?;
            }
            f
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

/// Write `parts` to the fresh direct-I/O file `fd`: every whole
/// [`DIO_ALIGN`] block from an aligned buffer with direct I/O, then the last partial block (if
/// any) buffered, after clearing `O_DIRECT` on `fd`, and its writeback started. One part
/// that starts aligned (an [`AlignedBuf`]) is written from where it is; other parts are
/// copied into this thread's aligned buffer first.
///
/// (Padding the last block and cutting the file back with `ftruncate` made ext4 read that
/// block back from the disk, synchronously, to zero its tail, then write it again at the
/// `syncfs`: 4 % of the publisher's CPU on the 2 GiB image corpus and a disk read per object,
/// seen with `perf`. A buffered write past the end of the file reads nothing.)
fn write_direct(fd: &File, parts: &[&[u8]]) -> std::io::Result<()> {
    if let [one] = parts
        && one.as_ptr().align_offset(DIO_ALIGN) == 0
    {
        return write_aligned(fd, one);
    }
    DIO_BUF.with_borrow_mut(|buf| {
        buf.fill(parts);
        write_aligned(fd, buf.bytes())
    })
}

/// [`write_direct`] of `block`, which starts at a [`DIO_ALIGN`] boundary of memory.
fn write_aligned(fd: &File, block: &[u8]) -> std::io::Result<()> {
    let len = block.len();
    let whole = len / DIO_ALIGN * DIO_ALIGN;
    pwrite_all(fd, &block[..whole], 0)?;
    if whole < len {
        clear_direct(fd)?;
        pwrite_all(fd, &block[whole..], whole as u64)?;
        // Start the buffered last block's writeback now (asynchronously; `DONTNEED` drops no
        // dirty page), not at the publisher's `syncfs`, where it was most of the wait: the
        // `syncfs` after a 2 GiB add took 49–84 ms, 8–11 ms with this (`benches/RESULTS.md`,
        // "#21 P1 on the disk (p1d, session 13)"). Only advice: a failure changes nothing.
        let _ = rustix::fs::fadvise(
            fd,
            whole as u64,
            std::num::NonZeroU64::new((len - whole) as u64),
            rustix::fs::Advice::DontNeed,
        );
    }
    Ok(())
}

/// An object's bytes in memory that starts at a [`DIO_ALIGN`] boundary, so that [`create`]
/// writes them directly from where they are (given as its only part). For a writer that
/// fills the buffer on one thread and writes the file on another: the copy into an aligned
/// buffer that a direct write needs is then made by the filling thread, and the writing
/// thread copies nothing. Reused, it keeps its memory.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer (no memory until [`AlignedBuf::fill`]).
    pub const fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// Make the buffer hold `parts`, one after the other (growing it if they do not fit).
    pub fn fill(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.len() < self.start + len {
            // Grown (and zeroed) only when too small: a reused buffer is not touched again.
            self.buf = vec![0; len + DIO_ALIGN];
            self.start = self.buf.as_ptr().align_offset(DIO_ALIGN);
        }
        let mut at = self.start;
        for p in parts {
            self.buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.len = len;
    }

    /// The bytes held, starting at a [`DIO_ALIGN`] boundary.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// Open `path` for reading with direct I/O (`O_DIRECT`), and for writing too with `write`
/// (to touch its time; a file that cannot be opened so is opened read-only). `None` where
/// the file system refuses direct I/O.
pub fn open_direct(path: &Path, write: bool) -> std::io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    let open = |rw| rustix::fs::open(path, rw | OFlags::DIRECT | OFlags::CLOEXEC, Mode::empty());
    let opened = match write {
        true => open(OFlags::RDWR).or_else(|_| open(OFlags::RDONLY)),
        false => open(OFlags::RDONLY),
    };
    match opened {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Clear `O_DIRECT` on `fd`: its next reads and writes go through the page cache.
pub fn clear_direct(fd: &File) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::DIRECT)?;
    Ok(())
}

/// Read file `fd` (opened by [`open_direct`]) from its start into `buf`, from its first
/// [`DIO_ALIGN`]-aligned byte, for at most `want` bytes (a multiple of [`DIO_ALIGN`]): the
/// bytes come from the device into `buf`, so the kernel neither fills its page cache nor
/// copies them out of it. Reading stops at the file's end (a short read). Returns the range
/// of `buf` read, or `None` when the device refuses the read's alignment (read it buffered).
pub fn read_direct(
    fd: &File,
    buf: &mut [u8],
    want: usize,
) -> std::io::Result<Option<std::ops::Range<usize>>> {
    assert_eq!(want % DIO_ALIGN, 0, "direct reads are whole blocks");
    let at = buf.as_ptr().align_offset(DIO_ALIGN);
    assert!(at + want <= buf.len(), "the buffer holds the read");
    let mut n = 0;
    while n < want {
        match rustix::io::pread(fd, &mut buf[at + n..at + want], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::INVAL) if n == 0 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if n % DIO_ALIGN != 0 {
            break; // the end of the file
        }
    }
    Ok(Some(at..at + n))
}

/// Write all of `bytes` at `offset` of `fd` (a short direct write ends at a block boundary:
/// continue from there).
fn pwrite_all(fd: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], offset + done as u64) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(base: &Path, tag: &str) -> std::path::PathBuf {
        let d = base.join(format!("depotfs-object-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Whole files with exactly their bytes, world-readable, nothing else left in the
    /// directory; an existing file is left as it is. On the temp directory's filesystem and
    /// on tmpfs (where direct I/O may be refused and the buffered path is taken).
    #[test]
    fn creates_whole_files_once() {
        for base in [std::env::temp_dir(), "/dev/shm".into()] {
            if !base.is_dir() {
                continue;
            }
            let d = scratch(&base, "whole");
            let tmp = scratch(&base, "whole-tmp");
            let sizes = [0, 1, 4095, 4096, DIO_MIN - 1, DIO_MIN, DIO_MIN + 1, 300_001];
            let mut aligned = AlignedBuf::new();
            aligned.fill(&[&[7; 400_000]]);
            for (i, &n) in sizes.iter().enumerate() {
                let bytes: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                for direct in [false, true] {
                    let p = d.join(format!("{i}-{direct}"));
                    if let Err(e) = create(&p, &bytes, direct, &tmp) {
                        panic!("{}: {e}", p.display());
                    }
                    assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} bytes", n);
                    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o644);
                    // A second writer of the same object changes nothing.
                    create(&p, b"other bytes", direct, &tmp).unwrap();
                    assert_eq!(std::fs::read(&p).unwrap(), bytes);
                    // The same bytes given in parts (an object's header and payload).
                    let p = d.join(format!("{i}-{direct}-parts"));
                    let (head, rest) = bytes.split_at(n.min(16));
                    create_parts(&p, &[head, rest], direct, &tmp).unwrap();
                    assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} bytes in parts", n);
                    // The same bytes from an aligned buffer (written from where they are),
                    // the buffer reused from a larger object before.
                    let p = d.join(format!("{i}-{direct}-aligned"));
                    aligned.fill(&[head, rest]);
                    assert_eq!(aligned.bytes().as_ptr().align_offset(DIO_ALIGN), 0);
                    create(&p, aligned.bytes(), direct, &tmp).unwrap();
                    assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} bytes aligned", n);
                }
            }
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 6 * sizes.len());
            assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
            std::fs::remove_dir_all(&d).unwrap();
            std::fs::remove_dir_all(&tmp).unwrap();
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = scratch(&std::env::temp_dir(), "missing");
        let e = create(&d.join("no/such/dir/obj"), b"x", false, &d).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let e = replace(&d.join("no/such/dir/file"), b"x", &d, false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "temporary file removed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A replaced file holds exactly the new bytes, world-readable, with nothing left in the
    /// temporary directory; durable or not.
    #[test]
    fn replaces_files_whole() {
        let d = scratch(&std::env::temp_dir(), "replace");
        let tmp = d.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let p = d.join("manifest");
        for (i, durable) in [false, true, false].into_iter().enumerate() {
            let bytes = format!("revision {i}\n");
            replace(&p, bytes.as_bytes(), &tmp, durable).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), bytes);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
            assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
