//! A small fleet on 127.0.0.1, all real parts: one published store copied to two nginx
//! mirrors (each with its own `public/` copy, so one can be corrupted or killed), the shipped
//! site proxy `deploy/squid/depotfs.conf` in front of them, and a real Prometheus loading
//! `deploy/prometheus/prometheus.yml` and its rules. Every client is a real FUSE mount made
//! by the `depotfs` binary; every check reads through the mount, the servers' logs or the
//! mount's `--metrics-listen` endpoint.
//!
//! Covers: server failover in the middle of a large read, a corrupt object on the preferred
//! mirror, cache hits in squid for a second client, one upstream fetch per object for six
//! simultaneous clients (collapsed forwarding), failover past a dead proxy, a new revision
//! under an open file (TTL and `depotfs remount`), replayed and foreign manifests, all servers
//! down (cached reads work, uncached ones fail within the request bound, recovery without
//! remount), Prometheus scraping a mount and `depotfs serve`, and the shipped configs passing
//! `squid -k parse` and `promtool` (including the alert rules' unit tests).
//!
//! Needs root (or fusermount3), /dev/fuse and the Debian packages `nginx`, `squid` and
//! `prometheus` (`.ci/run` installs them); a missing one fails the test with its name.

mod cli_run;
mod http_suite;

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_run::{BIN, depotfs};
use http_suite::{free_port, poll_for, random_bytes, wait_listening};

const SQUID_CONF: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/squid/depotfs.conf"
));
const PROMETHEUS_YML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/prometheus.yml"
));
const PROMETHEUS_RULES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/depotfs.rules.yml"
));
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Running things

/// `depotfs ARGS...`, which must succeed.
fn ok(args: &[&str]) -> Output {
    cli_run::ok(cli_run::depotfs(args))
}

fn binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install the Debian package `{package}`"))
}

/// A child process killed (by its pid) and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    fn alive(&mut self, logs: &Path) -> Result<(), String> {
        match self.0.try_wait() {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{other:?}\n{}",
                fs::read_to_string(logs).unwrap_or_default()
            )),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replace the one line `from` (which must occur exactly once) in a shipped config.
fn replace_line(text: &str, file: &str, from: &str, to: &str) -> String {
    let n = text.lines().filter(|l| l.trim() == from).count();
    assert_eq!(n, 1, "{file} must contain the line {from:?} exactly once");
    text.lines()
        .map(|l| if l.trim() == from { to } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A plain GET on 127.0.0.1, never through a proxy from the environment.
fn http_get(url: &str) -> Result<String, String> {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| format!("GET {url}: {e}"))
}

/// Read a whole file in another thread; a read that takes longer than `limit` fails the
/// test instead of hanging it. Returns the bytes or the errno, and the time taken.
fn read_within(path: &Path, limit: Duration) -> (Result<Vec<u8>, Option<i32>>, Duration) {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(p).map_err(|e| e.raw_os_error()));
    });
    let r = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("read of {} hung for {limit:?}", path.display()));
    (r, start.elapsed())
}

// ---------------------------------------------------------------------------------------
// The published store and its mirrors

/// A store with `images/` published from generated files, in a temp dir other users can
/// traverse (squid drops to the `proxy` user).
struct Fleet {
    dir: tempfile::TempDir,
    /// `STORE`, as a string for command lines.
    store: String,
    /// The repository's public key file, as a string for command lines.
    key: String,
}

impl Fleet {
    /// `big`: also a 48 MiB image, for the mid-read failover.
    fn new(big: bool) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let store = dir.path().join("store");
        let f = Fleet {
            store: store.display().to_string(),
            key: store.join("public/repo.pub").display().to_string(),
            dir,
        };
        let images = f.images();
        fs::create_dir_all(&images).unwrap();
        fs::write(images.join("tool-a.sif"), random_bytes(6 * MIB + 4321, 11)).unwrap();
        fs::write(images.join("tool-b.sif"), random_bytes(3 * MIB + 17, 12)).unwrap();
        fs::write(images.join("small.txt"), random_bytes(100 * 1024, 13)).unwrap();
        if big {
            fs::write(images.join("big.sif"), random_bytes(48 * MIB + 99, 14)).unwrap();
        }
        ok(&["init", &f.store, "--name", "fleet.depotfs.test"]);
        ok(&["add", &f.store, images.to_str().unwrap()]);
        f
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn images(&self) -> PathBuf {
        self.path().join("src/images")
    }
    /// The source bytes of `images/<name>`.
    fn source(&self, name: &str) -> Vec<u8> {
        fs::read(self.images().join(name)).unwrap()
    }
    /// The revision of the store's current manifest.
    fn revision(&self) -> u64 {
        manifest_revision(&fs::read_to_string(self.store().join("public/manifest")).unwrap())
    }
    /// Publish `images/` again as it is now on disk (one new revision).
    fn republish(&self) {
        ok(&["rm", &self.store, "images", "--no-publish"]);
        ok(&["add", &self.store, self.images().to_str().unwrap()]);
    }
    /// A new mirror directory `<name>/public`, a full copy of the store's `public/`.
    fn mirror(&self, name: &str) -> PathBuf {
        let public = self.path().join(name).join("public");
        sync_mirror(&self.store().join("public"), &public);
        public
    }
}

