//! A real nginx with the shipped `deploy/nginx/depotfs.conf` serving a store made by hand:
//! it must pass the same checks as `depotfs serve` (`tests/http_suite`), and answer a list of
//! requests with the same status and headers as `depotfs serve` does.
//!
//! Needs nginx (Debian package `nginx`; `.ci/run` installs it). Without it these tests fail,
//! unless `DEPOTFS_SKIP_NGINX=1` is set.

mod http_suite;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use http_suite::{Fixture, Nginx, free_port, raw, shipped_site, wait_listening};

/// nginx with the shipped site serving `public`, everything it writes under `dir`.
fn start(public: &Path, dir: &Path) -> Option<Nginx> {
    Nginx::start_site(dir, |port| shipped_site(port, public))
}

#[test]
fn nginx_with_the_shipped_config_passes_the_shared_http_checks() {
    let fx = Fixture::new();
    let Some(ngx) = start(&fx.public, fx.path()) else {
        return;
    };
    http_suite::check_all(ngx.addr, &fx, "nginx");
    // nginx refuses any symlink below the root (disable_symlinks; try_files makes it a 404),
    // even one inside the tree, where depotfs serve follows it.
    std::os::unix::fs::symlink("../manifest", fx.public.join("objects/inside")).unwrap();
    assert_eq!(raw(ngx.addr, "GET", "/objects/inside", &[]).status, 404);
}

/// A running `depotfs serve`, killed when dropped.
struct DepotfsServe(Child, SocketAddr);

impl Drop for DepotfsServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nginx_and_depotfs_serve_answer_alike() {
    let fx = Fixture::new();
    let Some(ngx) = start(&fx.public, fx.path()) else {
        return;
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .args([
            "serve",
            fx.store.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ours = DepotfsServe(child, addr);
    let child = &mut ours.0;
    wait_listening(addr, || match child.try_wait() {
        Ok(None) => Ok(()),
        other => Err(format!("{other:?}")),
    });

    let (small, _) = fx.small();
    let (large, content) = fx.large();
    let len = content.len();
    let missing = format!("/objects/ab/{}", "0".repeat(62));
    let past_end = format!("bytes={len}-");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let requests: Vec<(&str, &str, Headers)> = vec![
        ("GET", "/manifest", vec![]),
        ("HEAD", "/manifest", vec![]),
        ("GET", "/repo.pub", vec![]),
        ("GET", small, vec![]),
        ("HEAD", large, vec![]),
        ("GET", large, vec![("Range", "bytes=1000-1999")]),
        ("GET", large, vec![("Range", "bytes=-100")]),
        ("GET", large, vec![("Range", past_end.as_str())]),
        ("GET", large, vec![("Range", "bytes=0-1,4-5")]),
        (
            "GET",
            small,
            vec![("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")],
        ),
        ("GET", missing.as_str(), vec![]),
        ("GET", "/objects/", vec![]),
        // (`/` differs by design: depotfs serve has its page for people there.)
        ("GET", "/objects/.tmp-partial", vec![]),
        ("POST", "/manifest", vec![]),
        ("PUT", small, vec![]),
    ];
    // Headers both must send identically where they send them (the error pages' bodies,
    // ETag formats and Server headers differ by design).
    let compared = [
        "cache-control",
        "content-type",
        "content-length",
        "accept-ranges",
        "content-range",
        "allow",
    ];
    for (method, path, headers) in &requests {
        let a = raw(ngx.addr, method, path, headers);
        let b = raw(ours.1, method, path, headers);
        assert_eq!(
            a.status, b.status,
            "{method} {path} {headers:?}: nginx {} vs depotfs serve {}",
            a.status, b.status
        );
        if a.status >= 400 {
            assert_eq!(
                a.header("allow"),
                b.header("allow"),
                "{method} {path}: Allow"
            );
            assert_eq!(
                a.header("content-range"),
                b.header("content-range"),
                "{method} {path}"
            );
            assert_eq!(b.header("cache-control"), None, "{method} {path}");
            continue;
        }
        for h in compared {
            assert_eq!(a.header(h), b.header(h), "{method} {path} {headers:?}: {h}");
        }
        assert_eq!(
            a.header("last-modified"),
            b.header("last-modified"),
            "{method} {path}"
        );
        assert!(
            a.body == b.body,
            "{method} {path} {headers:?}: bodies differ"
        );
    }
}
