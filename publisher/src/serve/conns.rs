//! Connection slots of `depotfs serve`: which open connections are waiting for a request and
//! may be closed, and which have a request in flight and may not.
//!
//! A connection waits for a request in two states: *silent* (accepted, no complete request
//! yet) and *idle* (keep-alive, between the end of one response and the next request). A
//! waiting connection is closed when its timeout passes ([`FIRST_REQUEST_TIMEOUT`] silent,
//! [`IDLE_TIMEOUT`] idle) or, when every connection slot is taken and a new client connects,
//! if it has waited longest ([`Conns::evict_oldest`]). A connection with a request in flight
//! (HTTP/2: any stream) is never closed for a new one: a request is in flight from the call
//! of the service until hyper drops its response body ([`Tracked`]), that is until the last
//! byte is handed to the socket or the request is abandoned.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// A new connection has this long to send its first complete request head; one that sends
/// nothing, or only part of a request, is closed. hyper's own header timeout does not cover
/// this wait: the HTTP/1-or-h2 detection of hyper-util's `auto` builder reads the first
/// bytes (up to the 24-byte h2 preface) before any timer of hyper's runs.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive connection may wait this long between the end of a response and its next
/// request, then it is closed (nginx's default `keepalive_timeout` is 75 s, Apache's 5 s;
/// clients, the mount's included, open a new connection when a pooled one was closed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete first request within [`FIRST_REQUEST_TIMEOUT`].
    Silent,
    /// No next request within [`IDLE_TIMEOUT`].
    Idle,
    /// It had waited longest when a new client needed its slot.
    Evicted,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Silent => write!(
                f,
                "no complete request within {FIRST_REQUEST_TIMEOUT:?} of connecting"
            ),
            Closed::Idle => write!(f, "no next request within {IDLE_TIMEOUT:?}"),
            Closed::Evicted => write!(f, "waiting longest for a request when every slot was taken"),
        }
    }
}

/// The open connections, by number.
#[derive(Debug, Default)]
pub struct Conns {
    inner: Mutex<Inner>,
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
}

/// What a connection's watcher does next.
enum Due {
    Now(Closed),
    At(Instant),
    Busy,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a new (silent) connection; returns its number and what [`Conns::until_closed`]
    /// needs. [`Conns::remove`] must follow when it ends.
    pub fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
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
            },
        );
        g.start_waiting(n);
        (n, rx)
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

    /// Close the connection that has waited longest for a request, if any; false if every
    /// connection has a request in flight.
    pub fn evict_oldest(&self) -> bool {
        let mut g = self.lock();
        let g = &mut *g;
        while let Some((_, n)) = g.waiting.pop_first() {
            if let Some(c) = g.conns.get_mut(&n) {
                c.waiting = None;
                if let Some(tx) = c.evict.take()
                    && tx.send(()).is_ok()
                {
                    return true;
                }
            }
        }
        false
    }

    fn due(&self, n: u64) -> (Due, Option<Arc<Notify>>) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(c) = g.conns.get_mut(&n) else {
            return (Due::Busy, None);
        };
        let wake = Some(Arc::clone(&c.wake));
        let Some((since, w)) = c.waiting else {
            return (Due::Busy, wake);
        };
        let (limit, why) = if c.spoke {
            (IDLE_TIMEOUT, Closed::Idle)
        } else {
            (FIRST_REQUEST_TIMEOUT, Closed::Silent)
        };
        if since.elapsed() < limit {
            return (Due::At(since + limit), wake);
        }
        c.waiting = None;
        g.waiting.remove(&w);
        (Due::Now(why), wake)
    }

    /// Resolves when connection `n` must be closed: evicted, or waiting for a request past
    /// its timeout. Never resolves while a request is in flight.
    pub async fn until_closed(&self, n: u64, mut evicted: oneshot::Receiver<()>) -> Closed {
        loop {
            let (due, wake) = self.due(n);
            let wake = wake.unwrap_or_default();
            let sleep = match due {
                Due::Now(why) => return why,
                Due::At(t) => tokio::time::sleep_until(t),
                // Woken when it starts waiting; the sleep only bounds a missed wake-up.
                Due::Busy => tokio::time::sleep(IDLE_TIMEOUT),
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
