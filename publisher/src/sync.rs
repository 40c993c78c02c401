//! `depotfs sync STORE URL --to DIR`: keep a repository directory equal to an HTTP image depot
//! (a directory listing: nginx autoindex HTML or JSON, Apache mod_autoindex), streaming each
//! file straight into the store.
//!
//! A **source**, in the house's sense: it reads the listing ([`listing`]), compares it with the
//! catalog's directory ([`plan`]), and turns each file to fetch into a byte stream
//! ([`fetch::Download`]) for the one staging path, [`crate::ingest::store_reader`] (chunk,
//! hash, compress, store). Nodes are staged with [`Repo::stage_add`] and published with
//! [`Repo::publish`]; this module writes no object and no catalog table itself.
//!
//! - **Up to date** means: the catalog (staged tree) has a regular file of the listed size
//!   whose mtime, at the listing's date precision, is the listed date. A fetched file's mtime
//!   is the upstream date (the response's Last-Modified when it agrees with the listing).
//! - **Resumable**: each finished file is staged in its own catalog transaction as soon as it
//!   is stored (a few per transaction when several finish together), so after `kill -9` a
//!   rerun finds it staged and up to date; only the downloads that were in flight are fetched
//!   again. A partial file is never staged: `store_reader` refuses a short stream. Leftover
//!   objects of an interrupted download are garbage for `gc`.
//! - **Publishing**: every `--publish-every` files or interval, and at the end (also what an
//!   interrupted earlier run staged).
//! - **Deleting** (`--delete`) names the listing lost is refused when they are more than
//!   [`plan::MAX_LOST_PERCENT`] of the directory (an empty or broken index page), unless
//!   `--force`.
//! - **Memory** is bounded by the jobs: each download holds one chunker buffer and the chunks
//!   in flight, whatever the file sizes; the listing page is read whole (at most
//!   [`fetch::LISTING_MAX`]).

pub mod fetch;
pub mod listing;
pub mod plan;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use depotfs_catalog::FileContent;

use crate::db::{self, Node, NodeKind};
use crate::ingest::{self, StreamError};
use crate::progress::Progress;
use crate::repo::Repo;
use listing::{Listing, Upstream};
use plan::{Filter, Plan, Why};

/// Permission bits of a synced file.
pub const FILE_MODE: u32 = 0o644;

/// When to publish during a sync (`--publish-every N|DURATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishEvery {
    /// After this many staged files.
    Files(u64),
    /// After this much time since the last publish.
    Interval(Duration),
}

impl FromStr for PublishEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u64>() {
            return if n == 0 {
                Err("a count must be at least 1".into())
            } else {
                Ok(PublishEvery::Files(n))
            };
        }
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(PublishEvery::Interval(d)),
            _ => Err(format!(
                "{s:?} is neither a count of files nor a duration (30s, 10m, 1h)"
            )),
        }
    }
}

/// What to sync.
#[derive(Debug, Clone)]
pub struct Options {
    /// The depot directory's URL (its listing page).
    pub url: String,
    /// Repository directory (normalized).
    pub to: String,
    /// Downloads in parallel.
    pub jobs: usize,
    /// Which names take part.
    pub filter: Filter,
    /// Remove names the listing no longer has.
    pub delete: bool,
    /// Apply `--delete` even past the mass-deletion guard.
    pub force: bool,
    /// Publish during the run.
    pub publish_every: Option<PublishEvery>,
    /// Stall and connect timeout.
    pub timeout: Duration,
}

/// What can stop a sync as a whole (one file's failure does not: it is in the [`Summary`]).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The listing could not be fetched or is not a listing.
    #[error("listing {url}: {message}")]
    Listing {
        /// Its URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// `--delete` would remove too much of the directory.
    #[error(
        "refusing --delete: the listing {url} lacks {gone} of the {have} names in /{to} ({percent:.1} %, more than {max} %); \
         an empty or broken index page must not empty the repository. Check the depot, or rerun with --force"
    )]
    MassDeletion {
        /// The listing.
        url: String,
        /// Repository directory.
        to: String,
        /// Names it would remove.
        gone: usize,
        /// Names in the directory.
        have: u64,
        /// Their share.
        percent: f64,
        /// The limit.
        max: f64,
    },
    /// The runtime or client could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The repository failed (catalog, store).
    #[error(transparent)]
    Repo(#[from] crate::Error),
}

