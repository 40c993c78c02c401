//! A registry client for the OCI distribution API (pull only): manifests and indexes by tag
//! or digest, blobs; the bearer-token flow on `401` + `WWW-Authenticate: Bearer …`, basic
//! auth from a docker `config.json`; https, or plain http for `--insecure-registry` hosts.
//!
//! Every document fetched by digest is checked against it; layer blobs are checked by the
//! caller while they stream (nothing is staged before the digest holds). Lengths hold too:
//! a blob whose Content-Length is not its descriptor's size is refused before it is read,
//! one that streams past it as soon as it does (`image::SizeChecked`), and a manifest or
//! index is read to its descriptor's size or at most `image::DOC_MAX` bytes. A layer blob
//! whose transfer breaks or stalls (`--timeout`) is resumed with a Range request
//! ([`Resuming`]), as `sync` resumes a file.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};

use crate::error::{Error, Result};
use crate::import::image::{self, INDEX_TYPES, MANIFEST_TYPES, Parsed};
use crate::import::reference::ImageName;
use crate::import::{LayerRef, Resolved, Source};

/// Credentials per registry host, from a docker `config.json` (`auths.HOST.auth` =
/// base64 `user:password`, or `username` + `password`).
#[derive(Debug, Default, Clone)]
pub struct Auths {
    by_host: HashMap<String, (String, String)>,
}

impl Auths {
    /// Read `file`.
    pub fn load(file: &Path) -> Result<Auths> {
        let text = std::fs::read(file).map_err(Error::io(file))?;
        let bad = |what: String| Error::Input(format!("--auth-file {}: {what}", file.display()));
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut by_host = HashMap::new();
        if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
            for (host, entry) in auths {
                let host = host
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
                let pair = if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a)
                        .map_err(|e| bad(format!("auths.{host}.auth: not base64: {e}")))?;
                    let s = String::from_utf8(raw)
                        .map_err(|_| bad(format!("auths.{host}.auth: not UTF-8")))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| bad(format!("auths.{host}.auth: not user:password")))?;
                    (u.to_string(), p.to_string())
                } else {
                    let get = |k: &str| entry.get(k).and_then(|x| x.as_str()).map(str::to_string);
                    match (get("username"), get("password")) {
                        (Some(u), Some(p)) => (u, p),
                        _ => continue,
                    }
                };
                by_host.insert(host, pair);
            }
        }
        Ok(Auths { by_host })
    }
}

/// A registry connection for one repository.
#[derive(Debug)]
pub struct Registry {
    client: Client,
    base: String,
    host: String,
    repo: String,
    reference: String,
    basic: Option<(String, String)>,
    /// How long a whole document request may take.
    doc_timeout: Duration,
    /// The Authorization header that last worked.
    auth: Mutex<Option<String>>,
}

/// Connection options shared by every registry source of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Credentials.
    pub auths: Auths,
    /// Hosts reached over plain http.
    pub insecure: Vec<String>,
    /// How long a registry may send nothing (no response, no byte of a body) before the
    /// request fails (`--timeout`); a whole document request (manifest, index, config,
    /// token) may take twice as long.
    pub stall: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auths: Auths::default(),
            insecure: Vec::new(),
            stall: Duration::from_secs(60),
        }
    }
}

fn param<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    // key="value" pairs after the scheme; values are quoted and contain no quotes.
    let i = header.find(&format!("{key}=\""))?;
    let rest = &header[i + key.len() + 2..];
    rest.split('"').next()
}

