//! Connection slots of `depotfs serve`: which open connections are waiting for a request and
//! may be closed, and which have a request in flight and may not.
//!
//! A connection waits for a request in two states: *silent* (accepted, no complete request
//! yet) and *idle* (keep-alive, between the end of one response and the next request). A
//! waiting connection is closed when its timeout passes ([`FIRST_REQUEST_TIMEOUT`] silent,
//! [`IDLE_TIMEOUT`] idle, counted from the later of the start of the wait and the last byte
//! the client took) or, when every connection slot is taken and a new client connects, if it
//! has waited longest, and at least [`EVICT_AFTER`] ([`Conns::evict_oldest`]): a client that
//! has just connected gets the time to send its request. A connection with a request in
//! flight (HTTP/2: any stream) is never closed for a new one: a request is in flight from the
//! call of the service until hyper drops its response body ([`Tracked`]), that is until the
//! last byte is handed to hyper or the request is abandoned.
//!
//! Sending: the socket is wrapped ([`Watched`]) to note when the client last took a byte and
//! whether hyper is blocked on a full socket. A connection whose client takes no byte for
//! [`SEND_TIMEOUT`] while a response is in flight, or while hyper still holds the end of one
//! it could not write, is closed (nginx's `send_timeout`): a client that stops reading cannot
//! hold its slot, and the memory of its response, forever. While hyper is blocked writing the
//! end of a response, the connection is neither idle nor evictable: a client that pauses near
//! the end of a download gets the rest when it reads on.
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// A new connection has this long to send its first complete request head; one that sends
/// nothing, or only part of a request, is closed. hyper's own header timeout does not cover
/// this wait: the HTTP/1-or-h2 detection of hyper-util's `auto` builder reads the first
/// bytes (up to the 24-byte h2 preface) before any timer of hyper's runs.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// By default, a keep-alive connection may wait this long between the end of a response and
/// its next request, then it is closed (nginx's default `keepalive_timeout` is 75 s, Apache's 5 s;
/// clients, the mount's included, open a new connection when a pooled one was closed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// By default, a connection whose client takes no byte of a response for this long is closed
/// (nginx's default `send_timeout`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A waiting connection can be closed for a new client only once it has waited this long.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete first request within [`FIRST_REQUEST_TIMEOUT`].
    Silent,
    /// No next request within the idle timeout.
    Idle(Duration),
    /// It had waited longest when a new client needed its slot.
    Evicted,
    /// Its client took no byte of a response within the send timeout.
    Stalled(Duration),
}

impl Closed {
    /// Its label in `depotfs_serve_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Silent => "silent",
            Closed::Idle(_) => "idle",
            Closed::Evicted => "evicted",
            Closed::Stalled(_) => "stalled",
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Silent => write!(
                f,
                "no complete request within {FIRST_REQUEST_TIMEOUT:?} of connecting"
            ),
            Closed::Idle(t) => write!(f, "no next request within {t:?}"),
            Closed::Evicted => write!(f, "waiting longest for a request when every slot was taken"),
            Closed::Stalled(t) => write!(f, "the client took no byte of the response within {t:?}"),
        }
    }
}

/// How long connections may wait: for their next request (`--idle-timeout`), for their
/// client to take a byte of a response (`--send-timeout`); and how long a download keeps
/// its read-ahead while its client takes nothing (`--read-ahead-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Between keep-alive requests.
    pub idle: Duration,
    /// For a byte of a response to be taken.
    pub send: Duration,
    /// Read-ahead kept by a download hyper takes nothing from
    /// ([`Downloads::reclaim_idle`](super::download::Downloads::reclaim_idle)).
    pub read_ahead: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: IDLE_TIMEOUT,
            send: SEND_TIMEOUT,
            read_ahead: super::download::READ_AHEAD_TIMEOUT,
        }
    }
}

/// The open connections, by number.
#[derive(Debug, Default)]
pub struct Conns {
    inner: Mutex<Inner>,
    timeouts: Timeouts,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    next_wait: u64,
    /// Waiting connections in the order they started waiting: wait number → connection.
    waiting: BTreeMap<u64, u64>,
    conns: HashMap<u64, Conn>,
}

#[derive(Debug)]
struct Conn {
    /// Requests in flight (HTTP/2 streams can overlap).
    in_flight: u32,
    /// While no request is in flight: since when it waits, and its wait number.
    waiting: Option<(Instant, u64)>,
    /// Has it sent a complete request yet (idle rather than silent)?
    spoke: bool,
    /// Sent to close it for a new connection.
    evict: Option<oneshot::Sender<()>>,
    /// Wakes its watcher when it starts waiting again.
    wake: Arc<Notify>,
    /// What its socket has sent.
    progress: Arc<Progress>,
}

/// What a connection's socket has sent: when the client last took a byte, and whether hyper
/// is waiting for the client to take more (its last write found the socket full).
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_ms: AtomicU64,
    blocked: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
        }
    }

    /// Something was sent (or a request began): the send timeout starts again.
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    fn wrote<T>(&self, r: Poll<io::Result<T>>, some: impl Fn(&T) -> bool) -> Poll<io::Result<T>> {
        match &r {
            Poll::Ready(Ok(n)) if some(n) => {
                self.blocked.store(false, Ordering::Relaxed);
                self.touch();
            }
            Poll::Pending => self.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
        r
    }
}

