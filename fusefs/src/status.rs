//! A mount's status: one typed value ([`Status`]), gathered at once from the store's
//! counters ([`crate::store::Stats`]), the cache, the backend and the file system, and read
//! by everything that reports it: `depotfs status` and `depotfs remount` (the whole value,
//! serialised once as JSON in the root's `user.depotfs.status` attribute), the root's other
//! `user.depotfs.*` attributes ([`Status::xattr`], one value each, for scripts and
//! `getfattr`) and the Prometheus metrics ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use depotfs_catalog::Refusal;
use serde::{Deserialize, Serialize};

use crate::backend::DIRECT;
use crate::fs::DepotFs;

/// The attribute holding the whole [`Status`] as JSON.
pub const XATTR_JSON: &str = "user.depotfs.status";

/// Attribute names offered on every path (values of the revision served).
pub const XATTRS_ANY: [&str; 3] = [
    "user.depotfs.revision",
    "user.depotfs.root",
    "user.depotfs.source",
];

/// Attribute names offered on the mount root only: the status, one value each, and the
/// whole of it ([`XATTR_JSON`]).
pub const XATTRS_ROOT: [&str; 34] = [
    "user.depotfs.name",
    "user.depotfs.published_ns",
    "user.depotfs.cache_dir",
    "user.depotfs.cache_used",
    "user.depotfs.cache_limit",
    "user.depotfs.hits",
    "user.depotfs.misses",
    "user.depotfs.bytes_fetched",
    "user.depotfs.bytes_read",
    "user.depotfs.corrupt",
    "user.depotfs.pid",
    "user.depotfs.inodes",
    "user.depotfs.host",
    "user.depotfs.version",
    "user.depotfs.started_ns",
    "user.depotfs.prefetch_downloaded",
    "user.depotfs.proxy",
    "user.depotfs.proxies",
    "user.depotfs.offline_since",
    "user.depotfs.failovers",
    "user.depotfs.manifest_refused",
    "user.depotfs.request_bound_ms",
    "user.depotfs.checks_started",
    "user.depotfs.checks",
    "user.depotfs.last_check",
    "user.depotfs.evictions",
    "user.depotfs.readahead",
    "user.depotfs.prefetched",
    "user.depotfs.page_cache_pushed",
    "user.depotfs.cache_state",
    "user.depotfs.cache_pending",
    "user.depotfs.cache_dropped",
    "user.depotfs.stages",
    XATTR_JSON,
];

/// The outcome of a revision check (`TTL`, offline probe or `depotfs remount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastCheck {
    /// Switched to revision `now` from `was`.
    New {
        /// The revision now served.
        now: u64,
        /// The revision served before.
        was: u64,
    },
    /// The server offers the revision already served.
    Unchanged(u64),
    /// The check failed (a refused manifest, no server): the error's message.
    Error(String),
}

/// `new REV OLD`, `unchanged REV` or `error REASON`: the `user.depotfs.last_check` text.
impl std::fmt::Display for LastCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastCheck::New { now, was } => write!(f, "new {now} {was}"),
            LastCheck::Unchanged(r) => write!(f, "unchanged {r}"),
            LastCheck::Error(e) => write!(f, "error {e}"),
        }
    }
}

/// Whether the disk cache stores what is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// No disk cache (a local store).
    None,
    /// Storing.
    Storing,
    /// Not storing since a store failed (e.g. its file system is full): reads are served
    /// uncached.
    NotStoring {
        /// Unix seconds of the first failure.
        since: u64,
        /// The failure.
        reason: String,
    },
}

/// `none`, `storing` or `not storing since UNIX_SECONDS: REASON`.
impl std::fmt::Display for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheState::None => f.write_str("none"),
            CacheState::Storing => f.write_str("storing"),
            CacheState::NotStoring { since, reason } => {
                write!(f, "not storing since {since}: {reason}")
            }
        }
    }
}

/// Chunks loaded before a reader asked for them, by one kind of prefetch (see
/// [`crate::prefetch`], "Counting").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefetched {
    /// Chunks loaded, each load once.
    pub chunks: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
    /// Encoded bytes those loads downloaded (a part of [`Status::bytes_fetched`]).
    pub downloaded: u64,
}

