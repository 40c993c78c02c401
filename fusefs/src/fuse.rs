//! The FUSE glue: each `Filesystem` method is a short adapter over a [`DepotFs`] operation.
//!
//! Operations that may wait for the network never run on a FUSE worker thread: reads and
//! opens are async tasks on the tokio runtime, metadata operations (which walk directory
//! trees through the synchronous `NodeSource`) run on its blocking pool. A FUSE thread only
//! parses the request and hands the `Reply` (which is `Send`) over, so one slow download
//! never holds up other requests. Every mutating operation answers EROFS.
//!
//! At most [`META_OPS`] metadata operations hold a blocking thread at once; the others wait
//! their turn on the runtime. A metadata operation that downloads a directory node waits on
//! it from its blocking thread, and the download itself loads and verifies on the same
//! pool: with every thread of the pool taken by waiting operations, those loads would never
//! run and the mount would hang (150 `ls` of directories not yet fetched did).

use std::ffi::OsStr;
use std::io::IoSlice;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::{Error, Fast, Result, Stop};
use crate::fs::{Attr, DepotFs, DirItem, Ino, Kind, Wait};
use crate::stages::Stage;

/// Entry and attribute TTL: content never changes within a revision (composefs uses the
/// same order of magnitude). A revision switch (issue 5) will invalidate through the notifier.
const TTL: Duration = Duration::from_secs(1_000_000);

/// Metadata operations on the blocking pool at once: half its threads
/// ([`crate::mount::BLOCKING_THREADS`]), so the loads and verifications they wait for always
/// find a thread.
pub const META_OPS: usize = crate::mount::BLOCKING_THREADS / 2;

/// The fuser adapter.
#[derive(Debug)]
pub struct Fuse {
    fs: Arc<DepotFs>,
    /// Called once when the session ends (see [`crate::mount::serve`]).
    on_end: Option<crate::mount::SessionEnd>,
    /// Permits for metadata operations on the blocking pool ([`META_OPS`]).
    meta: Arc<tokio::sync::Semaphore>,
}

impl Fuse {
    /// Wrap a file system.
    pub fn new(fs: Arc<DepotFs>) -> Self {
        Fuse {
            fs,
            on_end: None,
            meta: Arc::new(tokio::sync::Semaphore::new(META_OPS)),
        }
    }

    /// Run `job` on the blocking pool once a metadata permit is free (module docs).
    fn on_blocking_pool(&self, job: impl FnOnce() + Send + 'static) {
        let meta = Arc::clone(&self.meta);
        let rt = self.fs.runtime().clone();
        self.fs.runtime().spawn(async move {
            let _permit = meta.acquire_owned().await.expect("never closed");
            // A panic in `job` drops its reply, which answers the kernel with EIO.
            let _ = rt.spawn_blocking(job).await;
        });
    }

    /// Run `end` when the session ends.
    pub fn on_end(mut self, end: crate::mount::SessionEnd) -> Self {
        self.on_end = Some(end);
        self
    }

    /// Run `op` on this FUSE thread from memory; if it needs a download, run it again on the
    /// blocking pool. Hand the result to `done`.
    fn fast_or_blocking<T: Send + 'static>(
        &self,
        op: impl Fn(&DepotFs, Wait) -> Fast<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        match op(&self.fs, Wait::No) {
            Err(Stop::Blocking) => {
                self.blocking(move |fs| op(fs, Wait::Yes).map_err(Stop::into_error), done)
            }
            r => done(r.map_err(Stop::into_error)),
        }
    }

    /// Run `op` on the blocking pool and hand its result to `done`.
    fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&DepotFs) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let fs = self.fs.clone();
        self.on_blocking_pool(move || done(op(&fs)));
    }
}

/// Block size reported by stat: large, so readers ask for large pieces.
const BLKSIZE: u32 = 128 * 1024;

fn to_ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// fuser's attributes of `a`.
fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn name_str(name: &OsStr) -> Result<&str> {
    name.to_str().ok_or(Error::NotFound)
}

impl Filesystem for Fuse {
    fn destroy(&mut self) {
        if let Some(end) = self.on_end.take() {
            end.run();
        }
    }

