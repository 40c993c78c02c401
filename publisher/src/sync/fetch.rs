//! HTTP for `sync`: the listing page, and each file as a [`Download`] — a blocking [`Read`]
//! over the response body that resumes a dropped or short transfer with a Range request.
//!
//! The reader is what the staging path ([`crate::ingest::store_reader`]) consumes, so the
//! chunker never sees a break: after a read error, a timeout (no byte for `timeout`) or an
//! early end, the reader asks again for `Range: bytes=POS-` with `If-Range` (the first
//! response's ETag or Last-Modified), requires `206` with a `Content-Range` that starts at POS
//! and has the same total, and goes on from there. At most [`MAX_ATTEMPTS`] failed attempts
//! in a row (one that delivers bytes resets the count), with exponential backoff. A file that
//! changed upstream in between (`200` to the If-Range), a `4xx` or a length that disagrees
//! with the listing fails the file at once.
//!
//! reqwest's async client runs on a small tokio runtime; readers block on it from the
//! ingest threads ([`tokio::runtime::Handle::block_on`]), which are never runtime threads.

use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use depotfs_http::{Attempt, error_chain};
use hyper::body::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use tokio::runtime::Handle;

/// Failed attempts in a row before a download is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Largest listing page read (the real 118,594-name nginx page is about 17 MB).
pub const LISTING_MAX: usize = 64 << 20;

/// Bytes a name keeps unescaped in a URL (RFC 3986 unreserved).
const NAME_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URL of `name` in the directory `base` (which ends with `/`).
pub fn file_url(base: &str, name: &str) -> String {
    format!("{base}{}", utf8_percent_encode(name, NAME_ESCAPE))
}

/// An HTTP client bound to a runtime, with the sync's timeouts.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    rt: Handle,
    timeout: Duration,
}

impl Fetcher {
    /// A client whose connects and reads time out after `timeout`.
    pub fn new(rt: Handle, timeout: Duration) -> Result<Fetcher, String> {
        let client =
            depotfs_http::client("depotfs-sync", timeout, depotfs_http::Proxy::Environment)
                .and_then(|b| b.build())
                .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Fetcher {
            client,
            rt,
            timeout,
        })
    }

    /// The listing page at `url`, at most [`LISTING_MAX`] bytes, with retries.
    pub fn listing(&self, url: &str) -> Result<Vec<u8>, String> {
        let once = || async {
            let mut resp = self.send(url, None, None).await?;
            let mut body = Vec::new();
            loop {
                match tokio::time::timeout(self.timeout, resp.chunk()).await {
                    Ok(Ok(Some(b))) => {
                        if body.len() + b.len() > LISTING_MAX {
                            return Err(Attempt::Fatal(format!(
                                "the listing is larger than {} MiB",
                                LISTING_MAX >> 20
                            )));
                        }
                        body.extend_from_slice(&b);
                    }
                    Ok(Ok(None)) => return Ok(body),
                    Ok(Err(e)) => return Err(Attempt::Retry(format!("reading: {e}"))),
                    Err(_) => {
                        return Err(Attempt::Retry(format!("no data for {:?}", self.timeout)));
                    }
                }
            }
        };
        self.rt
            .block_on(depotfs_http::retry(MAX_ATTEMPTS, once, |why, wait, _| {
                tracing::warn!("{url}: {why}; retrying in {wait:?}");
            }))
    }

    /// GET `url` (from byte `from` with `If-Range: validator`), checking the status.
    async fn send(
        &self,
        url: &str,
        from: Option<u64>,
        validator: Option<&str>,
    ) -> Result<reqwest::Response, Attempt> {
        let mut req = self.client.get(url);
        if let Some(from) = from {
            req = req.header(RANGE, format!("bytes={from}-"));
            if let Some(v) = validator {
                req = req.header(IF_RANGE, v);
            }
        }
        let resp = match tokio::time::timeout(self.timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Attempt::Retry(error_chain(&e))),
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "no response within {:?}",
                    self.timeout
                )));
            }
        };
        let status = resp.status();
        let want = if from.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status == want {
            Ok(resp)
        } else if depotfs_http::transient_status(status) {
            Err(Attempt::Retry(format!("HTTP {status}")))
        } else if from.is_some() && status == StatusCode::OK {
            Err(Attempt::Fatal(
                "changed upstream during the download (200 to an If-Range request)".into(),
            ))
        } else {
            Err(Attempt::Fatal(format!("HTTP {status}")))
        }
    }

    /// Start downloading `url`, listed with `listed` bytes (exactly) if known, and at most
    /// `most` bytes in any case: a body that runs past it fails at once.
    pub fn open(&self, url: &str, listed: Option<u64>, most: u64) -> Result<Download, String> {
        let mut d = Download {
            fetcher: self.clone(),
            url: url.to_string(),
            resp: None,
            buf: Bytes::new(),
            pos: 0,
            len: listed,
            most,
            validator: None,
            last_modified_s: None,
            failures: 0,
            resumes: 0,
        };
        d.attempt(|d| d.first_response(listed))
            .map_err(|e| e.to_string())?;
        Ok(d)
    }
}