impl Registry {
    /// A connection to `host` for `repo`.
    pub fn new(host: &str, repo: &str, reference: &str, opts: &Options) -> Result<Registry> {
        let scheme = if opts.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        let proxy = depotfs_http::Proxy::Environment;
        // reqwest's blocking timeout bounds each wait (the response's headers, then each read
        // of its body), not the whole transfer: a stalled registry fails, a slow large blob
        // does not.
        let client = depotfs_http::blocking_client("depotfs", Duration::from_secs(30), proxy)
            .and_then(|b| b.timeout(opts.stall).build())
            .map_err(|e| Error::Input(format!("registry {host}: HTTP client: {e}")))?;
        Ok(Registry {
            client,
            base: format!("{scheme}://{host}/v2/{repo}"),
            host: host.to_string(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            basic: opts.auths.by_host.get(host).cloned(),
            doc_timeout: opts.stall * 2,
            auth: Mutex::new(None),
        })
    }

    fn what(&self, path: &str) -> String {
        format!("{}/{}{}", self.host, self.repo, path)
    }

    /// Send `req()` with the current credentials; on 401, authenticate as the registry asks
    /// (bearer token or basic) and send it once more.
    fn send(&self, path: &str, req: impl Fn() -> RequestBuilder) -> Result<Response> {
        let what = self.what(path);
        let net =
            |e: reqwest::Error| Error::Input(format!("{what}: {}", depotfs_http::error_chain(&e)));
        let with_auth = |r: RequestBuilder| match self.auth.lock().expect("not poisoned").clone() {
            Some(a) => r.header(AUTHORIZATION, a),
            None => r,
        };
        let resp = with_auth(req()).send().map_err(net)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check(resp, &what);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bearer = challenge.to_ascii_lowercase().starts_with("bearer");
        let header = if bearer {
            Some(format!("Bearer {}", self.token(&challenge, &what)?))
        } else {
            self.basic.as_ref().map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            })
        };
        let Some(header) = header else {
            return Err(Error::Input(format!(
                "{what}: 401 unauthorized and no credentials for {} (give --auth-file)",
                self.host
            )));
        };
        *self.auth.lock().expect("not poisoned") = Some(header);
        let resp = with_auth(req()).send().map_err(net)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let refused = if bearer {
                format!(
                    "the registry refused the token from {} (expired, or not for this repository)",
                    param(&challenge, "realm").unwrap_or("its realm")
                )
            } else {
                "the registry refused the credentials".to_string()
            };
            return Err(Error::Input(format!("{what}: 401 unauthorized: {refused}")));
        }
        check(resp, &what)
    }

    /// The bearer-token flow: GET realm?service=…&scope=… (with basic credentials when we
    /// have them), answer `{"token": …}` or `{"access_token": …}`.
    fn token(&self, challenge: &str, what: &str) -> Result<String> {
        let realm = param(challenge, "realm").ok_or_else(|| {
            Error::Input(format!(
                "{what}: bearer challenge without realm: {challenge}"
            ))
        })?;
        let scope = param(challenge, "scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut query = vec![("scope", scope)];
        if let Some(s) = param(challenge, "service") {
            query.push(("service", s.to_string()));
        }
        let url = reqwest::Url::parse_with_params(realm, &query)
            .map_err(|e| Error::Input(format!("{what}: bad token realm {realm:?}: {e}")))?;
        let mut req = self.client.get(url).timeout(self.doc_timeout);
        if let Some((u, p)) = &self.basic {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().map_err(|e| {
            Error::Input(format!(
                "{what}: token from {realm}: {}",
                depotfs_http::error_chain(&e)
            ))
        })?;
        let resp = check(resp, &format!("token from {realm}"))?;
        let body = image::read_doc(resp, realm)?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Input(format!("token from {realm}: not JSON: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Input(format!("token from {realm}: no token in the answer")))
    }

    /// A manifest or index by tag or digest: its bytes and content type. By digest, the
    /// bytes are checked against it, and against `size` when a descriptor gave one.
    fn manifest(&self, reference: &str, size: Option<u64>) -> Result<(Vec<u8>, Option<String>)> {
        let path = format!("/manifests/{reference}");
        let accept = INDEX_TYPES
            .iter()
            .chain(&MANIFEST_TYPES)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let url = format!("{}{path}", self.base);
        let resp = self.send(&path, || {
            self.client
                .get(&url)
                .header(ACCEPT, &accept)
                .timeout(self.doc_timeout)
        })?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let what = self.what(&path);
        let bytes = match size {
            Some(size) => image::read_doc_sized(resp, size, &what)?,
            None => image::read_doc(resp, &what)?,
        };
        // A tag is taken as it comes; a digest (the reference's, or an index entry's, whose
        // syntax `image::parse` checked) must hold.
        if reference.starts_with("sha256:") {
            image::verify(&bytes, reference, &what)?;
        }
        Ok((bytes, ct))
    }

    /// A blob of `size` bytes (its descriptor's), streamed (the caller checks its digest and
    /// its length). A Content-Length other than `size` is refused before any byte is read.
    fn blob(&self, digest: &str, size: u64) -> Result<Response> {
        let path = format!("/blobs/{digest}");
        let url = format!("{}{path}", self.base);
        let resp = self.send(&path, || self.client.get(&url))?;
        match resp.content_length() {
            Some(n) if n != size => Err(Error::Input(format!(
                "{}: the registry sends {n} bytes, the manifest's descriptor gives {size}; refused",
                self.what(&path)
            ))),
            _ => Ok(resp),
        }
    }
}

fn check(resp: Response, what: &str) -> Result<Response> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(Error::Input(format!("{what}: HTTP {}", resp.status())))
    }
}

impl Source for Registry {
    fn resolve(&self, platform: &str) -> Result<Resolved> {
        let (mut bytes, mut ct) = self.manifest(&self.reference, None)?;
        let mut what = self.what(&format!("/manifests/{}", self.reference));
        for _ in 0..2 {
            match image::parse(&bytes, ct.as_deref(), &what)? {
                Parsed::Index(entries) => {
                    let d = image::choose(&entries, platform, &what)?;
                    what = self.what(&format!("/manifests/{}", d.digest));
                    (bytes, ct) = self.manifest(&d.digest, Some(d.size))?;
                }
                Parsed::Manifest { config, layers } => {
                    let cpath = format!("/blobs/{}", config.digest);
                    let cbytes = image::read_doc_sized(
                        self.blob(&config.digest, config.size)?,
                        config.size,
                        &self.what(&cpath),
                    )?;
                    image::verify(&cbytes, &config.digest, &self.what(&cpath))?;
                    let diff_ids = image::diff_ids(&cbytes, &self.what(&cpath))?;
                    let name = ImageName {
                        repo: self.repo.clone(),
                        tag: self.reference.clone(),
                    };
                    return Resolved::new(name, layers, Some(diff_ids), &what);
                }
            }
        }
        Err(Error::Input(format!(
            "{what}: an index inside an index inside an index"
        )))
    }

    fn open(&self, layer: &LayerRef) -> Result<Box<dyn Read + '_>> {
        let first = self.blob(&layer.locator, layer.size)?;
        Ok(Box::new(Resuming {
            registry: self,
            digest: layer.locator.clone(),
            size: layer.size,
            pos: 0,
            resp: Some(first),
            failures: 0,
        }))
    }
}

