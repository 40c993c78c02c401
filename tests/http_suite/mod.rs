//! What every server of a depotfs `public/` directory must do, checked over real sockets:
//! shared by `tests/serve.rs` (`depotfs serve`) and `tests/nginx.rs` (nginx with
//! `deploy/nginx/depotfs.conf`), so both are held to the same headers.
//!
//! Requests are written by hand on a `TcpStream` so that nothing normalizes `..` or
//! percent-encoding on the way, and every header is seen as sent.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CACHE_OBJECT: &str = "public, max-age=31536000, immutable";
pub const CACHE_MANIFEST: &str = "public, max-age=10";
pub const CACHE_PUBLIC_KEY: &str = "public, max-age=300";
/// Content of the file outside `public/` that no request may reach.
pub const SECRET: &str = "SECRET-OUTSIDE-PUBLIC-7f3a";

/// A store made by hand: `store/public/{manifest,repo.pub,objects/…}`, a secret file next to
/// `public/`, symlinks that point out of the tree, and a dot file.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub public: PathBuf,
    pub manifest: Vec<u8>,
    pub repo_pub: Vec<u8>,
    /// (URL path, content) of every object.
    pub objects: Vec<(String, Vec<u8>)>,
}

/// Poll `f` every 50 ms until it is true; panic with `what` after `limit`: the way a test
/// waits for something to happen, instead of sleeping a fixed time.
pub fn poll(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    poll_for(limit, what, || f().then_some(()))
}

