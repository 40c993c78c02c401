//! `--metrics-listen ADDR`: the mount's counters in the Prometheus text format at
//! `GET /metrics`, from a minimal HTTP/1.1 responder on the mount's runtime (one request per
//! connection; the numbers are read at scrape time from the same counters `status` shows).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// The exposition text.
pub fn render(fs: &DepotFs) -> String {
    let s = fs.snapshot();
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(
            o,
            "# HELP depotfs_client_{name} {help}\n# TYPE depotfs_client_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(o, "depotfs_client_{name}{labels} {v}");
        }
    };
    let info = format!(
        "{{repository=\"{}\",server=\"{}\"}}",
        label(&s.name),
        label(&s.host)
    );
    metric(
        "info",
        "gauge",
        "The mounted repository and the server in use.",
        &[(&info, 1)],
    );
    metric(
        "revision",
        "gauge",
        "Revision being served.",
        &[("", s.revision)],
    );
    metric(
        "objects_total",
        "counter",
        "Objects requested, by where they came from.",
        &[
            ("{source=\"cache\"}", s.hits),
            ("{source=\"network\"}", s.misses),
        ],
    );
    metric(
        "fetched_bytes_total",
        "counter",
        "Encoded bytes downloaded.",
        &[("", s.bytes_fetched)],
    );
    metric(
        "read_bytes_total",
        "counter",
        "File bytes returned to readers.",
        &[("", s.bytes_read)],
    );
    metric(
        "corrupt_total",
        "counter",
        "Downloads that failed verification.",
        &[("", s.corrupt)],
    );
    metric(
        "cache_bytes",
        "gauge",
        "Bytes in the disk cache.",
        &[("", s.cache_used)],
    );
    metric(
        "cache_limit_bytes",
        "gauge",
        "Disk cache limit.",
        &[("", s.cache_limit)],
    );
    metric(
        "inodes",
        "gauge",
        "Inodes known to the kernel.",
        &[("", s.inodes)],
    );
    o
}