/// Everything `depotfs status` shows of a mount, as of one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Repository name.
    pub name: String,
    /// Revision served.
    pub revision: u64,
    /// Its root directory object.
    pub root: String,
    /// When it was published, Unix nanoseconds.
    pub published_ns: i64,
    /// What was mounted (URL or path).
    pub source: String,
    /// The server in use.
    pub host: String,
    /// The proxy in use (or `DIRECT`).
    pub proxy: String,
    /// Every proxy, in order.
    pub proxies: Vec<String>,
    /// Unix seconds since every server is unreachable; 0 online.
    pub offline_since: u64,
    /// Switches to another proxy after a failure.
    pub proxy_failovers: u64,
    /// Switches to another server after a failure.
    pub server_failovers: u64,
    /// The longest a read waits for a download, ms (0: a local store).
    pub request_bound_ms: u64,
    /// Manifests refused at a revision check, by reason.
    pub manifest_refused: BTreeMap<Refusal, u64>,
    /// Revision checks started.
    pub checks_started: u64,
    /// Revision checks finished.
    pub checks: u64,
    /// The outcome of the last check, if one finished.
    pub last_check: Option<LastCheck>,
    /// The disk cache directory (`None`: a local store, no cache).
    pub cache_dir: Option<String>,
    /// Disk cache use, bytes.
    pub cache_used: u64,
    /// Disk cache limit, bytes.
    pub cache_limit: u64,
    /// Whether the cache stores.
    pub cache_state: CacheState,
    /// Objects the cache failed to store.
    pub cache_store_failures: u64,
    /// Objects evicted from the cache.
    pub evictions: u64,
    /// Served objects waiting for the cache's writer.
    #[serde(default)]
    pub cache_pending: u64,
    /// Objects served without caching because the writer's queue stayed full (the writer
    /// stalled; otherwise downloads wait for room).
    #[serde(default)]
    pub cache_dropped: u64,
    /// Objects answered from memory or disk.
    pub hits: u64,
    /// Objects downloaded.
    pub misses: u64,
    /// Encoded bytes downloaded.
    pub bytes_fetched: u64,
    /// File bytes returned to readers.
    pub bytes_read: u64,
    /// Downloads that failed verification.
    pub corrupt: u64,
    /// Loaded by readahead for sequential readers.
    pub readahead: Prefetched,
    /// Loaded from images' access lists when they were opened.
    pub access_list: Prefetched,
    /// File bytes of access lists put into the kernel's page cache.
    #[serde(default)]
    pub page_cache_pushed: u64,
    /// Where reads' time went: each stage of the read path by name, in order (see
    /// `stages.rs`).
    pub stages: Vec<(String, crate::stages::Totals)>,
    /// Inodes known to the kernel.
    pub inodes: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's depotfs version.
    pub version: String,
    /// When the daemon started serving, Unix nanoseconds.
    pub started_ns: i64,
}

impl Status {
    /// The status of `fs` now.
    pub fn of(fs: &DepotFs) -> Status {
        let m = fs.manifest();
        let store = fs.store();
        let st = &store.stats;
        let b = store.backend();
        let net = b.net();
        let (proxy_failovers, server_failovers) = net.map_or((0, 0), |h| h.failovers());
        let disk = store.disk();
        let (cache_used, cache_limit) = disk.map_or((0, 0), |d| d.usage());
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Status {
            name: m.name.clone(),
            revision: m.revision,
            root: m.root.to_string(),
            published_ns: m.published_ns,
            source: fs.info().source.clone(),
            host: b.current(),
            proxy: b.current_proxy(),
            proxies: net.map_or(vec![DIRECT.to_string()], |h| {
                h.proxy_labels().into_iter().map(String::from).collect()
            }),
            offline_since: b.offline_since().unwrap_or(0),
            proxy_failovers,
            server_failovers,
            request_bound_ms: store
                .request_bound()
                .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            manifest_refused: st.manifest_refused.lock().expect("poisoned").clone(),
            checks_started: n(&st.checks_started),
            checks: n(&st.checks),
            last_check: st.last_check.lock().expect("poisoned").clone(),
            cache_dir: disk.map(|d| d.dir().display().to_string()),
            cache_used,
            cache_limit,
            cache_state: disk.map_or(CacheState::None, |d| d.state()),
            cache_store_failures: disk.map_or(0, |d| d.store_failures()),
            evictions: disk.map_or(0, |d| d.evictions()),
            cache_pending: disk.map_or(0, |d| d.pending()),
            cache_dropped: disk.map_or(0, |d| d.dropped()),
            hits: n(&st.hits),
            misses: n(&st.misses),
            bytes_fetched: n(&st.bytes_fetched),
            bytes_read: n(&st.bytes_read),
            corrupt: n(&st.corrupt),
            readahead: Prefetched {
                chunks: n(&st.readahead_objects),
                bytes: n(&st.readahead_bytes),
                downloaded: n(&st.readahead_fetched),
            },
            access_list: Prefetched {
                chunks: n(&st.list_objects),
                bytes: n(&st.list_bytes),
                downloaded: n(&st.list_fetched),
            },
            page_cache_pushed: n(&st.list_pushed),
            stages: store.stages.snapshot(),
            inodes: fs.inode_count() as u64,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ns: fs.info().started_ns,
        }
    }