/// A listing compared with the repository: what a run would do.
#[derive(Debug)]
pub struct Prepared {
    url: String,
    to: String,
    listing: Listing,
    plan: Plan,
    rt: tokio::runtime::Runtime,
    fetcher: fetch::Fetcher,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// New files stored.
    pub fetched: u64,
    /// Changed files stored again.
    pub replaced: u64,
    /// Names removed (`--delete`).
    pub removed: u64,
    /// Files already up to date.
    pub unchanged: u64,
    /// Names the listing had that were refused (bad or duplicate names).
    pub refused: u64,
    /// Files that failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Bytes stored (file lengths).
    pub bytes: u64,
    /// Resume (Range) requests made.
    pub resumes: u64,
    /// Revisions published.
    pub published: Vec<u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "sync: {} fetched, {} replaced, {} removed, {} up to date, {} skipped (refused names), {} failed; \
             {} bytes in {secs:.1} s ({:.1} MiB/s), {} resumed downloads",
            self.fetched,
            self.replaced,
            self.removed,
            self.unchanged,
            self.refused,
            self.failed.len(),
            self.bytes,
            self.bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
            self.resumes,
        )?;
        match self.published.last() {
            Some(r) => write!(f, "; published revision {r}"),
            None => write!(f, "; nothing published"),
        }
    }
}

