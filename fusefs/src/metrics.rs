//! `--metrics-listen ADDR`: the mount's counters in the Prometheus text format at
//! `GET /metrics`, from a minimal HTTP/1.1 responder on the mount's runtime (one request per
//! connection; the numbers are read at scrape time from the same counters `status` shows).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::backend::{BUCKETS, Http, RESULTS};
use crate::error::{Error, Result};
use crate::fs::DepotFs;

/// Bind `addr` now (so a bad address fails the mount) and serve scrapes in the background.
pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr, fs: Arc<DepotFs>) -> Result<()> {
    let listener = rt
        .block_on(TcpListener::bind(addr))
        .map_err(|e| Error::io(format!("metrics listener {addr}"), e))?;
    tracing::info!("metrics at http://{addr}/metrics");
    rt.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let fs = fs.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if head.starts_with("GET ") && path == "/metrics" {
                    ("200 OK", render(&fs))
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes families: one HELP and TYPE line each, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{labels} {v}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", v);
    }
}

/// The exposition text (Prometheus text format 0.0.4). The names are listed in
/// `fusefs/README.md`; the fleet tests rely on them.
pub fn render(fs: &DepotFs) -> String {
    let s = fs.snapshot();
    let m = fs.manifest();
    let store = fs.store();
    let backend = store.backend();
    let mut o = Out(String::new());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let published = m.published_ns as f64 / 1e9;
    o.family(
        "depotfs_info",
        "gauge",
        "The mounted repository and its servers.",
    );
    o.sample(
        "depotfs_info",
        &format!(
            "{{repository=\"{}\",source=\"{}\"}}",
            label(&s.name),
            label(&backend.describe())
        ),
        1,
    );
    o.one(
        "depotfs_revision",
        "gauge",
        "Revision being served.",
        s.revision,
    );
    o.one(
        "depotfs_revision_timestamp_seconds",
        "gauge",
        "When the revision being served was published (Unix time).",
        published,
    );
    o.one(
        "depotfs_revision_age_seconds",
        "gauge",
        "Seconds since the revision being served was published.",
        (now - published).max(0.0),
    );
    o.one(
        "depotfs_cache_hits_total",
        "counter",
        "Objects answered from memory or the disk cache.",
        s.hits,
    );
    o.one(
        "depotfs_cache_misses_total",
        "counter",
        "Objects downloaded.",
        s.misses,
    );
    o.one(
        "depotfs_cache_bytes",
        "gauge",
        "Bytes in the disk cache.",
        s.cache_used,
    );
    o.one(
        "depotfs_cache_limit_bytes",
        "gauge",
        "Disk cache limit.",
        s.cache_limit,
    );
    o.one(
        "depotfs_cache_evictions_total",
        "counter",
        "Objects evicted from the disk cache to stay within its limit.",
        store.disk().map_or(0, |d| d.evictions()),
    );
    o.one(
        "depotfs_cache_storing",
        "gauge",
        "1 while the disk cache stores what is fetched; 0 while it cannot (e.g. its file system is full) and reads are served without caching.",
        u8::from(store.disk().is_none_or(|d| d.storing())),
    );
    o.one(
        "depotfs_cache_store_failures_total",
        "counter",
        "Objects the disk cache failed to store (e.g. no space left on its file system).",
        store.disk().map_or(0, |d| d.store_failures()),
    );
    o.one(
        "depotfs_fetched_bytes_total",
        "counter",
        "Encoded bytes downloaded.",
        s.bytes_fetched,
    );
    o.one(
        "depotfs_read_bytes_total",
        "counter",
        "File bytes returned to readers.",
        s.bytes_read,
    );
    o.one(
        "depotfs_verification_failures_total",
        "counter",
        "Downloads that failed verification.",
        s.corrupt,
    );
    o.family(
        "depotfs_prefetched_chunks_total",
        "counter",
        "Chunks loaded before a reader asked (each load once): by sequential readahead, or from an image's access list when it was opened.",
    );
    o.family(
        "depotfs_prefetched_bytes_total",
        "counter",
        "Plaintext bytes of those chunks.",
    );
    o.family(
        "depotfs_prefetched_downloaded_bytes_total",
        "counter",
        "Encoded bytes those loads downloaded (a part of depotfs_fetched_bytes_total).",
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &store.stats;
        for (by, n, b, f) in [
            (
                "readahead",
                &st.readahead_objects,
                &st.readahead_bytes,
                &st.readahead_fetched,
            ),
            (
                "access_list",
                &st.list_objects,
                &st.list_bytes,
                &st.list_fetched,
            ),
        ] {
            let l = format!("{{by=\"{by}\"}}");
            o.sample("depotfs_prefetched_chunks_total", &l, n.load(Relaxed));
            o.sample("depotfs_prefetched_bytes_total", &l, b.load(Relaxed));
            o.sample(
                "depotfs_prefetched_downloaded_bytes_total",
                &l,
                f.load(Relaxed),
            );
        }
    }
    o.one(
        "depotfs_inodes",
        "gauge",
        "Inodes known to the kernel.",
        s.inodes,
    );
    o.one(
        "depotfs_offline",
        "gauge",
        "1 while every server is unreachable and only cached data is served.",
        u8::from(backend.offline_since().is_some()),
    );
    o.family(
        "depotfs_manifest_refused_total",
        "counter",
        "Manifests refused at a revision check, by reason.",
    );
    {
        let refused = store.stats.manifest_refused.lock().expect("poisoned");
        for reason in ["older", "signature", "name"] {
            if !refused.contains_key(reason) {
                o.sample(
                    "depotfs_manifest_refused_total",
                    &format!("{{reason=\"{reason}\"}}"),
                    0,
                );
            }
        }
        for (reason, n) in refused.iter() {
            o.sample(
                "depotfs_manifest_refused_total",
                &format!("{{reason=\"{}\"}}", label(reason)),
                n,
            );
        }
    }
    o.family(
        "depotfs_current_server_info",
        "gauge",
        "The route in use: 1 for the current server and proxy.",
    );
    o.sample(
        "depotfs_current_server_info",
        &format!(
            "{{server=\"{}\",proxy=\"{}\"}}",
            label(&backend.current()),
            label(&backend.current_proxy())
        ),
        1,
    );
    if let Some(net) = backend.net() {
        render_net(&mut o, net);
    }
    o.0
}

