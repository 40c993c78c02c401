//! The store's public side in an S3-compatible bucket (`depotfs init --public s3://…`,
//! `depotfs replicate URL s3://…`), against a real S3 server on 127.0.0.1: publish into a
//! bucket and mount it from the bucket's HTTP endpoint with a real FUSE mount; cache headers
//! as uploaded; gc deletes from the bucket what no kept revision needs; replicate into a second
//! bucket, mounted too; `kill -9` of a publish mid-upload leaves the last revision whole and
//! mountable; `503 SlowDown` answers are retried.
//!
//! **The server: moto** (`moto_server`, PyPI, pinned in `tests/s3/requirements.txt`, installed
//! into `target/s3-venv` by `tests/s3/setup-venv.sh`, which `.ci/run` runs and this test runs
//! too). Why: it installs from PyPI in seconds as a pure-Python wheel (no build: `s3s-fs` from
//! crates.io would add minutes of compilation on CI's 2 cores), it is the S3 emulator the
//! Python AWS ecosystem tests against, and it implements what this needs: path-style
//! addressing, SigV4-signed requests, multipart uploads, ListObjectsV2, `Cache-Control` kept
//! as uploaded, and bucket policies enforced on anonymous GETs (the public-read policy README
//! documents is the one these tests set). MinIO is not packaged in any reachable registry.
//!
//! Faults come from a small proxy here in front of moto (one request per connection): it
//! answers chosen PUTs with `503 SlowDown` or delays object uploads, and counts them.
//!
//! Needs python3 with venv (Debian python3-venv) and PyPI on first run, /dev/fuse and root.

mod cli_run;
mod http_suite;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cli_run::{BIN, Mounted, ok, ok_stdout};
use depotfs_catalog::{Manifest, PublicKey};
use http_suite::{CACHE_MANIFEST, CACHE_OBJECT, free_port, poll, random_bytes, wait_listening};

/// `tests/s3/setup-venv.sh`, once per test binary; the path of `moto_server`.
fn moto_server() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let st = Command::new("bash")
                .arg(repo.join("tests/s3/setup-venv.sh"))
                .stdout(Stdio::null())
                .status()
                .expect("running tests/s3/setup-venv.sh");
            assert!(st.success(), "tests/s3/setup-venv.sh failed");
            let venv = std::env::var_os("S3_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join("target/s3-venv"));
            venv.join("bin/moto_server")
        })
        .clone()
}

/// A moto S3 server on 127.0.0.1, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let mut m = Moto { child, port };
        let child = &mut m.child;
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), || {
            match child.try_wait() {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        m
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create `bucket` with the public-read policy README documents.
    fn create_bucket(&self, bucket: &str) {
        let c = reqwest::blocking::Client::new();
        let url = format!("{}/{bucket}", self.endpoint());
        let r = c.put(&url).send().unwrap();
        assert!(r.status().is_success(), "create bucket {bucket}: {r:?}");
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"PublicRead","Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{bucket}/*"}}]}}"#
        );
        let r = c.put(format!("{url}?policy")).body(policy).send().unwrap();
        assert!(r.status().is_success(), "bucket policy {bucket}: {r:?}");
    }

    /// An anonymous GET of `path` (as a client or a CDN makes it).
    fn get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::get(format!("{}/{path}", self.endpoint())).unwrap()
    }

    /// The keys under `prefix` in `bucket` (ListObjectsV2, one page: these buckets are small).
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = self.get(&format!(
            "{bucket}?list-type=2&max-keys=1000&prefix={prefix}"
        ));
        assert!(r.status().is_success());
        let body = r.text().unwrap();
        assert!(!body.contains("<IsTruncated>true"), "listing truncated");
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `depotfs ARGS…` configured for the S3 server at `endpoint` (the AWS_* environment).
fn s3_cmd(endpoint: &str, args: &[&dyn AsRef<OsStr>]) -> Command {
    let mut c = Command::new(BIN);
    for a in args {
        c.arg(a);
    }
    c.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    c
}

fn s3_run(endpoint: &str, args: &[&dyn AsRef<OsStr>]) -> Output {
    s3_cmd(endpoint, args).output().expect("running depotfs")
}