/// Fetch the listing and plan against the repository's directory.
pub fn prepare(repo: &Repo, opts: &Options) -> Result<Prepared, SyncError> {
    let start = Instant::now();
    // Changes staged by an interrupted `depotfs sync` are this command's to finish: each is a
    // whole file, checked against its length, and the rerun publishes it. Any other
    // interrupted run's changes wait for the operator (`publish --include-interrupted` or
    // `abort`), as for `add`.
    let is_sync = |command: &str| command.split_whitespace().nth(1) == Some("sync");
    if repo
        .staged()?
        .interrupted(None)
        .iter()
        .any(|r| !is_sync(&r.run.command))
    {
        repo.refuse_if_interrupted()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sync-http")
        .enable_all()
        .build()
        .map_err(|e| SyncError::Setup(format!("tokio runtime: {e}")))?;
    let fetcher =
        fetch::Fetcher::new(rt.handle().clone(), opts.timeout).map_err(SyncError::Setup)?;
    let url = if opts.url.ends_with('/') {
        opts.url.clone()
    } else {
        format!("{}/", opts.url)
    };
    let bad = |message: String| SyncError::Listing {
        url: url.clone(),
        message,
    };
    let page = fetcher.listing(&url).map_err(bad)?;
    let listing = listing::parse(&page).map_err(bad)?;
    drop(page);
    const LOGGED: usize = 20;
    for r in listing.refused.iter().take(LOGGED) {
        tracing::warn!("listing {url}: refused {:?}: {}", r.raw, r.reason);
    }
    if listing.refused.len() > LOGGED {
        tracing::warn!(
            "listing {url}: {} more names refused (see --dry-run)",
            listing.refused.len() - LOGGED
        );
    }
    let children = repo.list_dir(&opts.to)?;
    let plan = plan::plan(&listing.entries, &children, &opts.filter);
    if let Some(only) = &opts.filter.only {
        let listed: std::collections::HashSet<&str> =
            listing.entries.iter().map(|e| e.name.as_str()).collect();
        for n in only.iter().filter(|n| !listed.contains(n.as_str())) {
            tracing::warn!("--from-list names {n:?}, which {url} does not list");
        }
    }
    tracing::info!(
        "listing {url}: {} files, {} refused, {} directories; planned in {:.2} s",
        listing.entries.len(),
        listing.refused.len(),
        listing.dirs,
        start.elapsed().as_secs_f64()
    );
    Ok(Prepared {
        url,
        to: opts.to.clone(),
        listing,
        plan,
        rt,
        fetcher,
    })
}

impl Prepared {
    /// The plan, for `--dry-run`: counts and bytes, and the first names of each kind.
    pub fn describe(&self, opts: &Options) -> String {
        const FIRST: usize = 10;
        let p = &self.plan;
        let mut out = format!(
            "plan for {} → /{}: {} listed files ({} refused names, {} outside the filter), {} in the repository\n",
            self.url,
            self.to,
            self.listing.entries.len(),
            self.listing.refused.len(),
            p.filtered,
            p.have
        );
        for (why, label) in [(Why::New, "new"), (Why::Changed, "changed")] {
            let (n, bytes) = p.count(why);
            let names: Vec<&str> = p
                .fetch
                .iter()
                .filter(|(_, w)| *w == why)
                .take(FIRST)
                .map(|(u, _)| u.name.as_str())
                .collect();
            out += &format!("  {label}: {n} files, {bytes} bytes{}\n", more(&names, n));
        }
        out += &format!("  up to date: {}\n", p.unchanged);
        let gone: Vec<&str> = p.gone.iter().take(FIRST).map(String::as_str).collect();
        let verb = if opts.delete {
            "remove"
        } else {
            "gone upstream, kept"
        };
        out += &format!(
            "  {verb}: {}{}\n",
            p.gone.len(),
            more(&gone, p.gone.len() as u64)
        );
        if let Err(e) = self.guard(opts) {
            out += &format!("  {e}\n");
        }
        for r in self.listing.refused.iter().take(FIRST) {
            out += &format!("  refused {:?}: {}\n", r.raw, r.reason);
        }
        out
    }

    /// The mass-deletion guard.
    fn guard(&self, opts: &Options) -> Result<(), SyncError> {
        let p = &self.plan;
        if opts.delete && !opts.force && p.lost_percent() > plan::MAX_LOST_PERCENT {
            return Err(SyncError::MassDeletion {
                url: self.url.clone(),
                to: self.to.clone(),
                gone: p.gone.len(),
                have: p.have,
                percent: p.lost_percent(),
                max: plan::MAX_LOST_PERCENT,
            });
        }
        Ok(())
    }

    /// Carry the plan out: remove (with `--delete`), fetch and stage, publish.
    pub fn apply(self, repo: &Repo, opts: &Options) -> Result<Summary, SyncError> {
        self.guard(opts)?;
        let start = Instant::now();
        let mut s = Summary {
            unchanged: self.plan.unchanged,
            refused: self.listing.refused.len() as u64,
            ..Summary::default()
        };
        let Prepared {
            url,
            to,
            plan,
            rt,
            fetcher,
            ..
        } = self;
        if opts.delete && !plan.gone.is_empty() {
            let paths: Vec<String> = plan.gone.iter().map(|n| db::join(&to, n)).collect();
            repo.stage_rm(&paths)?;
            s.removed = paths.len() as u64;
            tracing::info!(
                "staged the removal of {} names gone from {url}",
                paths.len()
            );
        }
        let total_bytes = plan.fetch.iter().map(|(u, _)| u.size.estimate()).sum();
        let progress = Progress::new("syncing", plan.fetch.len() as u64, total_bytes);
        let run = Run {
            url: &url,
            to: &to,
            fetcher: &fetcher,
            progress: &progress,
            repo,
            opts,
        };
        let r = run.fetch_all(plan.fetch, &mut s);
        progress.finish();
        r?;
        if repo.has_staged()?
            && let Some((rev, _)) = repo.publish(None, true)?
        {
            s.published.push(rev);
        }
        drop(rt);
        s.elapsed = start.elapsed();
        Ok(s)
    }
}

fn more(names: &[&str], n: u64) -> String {
    if names.is_empty() {
        return String::new();
    }
    let rest = n.saturating_sub(names.len() as u64);
    let tail = if rest > 0 {
        format!(", … {rest} more")
    } else {
        String::new()
    };
    format!(": {}{tail}", names.join(", "))
}

/// One file's outcome, sent from a download worker to the staging loop.
enum Done {
    Stored {
        name: String,
        why: Why,
        node: Node,
        resumes: u32,
    },
    Failed {
        name: String,
        why: String,
    },
}

struct Run<'a> {
    url: &'a str,
    to: &'a str,
    fetcher: &'a fetch::Fetcher,
    progress: &'a Progress,
    repo: &'a Repo,
    opts: &'a Options,
}