fn manifest_revision(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("revision "))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision line in manifest:\n{text}"))
}

/// Copy what `to` lacks from `from` (both `public/` directories) as a mirror must: new
/// objects first, the manifest last and atomically (a dot file, then rename).
fn sync_mirror(from: &Path, to: &Path) {
    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type().unwrap().is_dir() {
                copy_tree(&src, &dst);
            } else if !dst.exists() {
                fs::copy(&src, &dst).unwrap();
            }
        }
    }
    copy_tree(&from.join("objects"), &to.join("objects"));
    fs::copy(from.join("repo.pub"), to.join("repo.pub")).unwrap();
    put_manifest(to, &fs::read(from.join("manifest")).unwrap());
}

/// Replace a mirror's manifest atomically.
fn put_manifest(public: &Path, bytes: &[u8]) {
    let tmp = public.join(".manifest.tmp");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, public.join("manifest")).unwrap();
}

/// The object file of a single-chunk file's content in a `public/` directory (objects are
/// named by the blake3 of their plaintext).
fn object_path(public: &Path, content: &[u8]) -> PathBuf {
    let hex = blake3::hash(content).to_hex();
    public.join("objects").join(&hex[..2]).join(&hex[2..])
}

// ---------------------------------------------------------------------------------------
// nginx with the shipped site

/// nginx serving a mirror's `public/` with `deploy/nginx/depotfs.conf` (only `listen` and
/// `root` replaced), as one process (`master_process off`) so that SIGKILL stops it all.
struct Nginx {
    proc: Option<Proc>,
    port: u16,
    public: PathBuf,
    dir: PathBuf,
    /// Bytes per second per response (`limit_rate`, in the test's own `http` block), or 0.
    rate: usize,
}

impl Nginx {
    fn start(public: &Path, dir: &Path) -> Nginx {
        Nginx::start_limited(public, dir, 0)
    }

    /// A slow mirror: each response sent at `rate` bytes per second (0: unlimited).
    fn start_limited(public: &Path, dir: &Path, rate: usize) -> Nginx {
        let mut n = Nginx {
            proc: None,
            port: free_port(),
            public: public.to_path_buf(),
            dir: dir.to_path_buf(),
            rate,
        };
        n.restart();
        n
    }

    /// (Re)start on the same port.
    fn restart(&mut self) {
        let bin = binary("nginx", "nginx");
        fs::create_dir_all(self.dir.join("tmp")).unwrap();
        let site = http_suite::shipped_site(self.port, &self.public);
        fs::write(self.dir.join("site.conf"), site).unwrap();
        let child = http_suite::spawn_nginx(
            &bin,
            &self.dir,
            "daemon off;\nmaster_process off;",
            &format!("limit_rate {};", self.rate),
        );
        let mut p = Proc(child);
        let logs = self.dir.join("error.log");
        wait_listening(self.addr(), || p.alive(&logs));
        self.proc = Some(p);
    }

