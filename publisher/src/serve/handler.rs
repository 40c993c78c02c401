//! One request in, one response out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::body::Incoming;
use hyper::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::depot::{self, Depot};
use super::download::H2_PIECE;
use super::files::{CHUNK, OpenError, Root, ServeBody, read_range};
use super::metrics::{self, Metrics};
use super::parse::{self, Kind, PathRefused, RangeAnswer, Target};

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    /// The served directory.
    pub root: Root,
    /// The depot view of the published tree, and the page at `/`.
    pub depot: Depot,
    /// Counters.
    pub metrics: Metrics,
}

/// The hyper service function: answer, count, log.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ServeBody>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let (resp, label) = respond(&state, &req).await;
    let took = started.elapsed();
    let status = resp.status();
    state.metrics.request(&method, status, label, took);
    tracing::debug!(
        %peer,
        %method,
        uri = %req.uri(),
        version = ?req.version(),
        status = status.as_u16(),
        body = resp.body().len(),
        micros = took.as_micros() as u64,
        "request"
    );
    let counter = state.metrics.body_bytes(label);
    Ok(resp.map(|b| b.counted(counter)))
}

async fn respond(
    state: &Arc<State>,
    req: &Request<Incoming>,
) -> (Response<ServeBody>, &'static str) {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (r, "error");
        }
    };
    if let Some(route) = depot::route(state.depot.prefix(), req.uri().path()) {
        let route = match route {
            Ok(r) => r,
            Err(PathRefused::BadRequest) => return (text(StatusCode::BAD_REQUEST), "error"),
            Err(PathRefused::NotFound) => return (text(StatusCode::NOT_FOUND), "error"),
        };
        let st = Arc::clone(state);
        let dreq = depot::Request {
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            headers: req.headers().clone(),
            head,
            h2: req.version() == hyper::Version::HTTP_2,
        };
        return match tokio::task::spawn_blocking(move || {
            st.depot.respond(&st.metrics, route, &dreq)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(path = req.uri().path(), "depot task failed: {e}");
                (text(StatusCode::INTERNAL_SERVER_ERROR), "error")
            }
        };
    }
    match parse::parse_path(req.uri().path()) {
        Err(PathRefused::BadRequest) => (text(StatusCode::BAD_REQUEST), "error"),
        Err(PathRefused::NotFound) => (text(StatusCode::NOT_FOUND), "error"),
        Ok(Target::Metrics) => {
            let held = state.depot.downloads().held_bytes();
            state.metrics.read_ahead(held);
            (metrics_response(&state.metrics, head), "metrics")
        }
        Ok(Target::File { rel, kind }) => {
            let st = Arc::clone(state);
            let headers = req.headers().clone();
            let h2 = req.version() == hyper::Version::HTTP_2;
            let task = tokio::task::spawn_blocking(move || {
                file_response(&st.root, &rel, kind, &headers, head, h2)
            });
            match task.await {
                Ok(Ok(r)) => {
                    let label = if r.status().is_success() || r.status() == StatusCode::NOT_MODIFIED
                    {
                        kind.label()
                    } else {
                        "error"
                    };
                    (r, label)
                }
                Ok(Err(e)) => {
                    tracing::error!(path = req.uri().path(), "serving a file: {e}");
                    (text(StatusCode::INTERNAL_SERVER_ERROR), "error")
                }
                Err(e) => {
                    tracing::error!(path = req.uri().path(), "serving task failed: {e}");
                    (text(StatusCode::INTERNAL_SERVER_ERROR), "error")
                }
            }
        }
    }
}

