//! Assembling a mount: backend, manifest check, cache, session, signals, and the revision
//! checks: every TTL, every [`PROBE_INTERVAL`] while offline (the check's manifest fetch is
//! the offline probe), and on SIGUSR1 (`depotfs remount`). A check's outcome is counted in
//! `user.depotfs.checks` and described in `user.depotfs.last_check`, which is how
//! `depotfs remount` learns it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use depotfs_catalog::{Manifest, ManifestError, PublicKey, Refusal};
use fuser::{Config, INodeNo, MountOption, Notifier, SessionACL};

use crate::backend::{Backend, NetOptions};
use crate::cache::DiskCache;
use crate::error::{Error, Result};
use crate::fs::{DepotFs, FsState, MountInfo, Reading, Tree};
use crate::fuse::Fuse;
use crate::record::Recorder;
use crate::reload::{self, Control, Launch, Takeover};
use crate::status::LastCheck;
use crate::store::ObjectStore;

/// Everything needed to mount.
#[derive(Debug, Clone)]
pub struct Options {
    /// URL of a served `public/` (several separated by `,` or `;`), or a local STORE (or its
    /// `public/`) path. Ignored when `servers` is not empty.
    pub source: String,
    /// How to reach the servers (from `--server`/SOURCE, `--proxy`, the timeouts,
    /// `--retries`, `--failback-after`); `None` for a local store.
    pub net: Option<NetOptions>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The repository's public key file (defaults to a local store's own `public/repo.pub`).
    pub key: Option<PathBuf>,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Cache limit in bytes.
    pub cache_size: u64,
    /// Decompressed chunks kept in memory, bytes.
    pub mem_size: u64,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Serve Prometheus metrics here.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds between manifest checks (default: the manifest's TTL).
    pub manifest_ttl: Option<u64>,
    /// Bandwidth cap of access-list prefetch, bytes per second (0: off).
    pub prefetch_rate: u64,
    /// Record reads to this trace file.
    pub record: Option<PathBuf>,
    /// The kernel's readahead for the mount, KiB (0: leave the kernel's default).
    pub kernel_readahead_kib: u32,
}

/// A verified, ready-to-mount file system.
#[derive(Debug)]
pub struct Prepared {
    /// The file system.
    pub fs: Arc<DepotFs>,
    /// The runtime serving it (keep it alive while mounted).
    pub runtime: tokio::runtime::Runtime,
    /// The repository key, for later manifests.
    pub key: PublicKey,
    /// The file it was read from (named in signature errors).
    pub key_file: PathBuf,
}

/// How often an offline mount probes for a server.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// An opened source: what a daemon has before it knows which revision it serves.
struct Source {
    runtime: tokio::runtime::Runtime,
    backend: Backend,
    key: PublicKey,
    key_file: PathBuf,
    disk: DiskCache,
}

/// Open the source, check the manifest (signature, name, revision) and fetch the root
/// directory: everything that must hold before anything is served.
pub fn prepare(o: &Options) -> Result<Prepared> {
    let src = open_source(o)?;
    let (manifest, signed) = fetch_manifest(
        &src.runtime,
        &src.backend,
        &src.key,
        &src.key_file,
        &src.disk,
    )?;
    if let Some(seen) = src.disk.accepted_revision(&manifest.name)?
        && manifest.revision < seen
    {
        return Err(Error::Manifest(format!(
            "revision {} of {} is older than revision {seen} already accepted here (rollback refused)",
            manifest.revision, manifest.name
        )));
    }
    src.disk
        .accept_revision(&manifest.name, manifest.revision)?;
    let p = finish(o, src, Tree { manifest, signed }, false)?;
    if let Some(addr) = o.metrics_listen {
        crate::metrics::start(&p.runtime, addr, p.fs.clone())?;
    }
    Ok(p)
}

/// Threads of the daemon's blocking pool: metadata operations (at most half of them, see
/// [`crate::fuse::META_OPS`]), cache loads and verifications.
pub const BLOCKING_THREADS: usize = 64;

