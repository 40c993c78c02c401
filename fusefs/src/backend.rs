//! Where objects come from: HTTP(S) servers serving `public/` (mirrors, reached directly or
//! through HTTP proxies), or a local `public/` directory. Backends move bytes only;
//! verification is the object store's job and caching the cache's.
//!
//! # Routes, failover and failback
//!
//! An HTTP backend has an ordered list of servers and an ordered list of proxies (a proxy
//! URL, or `DIRECT` for none); a *route* is a (server, proxy) pair. Requests go over the
//! current route (sticky, as CernVM-FS does). A failed attempt is classified:
//!
//! - **proxy failure** — the proxy could not be reached or timed out: the next proxy is
//!   tried with the same server. A timeout through a proxy may be the server's (a hung
//!   mirror behind a healthy proxy): a proxy that timed out is tried no more for this
//!   server in the pass, but is for the next one, and when every proxy left has timed out
//!   for a server, the server counts as failed and the next server is tried;
//! - **server failure** — the server could not be reached DIRECT, a proxy answered a gateway
//!   error (502/503/504), the server answered an error status (404 or 5xx for an object that
//!   must exist), or the object failed verification ([`Backend::corrupt`]): the next server
//!   is tried with the same proxy.
//!
//! Each switch is logged at warn with its reason and counted
//! (`depotfs_failovers_total{kind}`). After `failback_after` on a fallback route the
//! preferred proxy and server are tried again (CernVM-FS's PROXY_RESET_AFTER and
//! HOST_RESET_AFTER).
//!
//! # Bounds and offline mode
//!
//! One attempt is bounded by `timeout` (connecting by `connect_timeout`). A request tries
//! every route once per pass, and makes `retries` more passes after an exponential backoff
//! ([`backoff`]); the whole request is bounded by [`NetOptions::request_bound`]. When a
//! request has failed on every route the backend is **offline**: a further object request
//! asks for a probe (the mount's manifest check, see `mount.rs`) and waits for it to finish,
//! at most [`OFFLINE_WAIT`]; unless the probe found a server it then fails (EIO). Cached data stays
//! readable; the first successful fetch brings the backend back online.
//!
//! Offline means no server *answers*: a request that got an HTTP answer from some route (an
//! error status, a body cut short, or only the response head before the request's bound ran
//! out) fails by itself without taking the mount offline, and any answer, even an error,
//! ends offline mode. Nor does a request whose bound ran out while it waited for one of the
//! backend's connection slots (a busy mount, not a server gone): only an attempt that got no
//! answer within its own timeout, or could not connect, counts against the servers. An
//! attempt the request's bound cuts short is counted as a timeout of its route. The manifest never takes the mount
//! offline: a failed revision check (e.g. `/manifest` answering 500) leaves the current
//! revision readable.
//!
//! # Body bounds
//!
//! Every response body is bounded by what it can legitimately be, and reading stops once it
//! is past that: an object by its header plus the largest plaintext its referrer allows (a
//! chunk: 1 MiB), the manifest by [`MANIFEST_MAX`]. A longer Content-Length fails before the
//! body is read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The proxy word for "no proxy".
pub const DIRECT: &str = "DIRECT";

/// The longest a request made while offline waits for the probe it asked for.
pub const OFFLINE_WAIT: Duration = Duration::from_secs(2);

/// The largest manifest accepted ([`depotfs_catalog::manifest::MAX_LEN`]). A longer answer
/// is cut while it arrives and the check fails.
pub const MANIFEST_MAX: u64 = depotfs_catalog::manifest::MAX_LEN as u64;

/// Upper bounds (seconds) of the `depotfs_fetch_duration_seconds` histogram buckets.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Backoff before pass `pass` (1-based) of a request: 0.25 s doubling, capped at 4 s.
pub fn backoff(pass: u32) -> Duration {
    Duration::from_millis(250u64 << pass.saturating_sub(1).min(4))
}

/// How an HTTP backend reaches its servers.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Server base URLs (`public/`), in order of preference.
    pub servers: Vec<String>,
    /// Proxy URLs or [`DIRECT`], in order of preference.
    pub proxies: Vec<String>,
    /// Bound of a TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Bound of one attempt (one request on one route, body included).
    pub timeout: Duration,
    /// Extra passes over all routes after the first.
    pub retries: u32,
    /// Time on a fallback route after which the preferred one is tried again.
    pub failback_after: Duration,
}

