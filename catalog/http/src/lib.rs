//! HTTP set-up shared by every depotfs program that speaks HTTP, so a change to how depotfs
//! connects (timeouts, proxies, TLS, the `User-Agent`) or how it exposes metrics is made once.
//!
//! - [`client`] / [`blocking_client`]: the reqwest client of the mount's backend
//!   (`fusefs::backend`), `depotfs replicate`, `depotfs sync` and `depotfs import`: rustls,
//!   HTTP/2, `User-Agent: PROGRAM/VERSION`, a connect timeout, and an explicit choice of
//!   proxy ([`Proxy`]). Each caller adds its own request bounds to the builder it gets.
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