/// Source files: a small one, a chunked one, one in a subdirectory.
fn source(dir: &Path, seed: u64) -> PathBuf {
    let src = dir.join(format!("src{seed}"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("small.txt"), format!("small file {seed}\n")).unwrap();
    fs::write(src.join("big.bin"), random_bytes(3 << 20, seed)).unwrap();
    fs::write(src.join("sub/mid.bin"), random_bytes(200 << 10, seed + 100)).unwrap();
    src
}

/// Mount `url` at `dir/name` (a real FUSE mount, daemonized once ready).
fn mount(url: &str, key: &Path, dir: &Path, name: &str) -> Mounted {
    let mp = dir.join(name);
    let cache = dir.join(format!("{name}-cache"));
    fs::create_dir_all(&mp).unwrap();
    ok(cli_run::run(&[
        &"mount",
        &url,
        &mp,
        &"--key",
        &key,
        &"--cache-dir",
        &cache,
    ]));
    Mounted(mp)
}

/// Every file of `src` reads back identical under `mnt/to`.
fn same_tree(src: &Path, mnt: &Path) {
    for rel in ["small.txt", "big.bin", "sub/mid.bin"] {
        let want = fs::read(src.join(rel)).unwrap();
        let got = fs::read(mnt.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == want, "{rel} differs through the mount");
    }
}

/// The bucket's manifest, verified with the store's key.
fn bucket_manifest(moto: &Moto, path: &str, key: &Path) -> Manifest {
    let r = moto.get(path);
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    let key = PublicKey::from_text(&fs::read_to_string(key).unwrap()).unwrap();
    Manifest::parse_verified(&r.bytes().unwrap(), &key, None).unwrap()
}

/// `depotfs init STORE --name s3.test --public URL`.
fn init_public(endpoint: &str, store: &Path, url: &str) -> Output {
    s3_run(
        endpoint,
        &[&"init", &store, &"--name", &"s3.test", &"--public", &url],
    )
}

/// `add` of a [`source`]'s three entries into the root of `store`.
fn add_source(endpoint: &str, store: &Path, src: &Path) {
    ok(s3_run(
        endpoint,
        &[
            &"add",
            &store,
            &src.join("small.txt"),
            &src.join("big.bin"),
            &src.join("sub"),
        ],
    ));
}

/// A new store whose public side is `s3://BUCKET/r` on its own moto, reached through a
/// [`fault_proxy`] (`ep`, the endpoint the publisher is given).
struct Proxied {
    moto: Moto,
    faults: Arc<Faults>,
    ep: String,
    dir: tempfile::TempDir,
    store: PathBuf,
    key: PathBuf,
}

impl Proxied {
    fn new(bucket: &str) -> Proxied {
        let moto = Moto::start();
        moto.create_bucket(bucket);
        let (port, faults) = fault_proxy(moto.port);
        let ep = format!("http://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let key = store.join("public/repo.pub");
        let url = format!("s3://{bucket}/r");
        ok(init_public(&ep, &store, &url));
        Proxied {
            moto,
            faults,
            ep,
            dir,
            store,
            key,
        }
    }
}

#[test]
fn publish_mount_gc_and_replicate_in_buckets() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    moto.create_bucket("origin");
    moto.create_bucket("mirror");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let key = store.join("public/repo.pub");

    // A bad URL is refused before STORE exists.
    let out = init_public(&ep, &store, "s3://Bad_Bucket/x");
    assert!(!out.status.success() && !store.exists(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://Bad_Bucket/x"));

    let out = ok_stdout(init_public(&ep, &store, "s3://origin/repo"));
    assert!(out.contains("s3://origin/repo"), "{out}");
    // Only the private state (and the key's copy) is on disk.
    assert!(!store.join("public/objects").exists());
    assert!(!store.join("public/manifest").exists());
    assert!(store.join("catalog.redb").is_file() && store.join("repo.key").is_file());
    assert_eq!(
        moto.get("origin/repo/repo.pub").bytes().unwrap(),
        fs::read(&key).unwrap()
    );
    // A prefix that holds a repository is not taken over.
    let other = dir.path().join("other");
    let out = init_public(&ep, &other, "s3://origin/repo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a manifest"));

    let src1 = source(dir.path(), 1);
    add_source(&ep, &store, &src1);
    let m1 = bucket_manifest(&moto, "origin/repo/manifest", &key);
    assert_eq!(m1.revision, 1);
    // Cache headers as uploaded: short on the manifest, immutable on objects.
    let r = moto.get("origin/repo/manifest");
    assert_eq!(r.headers()["cache-control"], CACHE_MANIFEST);
    let root = format!("origin/repo/{}", m1.root.store_path());
    assert_eq!(moto.get(&root).headers()["cache-control"], CACHE_OBJECT);
    let objects1 = moto.keys("origin", "repo/objects/");
    assert!(objects1.len() > 10, "{objects1:?}");

    // ls and verify read through the bucket.
    let ls = ok_stdout(s3_run(&ep, &[&"ls", &store, &"/"]));
    assert!(ls.contains("big.bin") && ls.contains("sub"), "{ls}");
    assert!(ok_stdout(s3_run(&ep, &[&"verify", &store])).starts_with("ok: "));

    {
        let url = format!("{ep}/origin/repo/");
        let m = mount(&url, &key, dir.path(), "mnt-origin");
        same_tree(&src1, &m.0);
    }

    // A second revision replaces big.bin; a rollback to revision 1 publishes revision 3 with
    // revision 1's tree; gc keeping one revision deletes the chunks only revision 2 had.
    let src2 = source(dir.path(), 2);
    ok(s3_run(&ep, &[&"add", &store, &src2.join("big.bin")]));
    assert_eq!(
        bucket_manifest(&moto, "origin/repo/manifest", &key).revision,
        2
    );
    ok(s3_run(&ep, &[&"rollback", &store, &"1"]));
    let m3 = bucket_manifest(&moto, "origin/repo/manifest", &key);
    assert_eq!((m3.revision, m3.root), (3, m1.root));
    let before = moto.keys("origin", "repo/objects/");
    let gc = ok_stdout(s3_run(&ep, &[&"gc", &store, &"--keep", &"1"]));
    let after = moto.keys("origin", "repo/objects/");
    assert!(after.len() < before.len(), "gc deleted nothing: {gc}");
    let gone: Vec<_> = before.iter().filter(|k| !after.contains(k)).collect();
    assert!(
        gc.starts_with(&format!("removed {} objects", gone.len())),
        "{gc}"
    );
    for k in &gone {
        let r = moto.get(&format!("origin/{k}"));
        assert!(!r.status().is_success(), "{k} still served");
    }
    let verify = ok_stdout(s3_run(&ep, &[&"verify", &store]));
    assert!(verify.starts_with("ok: "), "{verify}");

    // A stratum 1 in a second bucket, from the first one's HTTP endpoint.
    let source_url = format!("{ep}/origin/repo/");
    let replicate = || {
        ok_stdout(s3_run(
            &ep,
            &[&"replicate", &source_url, &"s3://mirror/s1", &"--key", &key],
        ))
    };
    let out = replicate();
    assert!(out.contains("revision 3"), "{out}");
    assert_eq!(
        moto.get("mirror/s1/manifest").bytes().unwrap(),
        moto.get("origin/repo/manifest").bytes().unwrap()
    );
    let strip = |keys: Vec<String>, p: &str| -> Vec<String> {
        keys.into_iter()
            .map(|k| k.strip_prefix(p).unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strip(moto.keys("mirror", "s1/objects/"), "s1/"),
        strip(after.clone(), "repo/")
    );
    assert_eq!(
        moto.get("mirror/s1/manifest").headers()["cache-control"],
        CACHE_MANIFEST
    );
    // A second run has nothing to fetch.
    let again = replicate();
    assert!(again.contains("fetched 0 objects"), "{again}");
    let url = format!("{ep}/mirror/s1/");
    let m = mount(&url, &key, dir.path(), "mnt-mirror");
    same_tree(&src1, &m.0);
}

/// What the proxy does to requests, and what it saw.
#[derive(Default)]
struct Faults {
    /// Answer this many PUTs with `503 SlowDown` (not forwarded).
    slowdown_puts: AtomicUsize,
    /// Hold each object PUT this long before forwarding it.
    delay_object_ms: AtomicU64,
    /// `503 SlowDown` answers given.
    slowdowns: AtomicUsize,
    /// Object PUTs forwarded and answered.
    object_puts: AtomicUsize,
    /// Manifest PUTs forwarded and answered.
    manifest_puts: AtomicUsize,
    /// Object PUTs received and not yet answered.
    objects_in_flight: AtomicUsize,
    /// Manifest PUTs that arrived while object PUTs were in flight: a revision shown
    /// before its objects are all there.
    early_manifests: AtomicUsize,
}

/// A proxy in front of moto on a free port, one request per connection, with [`Faults`].
fn fault_proxy(upstream: u16) -> (u16, Arc<Faults>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let faults = Arc::new(Faults::default());
    let f = faults.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let f = f.clone();
            std::thread::spawn(move || {
                let _ = proxy_one(conn, upstream, &f);
            });
        }
    });
    (port, faults)
}

