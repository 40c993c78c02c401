//! HTTP set-up shared by every depotfs program that speaks HTTP, so a change to how depotfs
//! connects (timeouts, proxies, TLS, the `User-Agent`) or how it exposes metrics is made once.
//!
//! - [`client`] / [`blocking_client`]: the reqwest client of the mount's backend
//!   (`fusefs::backend`), `depotfs replicate`, `depotfs sync` and `depotfs import`: rustls,
//!   HTTP/2, `User-Agent: PROGRAM/VERSION`, a connect timeout, and an explicit choice of
//!   proxy ([`Proxy`]). Each caller adds its own request bounds to the builder it gets.
//! - [`Attempt`], [`retry`], [`retry_backoff`], [`transient_status`], [`error_chain`]: the
//!   retry policy of the batch commands (`depotfs sync`'s downloads, `depotfs replicate`'s
//!   GETs): which failures are worth another attempt, how long to wait before it, the loop
//!   that tries again, and how to say what failed.
//! - [`read_body`]: a response body read whole, up to the most an honest one can be (the
//!   mount's objects and manifests, `depotfs replicate`'s).
//! - [`metrics`]: the Prometheus text exposition of a registry, and the `/metrics` server of
//!   the mount (hyper and hyper-util, as `depotfs serve`, which answers `/metrics` on its own
//!   port with the same [`metrics::render`]).
//!
//! No other depotfs crate builds a reqwest client or encodes metrics itself.
#![forbid(unsafe_code)]

pub mod metrics;

use std::future::Future;
use std::time::Duration;

/// The proxy a client's requests go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy<'a> {
    /// As the environment says (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`): for the batch
    /// commands, run where an operator set them.
    Environment,
    /// Straight to the server, whatever the environment says.
    Direct,
    /// Through this proxy URL, whatever the environment says.
    Url(&'a str),
}

/// The `User-Agent` of `program` (e.g. `depotfs-replicate/0.1.0`).
fn user_agent(program: &str) -> String {
    format!("{program}/{}", env!("CARGO_PKG_VERSION"))
}

/// Apply the settings every depotfs client shares to a reqwest builder (async or blocking:
/// both have the same methods).
macro_rules! common {
    ($builder:expr, $program:expr, $connect_timeout:expr, $proxy:expr) => {{
        let b = $builder
            .connect_timeout($connect_timeout)
            .user_agent(user_agent($program));
        match $proxy {
            Proxy::Environment => Ok(b),
            Proxy::Direct => Ok(b.no_proxy()),
            Proxy::Url(url) => reqwest::Proxy::all(url).map(|p| b.no_proxy().proxy(p)),
        }
    }};
}

/// A builder for the async client of `program` (`depotfs`, `depotfs-replicate`,
/// `depotfs-sync`): connects time out after `connect_timeout`; requests go through `proxy`.
/// Fails only for a malformed proxy URL.
pub fn client(
    program: &str,
    connect_timeout: Duration,
    proxy: Proxy<'_>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    common!(reqwest::Client::builder(), program, connect_timeout, proxy)
}

/// [`client`] for code that reads bodies as a `Read` (`depotfs import`'s registry client).
pub fn blocking_client(
    program: &str,
    connect_timeout: Duration,
    proxy: Proxy<'_>,
) -> Result<reqwest::blocking::ClientBuilder, reqwest::Error> {
    common!(
        reqwest::blocking::Client::builder(),
        program,
        connect_timeout,
        proxy
    )
}

/// Why one attempt at a request failed: worth another attempt, or not.
#[derive(Debug)]
pub enum Attempt {
    /// Transient: a connection, transfer or timeout failure, or a [`transient_status`].
    Retry(String),
    /// An answer that another attempt would not change.
    Fatal(String),
}

/// `e` with its causes ("error sending request: connection refused"): reqwest's own text is
/// often only the outermost layer.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Run `attempt` until it succeeds, fails with [`Attempt::Fatal`], or has failed with
/// [`Attempt::Retry`] `max` times; before each new attempt, wait [`retry_backoff`] (0.25 s,
/// then doubling), after calling `on_retry(why, wait, number of the coming attempt)` so the
/// caller can log and count it. The error is the last failure's text, followed by "(gave up
/// after `max` attempts)" when the retries ran out.
///
/// Async, so `depotfs replicate`'s thousands of concurrent GETs wait without holding a
/// thread; blocking callers (`depotfs sync`'s listing) run it with `Handle::block_on`.
pub async fn retry<T, Fut>(
    max: u32,
    mut attempt: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&str, Duration, u32),
) -> Result<T, String>
where
    Fut: Future<Output = Result<T, Attempt>>,
{
    let mut failed = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(why)) => return Err(why),
            Err(Attempt::Retry(why)) if failed + 1 >= max => {
                return Err(format!("{why} (gave up after {max} attempts)"));
            }
            Err(Attempt::Retry(why)) => {
                let wait = retry_backoff(failed);
                failed += 1;
                on_retry(&why, wait, failed + 1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How long a batch command waits before retry number `attempt + 1` of a failed request:
/// 250 ms, doubling per attempt, at most 16 s (so five attempts span about 4 s, enough for a
/// server's restart or a proxy's brief overload, without stalling a run on a dead server).
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(6))
}

