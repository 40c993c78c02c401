//! Creating object files: the one way the publisher's store and the client's cache write an
//! object to disk (the only I/O in this crate).
//!
//! An object file is immutable and named by its content, so it must appear whole or not at
//! all, and a second writer of the same object has nothing to do. [`create`] makes the file
//! anonymous in its final directory (`O_TMPFILE`), writes it, and links it under its name.
//! Large objects are written with direct I/O. The callers keep a fallback through a temporary
//! name for filesystems without `O_TMPFILE` ([`std::io::ErrorKind::Unsupported`]).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Direct I/O failed once with EINVAL on this filesystem (or its alignment): write buffered.
static DIRECT_IO_OFF: AtomicBool = AtomicBool::new(false);

/// Alignment of direct-I/O buffers and lengths: the largest logical block size in common use.
const DIO_ALIGN: usize = 4096;

/// Objects smaller than this are written buffered: a direct write waits for the device, which
/// for small files costs more than it saves (publishing 118,594 small files by hand: 10 s with
/// this threshold, 20 s with every object direct).
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
/// showed up in `perf` with two writers.
///
/// With `direct`, objects of [`DIO_MIN`] bytes or more go straight to the disk (`O_DIRECT`,
/// padded to [`DIO_ALIGN`], then truncated to their length). The publisher asks for it: it
/// never reads an object back, and its `syncfs` before each publish waits for the writeback
/// anyway; on this project's VMs a page-cache page touched for the first time is slow, and
/// buffered writes of 1.5 GiB of new objects spent half the publisher's time in the kernel's
/// copy into the page cache. (The client's cache does not: a reader waiting on its chunk
/// would wait for the device too.) Falls back to buffered writes where direct I/O is refused
/// (tmpfs, some network filesystems).
///
/// [`std::io::ErrorKind::Unsupported`] means this filesystem cannot make anonymous files or
/// link them (no `O_TMPFILE`, no `/proc`): the caller writes through a temporary name instead.
pub fn create(dest: &Path, bytes: &[u8], direct: bool) -> std::io::Result<()> {
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
    if direct && bytes.len() >= DIO_MIN && !DIRECT_IO_OFF.load(Ordering::Relaxed) {
        match open(true).and_then(|f| write_direct(&f, bytes).map(|()| f)) {
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
            f.write_all(bytes)?;
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

/// Write `bytes` to the fresh direct-I/O file `fd` from an aligned buffer, padded to
/// [`DIO_ALIGN`], and cut the file back to `bytes.len()`.
fn write_direct(fd: &File, bytes: &[u8]) -> std::io::Result<()> {
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
            let sizes = [0, 1, 4095, 4096, DIO_MIN - 1, DIO_MIN, DIO_MIN + 1, 300_001];
            for (i, &n) in sizes.iter().enumerate() {
                let bytes: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                for direct in [false, true] {
                    let p = d.join(format!("{i}-{direct}"));
                    match create(&p, &bytes, direct) {
                        Ok(()) => {}
                        // No O_TMPFILE here: the callers fall back; nothing to check.
                        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return,
                        Err(e) => panic!("{}: {e}", p.display()),
                    }
                    assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} bytes", n);
                    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o644);
                    // A second writer of the same object changes nothing.
                    create(&p, b"other bytes", direct).unwrap();
                    assert_eq!(std::fs::read(&p).unwrap(), bytes);
                }
            }
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2 * sizes.len());
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = scratch(&std::env::temp_dir(), "missing");
        let e = create(&d.join("no/such/dir/obj"), b"x", false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