/// The runtime, backend, key and cache of `o`.
fn open_source(o: &Options) -> Result<Source> {
    crate::fusermount::check_allow_other(o.allow_other)?;
    // Every line the daemon logs names its mount: the caller's span (see cli.rs) is entered
    // on each runtime thread for the thread's life.
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .on_thread_start(move || std::mem::forget(span.clone().entered()))
        .worker_threads(4)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .thread_name("depotfs-io")
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let (backend, key_path) = if let Some(net) = o.net.clone() {
        let key = o.key.clone().ok_or_else(|| {
            Error::Io("--key FILE (the repository's public key) is required over HTTP".into())
        })?;
        (Backend::http(net)?, key)
    } else {
        let p = Path::new(&o.source);
        let public = if p.join("public").is_dir() {
            p.join("public")
        } else {
            p.to_path_buf()
        };
        if !public.join("manifest").is_file() {
            return Err(Error::Manifest(format!(
                "{} is neither an http(s) URL nor a store (no public/manifest)",
                o.source
            )));
        }
        let key = o.key.clone().unwrap_or_else(|| public.join("repo.pub"));
        let public = public
            .canonicalize()
            .map_err(|e| Error::io(public.display(), e))?;
        (Backend::Local(public), key)
    };
    let key = read_key(&key_path)?;
    // The cache directory also holds the rollback guard, so it is opened for a local store
    // too; objects of a local store are not copied into it.
    let disk = DiskCache::open(&o.cache_dir, o.cache_size)?;
    Ok(Source {
        runtime,
        backend,
        key,
        key_file: key_path,
        disk,
    })
}

/// The file system serving `tree` (whose root is fetched here) from `src`; `taking_over` a
/// mount, it appends to the `--record` trace instead of starting it.
fn finish(o: &Options, src: Source, tree: Tree, taking_over: bool) -> Result<Prepared> {
    let Source {
        runtime,
        backend,
        key,
        key_file: key_path,
        disk,
    } = src;
    let manifest = &tree.manifest;
    let source = backend.describe();
    // A local store's objects are not cached, but its cache directory keeps the guard.
    let store = Arc::new(if backend.is_local() {
        ObjectStore::new(backend, None, o.mem_size).with_guard(disk)
    } else {
        ObjectStore::new(backend, Some(disk), o.mem_size)
    });
    runtime.block_on(store.dir_node(manifest.root))?;
    tracing::info!(
        "{} revision {} from {source}: manifest verified, root fetched",
        manifest.name,
        manifest.revision
    );
    let record = if taking_over {
        Recorder::append
    } else {
        Recorder::create
    };
    let recorder = o.record.as_deref().map(record).transpose()?;
    if let Some(r) = &recorder {
        tracing::info!("recording reads to {}", r.path().display());
    }
    let reading = Reading {
        prefetch_rate: o.prefetch_rate,
        recorder,
    };
    let fs = Arc::new(
        DepotFs::new(
            store,
            tree,
            MountInfo {
                source,
                started_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64),
            },
            runtime.handle().clone(),
        )
        .with_reading(reading),
    );
    Ok(Prepared {
        fs,
        runtime,
        key,
        key_file: key_path,
    })
}