impl NetOptions {
    /// The longest a request can take before it fails (EIO):
    /// `(retries + 1) × servers × proxies × timeout + Σ backoff(1..=retries)`.
    pub fn request_bound(&self) -> Duration {
        let routes = (self.servers.len() * self.proxies.len()).max(1) as u32;
        let attempts = self.timeout * routes * (self.retries + 1);
        attempts + (1..=self.retries).map(backoff).sum::<Duration>()
    }
}

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Attempts by result: ok, error, timeout, corrupt, cut (see [`RESULTS`]).
    pub results: [AtomicU64; 5],
    /// Attempts per histogram bucket (not cumulative; the last one is `+Inf`).
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of attempt durations, microseconds.
    pub sum_us: AtomicU64,
}

/// The `result` label values, in the order of [`RouteStats::results`].
/// `timeout`: no answer within the attempt's own timeout (or none when the request's bound
/// cut it at 90 % of that or later); `cut`: the request's bound ended the attempt before
/// that, answered or not (the request ran out of time, not the route).
pub const RESULTS: [&str; 5] = ["ok", "error", "timeout", "corrupt", "cut"];

impl RouteStats {
    fn record(&self, result: usize, took: Duration) {
        self.results[result].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// An attempt under way on a route, dropped before it records its own result (the request's
/// timer cancelled it): one dropped after (almost) its own timeout without an answer counts
/// as a timeout and as unanswered, as if its own timer had fired first; any other as `cut`.
struct Unrecorded<'a> {
    route: Option<(&'a RouteStats, Instant)>,
    timeout: Duration,
    answered: &'a AtomicBool,
    unanswered: &'a AtomicBool,
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if let Some((route, start)) = self.route.take() {
            let took = start.elapsed();
            if !self.answered.load(Ordering::Relaxed) && took >= self.timeout.mul_f64(0.9) {
                route.record(2, took);
                self.unanswered.store(true, Ordering::Relaxed);
            } else {
                route.record(4, took);
            }
        }
    }
}

/// One proxy and the client that goes through it.
#[derive(Debug)]
struct Proxy {
    /// The URL, or [`DIRECT`].
    label: String,
    client: reqwest::Client,
}

/// An HTTP backend: servers × proxies, with failover, failback and offline mode.
#[derive(Debug)]
pub struct Http {
    opts: NetOptions,
    proxies: Vec<Proxy>,
    cur_server: AtomicUsize,
    cur_proxy: AtomicUsize,
    /// When the current server / proxy became current, ms since `epoch`.
    server_since: AtomicU64,
    proxy_since: AtomicU64,
    epoch: Instant,
    /// Bounds concurrent attempts so prefetch cannot flood the servers.
    permits: tokio::sync::Semaphore,
    /// Index `server * proxies + proxy`.
    routes: Vec<RouteStats>,
    /// Failovers: `[proxy, server]`.
    failovers: [AtomicU64; 2],
    /// Unix seconds since the backend is offline, `None` while online.
    offline: tokio::sync::watch::Sender<Option<u64>>,
    /// Wakes the prober (see [`Backend::probe_wanted`]).
    probe: tokio::sync::Notify,
    /// Probes finished (see [`Backend::probe_finished`]).
    probes: tokio::sync::watch::Sender<u64>,
}

/// Which side of a route failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Proxy,
    Server,
}

/// A failed attempt.
#[derive(Debug)]
struct Failure {
    side: Side,
    /// For the log line, e.g. `HTTP 502 via proxy http://…`.
    reason: String,
    error: Error,
    /// Did the route answer (an HTTP status line arrived)?
    answered: bool,
    /// Was it a timeout? Through a proxy, one cannot tell whether the proxy or the server
    /// behind it did not answer.
    timeout: bool,
}

/// Downloaded bytes and the server that sent them.
#[derive(Debug)]
pub struct Fetched {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The route (server, proxy) it came over (HTTP backends), to report a verification
    /// failure against.
    pub route: Option<(usize, usize)>,
}

/// One source of `public/` files.
#[derive(Debug)]
pub enum Backend {
    /// HTTP(S) servers, directly or through proxies.
    Http(Box<Http>),
    /// A local `public/` directory.
    Local(PathBuf),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The most specific cause of a reqwest error, e.g. `connection refused`.
fn cause(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
                _ => io.to_string(),
            };
        }
        last = s.to_string();
        source = s.source();
    }
    last
}

