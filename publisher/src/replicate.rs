//! `depotfs replicate`: make or update a mirror ("stratum 1") of a served repository.
//!
//! The mirror is a directory with the layout of a store's `public/` (`manifest`, `repo.pub`,
//! `objects/ab/cdef…`), so any static web server can serve it, and clients mount it exactly
//! as they mount the origin. A run:
//!
//! 1. fetches the source's `manifest` and accepts it only if its signature holds under the
//!    given key, its repository name is the mirror's (or `--name`), and its revision is not
//!    lower than the mirror's current one (an older manifest is a replay and is refused);
//! 2. walks the revision's tree from the root — directory nodes ([`depotfs_catalog::dir`]),
//!    file entries, chunk lists, chunks — fetching, `--jobs` at a time, only the objects the
//!    mirror lacks, and verifying each with [`object::decode`] as the kind its referrer says.
//!    A body is read only up to the most an honest one can be (an object: its header and
//!    the most plaintext its kind may have; the manifest: 64 KiB), as clients read it, and
//!    a zstd object no shorter than its plaintext is refused by `decode` (only padding makes
//!    one): a mirror keeps nothing its clients would cut, and `--full` replaces such a copy.
//!    The walk is depth-first with a bounded frontier (a stack of references, and in memory
//!    only the objects fetched whose children are not yet all present), so its memory does
//!    not grow with the repository: a first mirror of 100 M objects holds what an
//!    incremental run holds;
//! 3. syncs the file system and only then replaces `manifest` (temporary file and rename).
//!
//! **Children first.** An object is written (temporary file in `DEST/.depotfs-replicate/tmp`,
//! then a rename) only after everything it references is present. So "object present in the
//! mirror" implies "its whole subtree is present", and the walk stops at the first object it
//! already has: an incremental run over a 118,594-entry directory fetches the new leaves and
//! the index path above them, and never looks at the unchanged subtrees. The same rule makes
//! interruption safe: killed at any point (`kill -9`), the mirror still serves its previous
//! manifest, whose objects are all present (objects are never deleted), and the next run
//! resumes from whatever complete subtrees the killed one left. A power loss is a different
//! matter: the file system may keep a parent's rename and lose a child's data; after one, run
//! with `--full`, which descends into present objects too, verifies them and refetches any
//! that are damaged.
//!
//! **Transient failures.** A request that fails for a reason another attempt may not meet
//! (connection refused or reset, a timeout, a 5xx, 429 or 408) is retried, up to
//! [`MAX_ATTEMPTS`] attempts with exponential backoff, each retry logged and counted in the
//! report; anything else (a 404, a bad object) ends the run at once, which the next run
//! resumes.
//!
//! Objects of older revisions are kept; nothing here deletes objects.
//!
//! **A mirror in a bucket.** DEST `s3://BUCKET/PREFIX` ([`crate::public`]) gets the same
//! layout and the same order: objects (children first, `Cache-Control` immutable) are
//! uploaded before the manifest, which is replaced by one `PUT` (short `Cache-Control`).
//! A bucket has no lock: run one replicate per bucket prefix (the systemd timer does).
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use depotfs_catalog::dir::NODE_MAX_BYTES;
use depotfs_catalog::graph;
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{Manifest, ObjectId, PublicKey};
use depotfs_http::{Attempt, error_chain};
use tokio::task::JoinSet;

use crate::progress::Counter;
use crate::public::{self, Bucket, CACHE_MANIFEST, CACHE_OBJECT, CACHE_PUBLIC_KEY};
use crate::store;

/// The mirror's private directory: lock and temporary files. Web servers must not serve it
/// (the shipped nginx site refuses every dot-path).
pub const STATE_DIR: &str = ".depotfs-replicate";

/// Attempts at one request before the run fails (four retries, waiting 0.25 + 0.5 + 1 + 2 s).
pub const MAX_ATTEMPTS: u32 = 5;