/// The most a response's `Content-Length` may make [`read_body`] reserve before the body
/// arrives (a chunk is at most 1 MiB; a larger body's buffer grows as it arrives).
const BODY_HINT_MAX: u64 = 16 << 20;

/// Why [`read_body`] failed.
#[derive(Debug)]
pub enum BodyError {
    /// The body is (at least) this long, more than the limit: said by its `Content-Length`
    /// before any byte was read, or found as its bytes arrived.
    TooLong(u64),
    /// The transfer failed.
    Transfer(reqwest::Error),
}

impl BodyError {
    /// "body of N bytes or more, longer than the LIMIT it may have" for a [`BodyError::TooLong`].
    pub fn too_long(len: u64, limit: u64) -> String {
        format!("body of {len} bytes or more, longer than the {limit} it may have")
    }
}

/// Read `resp`'s body whole into one buffer, if it is at most `limit` bytes: a longer one
/// fails as soon as it is known to be (its `Content-Length`, or its bytes so far), never
/// collected first. The buffer is sized from `Content-Length` (capped, so a lying header
/// cannot reserve memory up front), and frames are copied into it as they arrive.
pub async fn read_body(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > limit {
        return Err(BodyError::TooLong(declared));
    }
    let mut body = Vec::with_capacity(declared.min(BODY_HINT_MAX) as usize);
    while let Some(frame) = resp.chunk().await.map_err(BodyError::Transfer)? {
        if (body.len() + frame.len()) as u64 > limit {
            return Err(BodyError::TooLong((body.len() + frame.len()) as u64));
        }
        body.extend_from_slice(&frame);
    }
    Ok(body)
}

/// Whether an HTTP status says "try again later" rather than "no": any 5xx (a restarting
/// server, an overloaded proxy, a gateway timeout), 429 Too Many Requests (a rate limit) and
/// 408 Request Timeout. Everything else (404, 403, 410, ...) is an answer, and retrying it
/// would only hide a broken source.
pub fn transient_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn backoff_doubles_from_a_quarter_second_and_is_capped() {
        let waits: Vec<u64> = (0..9)
            .map(|a| retry_backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 16000, 16000]
        );
    }

    /// The attempts a run of `retry` makes over `outcomes` (one per attempt, `None` = success),
    /// with the retries it announced and its result.
    fn run_retry(outcomes: &[Option<Attempt>]) -> (usize, Vec<(String, u32)>, Result<u32, String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let mut calls = 0;
        let mut said = Vec::new();
        let result = rt.block_on(retry(
            5,
            || {
                let outcome = match &outcomes[calls] {
                    None => Ok(calls as u32),
                    Some(Attempt::Retry(m)) => Err(Attempt::Retry(m.clone())),
                    Some(Attempt::Fatal(m)) => Err(Attempt::Fatal(m.clone())),
                };
                calls += 1;
                std::future::ready(outcome)
            },
            |why, wait, next| said.push((format!("{why} {}ms", wait.as_millis()), next)),
        ));
        (calls, said, result)
    }

    #[test]
    fn retry_tries_again_until_success_and_says_each_retry() {
        let busy = || Some(Attempt::Retry("HTTP 503".into()));
        let (calls, said, result) = run_retry(&[busy(), busy(), None]);
        assert_eq!((calls, result), (3, Ok(2)));
        assert_eq!(
            said,
            [
                ("HTTP 503 250ms".to_string(), 2),
                ("HTTP 503 500ms".to_string(), 3)
            ]
        );
    }

    #[test]
    fn retry_stops_at_a_fatal_answer_and_after_max_attempts() {
        let (calls, said, result) = run_retry(&[
            Some(Attempt::Retry("reset".into())),
            Some(Attempt::Fatal("HTTP 404".into())),
            None,
        ]);
        assert_eq!((calls, said.len()), (2, 1));
        assert_eq!(result, Err("HTTP 404".to_string()));

        let down: Vec<_> = (0..6)
            .map(|_| Some(Attempt::Retry("refused".into())))
            .collect();
        let (calls, said, result) = run_retry(&down);
        assert_eq!((calls, said.len()), (5, 4));
        assert_eq!(
            result,
            Err("refused (gave up after 5 attempts)".to_string())
        );
    }

    #[test]
    fn only_try_again_later_statuses_are_transient() {
        for s in [500, 502, 503, 504, 429, 408] {
            assert!(transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 206, 301, 304, 400, 401, 403, 404, 410, 416] {
            assert!(!transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
