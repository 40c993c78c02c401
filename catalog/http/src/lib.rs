//! HTTP set-up shared by every depotfs program that speaks HTTP, so a change to how depotfs
//! connects (timeouts, proxies, TLS, the `User-Agent`) or how it exposes metrics is made once.
//!
//! - [`client`] / [`blocking_client`]: the reqwest client of the mount's backend
//!   (`fusefs::backend`), `depotfs replicate`, `depotfs sync` and `depotfs import`: rustls,
//!   HTTP/2, `User-Agent: PROGRAM/VERSION`, a connect timeout, and an explicit choice of
//!   proxy ([`Proxy`]). Each caller adds its own request bounds to the builder it gets.
//! - [`Attempt`], [`retry_backoff`], [`transient_status`], [`error_chain`]: the retry policy
//!   of the batch commands (`depotfs sync`'s downloads, `depotfs replicate`'s GETs): which
//!   failures are worth another attempt, how long to wait before it, and how to say what
//!   failed.
//! - [`metrics`]: the Prometheus text exposition of a registry, and the `/metrics` server of
//!   the mount (hyper and hyper-util, as `depotfs serve`, which answers `/metrics` on its own
//!   port with the same [`metrics::render`]).
//!
//! No other depotfs crate builds a reqwest client or encodes metrics itself.
#![forbid(unsafe_code)]

pub mod metrics;

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

/// How long a batch command waits before retry number `attempt + 1` of a failed request:
/// 250 ms, doubling per attempt, at most 16 s (so five attempts span about 4 s, enough for a
/// server's restart or a proxy's brief overload, without stalling a run on a dead server).
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(6))
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