impl Run<'_> {
    /// Download with `jobs` workers; stage each finished file; publish on schedule.
    fn fetch_all(&self, todo: Vec<(Upstream, Why)>, s: &mut Summary) -> Result<(), SyncError> {
        let jobs = self.opts.jobs.max(1);
        // Each stream's chunker runs on this pool; the reading side of a stream blocks one of
        // its threads while waiting for the network, so it has a thread per download on top
        // of the ingest workers.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs + ingest::ingest_workers())
            .thread_name(|i| format!("sync-ingest-{i}"))
            .build()
            .map_err(|e| SyncError::Setup(format!("thread pool: {e}")))?;
        let queue = Mutex::new(todo.into_iter());
        let stop = AtomicBool::new(false);
        // A rendezvous channel: a worker hands its finished file to the stager before it takes
        // the next one, so a kill -9 loses at most two files per worker (the one it was
        // downloading and the one the stager had received but not yet committed), however far
        // the stager falls behind (a publish on a loaded machine).
        let (tx, rx) = mpsc::sync_channel::<Done>(0);
        std::thread::scope(|scope| {
            for i in 0..jobs {
                let tx = tx.clone();
                let (queue, stop, pool) = (&queue, &stop, &pool);
                std::thread::Builder::new()
                    .name(format!("sync-{i}"))
                    .spawn_scoped(scope, move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Some((up, why)) = queue.lock().expect("not poisoned").next() else {
                                break;
                            };
                            let done = pool.install(|| self.fetch_one(up, why));
                            if tx.send(done).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawning a sync worker");
            }
            drop(tx);
            let r = self.stage_loop(&rx, s);
            if r.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            r
        })
    }

    fn stage_loop(&self, rx: &mpsc::Receiver<Done>, s: &mut Summary) -> Result<(), SyncError> {
        let mut since_publish = 0u64;
        let mut last_publish = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(d) => Some(d),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut nodes = Vec::new();
            for d in first.into_iter().chain(rx.try_iter()) {
                match d {
                    Done::Stored {
                        name,
                        why,
                        node,
                        resumes,
                    } => {
                        if let NodeKind::File { size, .. } = node.kind {
                            s.bytes += size;
                        }
                        s.resumes += u64::from(resumes);
                        match why {
                            Why::New => s.fetched += 1,
                            Why::Changed => s.replaced += 1,
                        }
                        nodes.push((db::join(self.to, &name), node));
                    }
                    Done::Failed { name, why } => {
                        tracing::error!("{name}: {why}; skipped");
                        s.failed.push((name, why));
                    }
                }
            }
            if !nodes.is_empty() {
                since_publish += nodes.len() as u64;
                self.repo.stage_add(self.to, nodes)?;
            }
            let due = match self.opts.publish_every {
                Some(PublishEvery::Files(n)) => since_publish >= n,
                Some(PublishEvery::Interval(d)) => since_publish > 0 && last_publish.elapsed() >= d,
                None => false,
            };
            if due && let Some((rev, _)) = self.repo.publish(None, true)? {
                tracing::info!("published revision {rev} ({since_publish} files since the last)");
                s.published.push(rev);
                since_publish = 0;
                last_publish = Instant::now();
            }
        }
    }

    /// Download `up` into the store; the node to stage, or why not.
    fn fetch_one(&self, up: Upstream, why: Why) -> Done {
        let url = fetch::file_url(self.url, &up.name);
        let listed = up.size.exact();
        let fail = |why: String| Done::Failed {
            name: up.name.clone(),
            why,
        };
        let mut download = match self.fetcher.open(&url, listed, up.size.most()) {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let expected = download.expected_len();
        let stored =
            ingest::store_reader(&self.repo.objects, &mut download, expected, self.progress);
        let (size, content): (u64, FileContent) = match stored {
            Ok(r) => r,
            Err(StreamError::Read(e)) => return fail(e.to_string()),
            Err(StreamError::Length { expected, got }) => {
                return fail(format!(
                    "{url}: {got} bytes received, {expected} expected; not staged"
                ));
            }
            Err(StreamError::Store(e)) => return fail(format!("storing {url}: {e}")),
        };
        self.progress.file_done();
        // The upstream date: Last-Modified when it is the listed date at the listing's
        // precision (it is finer than an HTML page's minutes), else the listed date.
        let mtime_s = download
            .last_modified_s()
            .filter(|lm| lm - lm.rem_euclid(up.precision_s) == up.mtime_s)
            .unwrap_or(up.mtime_s);
        Done::Stored {
            resumes: download.resumes(),
            name: up.name,
            why,
            node: Node {
                mode: FILE_MODE,
                mtime_ns: mtime_s.saturating_mul(1_000_000_000),
                kind: NodeKind::File { size, content },
            },
        }
    }
}
