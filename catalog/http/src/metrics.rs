//! Prometheus metrics over HTTP: the text exposition of a [`Registry`] ([`render`]) and a
//! small server answering `GET /metrics` with it ([`serve`]), for processes whose main job is
//! not serving HTTP (the mount's `--metrics-listen`).

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client has this long to send a request's headers (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The text exposition of everything `registry` gathers (families sorted by name).
pub fn render(registry: &Registry) -> Result<Vec<u8>, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(out)
}

/// Answer `GET`/`HEAD /metrics` on `listener` with [`render`] of `registry` until the runtime
/// stops; any other path is 404, any other method 405. HTTP/1.1 with keep-alive and h2c, as
/// `depotfs serve`.
pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors, mostly: wait instead of spinning.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            // A client that goes away mid-request is not worth a log line.
            let _ = builder.serve_connection(TokioIo::new(conn), service).await;
        });
    }
}

/// The response to one request.
fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<String> {
    let status = |code: StatusCode, text: &str| {
        let mut r = Response::new(text.to_string());
        *r.status_mut() = code;
        r
    };
    if req.uri().path() != "/metrics" {
        return status(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
    }
    let body = match render(registry) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            tracing::warn!("encoding metrics: {e}");
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
    };
    let mut r = Response::new(if req.method() == Method::HEAD {
        String::new()
    } else {
        body
    });
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real server on a loopback port: /metrics has the registry's families with the
    /// exposition content type; other paths are 404, other methods 405.
    #[test]
    fn serves_the_registry() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("depotfs_test_total", "A test counter.").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(serve(listener, registry));
        let client = reqwest::Client::new();
        let url = |path: &str| format!("http://{addr}{path}");
        rt.block_on(async {
            let r = client.get(url("/metrics")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
            let text = r.text().await.unwrap();
            assert!(
                text.contains("# TYPE depotfs_test_total counter\ndepotfs_test_total 7\n"),
                "{text}"
            );
            let r = client.get(url("/other")).send().await.unwrap();
            assert_eq!(r.status(), 404);
            let r = client.post(url("/metrics")).send().await.unwrap();
            assert_eq!(r.status(), 405);
        });
    }
}
