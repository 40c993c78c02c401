//! `--metrics-listen ADDR`: the mount's counters as Prometheus metrics at `GET /metrics`.
//!
//! The numbers are read at scrape time from the same counters `status` shows (the store's
//! `Stats`, the cache, the backend's per-route counters), by a [`Collector`] of the
//! prometheus crate; encoding and the HTTP server are [`depotfs_http::metrics`], shared with
//! `depotfs serve`. The names are listed in `fusefs/README.md`; the fleet tests and
//! `deploy/prometheus` rely on them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use depotfs_catalog::Refusal;
use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType, MetricType::COUNTER, MetricType::GAUGE};
use tokio::net::TcpListener;

use crate::backend::{BUCKETS, Http, RESULTS};
use crate::error::{Error, Result};
use crate::fs::DepotFs;
use crate::status::{CacheState, Status};

/// Bind `addr` now (so a bad address fails the mount) and serve scrapes in the background.
pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr, fs: Arc<DepotFs>) -> Result<()> {
    let listener = rt
        .block_on(TcpListener::bind(addr))
        .map_err(|e| Error::io(format!("metrics listener {addr}"), e))?;
    let registry = Registry::new();
    registry
        .register(Box::new(MountCollector(fs)))
        .map_err(|e| Error::Io(format!("metrics registry: {e}")))?;
    tracing::info!("metrics at http://{addr}/metrics");
    rt.spawn(depotfs_http::metrics::serve(listener, registry));
    Ok(())
}

/// The mount's metrics, gathered from its counters at each scrape.
#[derive(Debug)]
struct MountCollector(Arc<DepotFs>);

impl Collector for MountCollector {
    fn desc(&self) -> Vec<&Desc> {
        // The families are built at each scrape; nothing to check at registration.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.0)
    }
}

/// Families under construction: each sample goes into the last family begun.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    /// Begin family `name`.
    fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        self.0.push(f);
    }

    /// A sample of the last family with `labels`.
    fn sample(&mut self, labels: &[(&str, &str)], v: f64) {
        let f = self.0.last_mut().expect("a family begun");
        let mut m = proto::Metric::default();
        m.set_label(label_pairs(labels));
        match f.get_field_type() {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        f.mut_metric().push(m);
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: MetricType, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(&[], v);
    }
}

