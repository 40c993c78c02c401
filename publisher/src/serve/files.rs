//! Opening files confined to the served root, and streaming them as response bodies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use prometheus::IntCounter;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio::task::JoinHandle;

/// Bytes read per blocking read while streaming; also the size up to which a body is read
/// right away, in the same blocking call that opened the file.
pub const CHUNK: u64 = 256 * 1024;

/// The served directory, and how opens are confined to it.
#[derive(Debug)]
pub struct Root {
    /// Canonical (absolute, symlink-free) path.
    path: PathBuf,
    /// `openat2(RESOLVE_BENEATH)` works here (Linux >= 5.6 and not filtered by seccomp).
    beneath: bool,
}

/// Why a file could not be served.
#[derive(Debug)]
pub enum OpenError {
    /// Missing, not a regular file, or outside the root: 404.
    NotFound,
    /// Anything else: 500.
    Io(io::Error),
}

impl Root {
    /// Use `dir` as the root. Probes once whether the kernel confines opens for us.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let path = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve the served directory {}", dir.display()))?;
        anyhow::ensure!(path.is_dir(), "{} is not a directory", path.display());
        let probe = rustix::fs::open(&path, dir_flags(), Mode::empty()).and_then(|d| {
            rustix::fs::openat2(&d, ".", dir_flags(), Mode::empty(), resolve_flags())
        });
        let beneath = match probe {
            Ok(_) => true,
            Err(Errno::NOSYS | Errno::PERM) => {
                tracing::info!(
                    "openat2(RESOLVE_BENEATH) is unavailable: confining paths by canonicalizing"
                );
                false
            }
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot open {}", path.display()));
            }
        };
        Ok(Root { path, beneath })
    }

    /// The canonical path served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `rel` (from `parse::parse_path`) for reading. Blocking.
    ///
    /// The kernel resolves the path with `RESOLVE_BENEATH`: no `..`, absolute symlink or
    /// relative symlink may lead out of the root, and the check cannot race with renames.
    /// Where openat2 is missing, the path is canonicalized and must stay under the root.
    /// The root is opened afresh for every request, so a directory swapped in by rename is
    /// picked up. FIFOs and devices are refused without blocking (`O_NONBLOCK`, then fstat).
    pub fn open(&self, rel: &Path) -> Result<(File, std::fs::Metadata), OpenError> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = if self.beneath {
            rustix::fs::open(&self.path, dir_flags(), Mode::empty()).and_then(|dir| {
                rustix::fs::openat2(&dir, rel, flags, Mode::empty(), resolve_flags())
            })
        } else {
            match std::fs::canonicalize(self.path.join(rel)) {
                Ok(full) if full.starts_with(&self.path) => {
                    rustix::fs::open(&full, flags, Mode::empty())
                }
                Ok(_) => Err(Errno::XDEV),
                Err(e) => Err(Errno::from_io_error(&e).unwrap_or(Errno::IO)),
            }
        };
        let file = File::from(fd.map_err(|e| match e {
            Errno::NOENT
            | Errno::NOTDIR
            | Errno::LOOP
            | Errno::XDEV
            | Errno::ACCESS
            | Errno::PERM
            | Errno::NAMETOOLONG
            | Errno::ISDIR
            | Errno::NXIO => OpenError::NotFound,
            e => OpenError::Io(e.into()),
        })?);
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.is_file() {
            return Err(OpenError::NotFound);
        }
        Ok((file, meta))
    }
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// Read `start..end` of `file` completely (blocking).
pub fn read_range(file: &File, start: u64, end: u64) -> io::Result<Bytes> {
    let len = usize::try_from(end - start).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)?;
    Ok(Bytes::from(buf))
}

/// A response body: nothing, bytes in memory, or a byte range of a file streamed in
/// blocking reads (of [`CHUNK`] bytes, mostly), the next read already running while a chunk
/// is sent.
/// Every data frame is counted in a byte counter of the metrics.
#[derive(Debug)]
pub struct ServeBody {
    inner: Inner,
    sent: Option<IntCounter>,
}

#[derive(Debug)]
enum Inner {
    Empty,
    Bytes(Option<Bytes>),
    File(FileStream),
    Stream(Box<dyn ChunkStream>),
}

/// A body produced piece by piece by someone else (the depot view's verified files).
pub trait ChunkStream: Send + std::fmt::Debug {
    /// The next piece; `Some(Err)` ends the response early (the connection is closed).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>>;
    /// Bytes still to come.
    fn remaining(&self) -> u64;
    /// Nothing more will come.
    fn ended(&self) -> bool;
}