/// The public key in `path`; errors name the file.
fn read_key(path: &Path) -> Result<PublicKey> {
    let named = |what: String| Error::Io(format!("key file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| named(e.to_string()))?;
    PublicKey::from_text(&text).map_err(|e| {
        named(match e {
            depotfs_catalog::Error::Key(m) => m,
            other => other.to_string(),
        })
    })
}

/// A manifest that does not verify: the error names the key file it was checked against.
fn verify_error(e: depotfs_catalog::Error, key_file: &Path) -> Error {
    match e {
        depotfs_catalog::Error::Manifest(m @ ManifestError::BadSignature) => {
            Error::Manifest(format!(
                "{m} in {} (is it this repository's key?)",
                key_file.display()
            ))
        }
        other => other.into(),
    }
}

/// Fetch and verify the manifest. With a disk cache, the last verified manifest of this
/// source is kept there, and used when the server cannot be reached (offline mode: cached
/// objects stay readable, others fail with EIO).
fn fetch_manifest(
    runtime: &tokio::runtime::Runtime,
    backend: &Backend,
    key: &PublicKey,
    key_file: &Path,
    disk: &DiskCache,
) -> Result<(Manifest, Vec<u8>)> {
    let saved = Some(saved_manifest_path(disk, backend));
    match runtime.block_on(backend.get_manifest_patiently()) {
        Ok(bytes) => {
            let m = Manifest::parse_verified(&bytes, key, None)
                .map_err(|e| verify_error(e, key_file))?;
            save_manifest(disk, backend, &bytes);
            Ok((m, bytes))
        }
        Err(e @ (Error::Fetch { .. } | Error::Timeout { .. } | Error::Offline(_))) => {
            let Some(bytes) = saved.and_then(|p| std::fs::read(p).ok()) else {
                return Err(e);
            };
            backend.set_offline();
            tracing::warn!(
                "{e}; starting offline: using the last verified manifest from the cache \
                 (cached files are readable; the mount leaves offline mode when a server answers)"
            );
            let m = Manifest::parse_verified(&bytes, key, None)
                .map_err(|e| verify_error(e, key_file))?;
            Ok((m, bytes))
        }
        Err(e) => Err(e),
    }
}

fn saved_manifest_path(disk: &DiskCache, backend: &Backend) -> std::path::PathBuf {
    let tag = &blake3::hash(backend.describe().as_bytes()).to_hex()[..16];
    disk.dir().join("revisions").join(format!("manifest-{tag}"))
}

fn save_manifest(disk: &DiskCache, backend: &Backend, bytes: &[u8]) {
    let p = saved_manifest_path(disk, backend);
    let tmp = disk.dir().join("tmp");
    if let Err(e) = depotfs_catalog::object_file::replace(&p, bytes, &tmp, false) {
        tracing::warn!("saving manifest: {e}");
    }
}

/// Why a manifest that does not verify is refused, for
/// `depotfs_manifest_refused_total{reason}`.
fn refusal(e: &depotfs_catalog::Error) -> Refusal {
    match e {
        depotfs_catalog::Error::Manifest(m) => m.refusal(),
        depotfs_catalog::Error::Key(_) => Refusal::Signature,
        _ => Refusal::Malformed,
    }
}

/// Check for a newer revision: fetch and verify the manifest (same key, same repository,
/// higher revision), fetch its root, switch to it and have the kernel drop its cached
/// entries. An older revision (replay, rollback), a bad signature or another repository's
/// manifest is refused with [`Error::Manifest`], counted by reason, and the mount stays on
/// its revision.
async fn check(
    fs: &DepotFs,
    key: &PublicKey,
    key_file: &Path,
    notifier: &Notifier,
) -> Result<LastCheck> {
    let cur = fs.manifest();
    let store = fs.store();
    let bytes = store.backend().get_manifest().await?;
    let refuse = |reason: Refusal, message: String| {
        *store
            .stats
            .manifest_refused
            .lock()
            .expect("poisoned")
            .entry(reason)
            .or_default() += 1;
        tracing::warn!(
            "manifest refused ({reason}): {message}; staying on revision {}",
            cur.revision
        );
        Error::Manifest(message)
    };
    let m = match Manifest::parse_verified(&bytes, key, Some(&cur.name)) {
        Ok(m) => m,
        Err(e) => {
            let reason = refusal(&e);
            let message = verify_error(e, key_file).to_string();
            return Err(refuse(reason, message));
        }
    };
    if m.revision < cur.revision {
        return Err(refuse(
            Refusal::Older,
            format!(
                "the server offers revision {} of {}, older than revision {} in use (replay or rollback refused)",
                m.revision, m.name, cur.revision
            ),
        ));
    }
    if m.revision == cur.revision {
        return Ok(LastCheck::Unchanged(m.revision));
    }
    // Another mount sharing the cache may have accepted a newer revision since this one
    // started: the rollback guard holds for every mount of the machine.
    if let Some(guard) = store.guard()
        && let Some(accepted) = guard.accepted_revision(&m.name)?
        && m.revision < accepted
    {
        return Err(refuse(
            Refusal::Older,
            format!(
                "the server offers revision {} of {}, older than revision {accepted} already accepted here (replay or rollback refused)",
                m.revision, m.name
            ),
        ));
    }
    store.dir_node(m.root).await?;
    if let Some(guard) = store.guard() {
        guard.accept_revision(&m.name, m.revision)?;
    }
    if let Some(disk) = store.disk() {
        save_manifest(disk, store.backend(), &bytes);
    }
    tracing::info!(
        "{}: switching from revision {} to {}",
        m.name,
        cur.revision,
        m.revision
    );
    let (now, was) = (m.revision, cur.revision);
    let stale = fs.switch(m, bytes.to_vec());
    let notifier = notifier.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for (parent, name) in stale {
            let _ = notifier.inval_entry(INodeNo(parent.0), std::ffi::OsStr::new(&name));
        }
        let _ = notifier.inval_inode(INodeNo(1), 0, 0);
    })
    .await;
    Ok(LastCheck::New { now, was })
}