/// The HTTP client of one proxy (or [`DIRECT`]): environment proxy settings ignored
/// (the shared set-up of [`depotfs_http::client`], with this mount's bounds).
pub fn client(
    label: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client> {
    let proxy = if label.eq_ignore_ascii_case(DIRECT) {
        depotfs_http::Proxy::Direct
    } else {
        depotfs_http::Proxy::Url(label)
    };
    depotfs_http::client("depotfs", connect_timeout.min(timeout), proxy)
        .map_err(|e| Error::Io(format!("proxy {label:?}: {e}")))?
        .timeout(timeout)
        .read_timeout(timeout)
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| Error::Io(format!("HTTP client for proxy {label}: {e}")))
}

impl Backend {
    /// An HTTP backend over `o.servers` × `o.proxies` (one reqwest client per proxy; proxy
    /// settings in the environment are ignored).
    pub fn http(mut o: NetOptions) -> Result<Self> {
        if o.servers.is_empty() {
            return Err(Error::Io("no server URL given".into()));
        }
        for s in &mut o.servers {
            if !s.ends_with('/') {
                s.push('/');
            }
        }
        if o.proxies.is_empty() {
            o.proxies.push(DIRECT.into());
        }
        let proxies = o
            .proxies
            .iter()
            .map(|label| {
                let client = client(label, o.connect_timeout, o.timeout)?;
                let label = if label.eq_ignore_ascii_case(DIRECT) {
                    DIRECT.to_string()
                } else {
                    label.clone()
                };
                Ok(Proxy { label, client })
            })
            .collect::<Result<Vec<_>>>()?;
        let routes = (0..o.servers.len() * proxies.len())
            .map(|_| RouteStats::default())
            .collect();
        Ok(Backend::Http(Box::new(Http {
            opts: o,
            proxies,
            cur_server: AtomicUsize::new(0),
            cur_proxy: AtomicUsize::new(0),
            server_since: AtomicU64::new(0),
            proxy_since: AtomicU64::new(0),
            epoch: Instant::now(),
            permits: tokio::sync::Semaphore::new(32),
            routes,
            failovers: Default::default(),
            offline: tokio::sync::watch::Sender::new(None),
            probe: tokio::sync::Notify::new(),
            probes: tokio::sync::watch::Sender::new(0),
        })))
    }

    /// The HTTP side, if this is an HTTP backend.
    pub fn net(&self) -> Option<&Http> {
        match self {
            Backend::Http(h) => Some(h),
            Backend::Local(_) => None,
        }
    }