/// Per-route fetch counters and durations, and failovers.
fn render_net(o: &mut Out, net: &Http) {
    let (pf, sf) = net.failovers();
    o.family(
        "depotfs_failovers_total",
        "counter",
        "Switches to another proxy or server after a failure.",
    );
    o.sample("depotfs_failovers_total", "{kind=\"proxy\"}", pf);
    o.sample("depotfs_failovers_total", "{kind=\"server\"}", sf);
    let routes: Vec<(usize, usize, String)> = net
        .options()
        .servers
        .iter()
        .enumerate()
        .flat_map(|(si, server)| {
            net.proxy_labels()
                .into_iter()
                .enumerate()
                .map(move |(pi, proxy)| {
                    (
                        si,
                        pi,
                        format!("server=\"{}\",proxy=\"{}\"", label(server), label(proxy)),
                    )
                })
        })
        .collect();
    o.family(
        "depotfs_fetches_total",
        "counter",
        "Fetch attempts by route and result.",
    );
    for (si, pi, l) in &routes {
        let r = net.route(*si, *pi);
        for (k, result) in RESULTS.iter().enumerate() {
            o.sample(
                "depotfs_fetches_total",
                &format!("{{{l},result=\"{result}\"}}"),
                r.results[k].load(Ordering::Relaxed),
            );
        }
    }
    let h = "depotfs_fetch_duration_seconds";
    o.family(h, "histogram", "Duration of fetch attempts by route.");
    for (si, pi, l) in &routes {
        let r = net.route(*si, *pi);
        let mut cumulative = 0;
        for (k, le) in BUCKETS.iter().enumerate() {
            cumulative += r.buckets[k].load(Ordering::Relaxed);
            o.sample(
                &format!("{h}_bucket"),
                &format!("{{{l},le=\"{le}\"}}"),
                cumulative,
            );
        }
        cumulative += r.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        o.sample(
            &format!("{h}_bucket"),
            &format!("{{{l},le=\"+Inf\"}}"),
            cumulative,
        );
        o.sample(
            &format!("{h}_sum"),
            &format!("{{{l}}}"),
            r.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        o.sample(&format!("{h}_count"), &format!("{{{l}}}"), cumulative);
    }
}