/// What can go wrong; every variant names the URL, object or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// A request failed or answered with an error status.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A fetched object does not verify, or is not what its referrer says it is.
    #[error("object {id} from {url} is bad: {why}")]
    BadObject {
        /// The object.
        id: ObjectId,
        /// Where it came from.
        url: String,
        /// What is wrong (in the message, so not a `source`: said once).
        why: Box<depotfs_catalog::Error>,
    },
    /// A manifest (the source's or the mirror's) is not acceptable.
    #[error("{what}: {message}")]
    Manifest {
        /// Which manifest (a URL or path).
        what: String,
        /// Why it is refused.
        message: String,
    },
    /// The key file cannot be read or parsed.
    #[error("key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The mirror is locked by another run, or its state directory is unusable.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// Local I/O on the mirror failed.
    // Not a `source`: its text is already in the message (anyhow's `{:#}` printed it twice).
    #[error("{path}: {error}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReplicateError {
    let path = path.into();
    move |error| ReplicateError::Io { path, error }
}

type Result<T, E = ReplicateError> = std::result::Result<T, E>;

/// What to replicate where.
#[derive(Debug, Clone)]
pub struct Options {
    /// URL of the served `public/` of the source (origin or another mirror).
    pub source_url: String,
    /// The mirror directory, or `s3://BUCKET/PREFIX`.
    pub dest: PathBuf,
    /// The repository's public key file.
    pub key: PathBuf,
    /// The repository name to require; defaults to the mirror's current one.
    pub name: Option<String>,
    /// Parallel object fetches.
    pub jobs: usize,
    /// Descend into objects already present too, verifying them (after a power loss).
    pub full: bool,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The revision the mirror now serves.
    pub revision: u64,
    /// The mirror's revision before the run, if it had one.
    pub previous: Option<u64>,
    /// Objects fetched and written.
    pub fetched: u64,
    /// Their encoded size in bytes.
    pub fetched_bytes: u64,
    /// Objects found present (each a whole subtree the walk did not need to enter, unless
    /// `--full`).
    pub present: u64,
    /// Requests that failed transiently and were retried.
    pub retries: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revision {}: fetched {} objects ({:.1} MiB), {} already present, in {:.1} s",
            self.revision,
            self.fetched,
            self.fetched_bytes as f64 / (1u64 << 20) as f64,
            self.present,
            self.elapsed.as_secs_f64()
        )?;
        if self.retries > 0 {
            write!(f, "; {} requests retried", self.retries)?;
        }
        Ok(())
    }
}

/// Make or update the mirror described by `opts`.
pub fn run(opts: &Options) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    runtime.block_on(run_async(opts))
}