    /// Is this a local directory (then the disk cache is pointless)?
    pub fn is_local(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// The server currently in use (for `status`).
    pub fn current(&self) -> String {
        match self {
            Backend::Http(h) => h.opts.servers[h.cur_server.load(Ordering::Relaxed)].clone(),
            Backend::Local(p) => p.display().to_string(),
        }
    }

    /// The proxy currently in use, or [`DIRECT`].
    pub fn current_proxy(&self) -> String {
        match self {
            Backend::Http(h) => h.proxies[h.cur_proxy.load(Ordering::Relaxed)].label.clone(),
            Backend::Local(_) => DIRECT.into(),
        }
    }

    /// Unix seconds since the backend is offline, or `None`.
    pub fn offline_since(&self) -> Option<u64> {
        self.net().and_then(|h| *h.offline.borrow())
    }

    /// Fetch object `rel` (relative to `public/`), at most `limit` bytes long (a longer
    /// body fails as it arrives). `fresh` asks caches between us and the origin to
    /// revalidate: used to refetch an object that failed verification. While offline this
    /// fails within [`OFFLINE_WAIT`] unless a probe finds a server.
    pub async fn get(&self, rel: &str, fresh: bool, limit: u64) -> Result<Fetched> {
        match self {
            Backend::Local(dir) => {
                let p = dir.join(rel);
                let failed = |message: String| Error::Fetch {
                    what: p.display().to_string(),
                    message,
                };
                let len = tokio::fs::metadata(&p)
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .len();
                if len > limit {
                    return Err(failed(depotfs_http::BodyError::too_long(len, limit)));
                }
                let bytes = tokio::fs::read(&p)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Ok(Fetched { bytes, route: None })
            }
            Backend::Http(h) => {
                if h.offline.borrow().is_some() {
                    // Ask for a probe and wait for the next one to finish (or for any
                    // success), at most OFFLINE_WAIT.
                    let mut online = h.offline.subscribe();
                    let mut probes = h.probes.subscribe();
                    let seen = *probes.borrow_and_update();
                    h.probe.notify_one();
                    let _ = tokio::time::timeout(OFFLINE_WAIT, async {
                        tokio::select! {
                            _ = online.wait_for(Option::is_none) => {}
                            _ = probes.wait_for(|g| *g > seen) => {}
                        }
                    })
                    .await;
                    if h.offline.borrow().is_some() {
                        return Err(Error::Offline(rel.to_string()));
                    }
                }
                h.fetch(rel, fresh, h.opts.retries, limit).await
            }
        }
    }

    /// Fetch the manifest, bypassing caches between us and the origin. Also the probe of
    /// offline mode: it is tried even while offline, in one pass over the routes, and brings
    /// the backend back online when a server answers.
    pub async fn get_manifest(&self) -> Result<Vec<u8>> {
        match self {
            Backend::Local(_) => Ok(self.get("manifest", true, MANIFEST_MAX).await?.bytes),
            Backend::Http(h) => Ok(h.fetch("manifest", true, 0, MANIFEST_MAX).await?.bytes),
        }
    }

    /// Fetch the manifest at mount time, with every retry (the backend is not offline yet).
    pub async fn get_manifest_patiently(&self) -> Result<Vec<u8>> {
        match self {
            Backend::Local(_) => self.get_manifest().await,
            Backend::Http(h) => Ok(h
                .fetch("manifest", true, h.opts.retries, MANIFEST_MAX)
                .await?
                .bytes),
        }
    }

    /// Waits until a request made while offline asks for a probe.
    pub async fn probe_wanted(&self) {
        match self {
            Backend::Http(h) => h.probe.notified().await,
            Backend::Local(_) => std::future::pending().await,
        }
    }

    /// A probe (revision check) has finished: requests waiting while offline look again.
    pub fn probe_finished(&self) {
        if let Backend::Http(h) = self {
            h.probes.send_modify(|g| *g += 1);
        }
    }

    /// Mark the backend offline (mounting from a warm cache with no server answering).
    pub fn set_offline(&self) {
        if let Backend::Http(h) = self {
            h.go_offline();
        }
    }

    /// An object that came over `route` failed verification: recount that attempt from
    /// `ok` to `corrupt` and move to the next server, so the refetch goes elsewhere.
    pub fn corrupt(&self, route: Option<(usize, usize)>, reason: &str) {
        let (Backend::Http(h), Some((s, p))) = (self, route) else {
            return;
        };
        let stats = h.route(s, p);
        stats.results[0].fetch_sub(1, Ordering::Relaxed);
        stats.results[3].fetch_add(1, Ordering::Relaxed);
        let n = h.opts.servers.len();
        let next = (n > 1).then_some((s + 1) % n);
        h.switch(
            Side::Server,
            s,
            next,
            &format!("object failed verification: {reason}"),
        );
    }

    /// For `status` and the `user.depotfs.source` attribute.
    pub fn describe(&self) -> String {
        match self {
            Backend::Http(h) => h.opts.servers.join(";"),
            Backend::Local(p) => p.display().to_string(),
        }
    }
}

impl Http {
    /// The options in force.
    pub fn options(&self) -> &NetOptions {
        &self.opts
    }

    /// The proxy labels, in order.
    pub fn proxy_labels(&self) -> Vec<&str> {
        self.proxies.iter().map(|p| p.label.as_str()).collect()
    }

    /// The counters of route (`server`, `proxy`).
    pub fn route(&self, server: usize, proxy: usize) -> &RouteStats {
        &self.routes[server * self.proxies.len() + proxy]
    }

