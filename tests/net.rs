//! Fleet networking of the client with real parts: `depotfs serve` servers started, stopped
//! and restarted, a dead proxy port, a stand-in proxy answering 502 (a few lines of std::net),
//! real FUSE mounts, the mount's `/metrics` and log. Covers server lists (`--server`, comma
//! SOURCE), proxy vs server failover, failback, the request bound and offline mode, and
//! `depotfs remount` (new revision, replayed manifest refused). Needs root and /dev/fuse.

mod cli_run;
mod http_suite;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_run::{Served, http_get, ok, poll, run};
use http_suite::{free_port, random_bytes};

/// A published repository: 40 files of 30 KB (one object each) under `d/`.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/d");
        fs::create_dir_all(&src).unwrap();
        for i in 0..40 {
            fs::write(src.join(format!("f{i:02}")), random_bytes(30_000, i)).unwrap();
        }
        let repo = Repo { dir };
        ok(run(&[
            &"init",
            &repo.store(),
            &"--name",
            &"net.depotfs.org",
        ]));
        ok(run(&[&"add", &repo.store(), &src]));
        repo
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn src(&self, rel: &str) -> PathBuf {
        self.path().join("src/d").join(rel)
    }
    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
    /// `--key` and `--cache-dir`.
    fn args(&self) -> Vec<String> {
        vec![
            "--key".into(),
            self.store().join("public/repo.pub").display().to_string(),
            "--cache-dir".into(),
            self.cache().display().to_string(),
        ]
    }
}

/// `depotfs serve` of a store on a given port, which can be stopped and started again.
struct Server {
    served: Option<Served>,
    port: u16,
    store: PathBuf,
}

impl Server {
    fn start(store: &Path, port: u16) -> Server {
        Server {
            served: Some(Served::start_on(store, port)),
            port,
            store: store.to_path_buf(),
        }
    }
    fn restart(&mut self) {
        self.served = Some(Served::start_on(&self.store, self.port));
    }
    fn stop(&mut self) {
        self.served = None;
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
    /// Object requests this server answered (its own `/metrics`).
    fn object_requests(&self) -> u64 {
        let text = http_get(self.port, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("depotfs_serve_requests_total{") && l.contains("object"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// A background `depotfs mount` of a [`Repo`] (the shared [`cli_run::Mount`]), with its log.
struct Mount {
    m: cli_run::Mount,
    log: PathBuf,
}

impl std::ops::Deref for Mount {
    type Target = cli_run::Mount;
    fn deref(&self) -> &cli_run::Mount {
        &self.m
    }
}

impl Mount {
    /// `depotfs mount ARGS… MP --key … --cache-dir … --metrics-listen …` (ARGS include the
    /// source or `--server`s).
    fn new(repo: &Repo, name: &str, args: &[&str]) -> Mount {
        let m = cli_run::Mount::start(args, &repo.path().join(name), &repo.args());
        Mount {
            log: m.log_file(&repo.cache()),
            m,
        }
    }
    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        fs::read(self.mp.join("d").join(rel))
    }
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn metrics(&self) -> Metrics {
        let text = http_get(self.m.metrics, "/metrics");
        let body = text.split_once("\r\n\r\n").expect("HTTP response").1;
        check_exposition(body)
    }
    /// `user.depotfs.NAME` of `rel` under the mountpoint.
    fn xattr_of(&self, rel: &str, name: &str) -> String {
        cli_run::xattr(&self.mp.join(rel), &format!("user.depotfs.{name}"))
    }
}

/// Samples by their full name with labels, e.g. `depotfs_failovers_total{kind="proxy"}`.
type Metrics = HashMap<String, f64>;

/// Parse the Prometheus text format strictly enough to catch what a real Prometheus would
/// refuse or misread: every sample belongs to a family with a TYPE line (histograms through
/// `_bucket`/`_sum`/`_count`), no family is declared twice, no sample repeats, each
/// histogram's buckets are monotone and its `+Inf` bucket equals its `_count`.
fn check_exposition(text: &str) -> Metrics {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Metrics::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}: {line}");
        if series.contains('{') {
            assert!(series.ends_with('}'), "labels: {line}");
        }
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "sample twice: {series}"
        );
    }
    // Histograms: group buckets by their labels without `le`.
    let mut hists: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (series, v) in &samples {
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let (le_part, rest): (Vec<&str>, Vec<&str>) = labels
            .trim_end_matches('}')
            .split(',')
            .partition(|l| l.starts_with("le="));
        let le = le_part[0].trim_start_matches("le=").trim_matches('"');
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        hists
            .entry(format!("{name}{{{}}}", rest.join(",")))
            .or_default()
            .push((le, *v));
    }
    for (key, mut buckets) in hists {
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{key}: buckets not monotone"
        );
        let (le, inf) = *buckets.last().unwrap();
        assert!(le.is_infinite(), "{key}: no +Inf bucket");
        let count_key = key.replacen('{', "_count{", 1);
        assert_eq!(samples.get(&count_key), Some(&inf), "{key}: +Inf != count");
    }
    samples
}