/// A short text response for errors: `404 Not Found\n`. No `Cache-Control`, like nginx.
pub(super) fn text(status: StatusCode) -> Response<ServeBody> {
    let body = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(ServeBody::bytes(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn metrics_response(m: &Metrics, head: bool) -> Response<ServeBody> {
    match m.render() {
        Ok(body) => {
            let len = body.len();
            let body = if head {
                ServeBody::empty()
            } else {
                ServeBody::bytes(body)
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(CONTENT_LENGTH, len.into());
            r
        }
        Err(e) => {
            tracing::error!("{e:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &hyper::header::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Open, check validators and ranges, and build the response (blocking: runs on the
/// blocking pool). Bodies up to [`CHUNK`] are read here; larger ones stream, in reads of
/// [`CHUNK`], or over HTTP/2 (`h2`) of [`H2_PIECE`]: a stream whose client opens no window
/// then holds one such read and hyper's copy of the one before.
fn file_response(
    root: &Root,
    rel: &Path,
    kind: Kind,
    req: &HeaderMap,
    head: bool,
    h2: bool,
) -> anyhow::Result<Response<ServeBody>> {
    let (file, meta) = match root.open(rel) {
        Ok(x) => x,
        Err(OpenError::NotFound) => return Ok(text(StatusCode::NOT_FOUND)),
        Err(OpenError::Io(e)) => {
            return Err(anyhow::Error::new(e).context(format!("opening {}", display(root, rel))));
        }
    };
    let len = meta.len();
    let mtime = meta.modified()?;
    let etag = parse::etag(mtime, len);
    let last_modified = httpdate::fmt_http_date(parse::whole_seconds(mtime));

    let mut r = Response::new(ServeBody::empty());
    let h = r.headers_mut();
    h.insert(ETAG, HeaderValue::from_str(&etag)?);
    h.insert(LAST_MODIFIED, HeaderValue::from_str(&last_modified)?);
    if parse::not_modified(
        header(req, &IF_NONE_MATCH),
        header(req, &IF_MODIFIED_SINCE),
        &etag,
        mtime,
    ) {
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static(kind.cache_control()),
        );
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(r);
    }
    let (start, end) = match ranged(&mut r, req, head, len, &etag, mtime) {
        Ok(span) => span,
        Err(unsatisfiable) => return Ok(*unsatisfiable),
    };
    let h = r.headers_mut();
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(kind.cache_control()),
    );
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind.content_type()));
    h.insert(CONTENT_LENGTH, (end - start).into());
    *r.body_mut() = if head {
        ServeBody::empty()
    } else if end - start <= CHUNK {
        ServeBody::bytes(read_range(&file, start, end).map_err(|e| {
            anyhow::Error::new(e).context(format!("reading {}", display(root, rel)))
        })?)
    } else {
        let step = if h2 { H2_PIECE as u64 } else { CHUNK };
        ServeBody::file(file, start, end, step)
    };
    Ok(r)
}

/// The one Range answer of `serve` (store files and the depot view): apply the request's
/// `Range` and `If-Range` ([`parse::requested_range`]) to the response `r` being built for a
/// representation of `len` bytes with validators `etag` and `mtime`. A partial answer makes
/// `r` a 206 with its `Content-Range`, a full one advertises `Accept-Ranges` (like nginx,
/// on full responses only); both give the bytes to send, `start..end`. An unsatisfiable or
/// absurd range gives the 416 to send instead, with `Content-Range: bytes */LEN`.
pub(super) fn ranged(
    r: &mut Response<ServeBody>,
    req: &HeaderMap,
    head: bool,
    len: u64,
    etag: &str,
    mtime: SystemTime,
) -> Result<(u64, u64), Box<Response<ServeBody>>> {
    let range = parse::requested_range(
        header(req, &RANGE),
        header(req, &IF_RANGE),
        head,
        etag,
        mtime,
        len,
    );
    match range {
        RangeAnswer::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut()
                .insert(CONTENT_RANGE, digits(format!("bytes */{len}")));
            Err(Box::new(r))
        }
        RangeAnswer::Partial { start, end } => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let cr = format!("bytes {start}-{}/{len}", end - 1);
            r.headers_mut().insert(CONTENT_RANGE, digits(cr));
            Ok((start, end))
        }
        RangeAnswer::Full => {
            r.headers_mut()
                .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            Ok((0, len))
        }
    }
}

/// A `Content-Range` value: ASCII letters, digits, spaces and `*-/`, always a valid header.
fn digits(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("ASCII digits and punctuation")
}

fn display(root: &Root, rel: &Path) -> String {
    let p: PathBuf = root.path().join(rel);
    p.display().to_string()
}