async fn run_async(opts: &Options) -> Result<Report> {
    let start = Instant::now();
    let key_text = fs::read_to_string(&opts.key).map_err(io(&opts.key))?;
    let key = PublicKey::from_text(&key_text).map_err(|e| ReplicateError::Key {
        path: opts.key.clone(),
        message: e.to_string(),
    })?;
    let mirror = Mirror::open(&opts.dest)?;
    let _lock = mirror.lock()?;
    mirror.clean_tmp()?;

    let current = mirror.current_manifest(&key).await?;
    let name = opts
        .name
        .clone()
        .or_else(|| current.as_ref().map(|m| m.name.clone()));
    let source = Source::new(&opts.source_url, opts.timeout)?;
    let manifest_url = source.url("manifest");
    let manifest_bytes = source
        .get("manifest", true, depotfs_catalog::manifest::MAX_LEN as u64)
        .await?;
    let m = Manifest::parse_verified(&manifest_bytes, &key, name.as_deref()).map_err(|e| {
        ReplicateError::Manifest {
            what: manifest_url.clone(),
            message: format!("{e} (key {})", opts.key.display()),
        }
    })?;
    if let Some(cur) = &current {
        if m.revision < cur.revision {
            return Err(ReplicateError::Manifest {
                what: manifest_url,
                message: format!(
                    "revision {} is older than the mirror's revision {}: refusing a replayed manifest",
                    m.revision, cur.revision
                ),
            });
        }
        if m.revision == cur.revision && m.root != cur.root {
            return Err(ReplicateError::Manifest {
                what: manifest_url,
                message: format!(
                    "revision {} has root {}, but the mirror has revision {} with root {}: refusing a forked history",
                    m.revision, m.root, cur.revision, cur.root
                ),
            });
        }
    }
    tracing::info!(
        "replicating {} revision {} (root {}) from {} into {}",
        m.name,
        m.revision,
        m.root,
        source.base,
        opts.dest.display()
    );

    let walk = Arc::new(Walk {
        source,
        mirror: mirror.clone(),
        jobs: opts.jobs.max(1),
        full: opts.full,
        fetched: AtomicU64::new(0),
        fetched_bytes: AtomicU64::new(0),
        present: AtomicU64::new(0),
        ticker: Counter::new("replicating"),
    });
    let root = graph::Child {
        id: m.root,
        kind: ObjectKind::DirNode,
        max_len: NODE_MAX_BYTES,
        edge: graph::Edge::Subdir,
    };
    let result = walk_tree(walk.clone(), root).await;
    walk.ticker.finish();
    result?;

    // Objects first, durably; then the key and the manifest.
    mirror.sync()?;
    if mirror.read("repo.pub").await?.as_deref() != Some(key_text.as_bytes()) {
        mirror
            .write_file("repo.pub", key_text.as_bytes(), CACHE_PUBLIC_KEY)
            .await?;
    }
    mirror
        .write_file("manifest", &manifest_bytes, CACHE_MANIFEST)
        .await?;
    Ok(Report {
        revision: m.revision,
        previous: current.map(|c| c.revision),
        fetched: walk.fetched.load(Ordering::Relaxed),
        fetched_bytes: walk.fetched_bytes.load(Ordering::Relaxed),
        present: walk.present.load(Ordering::Relaxed),
        retries: walk.source.retries.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// The source: a served `public/`.
#[derive(Debug)]
struct Source {
    base: String,
    client: reqwest::Client,
    /// Requests retried so far ([`Source::get`]).
    retries: AtomicU64,
}

impl Source {
    fn new(url: &str, timeout: Duration) -> Result<Self> {
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let connect_timeout = timeout.min(Duration::from_secs(10));
        let proxy = depotfs_http::Proxy::Environment;
        let client = depotfs_http::client("depotfs-replicate", connect_timeout, proxy)
            .and_then(|b| b.timeout(timeout).build())
            .map_err(|e| ReplicateError::Fetch {
                url: url.to_string(),
                message: format!("HTTP client: {e}"),
            })?;
        Ok(Source {
            base,
            client,
            retries: AtomicU64::new(0),
        })
    }

    fn url(&self, rel: &str) -> String {
        format!("{}{rel}", self.base)
    }

    /// GET `rel`, a body of at most `limit` bytes (the most an honest one can be: a longer
    /// one is refused as it arrives, never collected); `fresh` asks caches in between to
    /// revalidate (the manifest).
    ///
    /// A failure worth another attempt (no connection, a dropped or timed-out transfer, a
    /// 5xx, 429 or 408: [`depotfs_http::transient_status`]) is retried up to
    /// [`MAX_ATTEMPTS`] attempts with [`depotfs_http::retry_backoff`], so one restart of the
    /// source or one overloaded proxy does not end a run over millions of objects. Any other
    /// answer (404, 403, ...) fails at once. Every GET here is idempotent: the objects are
    /// immutable and the manifest is verified whatever answer arrives.
    async fn get(&self, rel: &str, fresh: bool, limit: u64) -> Result<Vec<u8>> {
        let url = self.url(rel);
        depotfs_http::retry(
            MAX_ATTEMPTS,
            || self.attempt(&url, fresh, limit),
            |why, wait, next| {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{url}: {why}; retrying in {wait:?} (attempt {next} of {MAX_ATTEMPTS})"
                );
            },
        )
        .await
        .map_err(|message| ReplicateError::Fetch {
            url: url.clone(),
            message,
        })
    }

    /// One GET of `url`, whole, if at most `limit` bytes.
    async fn attempt(&self, url: &str, fresh: bool, limit: u64) -> Result<Vec<u8>, Attempt> {
        let mut req = self.client.get(url);
        if fresh {
            req = req.header("Cache-Control", "no-cache");
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Retry(error_chain(&e)))?;
        let status = resp.status();
        if depotfs_http::transient_status(status) {
            return Err(Attempt::Retry(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(format!("HTTP {status}")));
        }
        depotfs_http::read_body(resp, limit)
            .await
            .map_err(|e| match e {
                // An answer, not a failed transfer: another attempt gets the same.
                depotfs_http::BodyError::TooLong(n) => {
                    Attempt::Fatal(depotfs_http::BodyError::too_long(n, limit))
                }
                depotfs_http::BodyError::Transfer(e) => Attempt::Retry(error_chain(&e)),
            })
    }
}

/// The mirror: a directory, or a bucket prefix.
#[derive(Debug, Clone)]
enum Mirror {
    Dir(PathBuf),
    Bucket(Arc<Bucket>),
}

impl Mirror {
    /// Open DEST, creating a directory's skeleton if needed.
    fn open(root: &Path) -> Result<Self> {
        if let Some(url) = root.to_str().filter(|d| public::is_bucket_url(d)) {
            return Ok(Mirror::Bucket(Arc::new(Bucket::open(url)?)));
        }
        let m = Mirror::Dir(root.to_path_buf());
        for b in 0..=255u8 {
            let d = m.path(&format!("objects/{b:02x}"));
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        fs::create_dir_all(m.tmp()).map_err(io(m.tmp()))?;
        Ok(m)
    }

    /// `rel` in the mirror, for messages (a path, or an `s3://` URL).
    fn path(&self, rel: &str) -> PathBuf {
        match self {
            Mirror::Dir(root) => root.join(rel),
            Mirror::Bucket(b) => b.url(rel).into(),
        }
    }

    fn tmp(&self) -> PathBuf {
        self.path(STATE_DIR).join("tmp")
    }

    /// Take a directory mirror's lock (`DEST/.depotfs-replicate/lock`, the publisher's
    /// flock); a bucket has none.
    fn lock(&self) -> Result<Option<store::Lock>> {
        match self {
            Mirror::Dir(_) => Ok(Some(store::Lock::acquire(&store::Layout::new(
                self.path(STATE_DIR),
            ))?)),
            Mirror::Bucket(_) => Ok(None),
        }
    }

    /// Remove temporary files an interrupted run left behind (we hold the lock).
    fn clean_tmp(&self) -> Result<()> {
        if let Mirror::Dir(_) = self {
            let tmp = self.tmp();
            for e in fs::read_dir(&tmp).map_err(io(&tmp))? {
                let p = e.map_err(io(&tmp))?.path();
                fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }

    /// Does the mirror hold `rel`?
    async fn has(&self, rel: &str) -> Result<bool> {
        match self {
            Mirror::Dir(_) => Ok(self.path(rel).exists()),
            Mirror::Bucket(b) => Ok(b.exists(rel).await?),
        }
    }

    /// The bytes of `rel`, if the mirror holds it.
    async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Mirror::Dir(_) => {
                let path = self.path(rel);
                match fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io(&path)(e)),
                }
            }
            Mirror::Bucket(b) => Ok(b.get(rel).await?.map(|b| b.to_vec())),
        }
    }

    /// The mirror's current manifest, if it has one. It must verify under `key`: a mirror
    /// of another repository is not silently overwritten.
    async fn current_manifest(&self, key: &PublicKey) -> Result<Option<Manifest>> {
        let Some(bytes) = self.read("manifest").await? else {
            return Ok(None);
        };
        Manifest::parse_verified(&bytes, key, None)
            .map(Some)
            .map_err(|e| ReplicateError::Manifest {
                what: self.path("manifest").display().to_string(),
                message: format!(
                    "the mirror's own manifest is not acceptable ({e}); is DEST a mirror of another repository?"
                ),
            })
    }

    /// Write object `rel`: a temporary file and a rename, or one upload.
    async fn write_object(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Mirror::Dir(_) => self.write_atomic(rel, &bytes, false),
            Mirror::Bucket(b) => Ok(b.put(rel, bytes.into(), CACHE_OBJECT).await?),
        }
    }

    /// Replace `rel` (the key, the manifest): durably on disk, one `PUT` with `Cache-Control:
    /// cache` in a bucket.
    async fn write_file(&self, rel: &str, bytes: &[u8], cache: &str) -> Result<()> {
        match self {
            Mirror::Dir(_) => self.write_atomic(rel, bytes, true),
            Mirror::Bucket(b) => Ok(b.put(rel, bytes.to_vec().into(), cache).await?),
        }
    }

    /// Write `bytes` to `rel` through a temporary file and a rename
    /// (`object_file::replace`). With `durable`, the file and the directory are synced too
    /// (the manifest).
    fn write_atomic(&self, rel: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let dest = self.path(rel);
        depotfs_catalog::object_file::replace(&dest, bytes, &self.tmp(), durable).map_err(io(&dest))
    }

    /// Flush everything written to the mirror's file system (a bucket's uploads are done
    /// when they return).
    fn sync(&self) -> Result<()> {
        let Mirror::Dir(root) = self else {
            return Ok(());
        };
        let dir = File::open(root).map_err(io(root))?;
        rustix::fs::syncfs(&dir).map_err(|e| ReplicateError::Io {
            path: root.clone(),
            error: e.into(),
        })
    }
}

/// Shared state of one walk.
#[derive(Debug)]
struct Walk {
    source: Source,
    mirror: Mirror,
    /// Objects fetched (or, with `--full`, read back) at once (`--jobs`).
    jobs: usize,
    full: bool,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    present: AtomicU64,
    ticker: Counter,
}

/// An object the walk has started and not finished: being fetched, or fetched and waiting
/// for its children to be present before it is written.
#[derive(Debug)]
struct Open {
    /// The bytes to write once every child is present (`None`: already in the mirror, read
    /// back and verified under `--full`).
    bytes: Option<Vec<u8>>,
    /// Children not yet present; `None` while the object itself is being fetched.
    remaining: Option<usize>,
    /// The open objects that refer to it (the first referrer, and any other reached while
    /// it was open: a shared chunk, an identical directory).
    waiters: Vec<ObjectId>,
}

/// What a fetch task found: the object, its bytes if it still has to be written (after its
/// children), and its children.
type Visited = (ObjectId, Option<Vec<u8>>, Vec<graph::Child>);

/// Make the object `root` (a directory node) and everything below it present in the mirror.
///
/// A depth-first walk with a bounded frontier: at most `jobs` objects are fetched at once,
/// children are taken from a stack (the most recently found first), and an object stays in
/// memory only while it is open (fetched, its children not all present). So memory is
/// bounded by `jobs` × the tree's depth × the largest object's references, never by the
/// repository's size: a first mirror of 100 M objects holds what an incremental run does.
/// An object the mirror has is skipped with its subtree (objects are immutable and written
/// children first), so an incremental run fetches what changed and stats its siblings.
async fn walk_tree(walk: Arc<Walk>, root: graph::Child) -> Result<()> {
    let mut stack: Vec<(graph::Child, Option<ObjectId>)> = vec![(root, None)];
    let mut open: HashMap<ObjectId, Open> = HashMap::new();
    // --full only: interior objects already checked this run (a shared subtree is walked once;
    // a few per thousand objects).
    let mut checked: HashSet<ObjectId> = HashSet::new();
    let mut tasks: JoinSet<Result<Visited>> = JoinSet::new();
    loop {
        while tasks.len() < walk.jobs
            && let Some((c, referrer)) = stack.pop()
        {
            if let Some(o) = open.get_mut(&c.id) {
                o.waiters.extend(referrer);
                continue;
            }
            // A directory mirror is asked here (a stat); a bucket in the fetch task (a HEAD
            // request), which reports a present object as one without children to write.
            let has = match (&walk.mirror, walk.full) {
                (_, true) => checked.contains(&c.id),
                (Mirror::Dir(_), false) => walk.mirror.path(&c.id.store_path()).exists(),
                (Mirror::Bucket(_), false) => false,
            };
            if has {
                if !walk.full {
                    walk.present.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(r) = referrer
                    && last_child(&mut open, &r)
                {
                    finish(&walk, &mut open, &mut checked, r).await?;
                }
                continue;
            }
            open.insert(
                c.id,
                Open {
                    bytes: None,
                    remaining: None,
                    waiters: referrer.into_iter().collect(),
                },
            );
            tasks.spawn(visit(walk.clone(), c));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (id, bytes, kids) = match joined {
            Ok(r) => r?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let o = open.get_mut(&id).expect("a fetched object is open");
        o.bytes = bytes;
        if kids.is_empty() {
            finish(&walk, &mut open, &mut checked, id).await?;
        } else {
            o.remaining = Some(kids.len());
            stack.extend(kids.into_iter().map(|k| (k, Some(id))));
        }
        walk.ticker.tick(|| {
            format!(
                "fetched {} objects ({} MiB), {} present, {} open",
                walk.fetched.load(Ordering::Relaxed),
                walk.fetched_bytes.load(Ordering::Relaxed) >> 20,
                walk.present.load(Ordering::Relaxed),
                open.len()
            )
        });
    }
    debug_assert!(open.is_empty(), "every open object was finished");
    Ok(())
}

/// One child of open object `referrer` is present: is that its last?
fn last_child(open: &mut HashMap<ObjectId, Open>, referrer: &ObjectId) -> bool {
    let o = open.get_mut(referrer).expect("a referrer is open");
    let left = o.remaining.as_mut().expect("a referrer has its children");
    *left -= 1;
    *left == 0
}

/// Every child of open object `id` is present: write it (children first), close it, and
/// tell its referrers, finishing each whose last child it was.
async fn finish(
    walk: &Walk,
    open: &mut HashMap<ObjectId, Open>,
    checked: &mut HashSet<ObjectId>,
    id: ObjectId,
) -> Result<()> {
    let mut done = vec![id];
    while let Some(id) = done.pop() {
        let o = open.remove(&id).expect("finished once");
        if let Some(bytes) = o.bytes {
            write_object(walk, &id, bytes).await?;
        }
        if walk.full && o.remaining.is_some() {
            checked.insert(id);
        }
        for r in o.waiters {
            if last_child(open, &r) {
                done.push(r);
            }
        }
    }
    Ok(())
}

/// Write a verified object whose children are all present into the mirror.
async fn write_object(walk: &Walk, id: &ObjectId, bytes: Vec<u8>) -> Result<()> {
    let len = bytes.len() as u64;
    walk.mirror.write_object(&id.store_path(), bytes).await?;
    walk.fetched.fetch_add(1, Ordering::Relaxed);
    walk.fetched_bytes.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

/// Fetch object `c` (with `--full`, read the mirror's copy first and fetch only if it is
/// damaged), verify it as the kind its referrer says, and list its children. An object
/// without children is written here; one with children is handed back to be written after
/// them.
async fn visit(walk: Arc<Walk>, c: graph::Child) -> Result<Visited> {
    let rel = c.id.store_path();
    let dest = walk.mirror.path(&rel);
    if let Mirror::Bucket(_) = walk.mirror
        && !walk.full
        && walk.mirror.has(&rel).await?
    {
        walk.present.fetch_add(1, Ordering::Relaxed);
        return Ok((c.id, None, Vec::new()));
    }
    if walk.full
        && let Some(local) = walk.mirror.read(&rel).await?
    {
        match object::decode(c.id, c.kind, &local, c.max_len) {
            Ok(v) => {
                let kids = children(&v, &dest.display().to_string())?;
                walk.present.fetch_add(1, Ordering::Relaxed);
                return Ok((c.id, None, kids));
            }
            Err(e) => tracing::warn!("{}: {e}; fetching it again", dest.display()),
        }
    }
    // An honest object is never longer than its header and its plaintext (zstd is kept only
    // when it is shorter: `object::decode` refuses the rest).
    let limit = object::HEADER_LEN as u64 + c.max_len;
    let bytes = walk.source.get(&rel, false, limit).await?;
    let url = walk.source.url(&rel);
    let v = object::decode(c.id, c.kind, &bytes, c.max_len).map_err(|source| {
        ReplicateError::BadObject {
            id: c.id,
            url: url.clone(),
            why: Box::new(source),
        }
    })?;
    let kids = children(&v, &url)?;
    drop(v);
    if kids.is_empty() {
        write_object(&walk, &c.id, bytes).await?;
        return Ok((c.id, None, kids));
    }
    Ok((c.id, Some(bytes), kids))
}

/// The children of verified object `v`, read from `from`.
fn children(v: &object::Verified, from: &str) -> Result<Vec<graph::Child>> {
    graph::children(v).map_err(|source| ReplicateError::BadObject {
        id: v.id(),
        url: from.to_string(),
        why: Box::new(source),
    })
}

#[cfg(test)]
mod tests;