    /// The value of attribute `name` (`user.depotfs.…`, one of [`XATTRS_ANY`] and
    /// [`XATTRS_ROOT`]), `None` for other names.
    pub fn xattr(&self, name: &str) -> Option<String> {
        let pair = |a: u64, b: u64| format!("{a} {b}");
        Some(match name.strip_prefix("user.depotfs.")? {
            "status" => serde_json::to_string(self).expect("serialising to memory cannot fail"),
            "revision" => self.revision.to_string(),
            "root" => self.root.clone(),
            "source" => self.source.clone(),
            "name" => self.name.clone(),
            "published_ns" => self.published_ns.to_string(),
            "cache_dir" => self.cache_dir.clone().unwrap_or_default(),
            "cache_used" => self.cache_used.to_string(),
            "cache_limit" => self.cache_limit.to_string(),
            "hits" => self.hits.to_string(),
            "misses" => self.misses.to_string(),
            "bytes_fetched" => self.bytes_fetched.to_string(),
            "bytes_read" => self.bytes_read.to_string(),
            "corrupt" => self.corrupt.to_string(),
            "pid" => self.pid.to_string(),
            "inodes" => self.inodes.to_string(),
            "host" => self.host.clone(),
            "version" => self.version.clone(),
            "started_ns" => self.started_ns.to_string(),
            // `READAHEAD ACCESS_LIST`: encoded bytes each downloaded.
            "prefetch_downloaded" => pair(self.readahead.downloaded, self.access_list.downloaded),
            "proxy" => self.proxy.clone(),
            "proxies" => self.proxies.join(";"),
            "offline_since" => self.offline_since.to_string(),
            "failovers" => pair(self.proxy_failovers, self.server_failovers),
            "manifest_refused" => self
                .manifest_refused
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            "request_bound_ms" => self.request_bound_ms.to_string(),
            "checks_started" => self.checks_started.to_string(),
            "checks" => self.checks.to_string(),
            "last_check" => self
                .last_check
                .as_ref()
                .map_or(String::new(), |c| c.to_string()),
            "evictions" => self.evictions.to_string(),
            "cache_pending" => self.cache_pending.to_string(),
            "cache_dropped" => self.cache_dropped.to_string(),
            // `CHUNKS BYTES`
            "readahead" => pair(self.readahead.chunks, self.readahead.bytes),
            "prefetched" => pair(self.access_list.chunks, self.access_list.bytes),
            "page_cache_pushed" => self.page_cache_pushed.to_string(),
            "cache_state" => self.cache_state.to_string(),
            "stages" => crate::stages::to_text(&self.stages),
            _ => return None,
        })
    }

