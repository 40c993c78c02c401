//! Where objects come from: an HTTP(S) server (or proxy, CDN) serving `public/`, a local
//! `public/` directory, or an ordered list of servers with failover. Backends move bytes
//! only; verification is the object store's job and caching the cache's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// One source of `public/` files.
#[derive(Debug)]
pub enum Backend {
    /// `base` is the URL of `public/`, ending in `/`.
    Http {
        /// Base URL.
        base: String,
        /// One client: connection reuse, HTTP/2 when offered.
        client: reqwest::Client,
        /// Per-request timeout.
        timeout: Duration,
        /// Bounds concurrent requests so prefetch cannot flood the server.
        permits: tokio::sync::Semaphore,
    },
    /// A local `public/` directory.
    Local(PathBuf),
    /// Several servers (mirrors, proxies) serving the same repository. Requests go to the
    /// current one; when it fails (error, timeout, missing object) the next ones are tried
    /// in order, and the first that answers becomes current (sticky, as CernVM-FS does).
    Failover {
        /// The servers, in order of preference; none of them is itself a `Failover`.
        servers: Vec<Backend>,
        /// Index of the server in use.
        current: AtomicUsize,
    },
}

impl Backend {
    /// An HTTP backend for `url` (the served `public/`).
    pub fn http(url: &str, timeout: Duration) -> Result<Self> {
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .read_timeout(timeout)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("depotfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Io(format!("HTTP client: {e}")))?;
        Ok(Backend::Http {
            base,
            client,
            timeout,
            permits: tokio::sync::Semaphore::new(32),
        })
    }

    /// Servers tried in order (`urls` separated by `;` or `,`); one URL is a plain backend.
    pub fn http_list(urls: &str, timeout: Duration) -> Result<Self> {
        let mut servers: Vec<Backend> = urls
            .split([';', ','])
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| Backend::http(u, timeout))
            .collect::<Result<_>>()?;
        Ok(match servers.len() {
            0 => return Err(Error::Io(format!("no server URL in {urls:?}"))),
            1 => servers.pop().expect("one"),
            _ => Backend::Failover {
                servers,
                current: AtomicUsize::new(0),
            },
        })
    }

    /// Is this a local directory (then the disk cache is pointless)?
    pub fn is_local(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// The server currently in use (for `status`).
    pub fn current(&self) -> String {
        match self {
            Backend::Failover { servers, current } => {
                servers[current.load(Ordering::Relaxed) % servers.len()].describe()
            }
            other => other.describe(),
        }
    }

    /// Fetch `rel` (relative to `public/`). `fresh` asks caches between us and the origin
    /// to revalidate: used for the manifest and to refetch an object that failed verification.
    pub async fn get(&self, rel: &str, fresh: bool) -> Result<Vec<u8>> {
        let Backend::Failover { servers, current } = self else {
            return self.get_one(rel, fresh).await;
        };
        let first = current.load(Ordering::Relaxed);
        let mut last_err = None;
        for k in 0..servers.len() {
            let i = (first + k) % servers.len();
            match servers[i].get_one(rel, fresh).await {
                Ok(bytes) => {
                    if i != first {
                        tracing::warn!("switched to {}", servers[i].describe());
                        current.store(i, Ordering::Relaxed);
                    }
                    return Ok(bytes);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least two servers"))
    }

    async fn get_one(&self, rel: &str, fresh: bool) -> Result<Vec<u8>> {
        match self {
            Backend::Failover { .. } => unreachable!("servers of a Failover are not Failovers"),
            Backend::Local(dir) => {
                let p = dir.join(rel);
                tokio::fs::read(&p).await.map_err(|e| Error::Fetch {
                    what: p.display().to_string(),
                    message: e.to_string(),
                })
            }
            Backend::Http {
                base,
                client,
                timeout,
                permits,
            } => {
                let _permit = permits.acquire().await.expect("semaphore never closed");
                let url = format!("{base}{rel}");
                let secs = timeout.as_secs();
                let fail = |e: reqwest::Error| {
                    if e.is_timeout() {
                        Error::Timeout {
                            what: url.clone(),
                            secs,
                        }
                    } else {
                        Error::Fetch {
                            what: url.clone(),
                            message: e.to_string(),
                        }
                    }
                };
                let mut req = client.get(&url);
                if fresh {
                    req = req
                        .header("Cache-Control", "no-cache")
                        .header("Pragma", "no-cache");
                }
                // The whole exchange, body included, is bounded by the timeout.
                let work = async {
                    let resp = req.send().await.map_err(fail)?;
                    if !resp.status().is_success() {
                        return Err(Error::Fetch {
                            what: url.clone(),
                            message: format!("HTTP {}", resp.status()),
                        });
                    }
                    Ok(resp.bytes().await.map_err(fail)?.to_vec())
                };
                match tokio::time::timeout(*timeout, work).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout {
                        what: url.clone(),
                        secs,
                    }),
                }
            }
        }
    }

    /// For `status` and the `user.depotfs.source` attribute.
    pub fn describe(&self) -> String {
        match self {
            Backend::Http { base, .. } => base.clone(),
            Backend::Local(p) => p.display().to_string(),
            Backend::Failover { servers, .. } => servers
                .iter()
                .map(Backend::describe)
                .collect::<Vec<_>>()
                .join(";"),
        }
    }
}