/// A connection's socket, noting what it sends in its [`Progress`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Watched<S> {
    /// `inner`, reporting to `progress` (from [`Conns::register`]).
    pub fn new(inner: S, progress: Arc<Progress>) -> Self {
        Watched { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.progress.wrote(r, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.progress.wrote(r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_flush(cx);
        me.progress.wrote(r, |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What [`Conns::evict_oldest`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    /// A connection was told to close.
    Evicted,
    /// None may be closed yet; the oldest waiting one may at this time.
    At(Instant),
    /// Every connection has a response in flight.
    None,
}

/// What a connection's watcher does next.
enum Due {
    Now(Closed),
    At(Instant),
    /// Removed already.
    Gone,
}

impl Inner {
    fn start_waiting(&mut self, n: u64) {
        let w = self.next_wait;
        self.next_wait += 1;
        if let Some(c) = self.conns.get_mut(&n) {
            c.waiting = Some((Instant::now(), w));
            self.waiting.insert(w, n);
            c.wake.notify_one();
        }
    }
}

impl Conns {
    /// No connection yet; they wait as `timeouts` allow.
    pub fn new(timeouts: Timeouts) -> Conns {
        Conns {
            inner: Mutex::default(),
            timeouts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a new (silent) connection; returns its number, what [`Conns::until_closed`]
    /// needs and the progress its socket reports to ([`Watched`]). [`Conns::remove`] must
    /// follow when it ends.
    pub fn register(&self) -> (u64, oneshot::Receiver<()>, Arc<Progress>) {
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(Progress::new());
        let mut g = self.lock();
        let n = g.next;
        g.next += 1;
        g.conns.insert(
            n,
            Conn {
                in_flight: 0,
                waiting: None,
                spoke: false,
                evict: Some(tx),
                wake: Arc::new(Notify::new()),
                progress: Arc::clone(&progress),
            },
        );
        g.start_waiting(n);
        (n, rx, progress)
    }

    /// Connection `n` ended.
    pub fn remove(&self, n: u64) {
        let mut g = self.lock();
        if let Some(Conn {
            waiting: Some((_, w)),
            ..
        }) = g.conns.remove(&n)
        {
            g.waiting.remove(&w);
        }
    }

    /// A request of connection `n` starts; it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>, n: u64) -> InFlight {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(c) = g.conns.get_mut(&n) {
            c.in_flight += 1;
            c.spoke = true;
            c.progress.touch();
            if let Some((_, w)) = c.waiting.take() {
                g.waiting.remove(&w);
            }
        }
        InFlight {
            conns: Arc::clone(self),
            n,
        }
    }

    fn end(&self, n: u64) {
        let mut g = self.lock();
        let Some(c) = g.conns.get_mut(&n) else {
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(1);
        if c.in_flight == 0 {
            g.start_waiting(n);
        }
    }

    /// Close the connection that has waited longest for a request, if it has waited at least
    /// [`EVICT_AFTER`] and is not still sending the end of a response.
    pub fn evict_oldest(&self) -> Eviction {
        let now = Instant::now();
        let mut g = self.lock();
        let g = &mut *g;
        // Wait numbers follow the starts of the waits: oldest first.
        let mut evict = None;
        for (&w, n) in &g.waiting {
            let Some(c) = g.conns.get(n) else { continue };
            let Some((since, _)) = c.waiting else {
                continue;
            };
            if c.progress.blocked() {
                continue; // hyper is writing the end of a response: not waiting yet
            }
            if now < since + EVICT_AFTER {
                return Eviction::At(since + EVICT_AFTER);
            }
            evict = Some((w, *n));
            break;
        }
        let Some((w, n)) = evict else {
            return Eviction::None;
        };
        g.waiting.remove(&w);
        if let Some(c) = g.conns.get_mut(&n) {
            c.waiting = None;
            if let Some(tx) = c.evict.take() {
                let _ = tx.send(());
            }
        }
        Eviction::Evicted
    }

    fn due(&self, n: u64) -> (Due, Option<Arc<Notify>>) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(c) = g.conns.get_mut(&n) else {
            return (Due::Gone, None);
        };
        let wake = Some(Arc::clone(&c.wake));
        let last = c.progress.last();
        let Timeouts { idle, send, .. } = self.timeouts;
        let (at, why) = match c.waiting {
            // A response in flight, or the end of one hyper could not write yet: the client
            // must take a byte now and then.
            None => (last + send, Closed::Stalled(send)),
            Some(_) if c.progress.blocked() => (last + send, Closed::Stalled(send)),
            Some((since, _)) if c.spoke => (since.max(last) + idle, Closed::Idle(idle)),
            Some((since, _)) => (since.max(last) + FIRST_REQUEST_TIMEOUT, Closed::Silent),
        };
        if Instant::now() < at {
            return (Due::At(at), wake);
        }
        if let Some((_, w)) = c.waiting.take() {
            g.waiting.remove(&w);
        }
        (Due::Now(why), wake)
    }

    /// Resolves when connection `n` must be closed: evicted, waiting for a request past its
    /// timeout, or its client taking no byte of a response for the send timeout.
    pub async fn until_closed(&self, n: u64, mut evicted: oneshot::Receiver<()>) -> Closed {
        loop {
            let (due, wake) = self.due(n);
            let wake = wake.unwrap_or_default();
            let sleep = match due {
                Due::Now(why) => return why,
                // The deadline moves with what is sent; it is looked at again when it passes.
                Due::At(t) => tokio::time::sleep_until(t),
                Due::Gone => std::future::pending().await,
            };
            tokio::select! {
                // Err: the sender is dropped only with the connection's entry.
                r = &mut evicted => match r {
                    Ok(()) => return Closed::Evicted,
                    Err(_) => std::future::pending::<()>().await,
                },
                () = sleep => {}
                () = wake.notified() => {}
            }
        }
    }
}

/// A request in flight on a connection (see [`Conns::begin`]).
#[derive(Debug)]
pub struct InFlight {
    conns: Arc<Conns>,
    n: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conns.end(self.n);
    }
}

/// A response body that keeps its request in flight until hyper drops it.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// `body`, in flight until dropped.
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