/// Runs revision checks one at a time and records their outcomes.
struct Checker {
    fs: Arc<DepotFs>,
    key: PublicKey,
    key_file: PathBuf,
    notifier: Notifier,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Checker {
    async fn run(&self, why: &str) {
        let _one = self.one_at_a_time.lock().await;
        let stats = &self.fs.store().stats;
        stats
            .checks_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = check(&self.fs, &self.key, &self.key_file, &self.notifier).await;
        let last = match outcome {
            Ok(found) => found,
            Err(e) => {
                if !matches!(e, Error::Manifest(_)) {
                    tracing::warn!("checking for a new revision ({why}): {e}");
                }
                LastCheck::Error(e.to_string())
            }
        };
        *stats.last_check.lock().expect("poisoned") = Some(last);
        self.fs.store().backend().probe_finished();
        stats
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set the readahead of the mount's backing device (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`,
/// root only) to `kib`; returns the old value and the sysfs file. FUSE mounts start at
/// 128 KiB, and the kernel never sends a read request larger than the readahead window, so
/// a sequential reader costs one round trip through the daemon per 128 KiB. At 1 MiB (with
/// `max_pages` 256, which fuser negotiates) the 1 GiB image read here went from 415 to
/// 547 MB/s cold over HTTP and from 632 to 962 MB/s warm (2048 and 4096 KiB were no better).
/// The device comes from `/proc/self/mountinfo`, not from a `stat` of the mountpoint,
/// which would be a FUSE request to this very process before it serves any.
fn set_kernel_readahead(
    mountpoint: &Path,
    kib: u32,
) -> std::result::Result<(String, PathBuf), String> {
    let dev = fuse_mount_at(mountpoint)
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?
        .ok_or("not in /proc/self/mountinfo")?
        .dev;
    let file = PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"));
    let was = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .trim()
        .to_string();
    std::fs::write(&file, kib.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((was, file))
}

/// A FUSE file system mounted at a path, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseMount {
    /// The device, `MAJ:MIN`.
    pub dev: String,
    /// The file system type, e.g. `fuse.depotfs`.
    pub fstype: String,
    /// The mount source, e.g. `depotfs:http://server/` (what was mounted).
    pub source: String,
}

impl FuseMount {
    /// Is it a depotfs mount? (Its source is `depotfs:SOURCE`; the type is `fuse.depotfs`
    /// through fusermount3, plain `fuse` when mounted directly as root.)
    pub fn is_depotfs(&self) -> bool {
        self.fstype == "fuse.depotfs" || self.source.starts_with("depotfs:")
    }

    /// What a depotfs mount mounted (its SOURCE), without the `depotfs:` prefix.
    pub fn depotfs_source(&self) -> &str {
        self.source.strip_prefix("depotfs:").unwrap_or(&self.source)
    }
}

/// The topmost FUSE mount at `mountpoint`, if any. Read from `/proc/self/mountinfo`, never
/// by a `stat` of the mountpoint: that would be a request to the mount's daemon, which may
/// be this very process before it serves any, or dead (ENOTCONN).
pub fn fuse_mount_at(mountpoint: &Path) -> std::io::Result<Option<FuseMount>> {
    let want = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let mut after = f.iter().skip_while(|x| **x != "-").skip(1);
        let (fstype, source) = (after.next()?, after.next()?);
        (fstype.starts_with("fuse") && Path::new(&unescape_mountinfo(f.get(4)?)) == want).then(
            || FuseMount {
                dev: f[2].to_string(),
                fstype: fstype.to_string(),
                source: unescape_mountinfo(source),
            },
        )
    }))
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The end of a session, run once when it ends ([`Fuse`]'s `destroy`): unmount if the
/// kernel still has the mount, and otherwise take fuser's own unmount-on-drop out of the
/// way quietly. (That drop tries again after every `depotfs umount` and logged
/// `WARN fuser::session: Failed to umount filesystem: Invalid argument` each time.)
#[derive(Debug)]
pub struct SessionEnd {
    unmounter: Arc<std::sync::Mutex<Option<fuser::SessionUnmounter>>>,
    mountpoint: PathBuf,
}

impl SessionEnd {
    pub(crate) fn run(self) {
        let Some(mut u) = self
            .unmounter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let still = fuse_mount_at(&self.mountpoint)
            .ok()
            .flatten()
            .is_some_and(|m| m.is_depotfs());
        match u.unmount() {
            Ok(()) => {}
            Err(e) if still => tracing::warn!("unmounting {}: {e}", self.mountpoint.display()),
            Err(e) => tracing::debug!("{} already unmounted ({e})", self.mountpoint.display()),
        }
    }
}

/// Take over the live mount of daemon `old` (`depotfs reload`, see [`crate::reload`]) and
/// serve it like [`serve`]. What fails before this daemon serves is reported to the old
/// one, which serves on.
pub fn take_over(o: &Options, old: u32, launch: Launch, ready: impl FnOnce()) -> Result<()> {
    let src = open_source(o)?;
    let t = Takeover::ask(old)?;
    match adopt(o, src, &t.state) {
        Ok(p) => serve_session(o, p, launch, Some(t), ready),
        Err(e) => {
            t.failed(&e.to_string());
            Err(e)
        }
    }
}

/// The file system of a handed-over `state`: its manifests verified again with this
/// daemon's key (one repository; the served revision not older than the one accepted here).
fn adopt(o: &Options, src: Source, state: &[u8]) -> Result<Prepared> {
    let state = FsState::from_bytes(state)?;
    let mut trees: Vec<Tree> = Vec::new();
    for signed in &state.manifests {
        let name = trees.first().map(|t| t.manifest.name.as_str());
        let manifest = Manifest::parse_verified(signed, &src.key, name)
            .map_err(|e| verify_error(e, &src.key_file))?;
        trees.push(Tree {
            manifest,
            signed: signed.clone(),
        });
    }
    let Some(first) = trees.first() else {
        return Err(Error::Io("the handed-over state names no revision".into()));
    };
    let m = first.manifest.clone();
    if let Some(seen) = src.disk.accepted_revision(&m.name)?
        && m.revision < seen
    {
        return Err(Error::Manifest(format!(
            "revision {} of {} is older than revision {seen} already accepted here (rollback refused)",
            m.revision, m.name
        )));
    }
    let signed = first.signed.clone();
    let p = finish(
        o,
        src,
        Tree {
            manifest: m,
            signed,
        },
        true,
    )?;
    p.runtime.block_on(p.fs.restore(state, trees))?;
    Ok(p)
}

/// Mount `prepared` at `o.mountpoint` and serve until unmounted or until SIGTERM/SIGINT
/// (which unmount), or until `depotfs reload` hands the mount to a new daemon. `ready` is
/// called once the kernel has accepted the mount.
pub fn serve(o: &Options, prepared: Prepared, launch: Launch, ready: impl FnOnce()) -> Result<()> {
    serve_session(o, prepared, launch, None, ready)
}

/// Unmount `mountpoint`: through fuser when this process mounted it, else (a mount taken
/// over) directly or through fusermount3.
fn unmount_now(
    fuser_mount: &mut fuser::SessionUnmounter,
    mountpoint: &Path,
) -> std::io::Result<()> {
    fuser_mount.unmount()?;
    if fuse_mount_at(mountpoint)?.is_some_and(|m| m.is_depotfs()) {
        let flags = rustix::mount::UnmountFlags::empty();
        if rustix::mount::unmount(mountpoint, flags).is_err() {
            crate::fusermount::unmount(mountpoint, false).map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

fn serve_session(
    o: &Options,
    prepared: Prepared,
    launch: Launch,
    handed: Option<Takeover>,
    ready: impl FnOnce(),
) -> Result<()> {
    let Prepared {
        fs,
        runtime,
        key,
        key_file,
    } = prepared;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("depotfs:{}", o.source)),
        MountOption::Subtype("depotfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoAtime,
    ];
    if o.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(o.threads.max(1));
    config.clone_fd = true;
    let unmounter = Arc::new(std::sync::Mutex::new(None));
    let end = SessionEnd {
        unmounter: unmounter.clone(),
        mountpoint: o.mountpoint.clone(),
    };
    let root = rustix::process::geteuid().is_root();
    let fuse = Fuse::new(fs.clone()).on_end(end);
    let (mut session, handed) = match handed {
        Some(mut t) => {
            let fd = t
                .take_fd()
                .map_err(|e| Error::io("the handed-over FUSE descriptor", e))?;
            let acl = config.acl;
            let s = fuser::Session::from_initialized_fd(fuse, fd, acl, config, t.version);
            (s, Some(t))
        }
        // Not root, fuser mounts through fusermount3 (setuid) once mount(2) is refused; that
        // needs /dev/fuse open to all (0666, the kernel's and udev's mode).
        None => (
            fuser::Session::new(fuse, &o.mountpoint, &config).map_err(|e| {
                let hint = if !root && e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (as a non-root user /dev/fuse must be mode 0666, as udev makes it; here it is not)"
                } else {
                    ""
                };
                Error::io(format!("mounting {}{hint}", o.mountpoint.display()), e)
            })?,
            None,
        ),
    };
    *unmounter.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.unmount_callable());
    if handed.is_some() {
        // The kernel keeps the readahead the first daemon set.
    } else if o.kernel_readahead_kib > 0 && !root {
        tracing::info!(
            "kernel readahead of {} left at the kernel's default: setting it needs root (uid {})",
            o.mountpoint.display(),
            rustix::process::geteuid().as_raw()
        );
    } else if o.kernel_readahead_kib > 0 {
        match set_kernel_readahead(&o.mountpoint, o.kernel_readahead_kib) {
            Ok((was, bdi)) => tracing::info!(
                "kernel readahead of {}: {} KiB (was {was}; {})",
                o.mountpoint.display(),
                o.kernel_readahead_kib,
                bdi.display()
            ),
            Err(e) => tracing::info!(
                "kernel readahead of {} left at the kernel's default: {e}",
                o.mountpoint.display()
            ),
        }
    }
    let notifier = session.notifier();
    let pages = notifier.clone();
    fs.set_page_push(crate::prefetch::PagePush(Arc::new(
        move |ino, offset, bytes| pages.store(INodeNo(ino.0), offset, bytes),
    )));
    // The TTL of the revision in use (a publisher may change it), unless --ttl fixes it.
    let fixed_ttl = o.manifest_ttl;
    let checker = Arc::new(Checker {
        fs: fs.clone(),
        key,
        key_file,
        notifier,
        one_at_a_time: tokio::sync::Mutex::new(()),
    });
    let c = checker.clone();
    runtime.spawn(async move {
        loop {
            let ttl = fixed_ttl.unwrap_or_else(|| c.fs.manifest().ttl).max(1);
            tokio::time::sleep(Duration::from_secs(ttl)).await;
            c.run("TTL").await;
        }
    });
    // Offline: probe every PROBE_INTERVAL, and when a request wants an object (at most
    // twice a second).
    let c = checker.clone();
    runtime.spawn(async move {
        loop {
            let backend = c.fs.store().backend();
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = backend.probe_wanted() => {}
            }
            if backend.offline_since().is_some() {
                c.run("offline probe").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    // `depotfs remount`: check now.
    // The handler is installed before the mount is reported ready: SIGUSR1's default
    // action would end the process.
    let mut usr1 = {
        let _rt = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .map_err(|e| Error::io("installing the SIGUSR1 handler", e))?
    };
    let c = checker;
    runtime.spawn(async move {
        while usr1.recv().await.is_some() {
            c.run("remount").await;
        }
    });
    let mut unmounter = session.unmount_callable();
    let mp = o.mountpoint.clone();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: unmounting");
        if let Err(e) = unmount_now(&mut unmounter, &mp) {
            tracing::warn!("unmount: {e}");
        }
    });
    let f = fs.clone();
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(crate::record::FLUSH_EVERY).await;
            f.flush();
        }
    });
    let stop = session
        .stop_handle()
        .map_err(|e| Error::io("the FUSE loop's stop pipe", e))?;
    let control = Control::listen(launch, move || stop.stop())
        .inspect_err(|e| tracing::warn!("{e}: `depotfs reload` cannot replace this daemon"))
        .ok();
    if let Some(t) = handed {
        // systemd follows the new pid (the unit has NotifyAccess=all) before the old one
        // exits.
        reload::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
        if let Err(e) = t.serving() {
            tracing::warn!("{e}");
        }
        tracing::info!(
            "took over {}: revision {}, {} inodes known to the kernel",
            o.mountpoint.display(),
            fs.manifest().revision,
            fs.inode_count()
        );
        if let Some(addr) = o.metrics_listen {
            // The old daemon frees the address as it exits.
            let since = std::time::Instant::now();
            while let Err(e) = crate::metrics::start(&runtime, addr, fs.clone()) {
                if since.elapsed() > Duration::from_secs(5) {
                    tracing::warn!("{e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    } else {
        reload::notify_systemd("READY=1");
    }
    ready();
    let served = loop {
        match session.run_until_stopped() {
            Ok(None) => break Ok(None),
            Err(e) => break Err(Error::io("FUSE session", e)),
            Ok(Some(stopped)) => {
                session = stopped;
                let Some(job) = control.as_ref().and_then(Control::job) else {
                    continue;
                };
                fs.flush_all();
                let version = session.proto_version().map_or((7, 31), |v| (v.0, v.1));
                match job.hand_over(session.as_fd(), version, fs.state().to_bytes()) {
                    Ok(new) => break Ok(Some((session, new))),
                    Err(why) => {
                        tracing::warn!("reload failed, this daemon serves on: {why}");
                        if let Some(c) = &control {
                            c.resume();
                        }
                    }
                }
            }
        }
    };
    fs.flush_all();
    if let Some((session, new)) = served? {
        tracing::info!(
            "reload: daemon {new} serves {} now; daemon {} exits",
            o.mountpoint.display(),
            std::process::id()
        );
        // Neither unmount nor destroy: the mount lives on in the new daemon.
        drop(session.into_fd());
        runtime.shutdown_background();
        return Ok(());
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mountinfo(r"/mnt/a\040b\011c\134d"),
            "/mnt/a b\tc\\d"
        );
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
        assert_eq!(unescape_mountinfo(r"/x\9999"), r"/x\9999");
    }
}