fn proxy_one(mut client: TcpStream, upstream: u16, f: &Faults) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let mut len = 0usize;
    let mut out = format!("{request}\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        match name.to_ascii_lowercase().as_str() {
            "connection" => continue,
            "content-length" => len = value.trim().parse().unwrap_or(0),
            "transfer-encoding" => panic!("chunked request bodies are not proxied: {request}"),
            _ => {}
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; len];
    client.read_exact(&mut body)?;
    let is_put = request.starts_with("PUT ");
    let is_object = is_put && request.contains("/objects/");
    if is_put
        && f.slowdown_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        f.slowdowns.fetch_add(1, Ordering::SeqCst);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let is_manifest = is_put && request.contains("/manifest ");
    if is_object {
        f.objects_in_flight.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(
            f.delay_object_ms.load(Ordering::SeqCst),
        ));
    } else if is_manifest && f.objects_in_flight.load(Ordering::SeqCst) > 0 {
        f.early_manifests.fetch_add(1, Ordering::SeqCst);
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    if is_object {
        f.objects_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    client.write_all(&resp)?;
    if is_object {
        f.object_puts.fetch_add(1, Ordering::SeqCst);
    } else if is_manifest {
        f.manifest_puts.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

#[test]
fn slowdown_answers_are_retried() {
    let p = Proxied::new("slow");
    let (moto, faults, ep, dir, store, key) = (&p.moto, &p.faults, &p.ep, &p.dir, &p.store, &p.key);
    // The next four PUTs (objects, then the manifest's turn comes too) answer 503 SlowDown.
    faults.slowdown_puts.store(4, Ordering::SeqCst);
    let src = source(dir.path(), 7);
    add_source(ep, store, &src);
    assert_eq!(
        faults.slowdowns.load(Ordering::SeqCst),
        4,
        "the proxy's 503s were not all used"
    );
    assert_eq!(bucket_manifest(moto, "slow/r/manifest", key).revision, 1);
    let verify = ok_stdout(s3_run(&moto.endpoint(), &[&"verify", &store]));
    assert!(verify.starts_with("ok: "), "{verify}");
    let url = format!("{}/slow/r/", moto.endpoint());
    let m = mount(&url, key, dir.path(), "mnt");
    same_tree(&src, &m.0);
}

#[test]
fn kill_9_mid_upload_keeps_the_last_revision_whole() {
    let p = Proxied::new("kill");
    let (moto, faults, ep, dir, store, key) = (&p.moto, &p.faults, &p.ep, &p.dir, &p.store, &p.key);
    let src1 = source(dir.path(), 11);
    add_source(ep, store, &src1);
    let m1 = bucket_manifest(moto, "kill/r/manifest", key);

    // 24 MiB of new chunks, each upload held 1 s: killed once some are in the bucket.
    let big = dir.path().join("huge.bin");
    fs::write(&big, random_bytes(24 << 20, 12)).unwrap();
    faults.delay_object_ms.store(1000, Ordering::SeqCst);
    let puts_before = faults.object_puts.load(Ordering::SeqCst);
    let manifests_before = faults.manifest_puts.load(Ordering::SeqCst);
    let mut child = s3_cmd(ep, &[&"add", &store, &big])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(
        Duration::from_secs(60),
        "some objects of the new revision uploaded",
        || faults.object_puts.load(Ordering::SeqCst) >= puts_before + 8,
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    faults.delay_object_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        faults.manifest_puts.load(Ordering::SeqCst),
        manifests_before,
        "the killed publish wrote a manifest"
    );
    // The bucket still serves revision 1, whole: a mount reads every file of it.
    let m = bucket_manifest(moto, "kill/r/manifest", key);
    assert_eq!((m.revision, m.root), (m1.revision, m1.root));
    {
        let url = format!("{}/kill/r/", moto.endpoint());
        let mnt = mount(&url, key, dir.path(), "mnt1");
        same_tree(&src1, &mnt.0);
        assert!(!mnt.0.join("huge.bin").exists());
    }
    // Adding again after an abort (of whatever the killed run staged) publishes revision 2,
    // its manifest PUT only once no object upload is in flight (uploads held 300 ms).
    ok(s3_run(ep, &[&"abort", &store]));
    poll(
        Duration::from_secs(10),
        "the killed run's uploads drained",
        || faults.objects_in_flight.load(Ordering::SeqCst) == 0,
    );
    faults.delay_object_ms.store(300, Ordering::SeqCst);
    ok(s3_run(ep, &[&"add", &store, &big]));
    assert_eq!(
        faults.early_manifests.load(Ordering::SeqCst),
        0,
        "a manifest was uploaded while objects were"
    );
    let m2 = bucket_manifest(moto, "kill/r/manifest", key);
    assert_eq!(m2.revision, 2);
    let url = format!("{}/kill/r/", moto.endpoint());
    let mnt = mount(&url, key, dir.path(), "mnt2");
    assert_eq!(
        fs::read(mnt.0.join("huge.bin")).unwrap(),
        fs::read(&big).unwrap()
    );
}

#[test]
fn large_objects_are_uploaded_in_parts() {
    use depotfs_publisher::public::{BlockingBucket, CACHE_OBJECT, MULTIPART_THRESHOLD};
    let moto = Moto::start();
    moto.create_bucket("parts");
    let ep = moto.endpoint();
    let config = [
        ("aws_endpoint", ep.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
        ("aws_region", "us-east-1"),
    ];
    let b = BlockingBucket::open_with("s3://parts/p", &config).unwrap();
    let big = random_bytes(MULTIPART_THRESHOLD + (3 << 20), 5);
    b.put_now("objects/ab/big", &big, CACHE_OBJECT).unwrap();
    let r = moto.get("parts/p/objects/ab/big");
    assert!(r.status().is_success());
    // S3 names a multipart object's ETag after its parts: "…-2" for two.
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "not multipart: {etag}"
    );
    assert_eq!(r.headers()["cache-control"], CACHE_OBJECT);
    assert!(r.bytes().unwrap() == big, "the multipart object differs");
    // A small one is one PUT.
    b.put_now("objects/ab/small", b"small", CACHE_OBJECT)
        .unwrap();
    let etag = moto.get("parts/p/objects/ab/small").headers()["etag"].clone();
    assert!(!etag.to_str().unwrap().contains('-'), "{etag:?}");
}

#[test]
fn the_shared_aws_files_configure_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("files");
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let config = dir.path().join("config");
    fs::write(
        &credentials,
        "[depot]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    fs::write(
        &config,
        format!(
            "[profile depot]\nregion = eu-west-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let mut cmd = Command::new(BIN);
    cmd.arg("init")
        .arg(&store)
        .args(["--name", "files.test", "--public", "s3://files/p"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("AWS_PROFILE", "depot")
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", &config)
        .output()
        .unwrap();
    ok(out);
    assert_eq!(
        moto.get("files/p/repo.pub").bytes().unwrap(),
        fs::read(store.join("public/repo.pub")).unwrap()
    );
}