/// The label pairs of a sample.
fn label_pairs(labels: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

/// Every family of the mount, as of now.
fn families(fs: &DepotFs) -> Vec<MetricFamily> {
    let s = Status::of(fs);
    let backend = fs.store().backend();
    let mut o = Families::default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let published = s.published_ns as f64 / 1e9;
    o.family(
        "depotfs_info",
        GAUGE,
        "The mounted repository and its servers.",
    );
    o.sample(&[("repository", &s.name), ("source", &s.source)], 1.0);
    o.one(
        "depotfs_revision",
        GAUGE,
        "Revision being served.",
        s.revision as f64,
    );
    o.one(
        "depotfs_revision_timestamp_seconds",
        GAUGE,
        "When the revision being served was published (Unix time).",
        published,
    );
    o.one(
        "depotfs_revision_age_seconds",
        GAUGE,
        "Seconds since the revision being served was published.",
        (now - published).max(0.0),
    );
    o.one(
        "depotfs_cache_hits_total",
        COUNTER,
        "Objects answered from memory or the disk cache.",
        s.hits as f64,
    );
    o.one(
        "depotfs_cache_misses_total",
        COUNTER,
        "Objects downloaded.",
        s.misses as f64,
    );
    o.one(
        "depotfs_cache_bytes",
        GAUGE,
        "Bytes in the disk cache.",
        s.cache_used as f64,
    );
    o.one(
        "depotfs_cache_limit_bytes",
        GAUGE,
        "Disk cache limit.",
        s.cache_limit as f64,
    );
    o.one(
        "depotfs_cache_evictions_total",
        COUNTER,
        "Objects evicted from the disk cache to stay within its limit.",
        s.evictions as f64,
    );
    o.one(
        "depotfs_cache_storing",
        GAUGE,
        "1 while the disk cache stores what is fetched; 0 while it cannot (e.g. its file system is full) and reads are served without caching.",
        f64::from(u8::from(!matches!(
            s.cache_state,
            CacheState::NotStoring { .. }
        ))),
    );
    o.one(
        "depotfs_cache_store_failures_total",
        COUNTER,
        "Objects the disk cache failed to store (e.g. no space left on its file system).",
        s.cache_store_failures as f64,
    );
    o.one(
        "depotfs_cache_write_queue",
        GAUGE,
        "Served objects waiting for the disk cache's writer thread.",
        s.cache_pending as f64,
    );
    o.one(
        "depotfs_cache_dropped_total",
        COUNTER,
        "Objects served without caching because the cache writer's queue stayed full (the writer stalled; otherwise downloads wait for it).",
        s.cache_dropped as f64,
    );
    o.one(
        "depotfs_fetched_bytes_total",
        COUNTER,
        "Encoded bytes downloaded.",
        s.bytes_fetched as f64,
    );
    o.one(
        "depotfs_read_bytes_total",
        COUNTER,
        "File bytes returned to readers.",
        s.bytes_read as f64,
    );
    o.one(
        "depotfs_page_cache_pushed_bytes_total",
        COUNTER,
        "File bytes of images' access lists put into the kernel's page cache (verified, whole pages), so that reads of them need no request to the daemon.",
        s.page_cache_pushed as f64,
    );
    o.one(
        "depotfs_verification_failures_total",
        COUNTER,
        "Downloads that failed verification.",
        s.corrupt as f64,
    );
    {
        let by = [("readahead", s.readahead), ("access_list", s.access_list)];
        for (k, (name, help)) in [
            (
                "depotfs_prefetched_chunks_total",
                "Chunks loaded before a reader asked (each load once): by sequential readahead, or from an image's access list when it was opened.",
            ),
            (
                "depotfs_prefetched_bytes_total",
                "Plaintext bytes of those chunks.",
            ),
            (
                "depotfs_prefetched_downloaded_bytes_total",
                "Encoded bytes those loads downloaded (a part of depotfs_fetched_bytes_total).",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            o.family(name, COUNTER, help);
            for (label, p) in &by {
                let v = [p.chunks, p.bytes, p.downloaded][k];
                o.sample(&[("by", label)], v as f64);
            }
        }
    }
    for (name, help, pick) in crate::stages::METRICS {
        o.family(name, COUNTER, help);
        for (stage, totals) in &s.stages {
            o.sample(&[("stage", stage.as_str())], pick(*totals));
        }
    }
    o.one(
        "depotfs_inodes",
        GAUGE,
        "Inodes known to the kernel.",
        s.inodes as f64,
    );
    o.one(
        "depotfs_offline",
        GAUGE,
        "1 while every server is unreachable and only cached data is served.",
        f64::from(u8::from(s.offline_since > 0)),
    );
    o.family(
        "depotfs_manifest_refused_total",
        COUNTER,
        "Manifests refused at a revision check, by reason.",
    );
    for reason in [Refusal::Older, Refusal::Signature, Refusal::Name] {
        if !s.manifest_refused.contains_key(&reason) {
            o.sample(&[("reason", reason.as_str())], 0.0);
        }
    }
    for (reason, n) in &s.manifest_refused {
        o.sample(&[("reason", reason.as_str())], *n as f64);
    }
    o.family(
        "depotfs_current_server_info",
        GAUGE,
        "The route in use: 1 for the current server and proxy.",
    );
    o.sample(&[("server", &s.host), ("proxy", &s.proxy)], 1.0);
    if let Some(net) = backend.net() {
        net_families(&mut o, net);
    }
    o.0
}

/// Per-route fetch counters and durations, and failovers.
fn net_families(o: &mut Families, net: &Http) {
    let (pf, sf) = net.failovers();
    o.family(
        "depotfs_failovers_total",
        COUNTER,
        "Switches to another proxy or server after a failure.",
    );
    o.sample(&[("kind", "proxy")], pf as f64);
    o.sample(&[("kind", "server")], sf as f64);
    let proxies = net.proxy_labels();
    let routes: Vec<(usize, usize, &str, &str)> = net
        .options()
        .servers
        .iter()
        .enumerate()
        .flat_map(|(si, server)| {
            proxies
                .iter()
                .enumerate()
                .map(move |(pi, proxy)| (si, pi, server.as_str(), *proxy))
        })
        .collect();
    o.family(
        "depotfs_fetches_total",
        COUNTER,
        "Fetch attempts by route and result.",
    );
    for &(si, pi, server, proxy) in &routes {
        let r = net.route(si, pi);
        for (k, result) in RESULTS.iter().enumerate() {
            o.sample(
                &[("server", server), ("proxy", proxy), ("result", result)],
                r.results[k].load(Ordering::Relaxed) as f64,
            );
        }
    }
    let mut h = MetricFamily::default();
    h.set_name("depotfs_fetch_duration_seconds".into());
    h.set_help("Duration of fetch attempts by route.".into());
    h.set_field_type(MetricType::HISTOGRAM);
    for &(si, pi, server, proxy) in &routes {
        let r = net.route(si, pi);
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .enumerate()
            .map(|(k, le)| {
                cumulative += r.buckets[k].load(Ordering::Relaxed);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        cumulative += r.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let mut hist = proto::Histogram::default();
        hist.set_bucket(buckets);
        hist.set_sample_count(cumulative);
        hist.set_sample_sum(r.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let mut m = proto::Metric::default();
        m.set_label(label_pairs(&[("server", server), ("proxy", proxy)]));
        m.set_histogram(hist);
        h.mut_metric().push(m);
    }
    o.0.push(h);
}