/// `depotfs_failovers_total` as (proxy, server).
fn failovers(m: &Metrics) -> (f64, f64) {
    (
        metric(m, "depotfs_failovers_total{kind=\"proxy\"}"),
        metric(m, "depotfs_failovers_total{kind=\"server\"}"),
    )
}

/// `depotfs_fetches_total` of one route and result.
fn fetches(m: &Metrics, server: &str, proxy: &str, result: &str) -> f64 {
    metric(
        m,
        &format!(
            "depotfs_fetches_total{{server=\"{server}\",proxy=\"{proxy}\",result=\"{result}\"}}"
        ),
    )
}

fn metric(m: &Metrics, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in {m:#?}"))
}

/// A forward proxy stand-in whose upstream is down: answers every request with 502.
fn bad_gateway_proxy() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

/// `--server` (repeatable) and a comma SOURCE; a dead first server is a server failover,
/// logged and counted; with `--failback-after 2` the mount returns to the first server
/// once it is back.
#[test]
fn net_server_failover_and_failback() {
    let repo = Repo::new();
    let mut first = Server::start(&repo.store(), free_port());
    let second = Server::start(&repo.store(), free_port());
    {
        let comma = format!("{},{}", first.url(), second.url());
        let m = Mount::new(&repo, "mnt-comma", &[&comma]);
        assert_eq!(m.read("f00").unwrap(), fs::read(repo.src("f00")).unwrap());
        assert_eq!(m.xattr("host"), first.url());
        assert_eq!(
            m.xattr("source"),
            format!("{};{}", first.url(), second.url())
        );
    }
    first.stop();
    let (u1, u2) = (first.url(), second.url());
    let m = Mount::new(
        &repo,
        "mnt",
        &["--server", &u1, "--server", &u2, "--failback-after", "2"],
    );
    assert_eq!(m.read("f01").unwrap(), fs::read(repo.src("f01")).unwrap());
    let mt = m.metrics();
    assert_eq!(failovers(&mt), (0.0, 1.0));
    let info = format!("depotfs_current_server_info{{server=\"{u2}\",proxy=\"DIRECT\"}}");
    assert_eq!(metric(&mt, &info), 1.0);
    let line = format!("server {u1} failed (connect refused); switching to server {u2}");
    assert!(m.log().contains(&line), "no {line:?} in log:\n{}", m.log());
    assert!(m.status().contains("failovers:     0 proxy, 1 server"));

    first.restart();
    let before = first.object_requests();
    // Each read is of an uncached object, so it goes to the network: once the failback
    // delay (2 s) has passed, to the first server again.
    let start = Instant::now();
    for i in 2.. {
        assert!(
            i < 40,
            "ran out of uncached files after {:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failback to the first server"
        );
        let f = format!("f{i:02}");
        assert_eq!(m.read(&f).unwrap(), fs::read(repo.src(&f)).unwrap());
        if first.object_requests() > before && m.xattr("host") == u1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        m.log().contains("trying the preferred server"),
        "{}",
        m.log()
    );
}

/// A dead proxy is a proxy failover (to DIRECT, same server); a proxy answering 502 is a
/// server failover.
#[test]
fn net_proxy_failure_vs_server_failure() {
    let repo = Repo::new();
    let s1 = Server::start(&repo.store(), free_port());
    let s2 = Server::start(&repo.store(), free_port());
    let dead = format!("http://127.0.0.1:{}", free_port());
    {
        let m = Mount::new(
            &repo,
            "mnt-dead-proxy",
            &[&s1.url(), "--proxy", &dead, "--proxy", "DIRECT"],
        );
        assert_eq!(m.read("f00").unwrap(), fs::read(repo.src("f00")).unwrap());
        let mt = m.metrics();
        assert_eq!(failovers(&mt), (1.0, 0.0));
        let info = format!(
            "depotfs_current_server_info{{server=\"{}\",proxy=\"DIRECT\"}}",
            s1.url()
        );
        assert_eq!(metric(&mt, &info), 1.0);
        assert!(fetches(&mt, &s1.url(), &dead, "error") >= 1.0);
        let line = format!("proxy {dead} failed (connect refused); switching to DIRECT");
        assert!(m.log().contains(&line), "no {line:?} in:\n{}", m.log());
        assert!(m.status().contains("proxy:         DIRECT"));
    }
    {
        // A proxy that accepts connections and never answers: a timeout is a proxy failure.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = format!("http://{}", listener.local_addr().unwrap());
        let m = Mount::new(
            &repo,
            "mnt-silent-proxy",
            &[
                &s1.url(),
                "--proxy",
                &silent,
                "--proxy",
                "DIRECT",
                "--timeout",
                "1",
            ],
        );
        assert_eq!(m.read("f02").unwrap(), fs::read(repo.src("f02")).unwrap());
        let mt = m.metrics();
        assert_eq!(failovers(&mt), (1.0, 0.0));
        assert_eq!(fetches(&mt, &s1.url(), &silent, "timeout"), 1.0);
        let line = format!("proxy {silent} failed (no answer within 1 s); switching to DIRECT");
        assert!(m.log().contains(&line), "no {line:?} in:\n{}", m.log());
        drop(listener);
    }
    let bad = format!("http://127.0.0.1:{}", bad_gateway_proxy());
    let (u1, u2) = (s1.url(), s2.url());
    let m = Mount::new(
        &repo,
        "mnt-502",
        &[
            "--server", &u1, "--server", &u2, "--proxy", &bad, "--proxy", "DIRECT",
        ],
    );
    assert_eq!(m.read("f01").unwrap(), fs::read(repo.src("f01")).unwrap());
    let mt = m.metrics();
    assert_eq!(failovers(&mt), (0.0, 1.0));
    let line = format!("server {u1} failed (HTTP 502 via proxy {bad}); switching to server {u2}");
    assert!(m.log().contains(&line), "no {line:?} in:\n{}", m.log());
}

/// Every route down: an uncached read fails with EIO within the documented bound, the mount
/// goes offline (logged once, `depotfs_offline 1`), further uncached reads fail fast, cached
/// ones work; once the server is back the mount leaves offline mode by itself.
#[test]
fn net_all_routes_down_offline_and_back() {
    let repo = Repo::new();
    let mut s = Server::start(&repo.store(), free_port());
    let url = s.url();
    let m = Mount::new(
        &repo,
        "mnt",
        &[
            &url,
            "--timeout",
            "2",
            "--connect-timeout",
            "1",
            "--retries",
            "1",
        ],
    );
    // 2 passes × 1 route × 2 s + 0.25 s backoff.
    assert_eq!(m.xattr("request_bound_ms"), "4250");
    assert!(
        m.status().contains("reads give up: after 4.25 s"),
        "{}",
        m.status()
    );
    let cached = m.read("f00").unwrap();
    s.stop();

    let start = Instant::now();
    let err = m.read("f01").unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert!(
        took < Duration::from_millis(4250 + 2000),
        "EIO after {took:?}"
    );
    let mt = m.metrics();
    assert_eq!(metric(&mt, "depotfs_offline"), 1.0);
    assert!(m.status().contains("OFFLINE since"), "{}", m.status());
    for f in ["f02", "f03", "f04"] {
        let start = Instant::now();
        let err = m.read(f).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_eio()));
        assert!(
            start.elapsed() < Duration::from_millis(3500),
            "offline read waited {:?}",
            start.elapsed()
        );
    }
    assert_eq!(m.read("f00").unwrap(), cached);
    assert_eq!(
        m.log()
            .matches("all servers unreachable; serving from cache")
            .count(),
        1,
        "{}",
        m.log()
    );

    s.restart();
    poll(Duration::from_secs(15), "leaving offline mode", || {
        metric(&m.metrics(), "depotfs_offline") == 0.0
    });
    assert_eq!(m.read("f01").unwrap(), fs::read(repo.src("f01")).unwrap());
    assert!(m.log().contains("leaving offline mode"), "{}", m.log());
    assert!(m.status().contains("state:         online"));
}