    /// Failovers so far: `(proxy, server)`.
    pub fn failovers(&self) -> (u64, u64) {
        (
            self.failovers[0].load(Ordering::Relaxed),
            self.failovers[1].load(Ordering::Relaxed),
        )
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Back to the preferred proxy and server once `failback_after` has passed.
    fn failback(&self) {
        let after = self.opts.failback_after.as_millis() as u64;
        let now = self.now_ms();
        for (cur, since, what) in [
            (&self.cur_proxy, &self.proxy_since, "proxy"),
            (&self.cur_server, &self.server_since, "server"),
        ] {
            let c = cur.load(Ordering::Relaxed);
            if c != 0
                && now.saturating_sub(since.load(Ordering::Relaxed)) >= after
                && cur
                    .compare_exchange(c, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                since.store(now, Ordering::Relaxed);
                let name = if what == "proxy" {
                    &self.proxies[0].label
                } else {
                    &self.opts.servers[0]
                };
                tracing::info!(
                    "{}s on a fallback {what}: trying the preferred {what} {name} again",
                    self.opts.failback_after.as_secs()
                );
            }
        }
    }

    /// Make `to` the current server or proxy if `from` still is, counting and logging it.
    fn switch(&self, side: Side, from: usize, to: Option<usize>, reason: &str) {
        let (cur, since, names, k): (_, _, Vec<&str>, _) = match side {
            Side::Proxy => (
                &self.cur_proxy,
                &self.proxy_since,
                self.proxies.iter().map(|p| p.label.as_str()).collect(),
                0,
            ),
            Side::Server => (
                &self.cur_server,
                &self.server_since,
                self.opts.servers.iter().map(String::as_str).collect(),
                1,
            ),
        };
        let what = if side == Side::Proxy {
            "proxy"
        } else {
            "server"
        };
        let Some(to) = to else {
            tracing::warn!(
                "{what} {} failed ({reason}); no other {what} left to try",
                names[from]
            );
            return;
        };
        if cur
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            since.store(self.now_ms(), Ordering::Relaxed);
            self.failovers[k].fetch_add(1, Ordering::Relaxed);
            let target = if side == Side::Proxy {
                names[to].to_string()
            } else {
                format!("server {}", names[to])
            };
            tracing::warn!(
                "{what} {} failed ({reason}); switching to {target}",
                names[from]
            );
        }
    }

    fn go_offline(&self) {
        let now = unix_now();
        let changed = self.offline.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(now);
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!("all servers unreachable; serving from cache");
        }
    }

    fn go_online(&self, server: usize) {
        let mut since = None;
        self.offline.send_if_modified(|v| {
            since = v.take();
            since.is_some()
        });
        if let Some(t) = since {
            tracing::warn!(
                "server {} answers again; leaving offline mode after {} s",
                self.opts.servers[server],
                unix_now().saturating_sub(t)
            );
        }
    }