    /// SIGKILL: open connections are cut, new ones refused.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Request paths of the GETs in the access log ("combined" format).
    fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("\"GET ").nth(1))
            .filter_map(|r| r.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// squid with the shipped config

/// One line of squid's access log in the `squid` format.
#[derive(Debug)]
struct SquidLog {
    /// The cache result code, e.g. `TCP_MEM_HIT`.
    code: String,
    url: String,
}

/// squid with `deploy/squid/depotfs.conf`, only the port, cache_dir, log and pid paths
/// replaced; runs in the foreground (`-N`) as the `proxy` user.
struct Squid {
    _proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Squid {
    fn start(dir: &Path) -> Squid {
        let bin = binary("squid", "squid");
        fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let d = dir.display();
        let f = "deploy/squid/depotfs.conf";
        let mut conf = SQUID_CONF.to_owned();
        for (from, to) in [
            ("http_port 3128", format!("http_port 127.0.0.1:{port}")),
            (
                "cache_dir aufs /var/spool/squid/depotfs 50000 16 256",
                format!("cache_dir aufs {d}/cache 256 16 256"),
            ),
            (
                "access_log daemon:/var/log/squid/depotfs-access.log squid",
                // stdio: written as each request ends (the daemon module batches lines).
                format!("access_log stdio:{d}/access.log squid"),
            ),
            (
                "cache_log /var/log/squid/depotfs-cache.log",
                format!("cache_log {d}/cache.log"),
            ),
            (
                "pid_filename /run/squid-depotfs.pid",
                format!("pid_filename {d}/squid.pid"),
            ),
            ("coredump_dir /var/spool/squid", format!("coredump_dir {d}")),
        ] {
            conf = replace_line(&conf, f, from, &to);
        }
        let conf_path = dir.join("squid.conf");
        fs::write(&conf_path, conf).unwrap();
        // Squid started as root runs as `proxy`: it must own what it writes.
        let st = Command::new("chown")
            .args(["-R", "proxy:proxy"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "chown proxy {}", dir.display());
        let z = Command::new(&bin)
            .args(["-z", "-N", "-f"])
            .arg(&conf_path)
            .output()
            .unwrap();
        assert!(
            z.status.success(),
            "squid -z: {}\n{}",
            String::from_utf8_lossy(&z.stderr),
            fs::read_to_string(dir.join("cache.log")).unwrap_or_default()
        );
        let child = Command::new(&bin)
            .args(["-N", "-f"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn squid");
        let mut p = Proc(child);
        let logs = dir.join("cache.log");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), || p.alive(&logs));
        Squid {
            _proc: p,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<SquidLog> {
        // time elapsed client CODE/status bytes method URL user hierarchy type
        fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(SquidLog {
                    code: f.get(3)?.split('/').next()?.to_owned(),
                    url: f.get(6)?.to_string(),
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Mounts and their metrics

/// A depotfs mount with its own cold cache directory and a metrics port (the shared
/// [`cli_run::Mount`]); unmounted when dropped.
struct Mount(cli_run::Mount);

impl std::ops::Deref for Mount {
    type Target = cli_run::Mount;
    fn deref(&self) -> &cli_run::Mount {
        &self.0
    }
}

impl Mount {
    /// `depotfs mount SOURCE MP --key --cache-dir --metrics-listen` plus `extra`; `source`
    /// "" leaves SOURCE out (`extra` names the servers with `--server`).
    fn new(fleet: &Fleet, name: &str, source: &str, extra: &[&str]) -> Mount {
        let cache = fleet.path().join(name).join("cache");
        let mut after = vec!["--key", &fleet.key, "--cache-dir", cache.to_str().unwrap()];
        after.extend_from_slice(extra);
        let before: &[&str] = if source.is_empty() { &[] } else { &[source] };
        Mount(cli_run::Mount::start(
            before,
            &fleet.path().join(name).join("mnt"),
            &after,
        ))
    }

    fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics)).unwrap()
    }

    /// The sum of every sample of `name` whose labels include `labels`; a metric the mount
    /// does not export at all fails the test.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics();
        metric_sum(&text, name, labels)
            .unwrap_or_else(|| panic!("no metric {name} in the mount's /metrics:\n{text}"))
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

/// Parse `name{k="v",...}` into its name and labels.
fn parse_series(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let mut labels = Vec::new();
    let mut chars = rest.trim_end_matches('}').chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} in {series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name, labels)
}

/// Sum of the samples of `name` (exactly that name) carrying all of `labels`, or `None` if
/// the exposition has no sample of `name` at all.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, have) = parse_series(series);
        if n != name {
            continue;
        }
        found = true;
        if labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            sum += value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
    found.then_some(sum)
}

/// Percent-encode everything but unreserved characters (a PromQL query in a URL).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got == want, "{what}: wrong bytes");
}

// ---------------------------------------------------------------------------------------
// Tests

/// The preferred mirror is killed while a 48 MiB file is being read: the reader gets every
/// byte right from the second mirror, and the mount counts a server failover.
#[test]
fn fleet_mirror_killed_mid_read_fails_over_to_second() {
    let fleet = Fleet::new(true);
    let mut m1 = Nginx::start(&fleet.mirror("mirror1"), &fleet.path().join("nginx1"));
    let m2 = Nginx::start(&fleet.mirror("mirror2"), &fleet.path().join("nginx2"));
    let source = format!("{};{}", m1.url(), m2.url());
    let m = Mount::new(&fleet, "client", &source, &["--timeout", "5"]);
    let want = fleet.source("big.sif");

    // The reader stops after 8 MiB until the mirror is dead, then reads on.
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let path = m.path("images/big.sif");
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut f = fs::File::open(path)?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() >= 8 * MIB && got.len() - n < 8 * MIB {
                reached_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }
        }
    });
    reached_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader did not get 8 MiB within 60 s");
    let fetched = m.metric("depotfs_fetched_bytes_total", &[]);
    assert!(
        fetched < (want.len() - 16 * MIB) as f64,
        "{fetched} bytes already fetched before the kill: nothing left to fail over"
    );
    assert_eq!(
        m.metric("depotfs_failovers_total", &[("kind", "server")]),
        0.0
    );
    m1.kill();
    go_tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the read hung after the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = reader.join().unwrap().expect("read after the kill");
    assert_same(&got, &want, "big.sif read across the failover");
    assert!(
        m.metric("depotfs_failovers_total", &[("kind", "server")]) >= 1.0,
        "no server failover counted:\n{}",
        m.metrics()
    );
    let status = m.status();
    assert!(
        status.contains(&m2.addr().to_string()),
        "status does not name mirror 2 ({}) as the server:\n{status}",
        m2.addr()
    );
}

/// A flipped byte in one chunk on the preferred mirror: the client refuses it, fetches the
/// chunk from the second mirror, returns the right bytes and counts the verification failure.
#[test]
fn fleet_corrupt_object_on_first_mirror_is_fetched_from_second() {
    let fleet = Fleet::new(false);
    let (p1, p2) = (fleet.mirror("mirror1"), fleet.mirror("mirror2"));
    let want = fleet.source("small.txt");
    let obj = object_path(&p1, &want);
    let mut bytes = fs::read(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&obj, &bytes).unwrap();
    let m1 = Nginx::start(&p1, &fleet.path().join("nginx1"));
    let m2 = Nginx::start(&p2, &fleet.path().join("nginx2"));
    let m = Mount::new(
        &fleet,
        "client",
        &format!("{};{}", m1.url(), m2.url()),
        &["--timeout", "5"],
    );
    let (got, _) = read_within(&m.path("images/small.txt"), Duration::from_secs(60));
    assert_same(&got.expect("read small.txt"), &want, "small.txt");
    assert!(m.metric("depotfs_verification_failures_total", &[]) >= 1.0);
    assert!(m.metric("depotfs_fetches_total", &[("result", "corrupt")]) >= 1.0);
    let rel = format!("/{}", obj.strip_prefix(&p1).unwrap().display());
    assert!(
        m1.requests().contains(&rel),
        "mirror 1 was never asked for {rel}"
    );
    assert!(
        m2.requests().contains(&rel),
        "the chunk was not fetched from mirror 2: {rel}"
    );
    // Every other file is still served right.
    for name in ["tool-a.sif", "tool-b.sif"] {
        assert_same(
            &fs::read(m.path(&format!("images/{name}"))).unwrap(),
            &fleet.source(name),
            name,
        );
    }
}

/// Two clients with cold caches read the same image through the shipped squid config: the
/// second one's object requests are squid cache hits, and the mirror sends each object once.
#[test]
fn fleet_squid_serves_second_client_from_cache() {
    let fleet = Fleet::new(false);
    let mirror = Nginx::start(&fleet.mirror("mirror1"), &fleet.path().join("nginx1"));
    let squid = Squid::start(&fleet.path().join("squid"));
    let want = fleet.source("tool-a.sif");
    for client in ["client-a", "client-b"] {
        let m = Mount::new(&fleet, client, &mirror.url(), &["--proxy", &squid.url()]);
        let (got, _) = read_within(&m.path("images/tool-a.sif"), Duration::from_secs(60));
        assert_same(&got.expect("read through squid"), &want, client);
    }
    let objects: Vec<String> = mirror
        .requests()
        .into_iter()
        .filter(|p| p.starts_with("/objects/"))
        .collect();
    assert!(
        objects.len() >= 4,
        "only {} objects fetched for a 6 MiB image: {objects:?}",
        objects.len()
    );
    for o in &objects {
        let n = objects.iter().filter(|x| *x == o).count();
        assert_eq!(n, 1, "the mirror served {o} {n} times");
    }
    // squid logs a request when it ends: wait until both clients' requests are there.
    let log = poll_for(
        Duration::from_secs(20),
        "both clients in squid's log",
        || {
            let log = squid.log();
            objects
                .iter()
                .all(|o| log.iter().filter(|l| l.url.ends_with(o.as_str())).count() >= 2)
                .then_some(log)
        },
    );
    for o in &objects {
        let lines: Vec<&SquidLog> = log.iter().filter(|l| l.url.ends_with(o.as_str())).collect();
        // Client A's request came first (its mount was gone before B started).
        for later in &lines[1..] {
            assert!(
                later.code.contains("HIT"),
                "client B's request for {o} was not a cache hit: {lines:?}"
            );
        }
    }
}

/// A dead proxy listed first: the mount fails over to squid, counts a proxy failover, and
/// reads go through squid (not direct).
#[test]
fn fleet_dead_proxy_first_fails_over_to_squid() {
    let fleet = Fleet::new(false);
    let mirror = Nginx::start(&fleet.mirror("mirror1"), &fleet.path().join("nginx1"));
    let squid = Squid::start(&fleet.path().join("squid"));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let m = Mount::new(
        &fleet,
        "client",
        &mirror.url(),
        &["--proxy", &dead, "--proxy", &squid.url(), "--timeout", "5"],
    );
    let (got, _) = read_within(&m.path("images/tool-b.sif"), Duration::from_secs(60));
    assert_same(
        &got.expect("read"),
        &fleet.source("tool-b.sif"),
        "tool-b.sif",
    );
    assert!(
        m.metric("depotfs_failovers_total", &[("kind", "proxy")]) >= 1.0,
        "no proxy failover counted:\n{}",
        m.metrics()
    );
    let objects: Vec<String> = mirror
        .requests()
        .into_iter()
        .filter(|p| p.starts_with("/objects/"))
        .collect();
    assert!(!objects.is_empty());
    poll_for(
        Duration::from_secs(20),
        "the objects in squid's log",
        || {
            let log = squid.log();
            objects
                .iter()
                .all(|o| log.iter().any(|l| l.url.ends_with(o.as_str())))
                .then_some(())
        },
    );
    let status = m.status();
    assert!(
        status.contains(&squid.port.to_string()),
        "status does not name squid as the proxy:\n{status}"
    );
}

/// A new revision is published while a file is open and half read: the reader keeps its
/// version to the end; a mount with `--ttl 2` lists the new image within the TTL; one with a
/// long TTL shows it at once after `depotfs remount`.
#[test]
fn fleet_new_revision_while_reading() {
    let fleet = Fleet::new(false);
    let public = fleet.mirror("mirror1");
    let mirror = Nginx::start(&public, &fleet.path().join("nginx1"));
    let short = Mount::new(&fleet, "short", &mirror.url(), &["--ttl", "2"]);
    let long = Mount::new(&fleet, "long", &mirror.url(), &["--ttl", "3600"]);
    let before = fleet.revision();
    let old = fleet.source("tool-a.sif");
    let mut open = fs::File::open(short.path("images/tool-a.sif")).unwrap();
    let mut got = vec![0u8; MIB];
    open.read_exact(&mut got).unwrap();
    assert_eq!(long.names("images"), short.names("images"));

    let new = random_bytes(5 * MIB + 3, 21);
    fs::write(fleet.images().join("tool-a.sif"), &new).unwrap();
    fs::write(fleet.images().join("new-tool.sif"), random_bytes(MIB, 22)).unwrap();
    fleet.republish();
    let after = fleet.revision();
    assert!(after > before);
    sync_mirror(&fleet.store().join("public"), &public);

    let start = Instant::now();
    poll_for(
        Duration::from_secs(15),
        "the new image in the --ttl 2 mount",
        || {
            short
                .names("images")
                .contains(&"new-tool.sif".to_string())
                .then_some(())
        },
    );
    eprintln!("--ttl 2: new revision listed after {:?}", start.elapsed());
    // The open file still reads its own version, to the end.
    open.read_to_end(&mut got).unwrap();
    assert_same(&got, &old, "the open tool-a.sif across the switch");
    assert_same(
        &fs::read(short.path("images/tool-a.sif")).unwrap(),
        &new,
        "new tool-a.sif",
    );

    // The long-TTL mount has not looked yet; remount makes it look now.
    assert!(!long.names("images").contains(&"new-tool.sif".to_string()));
    let out = ok(&["remount", long.mp.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), format!("revision {after} (new, was {before})"));
    assert!(long.names("images").contains(&"new-tool.sif".to_string()));
    assert_same(
        &fs::read(long.path("images/tool-a.sif")).unwrap(),
        &new,
        "tool-a.sif after remount",
    );
    let out = ok(&["remount", long.mp.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("revision {after} (unchanged)")
    );
}

/// An older signed manifest (replay) and one signed by another key for the same repository
/// name are put on the mirror: `remount` refuses each (exit 1), a `--ttl 1` mount refuses
/// them at its next check, both count the refusals and keep serving their revision.
#[test]
fn fleet_replayed_and_foreign_manifests_are_refused() {
    let fleet = Fleet::new(false);
    let old_manifest = fs::read(fleet.store().join("public/manifest")).unwrap();
    fs::write(fleet.images().join("extra.txt"), b"revision two\n").unwrap();
    fleet.republish();
    let current = fleet.revision();
    let public = fleet.mirror("mirror1");
    let mirror = Nginx::start(&public, &fleet.path().join("nginx1"));
    let by_hand = Mount::new(&fleet, "by-hand", &mirror.url(), &["--ttl", "3600"]);
    let by_ttl = Mount::new(&fleet, "by-ttl", &mirror.url(), &["--ttl", "1"]);
    for m in [&by_hand, &by_ttl] {
        assert_eq!(m.metric("depotfs_revision", &[]), current as f64);
    }

    // Another repository of the same name, with its own key, published past `current`.
    let other = fleet.path().join("other");
    let other_str = other.to_str().unwrap();
    ok(&["init", other_str, "--name", "fleet.depotfs.test"]);
    for i in 0..=current {
        let f = fleet.path().join(format!("forged-{i}"));
        fs::write(&f, format!("forged {i}\n")).unwrap();
        ok(&["add", other_str, f.to_str().unwrap()]);
    }
    let foreign = fs::read(other.join("public/manifest")).unwrap();
    assert!(manifest_revision(&String::from_utf8_lossy(&foreign)) > current);

    // The reasons `depotfs_manifest_refused_total{reason}` counts them under.
    for (what, manifest, reason) in [
        ("replayed", &old_manifest, "older"),
        ("foreign", &foreign, "signature"),
    ] {
        let refused = |m: &Mount| m.metric("depotfs_manifest_refused_total", &[("reason", reason)]);
        let (hand0, ttl0) = (refused(&by_hand), refused(&by_ttl));
        put_manifest(&public, manifest);
        let out = depotfs(&["remount", by_hand.mp.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "remount accepted the {what} manifest: {out:?}"
        );
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            !why.trim().is_empty(),
            "remount refused the {what} manifest without a reason"
        );
        assert!(refused(&by_hand) > hand0, "{what}: refusal not counted");
        poll_for(
            Duration::from_secs(15),
            &format!("the --ttl 1 mount refusing the {what} manifest"),
            || (refused(&by_ttl) > ttl0).then_some(()),
        );
        for m in [&by_hand, &by_ttl] {
            assert_eq!(m.metric("depotfs_revision", &[]), current as f64, "{what}");
            assert_eq!(
                fs::read(m.path("images/extra.txt")).unwrap(),
                b"revision two\n"
            );
            assert_same(
                &fs::read(m.path("images/tool-b.sif")).unwrap(),
                &fleet.source("tool-b.sif"),
                what,
            );
        }
    }
}

/// Every mirror down: cached files read fine, an uncached one fails with EIO within the
/// bound (nothing hangs), the mount reports `depotfs_offline 1`; once the mirrors are back,
/// the same read succeeds without remounting.
#[test]
fn fleet_all_servers_down_then_back() {
    let fleet = Fleet::new(false);
    let mut m1 = Nginx::start(&fleet.mirror("mirror1"), &fleet.path().join("nginx1"));
    let mut m2 = Nginx::start(&fleet.mirror("mirror2"), &fleet.path().join("nginx2"));
    let (u1, u2) = (m1.url(), m2.url());
    let m = Mount::new(
        &fleet,
        "client",
        "",
        &[
            "--server",
            &u1,
            "--server",
            &u2,
            "--timeout",
            "2",
            "--connect-timeout",
            "1",
            "--retries",
            "1",
        ],
    );
    let limit = Duration::from_secs(30);
    let (got, _) = read_within(&m.path("images/tool-b.sif"), limit);
    assert_same(&got.unwrap(), &fleet.source("tool-b.sif"), "tool-b.sif");
    assert_eq!(m.metric("depotfs_offline", &[]), 0.0);
    m1.kill();
    m2.kill();

    let (got, took) = read_within(&m.path("images/tool-b.sif"), limit);
    assert_same(
        &got.expect("cached read while offline"),
        &fleet.source("tool-b.sif"),
        "cached",
    );
    assert!(took < Duration::from_secs(2), "a cached read took {took:?}");
    let (got, took) = read_within(&m.path("images/tool-a.sif"), limit);
    assert_eq!(
        got.err(),
        Some(Some(5)),
        "uncached read while every server is down"
    );
    // The bound of `depotfs mount --help`: (retries + 1) x servers x proxies x timeout +
    // backoff = 2 x 2 x 1 x 2 s + 0.25 s; plus 2 s for scheduling on a loaded machine.
    let bound = Duration::from_secs_f64(2.0 * 2.0 * 2.0 + 0.25);
    assert!(
        took <= bound + Duration::from_secs(2),
        "EIO took {took:?}, over the bound {bound:?}"
    );
    eprintln!("all servers down: EIO after {took:?}");
    poll_for(Duration::from_secs(10), "depotfs_offline 1", || {
        (m.metric("depotfs_offline", &[]) == 1.0).then_some(())
    });
    assert_eq!(m.names("images").len(), 3, "listing while offline");

    m1.restart();
    m2.restart();
    let got = poll_for(
        Duration::from_secs(30),
        "the uncached read after the mirrors came back",
        || read_within(&m.path("images/tool-a.sif"), limit).0.ok(),
    );
    assert_same(
        &got,
        &fleet.source("tool-a.sif"),
        "tool-a.sif after recovery",
    );
    poll_for(Duration::from_secs(10), "depotfs_offline 0", || {
        (m.metric("depotfs_offline", &[]) == 0.0).then_some(())
    });
}

/// A real Prometheus with the shipped config (targets and intervals replaced) and rules
/// scrapes a mount and `depotfs serve`: both targets up, `depotfs_revision` is the mount's
/// revision, the fetch histogram has samples, the alert rules are loaded.
#[test]
fn fleet_prometheus_scrapes_mount_and_serve() {
    let bin = binary("prometheus", "prometheus");
    let fleet = Fleet::new(false);
    let serve_port = free_port();
    let serve_addr = SocketAddr::from(([127, 0, 0, 1], serve_port));
    let mut serve = Proc(
        Command::new(BIN)
            .args(["serve", &fleet.store, "--listen", &serve_addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(serve_addr, || serve.alive(Path::new("/dev/null")));
    let m = Mount::new(&fleet, "client", &format!("http://{serve_addr}/"), &[]);
    assert_same(
        &fs::read(m.path("images/tool-b.sif")).unwrap(),
        &fleet.source("tool-b.sif"),
        "tool-b.sif",
    );

    let dir = fleet.path().join("prometheus");
    fs::create_dir_all(&dir).unwrap();
    let f = "deploy/prometheus/prometheus.yml";
    let mount_target = format!("127.0.0.1:{}", m.metrics);
    let mut conf = replace_line(
        PROMETHEUS_YML,
        f,
        r#"- targets: ["node001:9477", "node002:9477"]"#,
        &format!(r#"      - targets: ["{mount_target}"]"#),
    );
    conf = replace_line(
        &conf,
        f,
        r#"- targets: ["publisher:8080"]"#,
        &format!(r#"      - targets: ["{serve_addr}"]"#),
    );
    for (from, to) in [
        ("scrape_interval: 30s", "  scrape_interval: 1s"),
        ("scrape_timeout: 10s", "  scrape_timeout: 1s"),
        ("evaluation_interval: 30s", "  evaluation_interval: 1s"),
    ] {
        conf = replace_line(&conf, f, from, to);
    }
    fs::write(dir.join("prometheus.yml"), conf).unwrap();
    fs::write(dir.join("depotfs.rules.yml"), PROMETHEUS_RULES).unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let mut prom = Proc(
        Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), || {
        prom.alive(&log)
    });
    // The API answers 503 until the TSDB is open.
    poll_for(Duration::from_secs(60), "Prometheus ready", || {
        if let Err(e) = prom.alive(&log) {
            panic!("prometheus exited: {e}");
        }
        http_get(&format!("http://127.0.0.1:{port}/-/ready")).ok()
    });
    let api = |path: &str| -> serde_json::Value {
        let text = http_get(&format!("http://127.0.0.1:{port}{path}"))
            .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };

    poll_for(
        Duration::from_secs(60),
        "both targets up in Prometheus",
        || {
            let t = api("/api/v1/targets");
            let active = t["data"]["activeTargets"].as_array()?.clone();
            let up = |addr: &str| {
                active
                    .iter()
                    .any(|x| x["labels"]["instance"] == addr && x["health"] == "up")
            };
            (up(&mount_target) && up(&serve_addr.to_string())).then_some(())
        },
    );
    let query = |q: &str| -> Option<f64> {
        let r = api(&format!("/api/v1/query?query={}", url_encode(q)));
        let v = r["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .to_owned();
        v.parse().ok()
    };
    let revision = fleet.revision() as f64;
    let got = poll_for(
        Duration::from_secs(30),
        "depotfs_revision in Prometheus",
        || query(&format!("depotfs_revision{{instance=\"{mount_target}\"}}")),
    );
    assert_eq!(got, revision, "Prometheus' depotfs_revision");
    let count = poll_for(
        Duration::from_secs(30),
        "the fetch histogram in Prometheus",
        || {
            query(&format!(
                "sum(depotfs_fetch_duration_seconds_count{{instance=\"{mount_target}\"}})"
            ))
        },
    );
    assert!(
        count > 0.0,
        "depotfs_fetch_duration_seconds_count = {count}"
    );
    let rules = api("/api/v1/rules");
    let names: Vec<String> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    for alert in [
        "DepotfsMountOffline",
        "DepotfsVerificationFailures",
        "DepotfsRevisionTooOld",
    ] {
        assert!(
            names.iter().any(|n| n == alert),
            "rule {alert} not loaded: {names:?}"
        );
    }
}

/// The shipped configs as the tools themselves read them: `squid -k parse` without errors or
/// warnings, `promtool check config` and `check rules`, and the rules' unit tests
/// (`deploy/prometheus/depotfs.rules.test.yml`).
#[test]
fn fleet_shipped_configs_pass_their_tools_checks() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let run = |bin: &Path, args: &[&str], dir: &Path| -> String {
        let out = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{} {args:?}: {}\n{text}",
            bin.display(),
            out.status
        );
        text
    };
    let squid = binary("squid", "squid");
    let parsed = run(
        &squid,
        &["-k", "parse", "-f", "depotfs.conf"],
        &deploy.join("squid"),
    );
    let bad: Vec<&str> = parsed
        .lines()
        .filter(|l| {
            let l = l.to_ascii_uppercase();
            l.contains("WARNING") || l.contains("ERROR") || l.contains("FATAL")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "squid -k parse deploy/squid/depotfs.conf:\n{}",
        bad.join("\n")
    );

    let promtool = binary("promtool", "prometheus");
    let dir = deploy.join("prometheus");
    run(&promtool, &["check", "config", "prometheus.yml"], &dir);
    run(&promtool, &["check", "rules", "depotfs.rules.yml"], &dir);
    let tested = run(
        &promtool,
        &["test", "rules", "depotfs.rules.test.yml"],
        &dir,
    );
    assert!(tested.contains("SUCCESS"), "promtool test rules:\n{tested}");
}

/// Six nodes with cold caches start reading the same image at once through the shipped squid
/// config, from a slow mirror (so their requests overlap): every node gets the right bytes and
/// the mirror sends each object once (collapsed forwarding, then hits).
#[test]
fn fleet_simultaneous_clients_cause_one_upstream_fetch_per_object() {
    let fleet = Fleet::new(false);
    let mirror = Nginx::start_limited(
        &fleet.mirror("mirror1"),
        &fleet.path().join("nginx1"),
        4 * MIB,
    );
    let squid = Squid::start(&fleet.path().join("squid"));
    let mounts: Vec<Mount> = (0..6)
        .map(|i| {
            Mount::new(
                &fleet,
                &format!("node{i}"),
                &mirror.url(),
                &["--proxy", &squid.url()],
            )
        })
        .collect();
    let want = fleet.source("tool-a.sif");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(mounts.len()));
    let readers: Vec<_> = mounts
        .iter()
        .map(|m| {
            let (path, barrier) = (m.path("images/tool-a.sif"), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                fs::read(path)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, r) in readers.into_iter().enumerate() {
        while !r.is_finished() {
            assert!(Instant::now() < deadline, "node{i}'s read hung");
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = r.join().unwrap().unwrap_or_else(|e| panic!("node{i}: {e}"));
        assert_same(&got, &want, &format!("node{i}"));
    }
    let objects: Vec<String> = mirror
        .requests()
        .into_iter()
        .filter(|p| p.starts_with("/objects/"))
        .collect();
    assert!(objects.len() >= 4, "{objects:?}");
    for o in &objects {
        let n = objects.iter().filter(|x| *x == o).count();
        if n != 1 {
            let log = squid.log();
            let lines: Vec<&SquidLog> =
                log.iter().filter(|l| l.url.ends_with(o.as_str())).collect();
            panic!("the mirror served {o} {n} times to 6 simultaneous nodes; squid: {lines:?}");
        }
    }
}