/// [`poll`] for a value: call `f` every 50 ms until it returns `Some`, and return that.
pub fn poll_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic pseudo-random numbers (xorshift64*): the one generator of test data, so a
/// failure is reproducible.
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` incompressible bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `len` deterministic pseudo-random bytes of `seed` ([`Rng`]).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let public = store.join("public");
        std::fs::create_dir_all(public.join("objects")).unwrap();
        let manifest =
            b"depotfs-manifest 1\nname test.example.org\nrevision 7\nttl 240\nsignature 00\n"
                .to_vec();
        let repo_pub = format!("depotfs-ed25519-public {}\n", "ab".repeat(32)).into_bytes();
        std::fs::write(public.join("manifest"), &manifest).unwrap();
        std::fs::write(public.join("repo.pub"), &repo_pub).unwrap();
        // Sizes: tiny, just under and over one 256 KiB read, and over the ~4 MiB maximum.
        let sizes = [1000usize, 200 * 1024, 300 * 1024 + 7, 5 * 1024 * 1024 + 123];
        let mut objects = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let name = format!("{:032x}{:032x}", 0xab00 + i as u128, i as u128 * 7919);
            let rel = format!("objects/{}/{}", &name[..2], &name[2..]);
            let path = public.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let bytes = random_bytes(size, i as u64 + 1);
            std::fs::write(&path, &bytes).unwrap();
            objects.push((format!("/{rel}"), bytes));
        }
        // Outside the served tree, and ways that point at it.
        std::fs::write(store.join("secret.key"), SECRET).unwrap();
        std::fs::create_dir_all(public.join("objects/ee")).unwrap();
        std::os::unix::fs::symlink("../../../secret.key", public.join("objects/ee/rel-link"))
            .unwrap();
        std::os::unix::fs::symlink(store.join("secret.key"), public.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../..", public.join("objects/out")).unwrap();
        std::fs::write(public.join("objects/.tmp-partial"), SECRET).unwrap();
        Fixture {
            dir,
            store,
            public,
            manifest,
            repo_pub,
            objects,
        }
    }

    pub fn small(&self) -> &(String, Vec<u8>) {
        &self.objects[0]
    }

    pub fn large(&self) -> &(String, Vec<u8>) {
        self.objects.last().unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A request's head read from `c` byte by byte (nothing of its body), as text; `None` if the
/// connection ends first. For the stand-in servers and proxies of the tests.
#[allow(dead_code)] // not every test crate that includes this module serves requests
pub fn read_request_head(c: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Something sent to 127.0.0.1:`port` waits unread there (`/proc/net/tcp`): a request in a
/// connection's receive queue, or a connection in the accept queue, of a stopped server.
pub fn unread_at(port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| {
            f.get(1) == Some(&local.as_str())
                && f.get(4)
                    .and_then(|q| q.split_once(':'))
                    .is_some_and(|(_tx, rx)| u64::from_str_radix(rx, 16).is_ok_and(|n| n > 0))
        })
}

/// Wait until something accepts connections on `addr`; `alive` reports a crashed server.
pub fn wait_listening(addr: SocketAddr, mut alive: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Err(e) = alive() {
            panic!("server exited before listening on {addr}: {e}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response as it came off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }
}

/// Send one HTTP/1.1 request exactly as given (`target` is not normalized) on a fresh
/// connection, and read the response until the server closes it.
pub fn raw(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers: HashMap<String, String> = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').expect("header line");
        headers
            .entry(k.trim().to_ascii_lowercase())
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(v.trim())
            })
            .or_insert_with(|| v.trim().to_owned());
    }
    Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    raw(addr, "GET", path, &[])
}

fn assert_ok(r: &Resp, what: &str, content: &[u8], cache: &str, ctype: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert!(
        r.body == content,
        "{what}: body differs ({} bytes, want {})",
        r.body.len(),
        content.len()
    );
    assert_eq!(
        r.expect_header("content-length"),
        content.len().to_string(),
        "{what}"
    );
    assert_eq!(r.expect_header("cache-control"), cache, "{what}");
    assert_eq!(r.expect_header("content-type"), ctype, "{what}");
    assert_eq!(r.expect_header("accept-ranges"), "bytes", "{what}");
    assert!(
        r.expect_header("etag").starts_with('"'),
        "{what}: strong ETag"
    );
    httpdate_ok(r.expect_header("last-modified"));
}

fn httpdate_ok(v: &str) {
    // "Sun, 22 Nov 2026 01:48:24 GMT"
    assert!(v.ends_with(" GMT") && v.len() == 29, "Last-Modified {v:?}");
}

/// Every check, in order; `who` names the server in failure messages.
pub fn check_all(addr: SocketAddr, fx: &Fixture, who: &str) {
    check_files_and_cache_headers(addr, fx, who);
    check_head(addr, fx, who);
    check_ranges(addr, fx, who);
    check_conditionals(addr, fx, who);
    check_errors(addr, fx, who);
    check_confinement(addr, fx, who);
}

pub fn check_files_and_cache_headers(addr: SocketAddr, fx: &Fixture, who: &str) {
    let text = "text/plain; charset=utf-8";
    assert_ok(
        &get(addr, "/manifest"),
        &format!("{who} manifest"),
        &fx.manifest,
        CACHE_MANIFEST,
        text,
    );
    assert_ok(
        &get(addr, "/repo.pub"),
        &format!("{who} repo.pub"),
        &fx.repo_pub,
        CACHE_PUBLIC_KEY,
        text,
    );
    for (path, content) in &fx.objects {
        let r = get(addr, path);
        assert_ok(
            &r,
            &format!("{who} {path}"),
            content,
            CACHE_OBJECT,
            "application/octet-stream",
        );
    }
    // A query string does not change what is served.
    let r = get(addr, "/manifest?nocache=1");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, fx.manifest.as_slice()),
        "{who} manifest?query"
    );
}

pub fn check_head(addr: SocketAddr, fx: &Fixture, who: &str) {
    let (path, content) = fx.large();
    let g = raw(addr, "HEAD", path, &[]);
    assert_eq!(g.status, 200, "{who} HEAD: {g:?}");
    assert!(g.body.is_empty(), "{who} HEAD has a body");
    assert_eq!(
        g.expect_header("content-length"),
        content.len().to_string(),
        "{who} HEAD length"
    );
    assert_eq!(g.expect_header("cache-control"), CACHE_OBJECT, "{who} HEAD");
    let full = get(addr, path);
    assert_eq!(
        g.header("etag"),
        full.header("etag"),
        "{who}: HEAD and GET ETag"
    );
    assert_eq!(
        g.header("last-modified"),
        full.header("last-modified"),
        "{who}"
    );
}

pub fn check_ranges(addr: SocketAddr, fx: &Fixture, who: &str) {
    let (path, content) = fx.large();
    let len = content.len();
    let cases: [(String, usize, usize); 5] = [
        ("bytes=100-199".into(), 100, 200),
        ("bytes=-10".into(), len - 10, len),
        // Across the server's read chunks, to the end.
        (format!("bytes={}-", 262_000), 262_000, len),
        (format!("bytes=1000-{}", len + 5000), 1000, len),
        ("bytes=0-0".into(), 0, 1),
    ];
    for (range, start, end) in cases {
        let r = raw(addr, "GET", path, &[("Range", &range)]);
        assert_eq!(
            r.status,
            206,
            "{who} {range}: {r:?}",
            r = (r.status, &r.headers)
        );
        assert_eq!(
            r.expect_header("content-range"),
            format!("bytes {start}-{}/{len}", end - 1),
            "{who} {range}"
        );
        assert_eq!(
            r.expect_header("content-length"),
            (end - start).to_string(),
            "{who} {range}"
        );
        assert!(r.body == content[start..end], "{who} {range}: wrong bytes");
        assert_eq!(
            r.expect_header("cache-control"),
            CACHE_OBJECT,
            "{who} {range}"
        );
    }
    // The manifest, too (a client may resume it; mostly: proxies do ranges on everything).
    let r = raw(addr, "GET", "/manifest", &[("Range", "bytes=0-4")]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &fx.manifest[..5]),
        "{who} manifest range"
    );

    let r = raw(addr, "GET", path, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(r.status, 416, "{who}: range past the end");
    assert_eq!(
        r.expect_header("content-range"),
        format!("bytes */{len}"),
        "{who} 416"
    );

    // Several ranges: the whole file (both servers serve at most one range).
    let r = raw(addr, "GET", path, &[("Range", "bytes=0-1,10-11")]);
    assert_eq!(r.status, 200, "{who}: multi-range");
    assert!(r.body == *content, "{who}: multi-range body");

    // If-Range: the range applies only while the validator still matches.
    let etag = get(addr, path).expect_header("etag").to_owned();
    let r = raw(
        addr,
        "GET",
        path,
        &[("Range", "bytes=5-9"), ("If-Range", &etag)],
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &content[5..10]),
        "{who}: If-Range matching"
    );
    let r = raw(
        addr,
        "GET",
        path,
        &[("Range", "bytes=5-9"), ("If-Range", "\"stale-etag\"")],
    );
    assert_eq!(r.status, 200, "{who}: If-Range stale");
    assert!(r.body == *content, "{who}: If-Range stale body");
}

pub fn check_conditionals(addr: SocketAddr, fx: &Fixture, who: &str) {
    for (path, cache) in [
        ("/manifest", CACHE_MANIFEST),
        (fx.small().0.as_str(), CACHE_OBJECT),
    ] {
        let first = get(addr, path);
        let etag = first.expect_header("etag");
        let lm = first.expect_header("last-modified");

        let r = raw(addr, "GET", path, &[("If-None-Match", etag)]);
        assert_eq!(r.status, 304, "{who} {path}: If-None-Match");
        assert!(r.body.is_empty(), "{who}: 304 with a body");
        assert_eq!(r.header("etag"), Some(etag), "{who} {path}: 304 ETag");
        assert_eq!(
            r.header("cache-control"),
            Some(cache),
            "{who} {path}: 304 Cache-Control"
        );

        let r = raw(
            addr,
            "GET",
            path,
            &[("If-None-Match", &format!("\"nope\", {etag}"))],
        );
        assert_eq!(r.status, 304, "{who} {path}: If-None-Match list");

        let r = raw(addr, "GET", path, &[("If-None-Match", "\"nope\"")]);
        assert_eq!(r.status, 200, "{who} {path}: If-None-Match other");

        let r = raw(addr, "GET", path, &[("If-Modified-Since", lm)]);
        assert_eq!(r.status, 304, "{who} {path}: If-Modified-Since");

        let r = raw(
            addr,
            "GET",
            path,
            &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")],
        );
        assert_eq!(r.status, 200, "{who} {path}: If-Modified-Since old");

        // A date later than Last-Modified says nothing about this content (the date of a
        // path can go back): 200, as nginx's `if_modified_since exact`.
        let r = raw(
            addr,
            "GET",
            path,
            &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")],
        );
        assert_eq!(r.status, 200, "{who} {path}: If-Modified-Since later");
    }

    // A file's name with a trailing slash names a directory that is not there.
    assert_eq!(
        get(addr, "/manifest/").status,
        404,
        "{who}: /manifest/ (a file as a directory)"
    );

    // A new manifest (same length, as consecutive revisions often are) gets a new ETag.
    let before = get(addr, "/manifest");
    // Past the next second: Last-Modified (and an mtime-based ETag) has one-second steps.
    std::thread::sleep(Duration::from_millis(1100));
    let mut next = fx.manifest.clone();
    let at = next
        .iter()
        .position(|&b| b == b'7')
        .expect("revision digit");
    next[at] = b'8';
    let tmp = fx.public.join(".manifest.tmp");
    std::fs::write(&tmp, &next).unwrap();
    std::fs::rename(&tmp, fx.public.join("manifest")).unwrap();
    let r = raw(
        addr,
        "GET",
        "/manifest",
        &[("If-None-Match", before.expect_header("etag"))],
    );
    assert_eq!(r.status, 200, "{who}: a replaced manifest is not 304");
    assert_eq!(r.body, next, "{who}: the new manifest is served");
    std::fs::write(&tmp, &fx.manifest).unwrap();
    std::fs::rename(&tmp, fx.public.join("manifest")).unwrap();
}

pub fn check_errors(addr: SocketAddr, fx: &Fixture, who: &str) {
    let missing = format!("/objects/ab/{}", "0".repeat(62));
    for path in [
        missing.as_str(),
        "/objects",
        "/objects/",
        "/objects/ab/",
        "/nope",
        "/objects/.tmp-partial",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{who} {path}");
        assert_eq!(
            r.header("cache-control"),
            None,
            "{who} {path}: an error must not be cached"
        );
        assert!(!contains(&r.body, SECRET), "{who} {path}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = raw(addr, method, "/manifest", &[]);
        assert_eq!(r.status, 405, "{who} {method}");
        assert_eq!(
            r.header("allow"),
            Some("GET, HEAD"),
            "{who} {method}: Allow"
        );
    }
    let _ = fx;
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every way out of `public/` that a client can spell; `..` and encoded forms, absolute
/// paths, symlinks to a file outside and to the parent directory.
pub const ESCAPES: &[&str] = &[
    "/../secret.key",
    "/objects/../../secret.key",
    "/objects/ab/../../../secret.key",
    "/%2e%2e/secret.key",
    "/%2E%2E/secret.key",
    "/objects/%2e%2e/%2e%2e/secret.key",
    "/objects%2f..%2f..%2fsecret.key",
    "/..%2fsecret.key",
    "/%2e%2e%2fsecret.key",
    "/.%2e/secret.key",
    "/objects/ee/rel-link",
    "/abs-link",
    "/objects/out/secret.key",
    "/objects/out/public/manifest/../../secret.key",
    "//etc/passwd",
    "/etc/passwd",
    "/%2fetc%2fpasswd",
    "http://localhost/../secret.key",
];

pub fn check_confinement(addr: SocketAddr, fx: &Fixture, who: &str) {
    assert!(fx.store.join("secret.key").exists());
    for target in ESCAPES {
        let r = get(addr, target);
        assert!(
            matches!(r.status, 400 | 403 | 404),
            "{who}: {target} answered {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
        assert!(
            !contains(&r.body, SECRET),
            "{who}: {target} leaked the secret"
        );
        assert!(
            !contains(&r.body, "root:x:0"),
            "{who}: {target} leaked /etc/passwd"
        );
    }
}

/// The main nginx configuration of a test server living in `dir` (logs, pid, temp paths
/// under it; `dir/tmp` must exist) that includes `dir/site.conf`: `main` lines at the top
/// level, `http` lines in the `http` block.
pub fn nginx_conf(dir: &Path, main: &str, http: &str) -> String {
    let d = dir.display();
    format!(
        "# Generated by the depotfs tests.\n\
         {main}\n\
         error_log {d}/error.log info;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   {http}\n\
         \x20   client_body_temp_path {d}/tmp/body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   include {d}/site.conf;\n\
         }}\n"
    )
}

/// The shipped site config (`deploy/nginx/depotfs.conf`) with only its `listen` and `root`
/// lines replaced: listening on 127.0.0.1:`port`, serving `public`.
pub fn shipped_site(port: u16, public: &Path) -> String {
    const SITE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/depotfs.conf"
    ));
    let replace_once = |text: String, from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "deploy/nginx/depotfs.conf must contain {from:?} once"
        );
        text.replace(from, to)
    };
    let s = replace_once(
        SITE.to_owned(),
        "    listen 80;\n",
        &format!("    listen 127.0.0.1:{port};\n"),
    );
    let s = replace_once(s, "    listen [::]:80;\n", "");
    replace_once(
        s,
        "    root /srv/depotfs/public;\n",
        &format!("    root {};\n", public.display()),
    )
}

/// The nginx binary: on PATH or in the usual sbin directories.
pub fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/local/sbin".into(),
            "/usr/local/nginx/sbin".into(),
        ])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// A running nginx master (and its worker), stopped when dropped.
pub struct Nginx {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Its configuration, logs (`access.log`, `error.log`) and temporary files.
    pub dir: PathBuf,
}

impl Nginx {
    /// Start nginx with the `server` block `site(port)` on a free port, everything it
    /// writes under `dir/nginx`. `None` when nginx is missing and `DEPOTFS_SKIP_NGINX` is set.
    pub fn start_site(dir: &Path, site: impl FnOnce(u16) -> String) -> Option<Nginx> {
        let Some(bin) = nginx_binary() else {
            if std::env::var_os("DEPOTFS_SKIP_NGINX").is_some() {
                eprintln!("nginx not found and DEPOTFS_SKIP_NGINX is set: skipping");
                return None;
            }
            panic!("nginx not found (apt-get install nginx, or set DEPOTFS_SKIP_NGINX=1)");
        };
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        std::fs::write(dir.join("site.conf"), site(port)).unwrap();
        let child = spawn_nginx(
            &bin,
            &dir,
            "daemon off;\nuser root root;\nworker_processes 1;",
            "",
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut n = Nginx { child, addr, dir };
        let (child, logs) = (&mut n.child, n.dir.clone());
        wait_listening(addr, || match child.try_wait() {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}\n{}", read_logs(&logs))),
        });
        Some(n)
    }
}

/// Start nginx (`bin`, see [`nginx_binary`]) on the configuration [`nginx_conf`]`(dir, main,
/// http)`, which includes `dir/site.conf` (written by the caller); `main` must hold `daemon
/// off;`. Its stderr goes to `dir/stderr.log`, its error log to `dir/error.log` (see
/// [`read_logs`]); `dir/tmp` is created. The caller waits for it to listen.
pub fn spawn_nginx(bin: &Path, dir: &Path, main: &str, http: &str) -> std::process::Child {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, main, http)).unwrap();
    std::process::Command::new(bin)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// The nginx binary, which must be installed (Debian package `nginx`; `.ci/run` installs it).
pub fn nginx_required() -> PathBuf {
    nginx_binary().expect("nginx (Debian package nginx; .ci/run installs it)")
}

pub fn read_logs(dir: &Path) -> String {
    ["stderr.log", "error.log"]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(dir.join(f)).unwrap_or_default()
            )
        })
        .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