/// Failed attempts in a row after which a blob download is given up ([`Resuming`]).
pub const BLOB_ATTEMPTS: u32 = 5;

/// A layer blob's bytes that survive a dropped or stalled transfer: the rest is asked for
/// again with `Range: bytes=POS-`, and must come as `206` with a `Content-Range` that starts
/// at POS and has the blob's size; at most [`BLOB_ATTEMPTS`] failures in a row (one that
/// delivers bytes resets the count), with backoff. The caller checks the digest over every
/// byte, so a registry that resumed with other bytes is refused at the end.
struct Resuming<'a> {
    registry: &'a Registry,
    digest: String,
    size: u64,
    pos: u64,
    resp: Option<Response>,
    failures: u32,
}

impl Resuming<'_> {
    /// The transfer broke (`why`): ask for the rest.
    fn resume(&mut self, why: String) -> std::io::Result<()> {
        self.resp = None;
        let mut why = why;
        loop {
            self.failures += 1;
            let path = format!("/blobs/{}", self.digest);
            let what = self.registry.what(&path);
            if self.failures >= BLOB_ATTEMPTS {
                return Err(std::io::Error::other(format!(
                    "{what}: {why} (gave up after {BLOB_ATTEMPTS} attempts at byte {} of {})",
                    self.pos, self.size
                )));
            }
            let wait = depotfs_http::retry_backoff(self.failures);
            tracing::warn!(
                "{what}: {why}; asking for the rest from byte {} in {wait:?} (attempt {} of {BLOB_ATTEMPTS})",
                self.pos,
                self.failures + 1
            );
            std::thread::sleep(wait);
            let url = format!("{}{path}", self.registry.base);
            let range = format!("bytes={}-", self.pos);
            let resp = match self.registry.send(&path, || {
                self.registry.client.get(&url).header(RANGE, &range)
            }) {
                Ok(r) => r,
                Err(e) => {
                    why = e.to_string();
                    continue;
                }
            };
            let want = format!("bytes {}-{}/{}", self.pos, self.size - 1, self.size);
            let got = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if resp.status() != StatusCode::PARTIAL_CONTENT || got != want {
                return Err(std::io::Error::other(format!(
                    "{what}: asked for the rest from byte {}, got HTTP {} with Content-Range {got:?}; refused",
                    self.pos,
                    resp.status().as_u16()
                )));
            }
            self.resp = Some(resp);
            return Ok(());
        }
    }
}

impl Read for Resuming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(resp) = self.resp.as_mut() else {
                return Ok(0);
            };
            match resp.read(buf) {
                Ok(0) if self.pos < self.size && !buf.is_empty() => {
                    self.resume(format!("the body ended at byte {}", self.pos))?
                }
                Ok(n) => {
                    if n > 0 {
                        self.failures = 0;
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(format!(
                    "reading the body: {}",
                    depotfs_http::error_chain(&e)
                ))?,
            }
        }
    }
}