fn libc_eio() -> i32 {
    5
}

/// `depotfs remount` switches to a newly published revision at once (long TTL); a replayed
/// older manifest makes it fail with the reason while the mount stays on its revision.
#[test]
fn net_remount_new_revision_and_replay_refused() {
    let repo = Repo::new();
    let s = Server::start(&repo.store(), free_port());
    let url = s.url();
    let m = Mount::new(&repo, "mnt", &[&url, "--ttl", "3600"]);
    let out = ok(run(&[&"remount", &m.mp]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revision 1 (unchanged)"
    );

    let manifest = repo.store().join("public/manifest");
    let old = fs::read(&manifest).unwrap();
    fs::write(repo.src("added"), b"revision two\n").unwrap();
    ok(run(&[&"add", &repo.store(), &repo.path().join("src/d")]));
    let out = ok(run(&[&"remount", &m.mp]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revision 2 (new, was 1)"
    );
    assert_eq!(m.read("added").unwrap(), b"revision two\n");
    let listing: Vec<_> = fs::read_dir(m.mp.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listing.iter().any(|n| n == "added"), "{listing:?}");

    let new = fs::read(&manifest).unwrap();
    fs::write(&manifest, &old).unwrap();
    let out = run(&[&"remount", &m.mp]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("older than revision 2"), "{why}");
    assert_eq!(m.xattr("revision"), "2");
    assert_eq!(m.read("added").unwrap(), b"revision two\n");
    let mt = m.metrics();
    assert_eq!(
        metric(&mt, "depotfs_manifest_refused_total{reason=\"older\"}"),
        1.0
    );
    assert_eq!(metric(&mt, "depotfs_revision"), 2.0);
    assert!(m.log().contains("manifest refused (older)"), "{}", m.log());
    // A forged manifest (one hex digit of the signature changed).
    let text = String::from_utf8(new.clone()).unwrap();
    let at = text.find("\nsignature ").unwrap() + "\nsignature ".len();
    let mut forged = text.into_bytes();
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    fs::write(&manifest, &forged).unwrap();
    let out = run(&[&"remount", &m.mp]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("signature does not verify"), "{why}");
    let mt = m.metrics();
    assert_eq!(
        metric(&mt, "depotfs_manifest_refused_total{reason=\"signature\"}"),
        1.0
    );
    assert_eq!(m.xattr("revision"), "2");
    fs::write(&manifest, new).unwrap();
    let out = ok(run(&[&"remount", &m.mp]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revision 2 (unchanged)"
    );
}

/// An object that fails verification on the first server is refetched from the second, not
/// from the same one again; the failure is counted against the route and as a server
/// failover.
#[test]
fn net_corrupt_object_refetched_from_next_server() {
    let repo = Repo::new();
    let mirror = repo.path().join("mirror");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(repo.store())
        .arg(&mirror)
        .status()
        .unwrap();
    assert!(cp.success());
    let s1 = Server::start(&repo.store(), free_port());
    let s2 = Server::start(&mirror, free_port());
    let (u1, u2) = (s1.url(), s2.url());
    let m = Mount::new(&repo, "mnt", &["--server", &u1, "--server", &u2]);
    let hash = m.xattr_of("d/f05", "hash");
    let object = repo
        .store()
        .join("public/objects")
        .join(&hash[..2])
        .join(&hash[2..]);
    let mut bytes = fs::read(&object).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&object, &bytes).unwrap();
    let before = s2.object_requests();
    let ok_before = fetches(&m.metrics(), &u1, "DIRECT", "ok");

    assert_eq!(m.read("f05").unwrap(), fs::read(repo.src("f05")).unwrap());
    let mt = m.metrics();
    assert_eq!(metric(&mt, "depotfs_verification_failures_total"), 1.0);
    assert_eq!(failovers(&mt), (0.0, 1.0));
    assert_eq!(fetches(&mt, &u1, "DIRECT", "corrupt"), 1.0);
    assert_eq!(
        fetches(&mt, &u1, "DIRECT", "ok"),
        ok_before,
        "the bad download is not counted as ok"
    );
    assert_eq!(
        s2.object_requests(),
        before + 1,
        "refetched from the mirror"
    );
    assert_eq!(m.xattr("host"), u2);
    let line = format!("server {u1} failed (object failed verification: object {hash}");
    assert!(m.log().contains(&line), "no {line:?} in:\n{}", m.log());
}

/// A forward proxy on 127.0.0.1 (a few lines of std::net): `GET http://HOST:PORT/PATH`
/// is sent on to HOST:PORT as `GET /PATH`, and the bytes are piped both ways.
fn forward_proxy() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Some(head) = http_suite::read_request_head(&mut c) else {
                    return;
                };
                let mut lines = head.split("\r\n");
                let first = lines.next().unwrap_or("");
                let mut parts = first.split(' ');
                let (method, url) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let Some(rest) = url.strip_prefix("http://") else {
                    return;
                };
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                let Ok(mut up) = std::net::TcpStream::connect(host) else {
                    let _ = c.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let mut req = format!("{method} /{path} HTTP/1.1\r\n");
                for l in lines.filter(|l| !l.is_empty()) {
                    if !l.to_ascii_lowercase().starts_with("proxy-") {
                        req.push_str(l);
                        req.push_str("\r\n");
                    }
                }
                req.push_str("Connection: close\r\n\r\n");
                if up.write_all(req.as_bytes()).is_err() {
                    return;
                }
                // One request per connection: the answer, until the server closes.
                let _ = std::io::copy(&mut up, &mut c);
            });
        }
    });
    port
}