    /// Try the routes, `1 + retries` passes, within the request bound; bodies of at most
    /// `limit` bytes. A failed object request takes the backend offline unless a route
    /// answered; a failed manifest request never does (see the module docs).
    async fn fetch(&self, rel: &str, fresh: bool, retries: u32, limit: u64) -> Result<Fetched> {
        let bound = NetOptions {
            retries,
            ..self.opts.clone()
        }
        .request_bound();
        let answered = AtomicBool::new(false);
        let unanswered = AtomicBool::new(false);
        let work = async {
            self.failback();
            let mut last = None;
            for pass in 0..=retries {
                if pass > 0 {
                    tokio::time::sleep(backoff(pass)).await;
                }
                if let Some(f) = self
                    .pass(rel, fresh, limit, &mut last, (&unanswered, &answered))
                    .await
                {
                    return Ok(f);
                }
            }
            Err(last.expect("at least one attempt"))
        };
        let result = match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: rel.to_string(),
                secs: bound.as_secs(),
            }),
        };
        // Offline only when an attempt failed for want of an answer and none answered: a
        // request whose own bound ran out while it waited for a connection slot, or while an
        // attempt was under way, says the mount is busy, not that the servers are gone.
        if result.is_err()
            && rel != "manifest"
            && unanswered.load(Ordering::Relaxed)
            && !answered.load(Ordering::Relaxed)
        {
            self.go_offline();
        }
        result
    }

    /// One pass: every route at most once, starting with the current one. Sets `answered`
    /// when a route answered, even with an error (and then leaves offline mode), and
    /// `unanswered` when an attempt failed without an answer (its own timeout, a refused
    /// connection). A proxy that
    /// times out is tried no more for this server, but may be for the next: through a proxy,
    /// a timeout may be the server's (one hung mirror must not hide the others). When every
    /// proxy left has timed out for a server, the server is taken as the one that failed.
    async fn pass(
        &self,
        rel: &str,
        fresh: bool,
        limit: u64,
        last: &mut Option<Error>,
        (unanswered, answered): (&AtomicBool, &AtomicBool),
    ) -> Option<Fetched> {
        let pick = |bad: &[bool], from: usize| {
            (0..bad.len())
                .map(|k| (from + k) % bad.len())
                .find(|&i| !bad[i])
        };
        let mut bad_s = vec![false; self.opts.servers.len()];
        let mut bad_p = vec![false; self.proxies.len()];
        // Proxies that timed out for the server being tried.
        let mut timed_p = vec![false; self.proxies.len()];
        loop {
            let Some(s) = pick(&bad_s, self.cur_server.load(Ordering::Relaxed)) else {
                // Every server failed through this proxy (e.g. it answers 502 for all):
                // the servers get another chance through the next proxy.
                let p = pick(&bad_p, self.cur_proxy.load(Ordering::Relaxed))?;
                bad_p[p] = true;
                let next = pick(&bad_p, p)?;
                tracing::warn!(
                    "every server failed via {}; trying them via {}",
                    self.proxies[p].label,
                    self.proxies[next].label
                );
                bad_s.fill(false);
                timed_p.fill(false);
                continue;
            };
            let usable: Vec<bool> = bad_p.iter().zip(&timed_p).map(|(b, t)| *b || *t).collect();
            let Some(p) = pick(&usable, self.cur_proxy.load(Ordering::Relaxed)) else {
                if !timed_p.contains(&true) {
                    return None; // every proxy failed for reasons of its own
                }
                // Every proxy left timed out for this server: the server did not answer.
                bad_s[s] = true;
                timed_p.fill(false);
                let next = pick(&bad_s, s);
                self.switch(Side::Server, s, next, "no answer through any proxy");
                continue;
            };
            match self
                .attempt((s, p), rel, fresh, limit, (unanswered, answered))
                .await
            {
                Ok(bytes) => {
                    self.cur_server.store(s, Ordering::Relaxed);
                    self.cur_proxy.store(p, Ordering::Relaxed);
                    self.go_online(s);
                    return Some(Fetched {
                        bytes,
                        route: Some((s, p)),
                    });
                }
                Err(f) => {
                    if f.answered {
                        answered.store(true, Ordering::Relaxed);
                        self.go_online(s);
                    } else {
                        unanswered.store(true, Ordering::Relaxed);
                    }
                    let (from, next) = {
                        let (bad, from) = match f.side {
                            Side::Proxy if f.timeout => (&mut timed_p, p),
                            Side::Proxy => (&mut bad_p, p),
                            Side::Server => (&mut bad_s, s),
                        };
                        bad[from] = true;
                        (from, pick(bad, from))
                    };
                    self.switch(f.side, from, next, &f.reason);
                    if f.side == Side::Server {
                        timed_p.fill(false); // the next server: every proxy again
                    }
                    *last = Some(f.error);
                }
            }
        }
    }

    /// One request on route (`s`, `p`), its body at most `limit` bytes; sets
    /// `request_answered` as soon as the route answers, `request_unanswered` if it is
    /// dropped unanswered at its own timeout ([`Unrecorded`]).
    async fn attempt(
        &self,
        (s, p): (usize, usize),
        rel: &str,
        fresh: bool,
        limit: u64,
        (request_unanswered, request_answered): (&AtomicBool, &AtomicBool),
    ) -> Result<Vec<u8>, Failure> {
        let proxy = &self.proxies[p];
        let direct = proxy.label == DIRECT;
        let url = format!("{}{rel}", self.opts.servers[s]);
        let secs = self.opts.timeout.as_secs();
        let via = if direct {
            String::new()
        } else {
            format!(" via proxy {}", proxy.label)
        };
        let answered = AtomicBool::new(false);
        let timed_out = || Failure {
            side: if direct { Side::Server } else { Side::Proxy },
            reason: format!("no answer within {secs} s"),
            error: Error::Timeout {
                what: url.clone(),
                secs,
            },
            answered: answered.load(Ordering::Relaxed),
            timeout: true,
        };
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                return timed_out();
            }
            let side = if e.is_connect() && !direct {
                Side::Proxy
            } else {
                Side::Server
            };
            Failure {
                side,
                reason: format!(
                    "{}{}",
                    cause(&e),
                    if side == Side::Server { &via } else { "" }
                ),
                error: Error::Fetch {
                    what: url.clone(),
                    message: format!("{}{via}", cause(&e)),
                },
                answered: answered.load(Ordering::Relaxed),
                timeout: false,
            }
        };
        // The server answered, and the answer is refused (`message` says why).
        let refused = |message: String| Failure {
            side: Side::Server,
            reason: message.clone(),
            error: Error::Fetch {
                what: url.clone(),
                message,
            },
            answered: true,
            timeout: false,
        };
        let too_big = |len: u64| {
            refused(format!(
                "{}{via}",
                depotfs_http::BodyError::too_long(len, limit)
            ))
        };
        let mut req = proxy.client.get(&url);
        if fresh {
            req = req
                .header("Cache-Control", "no-cache")
                .header("Pragma", "no-cache");
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let start = Instant::now();
        // An attempt the request's own timer drops is counted as a timeout.
        let mut unrecorded = Unrecorded {
            route: Some((self.route(s, p), start)),
            timeout: self.opts.timeout,
            answered: &answered,
            unanswered: request_unanswered,
        };
        let work = async {
            let resp = req.send().await.map_err(failed)?;
            answered.store(true, Ordering::Relaxed);
            // The request's too: its own timer may drop this attempt before it returns, and
            // a route that answered must not take the mount offline.
            request_answered.store(true, Ordering::Relaxed);
            self.go_online(s);
            let status = resp.status();
            if !status.is_success() {
                return Err(refused(format!("HTTP {}{via}", status.as_u16())));
            }
            // The body's frames go straight into one buffer sized from Content-Length: one
            // copy (collecting into `Bytes` and then into a `Vec` was two); a body longer
            // than `limit` fails as soon as it is known to be.
            depotfs_http::read_body(resp, limit)
                .await
                .map_err(|e| match e {
                    depotfs_http::BodyError::TooLong(n) => too_big(n),
                    depotfs_http::BodyError::Transfer(e) => failed(e),
                })
        };
        let r = match tokio::time::timeout(self.opts.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        };
        let result = match &r {
            Ok(_) => 0,
            Err(Failure {
                error: Error::Timeout { .. },
                ..
            }) => 2,
            Err(_) => 1,
        };
        unrecorded.route = None;
        self.route(s, p).record(result, start.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt the request's bound cuts short counts as `cut`, unless it went (almost)
    /// its whole timeout unanswered: then it is the route's timeout, and unanswered.
    #[test]
    fn attempts_cut_by_the_request_bound_are_counted_apart() {
        let stats = RouteStats::default();
        let timeout = Duration::from_secs(10);
        let cases = [
            // (started this long ago, answered) -> (result index, unanswered)
            (Duration::from_secs(1), false, 4, false),
            (Duration::from_secs(9), true, 4, false),
            (Duration::from_secs(9), false, 2, true),
        ];
        for (ago, was_answered, result, want_unanswered) in cases {
            let (answered, unanswered) = (AtomicBool::new(was_answered), AtomicBool::new(false));
            let before: Vec<u64> = stats
                .results
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .collect();
            drop(Unrecorded {
                route: Some((&stats, Instant::now() - ago)),
                timeout,
                answered: &answered,
                unanswered: &unanswered,
            });
            for (i, r) in stats.results.iter().enumerate() {
                let grew = r.load(Ordering::Relaxed) - before[i];
                assert_eq!(
                    grew,
                    u64::from(i == result),
                    "{ago:?} {was_answered}: {}",
                    RESULTS[i]
                );
            }
            assert_eq!(
                unanswered.load(Ordering::Relaxed),
                want_unanswered,
                "{ago:?}"
            );
        }
    }

    #[test]
    fn bound_formula() {
        let o = NetOptions {
            servers: vec!["a".into(), "b".into()],
            proxies: vec![DIRECT.into()],
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            retries: 2,
            failback_after: Duration::from_secs(300),
        };
        // 3 passes × 2 routes × 3 s + 0.25 s + 0.5 s
        assert_eq!(o.request_bound(), Duration::from_millis(18_750));
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(4));
    }
}
