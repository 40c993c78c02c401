//! `depotfs serve`: serve a store's `public/` directory over HTTP.
//!
//! The published store is plain static files, so any web server can serve it (most sites
//! will run nginx with `deploy/nginx/depotfs.conf`); this server exists so one binary is
//! enough for a small site, a test, or a mirror, and it answers with the same headers as the
//! shipped nginx configuration:
//!
//! | path | `Cache-Control` | content type |
//! |---|---|---|
//! | `objects/…` | `public, max-age=31536000, immutable` | `application/octet-stream` |
//! | `manifest` | `public, max-age=10` | `text/plain; charset=utf-8` |
//! | `repo.pub` | `public, max-age=300` | `text/plain; charset=utf-8` |
//! | anything else | `public, max-age=60` | `application/octet-stream` |
//! | `/metrics` | `no-store` | Prometheus text format |
//! | `/files/…` (depot view) | `public, max-age=60` | `application/octet-stream`, `text/html`, `application/json` |
//! | `/` (the page for people) | `no-cache` | `text/html; charset=utf-8` |
//!
//! Error responses (400, 404, 405, 416, 500) carry no `Cache-Control`, so no proxy keeps a
//! "404" for an object that a mirror has not copied yet.
//!
//! HTTP: HTTP/1.1 with keep-alive, and HTTP/2 over cleartext with prior knowledge (h2c; no
//! `Upgrade: h2c`). GET and HEAD, anything else is 405. One byte range per request (206,
//! `Content-Range`; several ranges or a malformed header are answered with the whole file,
//! a start past the end or an absurd header (more than 16 ranges, over 1 KiB) with 416: one
//! rule for the store's files and the depot view, `serve::handler::ranged`), `If-Range`, `ETag` (`"<mtime ns hex>-<length hex>"`),
//! `Last-Modified`, and `If-None-Match`/`If-Modified-Since` (304; `If-None-Match` wins when
//! both are sent; `If-Modified-Since` must be the `Last-Modified` date exactly, as nginx's
//! `if_modified_since exact`). A path with a trailing `/` names a directory: 404. The query string is ignored.
//!
//! Connections: at most (`RLIMIT_NOFILE` − 64) / 2 at once. One waiting for a request —
//! silent since it connected (closed after 10 s) or idle between keep-alive requests (closed
//! after 30 s) — gives its slot to a new client when every slot is taken, the one waiting
//! longest first (once it has waited a second: a client that just connected gets the time to
//! ask); one with a request in flight never does. A connection whose client takes no byte of
//! a response for 60 s is closed (`conns`). HTTP/2: at most 64 streams per connection, and
//! 64 KiB buffered per stream beyond the client's window, handed to hyper 64 KiB at a time
//! (so a stream whose client opens no window holds about 128 KiB here, 8 MiB a connection,
//! or up to 256 KiB more for a store file, which goes whole up to that size; the depot
//! view's read-ahead behind it is bounded for all downloads together, [`download`]).
//!
//! Confinement to the root, in two fences: the request path is split before
//! percent-decoding and any `.`/`..` segment (also `%2e%2e`), encoded `/` or NUL is a 400,
//! and a dot file (the temporary file of rsync or another copier filling a mirror) is a 404
//! ([`parse`]); then the file is opened with `openat2(RESOLVE_BENEATH)` relative to the
//! root, so the kernel refuses every way out, symlinks included, race-free (`files::Root`;
//! where openat2 is missing, the canonical path must lie under the root). Symlinks that stay
//! inside the root are followed (nginx's `disable_symlinks on` refuses them). Directories,
//! FIFOs and devices are 404.
//!
//! Streaming: files up to 256 KiB (the manifest, directory nodes, small files) are read in
//! the same blocking-pool call that opens them; larger ones (big chunks, anything) stream in
//! 256 KiB `pread`s on tokio's blocking pool, the next read running while the previous chunk
//! is sent, so memory per request stays at two chunks whatever the file size.
//!
//! Why hyper 1 + hyper-util rather than axum, actix-web or warp: the server has four
//! routes and no need for a router, extractors or middleware, but it needs exact control
//! over body streaming and over Range/conditional semantics (to match nginx); hyper gives
//! that with the least code between the socket and us. hyper, h2 and http-body are already
//! in the build for the client's reqwest, so the server adds only hyper-util's server parts
//! (axum would add tower, matchit and friends; tower-http's `ServeDir` follows symlinks out
//! of its root and fixes its own cache headers). hyper-util's `auto` builder gives HTTP/1.1
//! and h2c on one port, and its `GracefulShutdown` the clean stop on SIGTERM/SIGINT.
//!
//! The depot view ([`depot`]): the published tree of the current revision under
//! `--depot-prefix` (default `/files/`), as nginx autoindex pages (HTML, or JSON with
//! `?format=json`) and verified whole files (GET, HEAD, one Range, conditionals), and the page
//! at `/` (repository, revision, a server-side search of every file name, usage). Requests for
//! `/` and below the prefix go there; everything else is the static `public/` directory.
//!
//! Metrics at `/metrics`: `depotfs_serve_requests_total{method,status,kind}`,
//! `depotfs_serve_response_body_bytes_total{kind}`, `depotfs_serve_response_head_seconds`,
//! `depotfs_serve_connections_total`, `depotfs_serve_open_connections`,
//! `depotfs_serve_connections_closed_total{why}`,
//! `depotfs_serve_depot_failures_total{stage,reason}`, `depotfs_serve_depot_search_seconds`,
//! `depotfs_serve_depot_revision`. They are public, on
//! the same port; put the server behind a firewall rule or a proxy if that matters.
#![forbid(unsafe_code)]