/// Behind a proxy, a mirror that accepts and never answers does not hide the next one: a
/// timeout through a proxy may be the server's, so when every proxy has timed out for a
/// server, the next server is tried (before, every proxy was marked bad, the other servers
/// were never asked, and the mount failed).
#[test]
fn net_a_hung_mirror_behind_a_proxy_fails_over_to_the_next() {
    let repo = Repo::new();
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}/", hung.local_addr().unwrap());
    let good = Server::start(&repo.store(), free_port());
    let proxy = format!("http://127.0.0.1:{}", forward_proxy());
    let m = Mount::new(
        &repo,
        "mnt-hung-mirror",
        &[
            "--server",
            &hung_url,
            "--server",
            &good.url(),
            "--proxy",
            &proxy,
            "--timeout",
            "1",
            "--retries",
            "0",
        ],
    );
    assert_eq!(m.read("f03").unwrap(), fs::read(repo.src("f03")).unwrap());
    let line = format!("server {hung_url} failed (no answer through any proxy)");
    assert!(m.log().contains(&line), "no {line:?} in:\n{}", m.log());
    assert!(!m.status().contains("OFFLINE"), "{}", m.status());
    drop(hung);
}

/// Two mounts on one machine share the rollback guard (their cache directory): once one has
/// accepted revision 3, the other refuses a replayed revision 2 (before, it switched to it,
/// because it compared only with its own revision, 1).
#[test]
fn net_the_rollback_guard_holds_for_every_mount_of_the_cache() {
    let repo = Repo::new();
    let s = Server::start(&repo.store(), free_port());
    let url = s.url();
    let a = Mount::new(&repo, "mnt-a", &[&url, "--ttl", "3600"]);
    let b = Mount::new(&repo, "mnt-b", &[&url, "--ttl", "3600"]);
    let manifest = repo.store().join("public/manifest");
    fs::write(repo.src("two"), b"2\n").unwrap();
    ok(run(&[&"add", &repo.store(), &repo.path().join("src/d")]));
    let two = fs::read(&manifest).unwrap();
    fs::write(repo.src("three"), b"3\n").unwrap();
    ok(run(&[&"add", &repo.store(), &repo.path().join("src/d")]));
    let out = ok(run(&[&"remount", &a.mp]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revision 3 (new, was 1)"
    );
    fs::write(&manifest, &two).unwrap();
    let out = run(&[&"remount", &b.mp]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("older than revision 3 already accepted here"),
        "{why}"
    );
    assert_eq!(b.xattr("revision"), "1");
    assert_eq!(
        metric(
            &b.metrics(),
            "depotfs_manifest_refused_total{reason=\"older\"}"
        ),
        1.0
    );
}

/// A mount of a local store keeps the rollback guard too: after it switched to revision 2,
/// the store's revision-1 manifest put back is refused by the next mount (before, a local
/// mount never recorded what it switched to).
#[test]
fn net_a_local_mount_records_the_revisions_it_switches_to() {
    let repo = Repo::new();
    let store = repo.store().display().to_string();
    let manifest = repo.store().join("public/manifest");
    let one = fs::read(&manifest).unwrap();
    {
        let m = Mount::new(&repo, "mnt-local", &[&store, "--ttl", "3600"]);
        fs::write(repo.src("two"), b"2\n").unwrap();
        ok(run(&[&"add", &repo.store(), &repo.path().join("src/d")]));
        let out = ok(run(&[&"remount", &m.mp]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "revision 2 (new, was 1)"
        );
    }
    fs::write(&manifest, &one).unwrap();
    let mp = repo.path().join("mnt-local-again");
    fs::create_dir_all(&mp).unwrap();
    let mut args: Vec<String> = vec!["mount".into(), store.clone(), mp.display().to_string()];
    args.extend(repo.args());
    let out = cli_run::depotfs(&args);
    assert!(!out.status.success(), "a replayed revision 1 was mounted");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(
            "revision 1 of net.depotfs.org is older than revision 2 already accepted here"
        ),
        "{why}"
    );
}