/// One file being downloaded: a [`Read`] that resumes (see the module docs).
#[derive(Debug)]
pub struct Download {
    fetcher: Fetcher,
    url: String,
    resp: Option<reqwest::Response>,
    buf: Bytes,
    pos: u64,
    len: Option<u64>,
    /// The most bytes the file may have (its length once known exactly).
    most: u64,
    validator: Option<String>,
    last_modified_s: Option<i64>,
    failures: u32,
    resumes: u32,
}

impl Download {
    /// The length the server announced (or the listing's).
    pub fn expected_len(&self) -> Option<u64> {
        self.len
    }

    /// The response's Last-Modified, Unix seconds.
    pub fn last_modified_s(&self) -> Option<i64> {
        self.last_modified_s
    }

    /// Resume requests made so far.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    fn first_response(&mut self, listed: Option<u64>) -> Result<(), Attempt> {
        let f = self.fetcher.clone();
        let resp = f.rt.block_on(f.send(&self.url, None, None))?;
        let announced = resp.content_length();
        if let (Some(a), Some(l)) = (announced, listed)
            && a != l
        {
            return Err(Attempt::Fatal(format!(
                "Content-Length is {a} but the listing says {l} bytes"
            )));
        }
        if let Some(a) = announced
            && a > self.most
        {
            return Err(Attempt::Fatal(format!(
                "Content-Length is {a}, more than the {} bytes the listing allows",
                self.most
            )));
        }
        self.len = listed.or(announced);
        if let Some(len) = self.len {
            self.most = self.most.min(len);
        }
        let header = |h| {
            resp.headers()
                .get(h)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(ETAG).filter(|e| !e.starts_with("W/"));
        let lm = header(LAST_MODIFIED);
        self.last_modified_s = lm
            .as_deref()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        self.validator = etag.or(lm);
        self.resp = Some(resp);
        Ok(())
    }

    fn range_response(&mut self) -> Result<(), Attempt> {
        let f = self.fetcher.clone();
        let resp =
            f.rt.block_on(f.send(&self.url, Some(self.pos), self.validator.as_deref()))?;
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = cr
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(span, total)| {
                let start: u64 = span.split_once('-')?.0.parse().ok()?;
                let total: Option<u64> = total.parse().ok();
                Some(start == self.pos && (self.len.is_none() || total == self.len))
            })
            .unwrap_or(false);
        if !ok {
            return Err(Attempt::Fatal(format!(
                "asked for bytes {}- of {:?}, got Content-Range {cr:?}",
                self.pos, self.len
            )));
        }
        self.resumes += 1;
        self.resp = Some(resp);
        Ok(())
    }

    /// Run `f` until it succeeds, fails fatally, or fails [`MAX_ATTEMPTS`] times in a row.
    fn attempt(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<(), Attempt>,
    ) -> std::io::Result<()> {
        loop {
            match f(self) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => {
                    return Err(std::io::Error::other(format!("{}: {e}", self.url)));
                }
                Err(Attempt::Retry(e)) => {
                    self.failures += 1;
                    if self.failures >= MAX_ATTEMPTS {
                        return Err(std::io::Error::other(format!(
                            "{}: {e} (gave up after {MAX_ATTEMPTS} attempts at byte {})",
                            self.url, self.pos
                        )));
                    }
                    let wait = depotfs_http::retry_backoff(self.failures);
                    tracing::warn!(
                        "{}: {e}; retrying from byte {} in {wait:?} (attempt {} of {MAX_ATTEMPTS})",
                        self.url,
                        self.pos,
                        self.failures + 1
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// The transfer broke (`why`): request the rest.
    fn resume(&mut self, why: String) -> std::io::Result<()> {
        self.resp = None;
        let mut first = Some(why);
        self.attempt(|d| match first.take() {
            Some(why) => Err(Attempt::Retry(why)),
            None => d.range_response(),
        })
    }
}

impl Read for Download {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf = self.buf.slice(n..);
                self.pos += n as u64;
                return Ok(n);
            }
            let Some(resp) = self.resp.as_mut() else {
                return Ok(0);
            };
            let timeout = self.fetcher.timeout;
            // The timer must be made inside the runtime: in the future, not before it.
            let next = self
                .fetcher
                .rt
                .block_on(async { tokio::time::timeout(timeout, resp.chunk()).await });
            match next {
                Ok(Ok(Some(b))) => {
                    if self.pos + b.len() as u64 > self.most {
                        self.resp = None;
                        return Err(std::io::Error::other(format!(
                            "{}: the body runs past {} bytes, {}; refused",
                            self.url,
                            self.most,
                            match self.len {
                                Some(_) => "its length",
                                None => "the most its listed size allows",
                            }
                        )));
                    }
                    if !b.is_empty() {
                        self.failures = 0;
                    }
                    self.buf = b;
                }
                Ok(Ok(None)) => match self.len {
                    Some(len) if self.pos < len => {
                        self.resume(format!("the body ended at byte {} of {len}", self.pos))?
                    }
                    _ => {
                        self.resp = None;
                        return Ok(0);
                    }
                },
                Ok(Err(e)) => self.resume(format!("reading the body: {}", error_chain(&e)))?,
                Err(_) => self.resume(format!("no data for {timeout:?}"))?,
            }
        }
    }
}