mod conns;
pub mod depot;
pub mod download;
mod files;
mod handler;
mod metrics;
mod pages;
pub mod parse;
mod search;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use conns::{Conns, FIRST_REQUEST_TIMEOUT};
use handler::State;

/// How long a stop waits for requests in flight before it drops their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// HTTP/2 streams one connection may have open at once (nginx: 128). With
/// [`H2_SEND_BUF`] and [`download::H2_PIECE`], what one connection can hold in memory: each
/// stream's send buffer and the piece it was handed.
const H2_STREAMS: u32 = 64;

/// Bytes hyper buffers per HTTP/2 stream beyond what the client's window lets it send (h2's
/// default is 400 KiB: with 256 streams of clients that open no window, a connection held
/// 130 MB).
const H2_SEND_BUF: usize = 64 << 10;

/// File descriptors kept for everything but client connections: the listener, files being
/// served (one per request in flight), the runtime, logs.
const FD_RESERVE: u64 = 64;

/// How many connections may be open at once: below the file-descriptor limit
/// (`RLIMIT_NOFILE`), with [`FD_RESERVE`] kept back and one file per connection in flight.
fn connection_limit() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (soft.saturating_sub(FD_RESERVE) / 2).clamp(8, 1 << 16) as usize
}

/// `depotfs serve STORE --listen ADDR`: serve until SIGTERM or SIGINT.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let root = public_dir(&args.store)?;
    let prefix = depot::normalize_prefix(&args.depot_prefix)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("depotfs-serve")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = shutdown_signal()?;
        let timeouts = conns::Timeouts {
            idle: Duration::from_secs(args.idle_timeout.max(1)),
            send: Duration::from_secs(args.send_timeout.max(1)),
            read_ahead: Duration::from_secs(args.read_ahead_timeout.max(1)),
        };
        serve_with(listener, root, prefix, timeouts, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The directory to serve for STORE: `STORE/public` if it exists, else STORE itself if it
/// looks like a public directory (has a `manifest`: a mirror is a bare public directory).
pub fn public_dir(store: &Path) -> anyhow::Result<PathBuf> {
    let public = store.join("public");
    if let Some(url) = crate::store::Layout::new(store).bucket_url()? {
        anyhow::bail!(
            "{}'s public side is the bucket {url}: serve it from the bucket's endpoint (docs/s3.md)",
            store.display()
        );
    }
    if public.is_dir() {
        return Ok(public);
    }
    if store.join("manifest").is_file() {
        return Ok(store.to_path_buf());
    }
    anyhow::bail!(
        "{} has neither a public/ directory nor a manifest: not a depotfs store or mirror",
        store.display()
    )
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed before this returns.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: stopping");
    })
}

/// Every quarter of `after`, take back the read-ahead of depot downloads whose client has
/// taken nothing for `after` (module docs of [`download`]); ends with the server.
async fn reclaim_read_ahead(state: std::sync::Weak<State>, after: Duration) {
    let mut tick = tokio::time::interval(after / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(st) = state.upgrade() else { return };
        let (downloads, bytes) = st.depot.downloads().reclaim_idle(after);
        if downloads > 0 {
            st.metrics.reclaimed(bytes);
            tracing::debug!(
                "depot view: {downloads} downloads whose clients took nothing for {after:?} gave back {bytes} bytes of read-ahead"
            );
        }
    }
}