    /// No ioctls: ENOTTY, the answer of a file that is not a terminal. Python's `open()`
    /// asks (TCGETS, for `isatty`) on every call, so fuser's default (ENOSYS plus a warning
    /// per call) filled the log: 203 bytes per `open()`.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        let fs = self.fs.clone();
        self.fast_or_blocking(
            move |fs, wait| {
                let n = fs.lookup(to_ino(parent), name_str(&name)?, wait)?;
                let attr = fs.attr(&n, wait)?;
                Ok((n, attr))
            },
            move |r| match r {
                Ok((n, attr)) => {
                    reply.entry(&TTL, &file_attr(&attr), Generation(0));
                    fs.remember(&n);
                }
                Err(e) => reply.error(e.to_errno()),
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.fast_or_blocking(
            move |fs, wait| fs.getattr(to_ino(ino), wait),
            move |r| match r {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(e) => reply.error(e.to_errno()),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(to_ino(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let fs = self.fs.clone();
        self.fs.runtime().spawn(async move {
            match fs.open(to_ino(ino)).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => {
                    tracing::warn!("open of inode {} failed: {e}", ino.0);
                    reply.error(e.to_errno())
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.fs.runtime().spawn(async move {
            let t = std::time::Instant::now();
            match fs.read(fh.0, offset, size).await {
                Ok(data) => {
                    let stages = &fs.store().stages;
                    let n = data.len() as u64;
                    stages.add(Stage::Read, t.elapsed(), n);
                    let slices: Vec<IoSlice<'_>> = data.slices().map(IoSlice::new).collect();
                    stages.time(Stage::Reply, n, || reply.data_vectored(&slices));
                }
                Err(e) => {
                    tracing::warn!("read failed: {e}");
                    reply.error(e.to_errno())
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.blocking(
            move |fs| fs.node(to_ino(ino)),
            move |r| match r {
                Ok(n) if n.entry().is_dir() => {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(e.to_errno()),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.on_blocking_pool(move || {
            let r = fs.readdir(to_ino(ino), offset, &mut |item, next| {
                Ok(match item {
                    DirItem::Dot(i, name) => {
                        reply.add(INodeNo(i.0), next, fuser::FileType::Directory, name)
                    }
                    DirItem::Entry(parent, e) => reply.add(
                        INodeNo(fs.ino_of(parent, e).0),
                        next,
                        file_type(Kind::of(e)),
                        &e.name,
                    ),
                })
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.to_errno()),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        self.on_blocking_pool(move || {
            // Each subdirectory's link count may need its node: fetched while the listing is
            // within the request bound, then listed from memory only (nlink 1 when not there),
            // so a listing of many slow subdirectories is not bound times their number.
            let until = fs
                .store()
                .request_bound()
                .map(|b| std::time::Instant::now() + b);
            // Entries other than `.` and `..` count as lookups once the reply is sent.
            let mut sent = Vec::new();
            let r = fs.readdir(to_ino(ino), offset, &mut |item, next| {
                let (node, name, counts) = match item {
                    DirItem::Dot(i, name) => (
                        fs.current_node(i, Wait::Yes).map_err(Stop::into_error)?,
                        name,
                        false,
                    ),
                    DirItem::Entry(parent, e) => (fs.adopt(parent, e), e.name.as_str(), true),
                };
                // One broken subdirectory must not fail its parent's listing.
                let attr = if counts && until.is_some_and(|t| std::time::Instant::now() >= t) {
                    Ok(fs.listed_attr_unwaited(&node))
                } else if counts {
                    fs.listed_attr(&node, Wait::Yes)
                } else {
                    fs.attr(&node, Wait::Yes)
                }
                .map_err(Stop::into_error)?;
                let full = reply.add(
                    INodeNo(node.ino().0),
                    next,
                    name,
                    &TTL,
                    &file_attr(&attr),
                    Generation(0),
                );
                if counts && !full {
                    sent.push(node);
                }
                Ok(full)
            });
            match r {
                Ok(()) => {
                    reply.ok();
                    for n in &sent {
                        fs.remember(n);
                    }
                }
                Err(e) => reply.error(e.to_errno()),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(to_ino(ino), nlookup);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, free, files) = self.fs.statfs();
        reply.statfs(blocks, free, free, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_os_string();
        self.fast_or_blocking(
            move |fs, wait| fs.getxattr(to_ino(ino), name.to_str().ok_or(Error::NoAttr)?, wait),
            move |r| xattr_reply(r, size, reply),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(self.fs.listxattr(to_ino(ino)), size, reply);
    }

    // Everything below changes the file system: read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: WriteFlags,
        _f: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

fn xattr_reply(r: Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e.to_errno()),
    }
}