    /// The status in `user.depotfs.status`; an error says what is wrong.
    pub fn from_json(text: &str) -> Result<Status, String> {
        serde_json::from_str(text).map_err(|e| format!("{XATTR_JSON}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            name: "galaxy".into(),
            revision: 7,
            root: "ab".repeat(32),
            published_ns: -5,
            source: "http://127.0.0.1:1/".into(),
            host: "http://127.0.0.1:1/".into(),
            proxy: DIRECT.into(),
            proxies: vec!["http://127.0.0.1:3128".into(), DIRECT.into()],
            offline_since: 0,
            proxy_failovers: 2,
            server_failovers: 3,
            request_bound_ms: 2500,
            manifest_refused: BTreeMap::from([(Refusal::Signature, 1), (Refusal::Older, 4)]),
            checks_started: 9,
            checks: 8,
            last_check: Some(LastCheck::Error(
                "manifest: signature does not verify".into(),
            )),
            cache_dir: Some("/var/cache/depotfs".into()),
            cache_used: 10,
            cache_limit: 20,
            cache_state: CacheState::NotStoring {
                since: 1_700_000_000,
                reason: "No space left on device (os error 28)".into(),
            },
            cache_store_failures: 1,
            evictions: 5,
            cache_pending: 7,
            cache_dropped: 8,
            hits: 11,
            misses: 12,
            bytes_fetched: 13,
            bytes_read: 14,
            corrupt: 15,
            readahead: Prefetched {
                chunks: 1,
                bytes: 2,
                downloaded: 3,
            },
            access_list: Prefetched {
                chunks: 4,
                bytes: 5,
                downloaded: 6,
            },
            page_cache_pushed: 7,
            stages: vec![(
                "hash".into(),
                crate::stages::Totals {
                    calls: 2,
                    nanos: 7000,
                    bytes: 150,
                },
            )],
            inodes: 16,
            pid: 17,
            version: "0.1.0".into(),
            started_ns: 18,
        }
    }

    /// The JSON `depotfs status` reads gives back the value the daemon had, and a damaged
    /// one is an error naming the attribute, never a panic.
    #[test]
    fn status_round_trips_through_its_attribute() {
        let s = sample();
        let json = s.xattr(XATTR_JSON).unwrap();
        assert_eq!(Status::from_json(&json).unwrap(), s);
        for cut in [0, 1, json.len() / 2, json.len() - 1] {
            let e = Status::from_json(&json[..cut]).unwrap_err();
            assert!(e.starts_with(XATTR_JSON), "{e}");
        }
    }

    /// Each attribute has the text it had when it was written by hand (scripts and the
    /// integration tests read them): pairs, `reason=n` in name order, the check outcome.
    #[test]
    fn attributes_keep_their_text() {
        let s = sample();
        let x = |n: &str| s.xattr(&format!("user.depotfs.{n}")).unwrap();
        assert_eq!(x("revision"), "7");
        assert_eq!(x("published_ns"), "-5");
        assert_eq!(x("proxies"), "http://127.0.0.1:3128;DIRECT");
        assert_eq!(x("failovers"), "2 3");
        assert_eq!(x("manifest_refused"), "older=4 signature=1");
        assert_eq!(x("last_check"), "error manifest: signature does not verify");
        assert_eq!(
            x("cache_state"),
            "not storing since 1700000000: No space left on device (os error 28)"
        );
        assert_eq!(x("readahead"), "1 2");
        assert_eq!(x("prefetched"), "4 5");
        assert_eq!(x("prefetch_downloaded"), "3 6");
        assert_eq!(x("page_cache_pushed"), "7");
        assert_eq!(x("cache_dir"), "/var/cache/depotfs");
        assert_eq!(x("stages"), "hash 2 7000 150\n");
        let local = Status {
            cache_dir: None,
            cache_state: CacheState::None,
            last_check: None,
            manifest_refused: BTreeMap::new(),
            ..sample()
        };
        for (n, v) in [
            ("cache_dir", ""),
            ("cache_state", "none"),
            ("last_check", ""),
            ("manifest_refused", ""),
        ] {
            assert_eq!(local.xattr(&format!("user.depotfs.{n}")).unwrap(), v, "{n}");
        }
        let checked = |c: LastCheck| Status {
            last_check: Some(c),
            ..sample()
        };
        assert_eq!(
            checked(LastCheck::New { now: 3, was: 2 }).xattr("user.depotfs.last_check"),
            Some("new 3 2".into())
        );
        assert_eq!(
            checked(LastCheck::Unchanged(3)).xattr("user.depotfs.last_check"),
            Some("unchanged 3".into())
        );
        // Every name offered on the root has a value; others have none.
        for n in XATTRS_ANY.iter().chain(&XATTRS_ROOT) {
            assert!(s.xattr(n).is_some(), "{n}");
        }
        assert_eq!(s.xattr("user.depotfs.hash"), None);
        assert_eq!(s.xattr("user.other"), None);
    }
}