#[derive(Debug)]
struct FileStream {
    file: Arc<File>,
    /// Next byte to hand out.
    pos: u64,
    /// Next byte to read (`pos` plus what `pending` reads).
    read_pos: u64,
    end: u64,
    /// Bytes per read.
    step: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    failed: bool,
}

impl ServeBody {
    /// No body (HEAD, 304, errors without text).
    pub fn empty() -> Self {
        ServeBody {
            inner: Inner::Empty,
            sent: None,
        }
    }

    /// A body already in memory.
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        ServeBody {
            inner: Inner::Bytes(Some(b.into())),
            sent: None,
        }
    }

    /// Stream bytes `start..end` of `file`, in reads of `step` bytes.
    pub fn file(file: File, start: u64, end: u64, step: u64) -> Self {
        ServeBody {
            inner: Inner::File(FileStream {
                file: Arc::new(file),
                pos: start,
                read_pos: start,
                end,
                step: step.max(1),
                pending: None,
                failed: false,
            }),
            sent: None,
        }
    }

    /// A body produced by `s`.
    pub fn stream(s: Box<dyn ChunkStream>) -> Self {
        ServeBody {
            inner: Inner::Stream(s),
            sent: None,
        }
    }

    /// Count every data byte in `counter`.
    pub fn counted(mut self, counter: IntCounter) -> Self {
        self.sent = Some(counter);
        self
    }

    /// The body's length, as far as known.
    pub fn len(&self) -> u64 {
        self.size_hint().exact().unwrap_or(0)
    }
}

impl FileStream {
    fn start_read(&mut self) {
        if self.pending.is_some() || self.read_pos >= self.end {
            return;
        }
        let (start, end) = (self.read_pos, self.end.min(self.read_pos + self.step));
        let file = Arc::clone(&self.file);
        self.read_pos = end;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            read_range(&file, start, end)
        }));
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.failed || self.pos >= self.end {
            return Poll::Ready(None);
        }
        self.start_read();
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let res = ready!(Pin::new(pending).poll(cx));
        self.pending = None;
        match res.map_err(io::Error::other).and_then(|r| r) {
            Ok(bytes) => {
                self.pos += bytes.len() as u64;
                // Read ahead while this chunk goes out.
                self.start_read();
                Poll::Ready(Some(Ok(bytes)))
            }
            Err(e) => {
                self.failed = true;
                tracing::warn!("reading a file being served: {e}");
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = match &mut this.inner {
            Inner::Empty => None,
            Inner::Bytes(b) => b.take().map(Ok),
            Inner::File(f) => ready!(f.poll_chunk(cx)),
            Inner::Stream(s) => ready!(s.poll_chunk(cx)),
        };
        if let (Some(Ok(b)), Some(c)) = (&next, &this.sent) {
            c.inc_by(b.len() as u64);
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Bytes(b) => b.is_none(),
            Inner::File(f) => f.failed || f.pos >= f.end,
            Inner::Stream(s) => s.ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::File(f) => SizeHint::with_exact(f.end.saturating_sub(f.pos)),
            Inner::Stream(s) => SizeHint::with_exact(s.remaining()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both confinement methods (openat2 and the canonicalizing fallback) refuse the same
    /// escapes and serve the same files.
    #[test]
    fn both_methods_confine_opens_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public");
        std::fs::create_dir_all(public.join("objects/ab")).unwrap();
        std::fs::write(public.join("manifest"), "m").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../../../secret", public.join("objects/ab/rel")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), public.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", public.join("objects/out")).unwrap();
        std::os::unix::fs::symlink("../manifest", public.join("objects/in")).unwrap();

        let mut root = Root::new(&public).unwrap();
        for beneath in [true, false] {
            if beneath && !root.beneath {
                continue; // no openat2 on this kernel
            }
            root.beneath = beneath;
            for ok in ["manifest", "objects/in"] {
                let (f, meta) = root
                    .open(Path::new(ok))
                    .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
                assert_eq!(
                    (meta.len(), read_range(&f, 0, 1).unwrap().as_ref()),
                    (1, &b"m"[..])
                );
            }
            for bad in [
                "objects/ab/rel",
                "abs",
                "objects/out/secret",
                "objects",
                "objects/ab",
                "nope",
                "../secret",
            ] {
                assert!(
                    matches!(root.open(Path::new(bad)), Err(OpenError::NotFound)),
                    "beneath={beneath}: {bad} was opened"
                );
            }
        }
    }
}
