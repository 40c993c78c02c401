//! Prometheus metrics of `depotfs serve`, exposed at `/metrics`.

use std::time::Duration;

use anyhow::Context as _;
use hyper::{Method, StatusCode};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::parse::Kind;

/// Every metric the server keeps, in a registry of its own (two servers in one process,
/// as in tests, do not share counters).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    body_bytes: IntCounterVec,
    duration: Histogram,
    connections: IntCounter,
    open_connections: IntGauge,
    closed: IntCounterVec,
    depot_failures: IntCounterVec,
    depot_search: Histogram,
    depot_revision: IntGauge,
    read_ahead: IntGauge,
    reclaimed: IntCounter,
}

impl Metrics {
    /// Create and register the metrics.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "depotfs_serve_requests_total",
                "HTTP requests answered, by method, status code and kind of file",
            ),
            &["method", "status", "kind"],
        )?;
        let body_bytes = IntCounterVec::new(
            Opts::new(
                "depotfs_serve_response_body_bytes_total",
                "Response body bytes handed to the connection, by kind of file",
            ),
            &["kind"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "depotfs_serve_response_head_seconds",
                "Time from request to response head (open, stat, validators, first read of small files)",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ]),
        )?;
        let connections = IntCounter::new(
            "depotfs_serve_connections_total",
            "TCP connections accepted",
        )?;
        let open_connections = IntGauge::new(
            "depotfs_serve_open_connections",
            "TCP connections currently open",
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "depotfs_serve_connections_closed_total",
                "TCP connections ended, by why: client (closed by the client), silent, idle, evicted, stalled (closed by the server: no request in time, its slot given to a new client, no byte taken of a response), bad_request (a request hyper could not parse: never counted in requests_total), error (other)",
            ),
            &["why"],
        )?;
        let depot_failures = IntCounterVec::new(
            Opts::new(
                "depotfs_serve_depot_failures_total",
                "Depot-view responses that failed: before the head (500) or cut short in the body, by reason (verify: an object failed its hash or format; io: missing or unreadable)",
            ),
            &["stage", "reason"],
        )?;
        let depot_search = Histogram::with_opts(
            HistogramOpts::new(
                "depotfs_serve_depot_search_seconds",
                "Time to answer a search of the page at / (search and page rendering)",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let depot_revision = IntGauge::new(
            "depotfs_serve_depot_revision",
            "The revision the depot view serves new requests from",
        )?;
        let read_ahead = IntGauge::new(
            "depotfs_serve_depot_read_ahead_bytes",
            "Bytes of the depot view's read-ahead budget held by downloads (read or being read and verified, not yet taken by the connection)",
        )?;
        let reclaimed = IntCounter::new(
            "depotfs_serve_depot_read_ahead_reclaimed_bytes_total",
            "Bytes of read-ahead given back by downloads whose client took nothing for --read-ahead-timeout (read again if it reads on)",
        )?;
        registry.register(Box::new(read_ahead.clone()))?;
        registry.register(Box::new(reclaimed.clone()))?;
        registry.register(Box::new(depot_failures.clone()))?;
        registry.register(Box::new(depot_search.clone()))?;
        registry.register(Box::new(depot_revision.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(body_bytes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            body_bytes,
            duration,
            connections,
            open_connections,
            closed,
            depot_failures,
            depot_search,
            depot_revision,
            read_ahead,
            reclaimed,
        })
    }

    /// Count one answered request.
    pub fn request(&self, method: &Method, status: StatusCode, kind: &str, took: Duration) {
        let method = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            _ => "other",
        };
        self.requests
            .with_label_values(&[method, status.as_str(), kind])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// The counter of body bytes of `kind` (a [`Kind::label`] or `"metrics"`/`"error"`).
    pub fn body_bytes(&self, kind: &str) -> IntCounter {
        self.body_bytes.with_label_values(&[kind])
    }

    /// Count a failed depot-view response (`stage`: `head` or `body`).
    pub fn depot_failure(&self, stage: &str, reason: &str) {
        self.depot_failures
            .with_label_values(&[stage, reason])
            .inc();
    }

    /// The failure counter, for bodies that outlive the request handler.
    pub fn depot_failures_in_body(&self) -> IntCounterVec {
        self.depot_failures.clone()
    }

    /// Time one search took.
    pub fn depot_search(&self, took: Duration) {
        self.depot_search.observe(took.as_secs_f64());
    }

    /// The revision now served.
    pub fn depot_revision(&self, revision: u64) {
        self.depot_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// The read-ahead held now (set before each scrape).
    pub fn read_ahead(&self, held: u64) {
        self.read_ahead.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Read-ahead given back by idle downloads.
    pub fn reclaimed(&self, bytes: u64) {
        self.reclaimed.inc_by(bytes);
    }

    /// A connection ended (`why`: see `depotfs_serve_connections_closed_total`).
    pub fn closed(&self, why: &str) {
        self.closed.with_label_values(&[why]).inc();
    }

    /// A connection was accepted; the guard counts it closed when dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        self.open_connections.inc();
        ConnectionGuard(self.open_connections.clone())
    }

    /// The text exposition format.
    pub fn render(&self) -> anyhow::Result<Vec<u8>> {
        depotfs_http::metrics::render(&self.registry).context("encoding metrics")
    }

    /// Pre-create the label sets that always exist, so a scrape shows zeros, not gaps.
    pub fn touch(&self) {
        for k in [Kind::Object, Kind::Manifest, Kind::PublicKey, Kind::Other] {
            self.body_bytes(k.label());
        }
        for k in ["depot_file", "depot_listing", "page"] {
            self.body_bytes(k);
        }
        for stage in ["head", "body"] {
            for reason in ["verify", "io"] {
                self.depot_failures.with_label_values(&[stage, reason]);
            }
        }
    }
}

/// Decrements the open-connections gauge when a connection ends.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `Content-Type` of the text exposition format.
pub use depotfs_http::metrics::CONTENT_TYPE;