/// Serve `root` (a public directory) on `listener`, with the depot view under
/// `depot_prefix` (from [`depot::normalize_prefix`]), until `shutdown` resolves, then stop
/// accepting, let requests in flight finish for up to [`SHUTDOWN_GRACE`], and return.
pub async fn serve_on(
    listener: TcpListener,
    root: PathBuf,
    depot_prefix: String,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with(listener, root, depot_prefix, Default::default(), shutdown).await
}

/// [`serve_on`] with connections waiting as `timeouts` allow.
pub async fn serve_with(
    listener: TcpListener,
    root: PathBuf,
    depot_prefix: String,
    timeouts: conns::Timeouts,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let root = files::Root::new(&root)?;
    let state = Arc::new(State {
        depot: depot::Depot::new(root.path().to_path_buf(), depot_prefix),
        root,
        metrics: metrics::Metrics::new()?,
    });
    state.metrics.touch();
    tokio::spawn(reclaim_read_ahead(
        Arc::downgrade(&state),
        timeouts.read_ahead,
    ));
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(
        "depotfs serve: serving {} on http://{addr}",
        state.root.path().display()
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timer is off: it could close a connection whose client paused
    // while hyper still held the end of a response. `conns` times out requests that never
    // complete (10 s on a new connection, 30 s on a kept-alive one) and stalled sends.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS)
        .max_send_buf_size(H2_SEND_BUF);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let limit = connection_limit();
    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
    let conns = Arc::new(Conns::new(timeouts));
    tracing::info!(
        "depotfs serve: at most {limit} connections (file-descriptor limit), {FIRST_REQUEST_TIMEOUT:?} to send a first request, {:?} between keep-alive requests, {:?} for a client to take a byte of a response",
        timeouts.idle,
        timeouts.send
    );

    loop {
        // A free slot first, so an accepted connection always has its file descriptors. When
        // none is free, the connection that has waited longest for a request (silent since it
        // connected, or idle between keep-alive requests) gives its slot up: waiting
        // connections cannot keep a real request out.
        let slot = loop {
            if let Ok(s) = Arc::clone(&slots).try_acquire_owned() {
                break Some(s);
            }
            // None evictable yet (every one just connected, or has a response in flight):
            // look again when the oldest may be, or when a slot frees.
            let again = match conns.evict_oldest() {
                conns::Eviction::At(t) => t,
                conns::Eviction::Evicted | conns::Eviction::None => {
                    tokio::time::Instant::now() + timeouts.send
                }
            };
            tokio::select! {
                s = Arc::clone(&slots).acquire_owned() => break Some(s.expect("never closed")),
                () = tokio::time::sleep_until(again) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning or exiting.
                    tracing::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "TCP_NODELAY: {e}");
        }
        let guard = state.metrics.connection();
        let st = Arc::clone(&state);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let conns = Arc::clone(&conns);
        let (n, evicted, progress) = conns.register();
        let stream = conns::Watched::new(stream, progress);
        tokio::spawn(async move {
            let requests = Arc::clone(&conns);
            let metrics_st = Arc::clone(&st);
            let service = hyper::service::service_fn(move |req| {
                let in_flight = requests.begin(n);
                let st = Arc::clone(&st);
                async move {
                    let resp = handler::handle(st, req, peer).await?;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|body| conns::Tracked::new(body, in_flight)),
                    )
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let why = tokio::select! {
                r = watcher.watch(conn) => match r {
                    Ok(()) => "client",
                    Err(e) => {
                        tracing::debug!(%peer, "connection ended: {e}");
                        match e.downcast_ref::<hyper::Error>() {
                            Some(h) if h.is_parse() || h.is_parse_too_large() => "bad_request",
                            _ => "error",
                        }
                    }
                },
                why = conns.until_closed(n, evicted) => {
                    tracing::debug!(%peer, "closed: {why}");
                    why.label()
                }
            };
            metrics_st.metrics.closed(why);
            conns.remove(n);
            drop((guard, slot));
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("depotfs serve: stopped"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("depotfs serve: requests still open after {SHUTDOWN_GRACE:?}, dropping them");
        }
    }
    Ok(())
}
