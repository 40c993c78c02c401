//! The depot view of `depotfs serve` (`/files/…` and the page at `/`), with real parts:
//! curl and wget download and resume whole images; nginx's own autoindex of the same tree is
//! the reference for the listing formats; a Python scraper reads the hrefs of a repository
//! holding every name of the real 118,594-name listing; a headless Chromium searches the page
//! and follows its links; hostile requests; a corrupt object cuts a download short; a
//! download that started before a publish finishes from its revision.

mod cli_run;
mod http_suite;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_run::{Served, ok, poll, run};
use http_suite::{Nginx, free_port, get, random_bytes, raw};

const LISTING: &str = "cvmfs_singularity_all_2026-01-28.tsv.gz";

/// A published repository made from a source tree under a temporary directory.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `init`, then `add` every top-level entry of `src/` and publish.
    fn publish(name: &str, fill: impl FnOnce(&Path)) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let r = Repo { dir };
        std::fs::create_dir_all(r.src()).unwrap();
        fill(&r.src());
        ok(run(&[&"init", &r.store(), &"--name", &name]));
        r.add_all();
        r
    }

    fn add_all(&self) {
        let mut args: Vec<PathBuf> = std::fs::read_dir(self.src())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        args.sort();
        let store = self.store();
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"add", &store];
        for p in &args {
            a.push(p);
        }
        ok(run(&a));
    }
}

/// Sizes that cover: empty, one small chunk, many chunks (FastCDC 64 KiB..1 MiB).
const IMAGES: &[(&str, usize)] = &[
    ("samtools:1.9--h91753b0_8", 9 * 1024 * 1024 + 77),
    ("samtools:1.10--h2e538c0_3", 150_000),
    ("bwa:0.7.17--he4a0461_11", 3 * 1024 * 1024 + 5),
    ("empty:0--0", 0),
];

fn images(src: &Path) {
    let all = src.join("all");
    std::fs::create_dir_all(&all).unwrap();
    for (i, (name, size)) in IMAGES.iter().enumerate() {
        std::fs::write(all.join(name), random_bytes(*size, 100 + i as u64)).unwrap();
    }
}

fn tool(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut c = Command::new(name);
    for a in args {
        c.arg(a);
    }
    c.output()
        .unwrap_or_else(|e| panic!("running {name} (Debian package; .ci/run installs it): {e}"))
}

fn addr(s: &Served) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}

/// curl and wget fetch whole images, resume cut downloads, and see HEAD, conditional and
/// range answers; every byte compared with the source files.
#[test]
fn depot_curl_and_wget_download_and_resume() {
    let repo = Repo::publish("depot.test", images);
    let s = Served::start(&repo.store());
    let out = repo.dir.path().join("dl");
    std::fs::create_dir_all(&out).unwrap();
    for (name, _) in IMAGES {
        let want = std::fs::read(repo.src().join("all").join(name)).unwrap();
        let url = format!("{}files/all/{}", s.url(), name.replace(':', "%3A"));

        let f = out.join("curl");
        let o = tool("curl", &[&"-sSf", &"-o", &f, &url]);
        assert!(o.status.success(), "curl {url}: {o:?}");
        assert!(
            std::fs::read(&f).unwrap() == want,
            "curl {name}: bytes differ"
        );

        let f = out.join("wget");
        let o = tool("wget", &[&"-q", &"-O", &f, &url]);
        assert!(o.status.success(), "wget {url}: {o:?}");
        assert!(
            std::fs::read(&f).unwrap() == want,
            "wget {name}: bytes differ"
        );

        if want.len() < 1000 {
            continue;
        }
        // A download cut after `cut` bytes (curl's own range request), resumed by curl -C -.
        let cut = want.len() / 3 + 17;
        let f = out.join("curl-resume");
        let _ = std::fs::remove_file(&f);
        let o = tool(
            "curl",
            &[&"-sSf", &"-r", &format!("0-{}", cut - 1), &"-o", &f, &url],
        );
        assert!(o.status.success(), "{o:?}");
        assert_eq!(std::fs::metadata(&f).unwrap().len(), cut as u64);
        let o = tool("curl", &[&"-sSf", &"-C", &"-", &"-o", &f, &url]);
        assert!(o.status.success(), "curl -C -: {o:?}");
        assert!(
            std::fs::read(&f).unwrap() == want,
            "curl resumed {name}: bytes differ"
        );

        // wget -c on a partial file.
        let f = out.join("wget-resume");
        std::fs::write(&f, &want[..cut * 2 - 5]).unwrap();
        let o = tool("wget", &[&"-q", &"-c", &"-O", &f, &url]);
        assert!(o.status.success(), "wget -c: {o:?}");
        assert!(
            std::fs::read(&f).unwrap() == want,
            "wget resumed {name}: bytes differ"
        );
    }

    // HEAD with curl: the headers a downloader needs.
    let url = format!("{}files/all/samtools%3A1.9--h91753b0_8", s.url());
    let o = tool("curl", &[&"-sSfI", &url]);
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", IMAGES[0].1)),
        "{head}"
    );
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    assert!(head.contains("last-modified: "), "{head}");
    assert!(head.contains("etag: \""), "{head}");
    assert!(head.contains("x-depotfs-revision: 1"), "{head}");

    // Conditional requests, ranges, 416, on the wire.
    let a = addr(&s);
    let path = "/files/all/samtools%3A1.9--h91753b0_8";
    let want = std::fs::read(repo.src().join("all").join(IMAGES[0].0)).unwrap();
    let full = get(a, path);
    assert_eq!(full.status, 200);
    assert!(full.body == want);
    let etag = full.expect_header("etag").to_owned();
    let lm = full.expect_header("last-modified").to_owned();
    let r = raw(a, "GET", path, &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = raw(a, "GET", path, &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);
    let r = raw(a, "GET", path, &[("If-None-Match", "\"other\"")]);
    assert_eq!(r.status, 200);
    let r = raw(
        a,
        "GET",
        path,
        &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")],
    );
    assert_eq!(r.status, 200);
    let len = want.len();
    for (range, start, end) in [
        ("bytes=0-0".to_string(), 0, 1),
        ("bytes=100-299999".to_string(), 100, 300_000),
        (format!("bytes={}-", len - 1_500_000), len - 1_500_000, len),
        ("bytes=-70000".to_string(), len - 70_000, len),
        (format!("bytes=5000000-{}", len * 2), 5_000_000, len),
    ] {
        let r = raw(a, "GET", path, &[("Range", &range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.expect_header("content-range"),
            format!("bytes {start}-{}/{len}", end - 1)
        );
        assert!(r.body == want[start..end], "{range}: wrong bytes");
    }
    let r = raw(a, "GET", path, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.expect_header("content-range"), format!("bytes */{len}"));
    let r = raw(
        a,
        "GET",
        path,
        &[("Range", "bytes=5-9"), ("If-Range", &etag)],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &want[5..10]));
    let r = raw(
        a,
        "GET",
        path,
        &[("Range", "bytes=5-9"), ("If-Range", "\"old\"")],
    );
    assert_eq!(r.status, 200);
    // Two ranges: the whole file, like nginx with max_ranges 1.
    let r = raw(a, "GET", path, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!(r.status, 200);
    assert!(r.body == want);
    let r = raw(a, "HEAD", path, &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.expect_header("content-length"), len.to_string());
}

/// Set `path`'s mtime to `secs` (what nginx shows for it).
fn touch(path: &Path, secs: u64) {
    let o = tool("touch", &[&"-h", &"-d", &format!("@{secs}"), &path]);
    assert!(o.status.success(), "{o:?}");
}

/// The directory pages are nginx's autoindex, byte for byte: the same tree served by a real
/// nginx (`autoindex on` and `autoindex_format json`) and by the depot view give identical
/// HTML and JSON, hostile names included.
#[test]
fn depot_listing_is_nginx_autoindex_byte_for_byte() {
    let names = [
        "samtools:1.9--h91753b0_8",
        "a b&c<d>\"e",
        "q'!()*+,;=?@[]^`{|}~x#$",
        "mulled-v2-0123456789abcdef0123456789abcdef01234567:0123456789abcdef0123456789abcdef01234567-0",
        "éüñ-ünïcødé-name-that-is-very-long-indeed-more-than-fifty",
        "ünïcødé-short",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxéééé-cut-inside-a-character",
        "exactly50chars-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "pct%41",
        "tab\there",
        ".hidden",
    ];
    let repo = Repo::publish("autoindex.test", |src| {
        let all = src.join("all");
        std::fs::create_dir_all(&all).unwrap();
        for (i, n) in names.iter().enumerate() {
            std::fs::write(all.join(n), random_bytes(i * 37, i as u64)).unwrap();
            touch(&all.join(n), 1_700_000_000 + i as u64 * 86_461);
        }
        for d in [
            "dir49xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "dir50xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "sub",
        ] {
            std::fs::create_dir_all(all.join(d).join("inner")).unwrap();
        }
    });
    let s = Served::start(&repo.store());
    let a = addr(&s);
    // Directory mtimes are publish times: give the source directories the same ones.
    let json = get(a, "/files/all/?format=json");
    assert_eq!(json.status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    for e in listing.as_array().unwrap() {
        if e["type"] == "directory" {
            let t = e["mtime"].as_str().unwrap();
            let o = tool("date", &[&"-u", &"-d", &t, &"+%s"]);
            let secs: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
            touch(
                &repo.src().join("all").join(e["name"].as_str().unwrap()),
                secs,
            );
        }
    }
    let root = repo.src();
    let work = tempfile::tempdir().unwrap();
    let ngx = Nginx::start_site(work.path(), |port| {
        format!(
            "server {{ listen 127.0.0.1:{port}; \
               location /files/ {{ alias {}/; autoindex on; }} \
               location /json/ {{ alias {}/; autoindex on; autoindex_format json; }} }}",
            root.display(),
            root.display()
        )
    })
    .expect("nginx (Debian package; .ci/run installs it)");
    for (ours, theirs) in [
        ("/files/all/", "/files/all/"),
        ("/files/all/?format=json", "/json/all/"),
        ("/files/all/sub/", "/files/all/sub/"),
    ] {
        let mine = get(a, ours);
        let reference = get(ngx.addr, theirs);
        assert_eq!((mine.status, reference.status), (200, 200), "{ours}");
        let reference_body = if reference.header("transfer-encoding") == Some("chunked") {
            dechunk(&reference.body)
        } else {
            reference.body.clone()
        };
        assert!(
            mine.body == reference_body,
            "{ours} differs from nginx's {theirs}:\n{}\n{}",
            String::from_utf8_lossy(&mine.body),
            String::from_utf8_lossy(&reference_body),
        );
        assert_eq!(
            mine.header("content-type"),
            reference.header("content-type")
        );
    }
    // Scraper-visible form of a Galaxy name. (The page is not all UTF-8: like nginx, a long
    // name is cut at 47 bytes, here inside a character.)
    let page = String::from_utf8_lossy(&get(a, "/files/all/").body).into_owned();
    assert!(page.contains("<a href=\"samtools%3A1.9--h91753b0_8\">samtools:1.9--h91753b0_8</a>"));
    // A directory without its slash is redirected, like nginx does.
    let r = get(a, "/files/all/sub");
    assert_eq!(r.status, 301);
    assert_eq!(r.expect_header("location"), "/files/all/sub/");
    assert_eq!(get(ngx.addr, "/files/all/sub").status, 301);
}

/// Undo `Transfer-Encoding: chunked`.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        b = &b[nl + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

fn listing_names() -> Vec<String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = [
        repo.join("tests/data").join(LISTING),
        repo.join("../shared/data").join(LISTING),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("the real listing in tests/data");
    let o = tool("gzip", &[&"-dc", &path]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

/// The depot's build bot reads the index page with a regular expression over the hrefs: run
/// that (in Python, as the bot is written) against a repository holding every name of the
/// real 118,594-name Galaxy listing, and find them all; the JSON listing and the search of
/// the page at `/` agree.
#[test]
fn depot_scraper_finds_every_name_of_the_real_listing() {
    let names = listing_names();
    assert_eq!(names.len(), 118_594);
    let repo = Repo::publish("singularity.galaxyproject.org", |src| {
        let all = src.join("all");
        std::fs::create_dir_all(&all).unwrap();
        for n in &names {
            if n == "bin" {
                std::fs::create_dir(all.join(n)).unwrap(); // a directory in the real one
            } else {
                std::fs::File::create(all.join(n)).unwrap();
            }
        }
    });
    let s = Served::start(&repo.store());
    let scraper = r#"
import re, sys, urllib.parse, urllib.request
page = urllib.request.urlopen(sys.argv[1]).read().decode()
for href in re.findall(r'<a href="([^"]+)">', page):
    if href != "../":
        print(urllib.parse.unquote(href).rstrip("/"))
"#;
    let o = tool(
        "python3",
        &[&"-c", &scraper, &format!("{}files/all/", s.url())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let found: BTreeSet<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(found.len(), 118_594);
    assert!(found == want, "the scraper's names differ from the listing");
    // The bot's own filter: hrefs with `%3A` are images.
    let page = String::from_utf8(get(addr(&s), "/files/all/").body).unwrap();
    let images = page.matches("%3A").count();
    let with_colon = names.iter().filter(|n| n.contains(':')).count();
    assert!(
        images >= with_colon && with_colon > 118_000,
        "{images} {with_colon}"
    );

    let json = get(addr(&s), "/files/all/?format=json");
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let from_json: BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(from_json == want);

    // Search: every name containing "samtools" (case-insensitively), and only those.
    let page = String::from_utf8(get(addr(&s), "/?q=SAMtools").body).unwrap();
    let want_hits: Vec<&String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().contains("samtools") && *n != "bin")
        .collect();
    assert!(want_hits.len() > 50);
    assert!(
        page.contains(&format!("{} images match", want_hits.len())),
        "count: {}",
        &page[page.find("id=\"count\"").unwrap_or(0)..][..200]
    );
    for n in &want_hits {
        assert!(
            page.contains(&format!("title=\"all/{}\"", n.replace('"', "&quot;"))),
            "{n} not found"
        );
    }
    assert!(
        page.contains("<dd id=\"images\">118593</dd>"),
        "image count"
    );
    drop(s);

    // Sixteen searches at once on a fresh server: one index build, the others wait for it.
    let port = free_port();
    let log = repo.dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .arg("serve")
        .arg(repo.store())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let s = Served::listening_logged(child, port, Some(&log));
    let pages: Vec<String> = std::thread::scope(|sc| {
        let searches: Vec<_> = (0..16)
            .map(|_| sc.spawn(|| String::from_utf8(get(addr(&s), "/?q=samtools").body).unwrap()))
            .collect();
        searches.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for p in &pages {
        assert!(p.contains(&format!("{} images match", want_hits.len())));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("indexed the revision's file names").count(),
        1,
        "{text}"
    );
}

/// A corrupt chunk on disk: a download is cut short (curl reports a partial transfer), every
/// byte it got is right, the server logs and counts it; a corrupt small file is a 500.
#[test]
fn depot_corrupt_object_ends_the_response() {
    let repo = Repo::publish("corrupt.test", images);
    let store = repo.store();
    // Which object holds the middle of the big image? Corrupt one chunk in the middle by
    // flipping a byte in every chunk-sized object written after the first few.
    let want = std::fs::read(repo.src().join("all").join(IMAGES[0].0)).unwrap();
    let s = Served::start(&store);
    let url = format!("{}files/all/samtools%3A1.9--h91753b0_8", s.url());
    let objects = objects_by_size(&store.join("public/objects"));
    // Raw (incompressible) chunks of the big image: objects of 64 KiB..1 MiB plus a header.
    let chunks: Vec<&(PathBuf, u64)> = objects
        .iter()
        .filter(|(_, len)| *len > 64 * 1024 && *len < 1024 * 1024 + 64)
        .collect();
    assert!(chunks.len() > 8, "{objects:?}");
    // The largest objects are chunks of the 9 MiB image: damage one past the first 1 MiB read.
    let (victim, _) = chunks[chunks.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x55;
    // Objects are read-only files; replace, as a disk error would look.
    let _ = std::fs::remove_file(victim);
    std::fs::write(victim, &bytes).unwrap();

    let f = repo.dir.path().join("cut");
    let o = tool("curl", &[&"-sS", &"-o", &f, &url]);
    let got = std::fs::read(&f).unwrap_or_default();
    let victim_in_big = got.len() < want.len();
    if victim_in_big {
        assert_eq!(o.status.code(), Some(18), "curl: partial file; {o:?}");
        assert!(got == want[..got.len()], "a wrong byte was served");
        let m = String::from_utf8(get(addr(&s), "/metrics").body).unwrap();
        assert!(
            m.contains("depotfs_serve_depot_failures_total{reason=\"verify\",stage=\"body\"} 1"),
            "{m}"
        );
    } else {
        // The victim belonged to the other chunked image.
        let o = tool(
            "curl",
            &[
                &"-sS",
                &"-o",
                &f,
                &format!("{}files/all/bwa%3A0.7.17--he4a0461_11", s.url()),
            ],
        );
        assert_eq!(o.status.code(), Some(18), "{o:?}");
    }

    // A small single-chunk file: verified before the head, so a clean 500.
    let small = std::fs::read(repo.src().join("all").join(IMAGES[1].0)).unwrap();
    let id = blake3::hash(&small).to_hex().to_string();
    let obj = store.join("public/objects").join(&id[..2]).join(&id[2..]);
    let mut bytes = std::fs::read(&obj).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let _ = std::fs::remove_file(&obj);
    std::fs::write(&obj, &bytes).unwrap();
    let r = get(addr(&s), "/files/all/samtools%3A1.10--h2e538c0_3");
    assert_eq!(r.status, 500);
    let m = String::from_utf8(get(addr(&s), "/metrics").body).unwrap();
    assert!(
        m.contains("depotfs_serve_depot_failures_total{reason=\"verify\",stage=\"head\"} 1"),
        "{m}"
    );
}

fn objects_by_size(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((f.path(), f.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}

/// A download that started before a new revision landed finishes with its revision's bytes;
/// the next one gets the new revision.
#[test]
fn depot_download_keeps_its_revision() {
    let old = random_bytes(24 * 1024 * 1024, 7);
    let repo = Repo::publish("revisions.test", |src| {
        std::fs::create_dir_all(src.join("all")).unwrap();
        std::fs::write(src.join("all/img:1--0"), &old).unwrap();
    });
    let s = Served::start(&repo.store());
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET /files/all/img%3A1--0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = c.read(&mut buf).unwrap();
    buf.truncate(n);
    assert!(String::from_utf8_lossy(&buf).contains("x-depotfs-revision: 1"));

    let new = random_bytes(old.len(), 8);
    std::fs::write(repo.src().join("all/img:1--0"), &new).unwrap();
    repo.add_all();
    let r = get(addr(&s), "/files/all/img%3A1--0");
    assert_eq!(r.header("x-depotfs-revision"), Some("2"));
    assert!(r.body == new, "the new revision is served to new requests");

    c.read_to_end(&mut buf).unwrap();
    let resp = http_suite::parse_response(&buf);
    assert!(resp.body == old, "the download in flight changed revision");
}

/// Hostile requests under the prefix: traversal, `%2F` in names, absurd range lists,
/// methods; symlinks and dot paths of the tree; metrics count the depot view.
#[test]
fn depot_refuses_hostile_requests() {
    let repo = Repo::publish("hostile.test", |src| {
        images(src);
        std::os::unix::fs::symlink("/etc/passwd", src.join("all/passwd-link")).unwrap();
        std::os::unix::fs::symlink("../all", src.join("all/loop")).unwrap();
    });
    std::fs::write(repo.store().join("secret.key"), http_suite::SECRET).unwrap();
    let s = Served::start(&repo.store());
    let a = addr(&s);
    for esc in http_suite::ESCAPES {
        for target in [format!("/files{esc}"), format!("/files/all{esc}")] {
            let r = get(a, &target);
            assert!(
                matches!(r.status, 400 | 404),
                "{target}: {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
            );
            assert!(
                !http_suite::contains(&r.body, http_suite::SECRET),
                "{target}"
            );
            assert!(!http_suite::contains(&r.body, "root:x:0"), "{target}");
        }
    }
    for (target, status) in [
        ("/files/all%2Fsamtools%3A1.9--h91753b0_8", 400),
        ("/files/all/samtools%3A1.9--h91753b0_8%2F", 400),
        ("/files/all/..%2f..%2fmanifest", 400),
        ("/files/all/passwd-link", 404),
        ("/files/all/loop/", 404),
        ("/files/all/samtools%3A1.9--h91753b0_8/", 404),
        ("/files/all/nope", 404),
        ("/files/nope/", 404),
        ("/files/all/%ff%fe", 404),
        ("/files/all/a%00b", 400),
    ] {
        assert_eq!(get(a, target).status, status, "{target}");
    }
    let path = "/files/all/samtools%3A1.9--h91753b0_8";
    let many = format!(
        "bytes={}",
        (0..2000)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = raw(a, "GET", path, &[("Range", &many)]);
    assert_eq!(r.status, 416, "an absurd range list");
    assert!(r.body.len() < 100);
    let r = raw(
        a,
        "GET",
        path,
        &[("Range", &format!("bytes=0-{}", "9".repeat(2000)))],
    );
    assert_eq!(r.status, 416, "an absurd range header");
    for m in ["POST", "PUT", "DELETE"] {
        assert_eq!(raw(a, m, path, &[]).status, 405, "{m}");
        assert_eq!(raw(a, m, "/", &[]).status, 405, "{m} /");
    }
    // The page escapes what it echoes.
    let r = get(a, "/?q=%3Cscript%3Ealert(1)%3C/script%3E");
    assert_eq!(r.status, 200);
    assert!(!http_suite::contains(&r.body, "<script>"));
    assert!(http_suite::contains(&r.body, "&lt;script&gt;"));
    // Listings do not show symlinks (they are not served).
    let page = get(a, "/files/all/");
    assert!(!http_suite::contains(&page.body, "passwd-link"));

    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    for want in [
        "depotfs_serve_requests_total{kind=\"depot_file\",method=\"GET\",status=\"416\"}",
        "depotfs_serve_requests_total{kind=\"depot_listing\",method=\"GET\",status=\"200\"}",
        "depotfs_serve_requests_total{kind=\"page\",method=\"GET\",status=\"200\"}",
        "depotfs_serve_depot_revision 1",
        "depotfs_serve_depot_search_seconds_count 1",
    ] {
        assert!(m.contains(want), "{want} not in metrics:\n{m}");
    }
}

/// `--depot-prefix` moves the view; a bad prefix is refused naming it; the store files stay
/// where they were; a store whose manifest does not verify answers 503 on the view.
#[test]
fn depot_prefix_flag_and_unverifiable_manifest() {
    let repo = Repo::publish("prefix.test", images);
    let port = free_port();
    let mut child = Command::new(cli_run::BIN)
        .arg("serve")
        .arg(repo.store())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--depot-prefix",
            "/depot/v1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    poll(Duration::from_secs(10), "serve listening", || {
        TcpStream::connect(a).is_ok()
    });
    let r = get(a, "/depot/v1/all/?format=json");
    assert_eq!(r.status, 200);
    assert!(http_suite::contains(&r.body, "samtools:1.9--h91753b0_8"));
    assert_eq!(get(a, "/files/all/").status, 404);
    assert_eq!(get(a, "/manifest").status, 200);
    let page = String::from_utf8(get(a, "/?q=bwa").body).unwrap();
    assert!(
        page.contains("href=\"/depot/v1/all/bwa%3A0.7.17--he4a0461_11\""),
        "{page}"
    );
    let _ = child.kill();
    let _ = child.wait();

    let out = run(&[&"serve", &repo.store(), &"--depot-prefix", &"/objects/"]);
    let err = cli_run::fails(out);
    assert!(err.contains("--depot-prefix \"/objects/\""), "{err}");

    // A damaged manifest: the view has no revision to serve (503), the store files still
    // are served as they are.
    std::fs::write(repo.store().join("public/manifest"), "garbage\n").unwrap();
    let s = Served::start(&repo.store());
    assert_eq!(get(addr(&s), "/files/").status, 503);
    assert_eq!(get(addr(&s), "/").status, 503);
    assert_eq!(get(addr(&s), "/manifest").status, 200);
}

/// A real browser: headless Chromium, driven over chromedriver's WebDriver API, opens the
/// page, types a tool name into the search box, submits, sees the matching images side by
/// side, saves a screenshot (target/depot-screenshots/), follows the listing link and an
/// image link, and the downloaded image is the published one.
#[test]
fn depot_chromium_searches_and_follows_links() {
    let repo = Repo::publish("singularity.test.org", |src| {
        images(src);
        let all = src.join("all");
        for v in [
            "1.3.1--h0cf4675_11",
            "1.15.1--h1170115_0",
            "1.21--h50ea8bc_0",
        ] {
            std::fs::write(all.join(format!("samtools:{v}")), v).unwrap();
        }
        std::fs::write(all.join("bcftools:1.9--h68d8f2e_9"), "b").unwrap();
    });
    let s = Served::start(&repo.store());
    let wd = WebDriver::start(&repo.dir.path().join("downloads"));

    wd.go(&s.url());
    let title = wd.exec("return document.title");
    assert!(
        title.as_str().unwrap().contains("singularity.test.org"),
        "{title}"
    );
    let q = wd.find("#q");
    wd.type_into(&q, "samtools");
    wd.click(&wd.find("form.search button"));
    poll(Duration::from_secs(20), "search results", || {
        wd.exec("return document.querySelectorAll('a.image').length")
            .as_u64()
            == Some(5)
    });
    let url = wd.exec("return location.href");
    assert!(url.as_str().unwrap().contains("?q=samtools"), "{url}");
    let count = wd.exec("return document.getElementById('count').textContent");
    assert!(
        count.as_str().unwrap().starts_with("5 images match"),
        "{count}"
    );
    // Versions side by side, newest first.
    let versions = wd.exec(
        "return Array.from(document.querySelectorAll('table.versions tr td:first-child')).map(e => e.textContent)",
    );
    assert_eq!(
        versions,
        serde_json::json!(["1.21", "1.15.1", "1.10", "1.9", "1.3.1"])
    );
    let shot = wd.screenshot();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/depot-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("search-samtools.png"), &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"));

    // Follow the browse link, then the image link of the listing: the download is the image.
    wd.click(&wd.find("dl.facts a"));
    poll(Duration::from_secs(20), "the listing", || {
        wd.exec("return document.title").as_str() == Some("Index of /files/")
    });
    wd.click(&wd.find("a[href='all/']"));
    poll(Duration::from_secs(20), "the all/ listing", || {
        wd.exec("return document.title").as_str() == Some("Index of /files/all/")
    });
    std::fs::write(dir.join("listing-all.png"), wd.screenshot()).unwrap();
    wd.click(&wd.find("a[href='bwa%3A0.7.17--he4a0461_11']"));
    // (Chromium saves it as `bwa_0.7.17--he4a0461_11`: it replaces `:` in file names.)
    let want = std::fs::read(repo.src().join("all/bwa:0.7.17--he4a0461_11")).unwrap();
    poll(Duration::from_secs(30), "the browser's download", || {
        std::fs::read_dir(&wd.downloads).unwrap().any(|e| {
            let p = e.unwrap().path();
            p.to_string_lossy().contains("bwa") && std::fs::read(&p).is_ok_and(|b| b == want)
        })
    });
}

/// chromedriver and the headless Chromium it starts, ended when dropped.
struct WebDriver {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    downloads: PathBuf,
    _profile: tempfile::TempDir,
}

impl WebDriver {
    fn start(downloads: &Path) -> WebDriver {
        std::fs::create_dir_all(downloads).unwrap();
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; .ci/run installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        poll(Duration::from_secs(20), "chromedriver", || {
            http.get(format!("{base}/status")).send().is_ok()
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let mut wd = WebDriver {
            driver,
            base,
            session: String::new(),
            http,
            downloads: downloads.to_path_buf(),
            _profile: profile,
        };
        let v = wd.call("POST", "/session", caps);
        wd.session = v["sessionId"].as_str().expect("a session").to_owned();
        // Headless Chromium saves downloads only where told (CDP via chromedriver).
        wd.call(
            "POST",
            &format!("/session/{}/goog/cdp/execute", wd.session),
            serde_json::json!({"cmd": "Browser.setDownloadBehavior", "params": {
                "behavior": "allow", "downloadPath": downloads.display().to_string()}}),
        );
        wd
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap()),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        };
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let v: serde_json::Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), serde_json::json!({"url": url}));
    }

    fn exec(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            serde_json::json!({"script": script, "args": []}),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            &self.s("/element"),
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn type_into(&self, el: &str, text: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{el}/value")),
            serde_json::json!({"text": text}),
        );
    }

    fn click(&self, el: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{el}/click")),
            serde_json::json!({}),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", &self.s("/screenshot"), serde_json::Value::Null);
        base64_decode(v.as_str().expect("base64 PNG"))
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the WebDriver screenshot encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for q in bytes.chunks(4) {
        let v: Vec<u32> = q.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| acc << 6 | x) << (6 * (4 - v.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..v.len()]);
    }
    out
}

/// Symlinks in the published tree: one whose target resolves inside the tree (in its own
/// directory, through `..` into another, to a directory, through another link) is listed
/// with its target's size and served with its target's bytes and ETag, Range included; one
/// that escapes (absolute, `..` above the root), dangles or loops (also back into a directory
/// above it) is neither listed nor served.
#[test]
fn depot_follows_symlinks_inside_the_tree_only() {
    use std::os::unix::fs::symlink;
    let repo = Repo::publish("depot.links", |src| {
        images(src);
        let all = src.join("all");
        symlink("samtools:1.9--h91753b0_8", all.join("samtools-latest")).unwrap();
        symlink("samtools-latest", all.join("link-to-link")).unwrap();
        symlink("../../etc/passwd", all.join("escapes")).unwrap();
        symlink("/etc/passwd", all.join("absolute")).unwrap();
        symlink("no-such-image", all.join("dangles")).unwrap();
        symlink("loop-b", all.join("loop-a")).unwrap();
        symlink("loop-a", all.join("loop-b")).unwrap();
        symlink("../all", all.join("cycle")).unwrap();
        // Galaxy's two-level index: s/sa/NAME -> ../../all/NAME.
        let sa = src.join("s/sa");
        std::fs::create_dir_all(&sa).unwrap();
        symlink(
            "../../all/samtools:1.10--h2e538c0_3",
            sa.join("samtools:1.10--h2e538c0_3"),
        )
        .unwrap();
        symlink("all", src.join("everything")).unwrap();
    });
    let s = Served::start(&repo.store());
    let a = addr(&s);
    let src = |name: &str| std::fs::read(repo.src().join("all").join(name)).unwrap();
    let target = get(a, "/files/all/samtools%3A1.9--h91753b0_8");
    assert_eq!(target.status, 200);
    for path in [
        "/files/all/samtools-latest",
        "/files/all/link-to-link",
        "/files/everything/samtools%3A1.9--h91753b0_8",
    ] {
        let r = get(a, path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            r.body == src("samtools:1.9--h91753b0_8"),
            "{path}: bytes differ"
        );
        assert_eq!(r.header("etag"), target.header("etag"), "{path}");
    }
    let r = raw(
        a,
        "GET",
        "/files/all/samtools-latest",
        &[("Range", "bytes=100-199")],
    );
    assert_eq!(r.status, 206, "{r:?}");
    assert!(r.body == src("samtools:1.9--h91753b0_8")[100..200]);
    let r = get(a, "/files/s/sa/samtools%3A1.10--h2e538c0_3");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body == src("samtools:1.10--h2e538c0_3"));

    // A link to a directory behaves as the directory: redirect, then its listing.
    let r = get(a, "/files/everything");
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/files/everything/"));
    let r = get(a, "/files/everything/");
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("href=\"samtools%3A1.9--h91753b0_8\""),
        "{r:?}"
    );

    for bad in [
        "escapes", "absolute", "dangles", "loop-a", "loop-b", "cycle/",
    ] {
        let r = get(a, &format!("/files/all/{bad}"));
        assert_eq!(r.status, 404, "{bad}: {r:?}");
    }
    let r = get(a, "/files/all/samtools-latest/");
    assert_eq!(r.status, 404, "a file link with a trailing slash: {r:?}");

    // Listings: good links under their own names with their target's size; bad ones absent.
    let html = String::from_utf8(get(a, "/files/all/").body).unwrap();
    let size = IMAGES[0].1.to_string();
    let line = html
        .lines()
        .find(|l| l.contains("href=\"samtools-latest\""))
        .unwrap_or_else(|| panic!("samtools-latest not listed:\n{html}"));
    assert!(line.trim_end().ends_with(&size), "{line}");
    assert!(html.contains("href=\"link-to-link\""), "{html}");
    for bad in [
        "escapes", "absolute", "dangles", "loop-a", "loop-b", "cycle",
    ] {
        assert!(!html.contains(bad), "{bad} listed:\n{html}");
    }
    let top = String::from_utf8(get(a, "/files/").body).unwrap();
    assert!(top.contains("href=\"everything/\""), "{top}");
    let json = String::from_utf8(get(a, "/files/all/?format=json").body).unwrap();
    let obj = json
        .split("\r\n")
        .find(|l| l.contains("\"name\":\"samtools-latest\""))
        .unwrap_or_else(|| panic!("samtools-latest not in {json}"));
    assert!(obj.contains("\"type\":\"file\""), "{obj}");
    assert!(obj.contains(&format!("\"size\":{size} }}")), "{obj}");
    assert!(!json.contains("escapes"), "{json}");
}

/// How many of the store's objects are not in the page cache, asked the way the server asks
/// (a read of the first byte that must not wait fails). The asking reads those pages in (the
/// kernel's read-ahead): with `evict`, they are dropped again once read, so the objects are
/// left out of the page cache.
fn uncached_objects(store: &Path, evict: bool) -> usize {
    let mut cold = 0;
    for (path, _) in objects_by_size(&store.join("public/objects")) {
        let file = std::fs::File::open(&path).unwrap();
        let drop = || rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if evict {
            drop();
        }
        let mut byte = [0u8; 1];
        let nowait = rustix::io::preadv2(
            &file,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            0,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        cold += usize::from(nowait.is_err());
        if evict {
            // Wait for the read-ahead the question started, then drop its pages too.
            rustix::io::pread(&file, &mut byte, 0).unwrap();
            drop();
        }
    }
    cold
}

/// Downloads whose chunks are not in the page cache (the depot view then reads them with
/// direct I/O, more at once): whole and ranged, every byte right and in order; and the
/// chunks read that way are left out of the page cache (module docs of `serve::depot`).
#[test]
fn depot_cold_download_is_byte_identical() {
    let repo = Repo::publish("cold.test", images);
    let store = repo.store();
    let s = Served::start(&store);
    let want = std::fs::read(repo.src().join("all").join(IMAGES[0].0)).unwrap();
    let url = format!("{}files/all/samtools%3A1.9--h91753b0_8", s.url());
    let f = repo.dir.path().join("cold");
    let objects = objects_by_size(&store.join("public/objects")).len();
    for range in [None, Some((1_000_003usize, 8_000_000usize))] {
        // Drop the objects' pages (clean pages of these files only; no root needed), and
        // check they are gone.
        let cold = uncached_objects(&store, true);
        assert!(cold > 8, "only {cold} objects left the page cache");
        let (got, expect) = match range {
            None => {
                let o = tool("curl", &[&"-sSf", &"-o", &f, &url]);
                assert!(o.status.success(), "{o:?}");
                (std::fs::read(&f).unwrap(), &want[..])
            }
            Some((a, b)) => {
                let r = format!("{a}-{b}");
                let o = tool("curl", &[&"-sSf", &"-r", &r, &"-o", &f, &url]);
                assert!(o.status.success(), "{o:?}");
                (std::fs::read(&f).unwrap(), &want[a..=b])
            }
        };
        assert_eq!(got.len(), expect.len(), "{range:?}");
        assert!(got == expect, "{range:?}: wrong bytes");
        if range.is_none() {
            // Read past the page cache: all but the first group's chunks are still cold.
            let left = uncached_objects(&store, false);
            assert!(
                left + 12 >= cold && left * 2 > objects,
                "{left} of {objects} objects not in the page cache after a cold download \
                 ({cold} before it)"
            );
        }
    }
}

/// The value of the metric line starting `series ` in the server's `/metrics`.
fn server_metric(addr: SocketAddr, series: &str) -> f64 {
    let r = get(addr, "/metrics");
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// HTTP/2 clients that open downloads and stop reading cannot keep the depot's read-ahead
/// budget: after `--read-ahead-timeout` their read-ahead is given back (the held bytes go to
/// 0, the reclaimed counter moves), a new download meanwhile gets every byte, and when the
/// stalled clients read on, each gets exactly the file's bytes from where it asked, read
/// again from the byte where it stopped (inside a chunk: hyper was handed 64 KiB copies).
#[test]
fn depot_stalled_http2_downloads_give_their_read_ahead_back() {
    const SIZE: usize = 40 << 20;
    let repo = Repo::publish("stall.test", |src| {
        std::fs::create_dir_all(src.join("all")).unwrap();
        std::fs::write(src.join("all/big:1--0"), random_bytes(SIZE, 41)).unwrap();
    });
    let want = std::fs::read(repo.src().join("all/big:1--0")).unwrap();
    let port = free_port();
    let log = repo.dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .arg("serve")
        .arg(repo.store())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--read-ahead-timeout", "1"])
        .env("RUST_LOG", "info,depotfs_publisher=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let s = Served::listening_logged(child, port, Some(&log));
    let url = format!("{}files/all/big%3A1--0", s.url());
    let held_bytes = || server_metric(addr(&s), "depotfs_serve_depot_read_ahead_bytes");
    let reclaimed = || {
        server_metric(
            addr(&s),
            "depotfs_serve_depot_read_ahead_reclaimed_bytes_total",
        )
    };
    assert_eq!(held_bytes(), 0.0);

    // 24 downloads on one HTTP/2 connection whose bodies are not read: the client's windows
    // fill and the server can send no more. Half start inside a chunk.
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .timeout(None)
        .build()
        .unwrap();
    let mut stalled = Vec::new();
    for i in 0..24usize {
        let start = if i % 2 == 0 {
            0
        } else {
            1_000_003 + i * 77_777
        };
        let r = h2
            .get(&url)
            .header("range", format!("bytes={start}-"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        stalled.push((start, r));
    }
    poll(
        Duration::from_secs(30),
        "the stalled downloads to give their read-ahead back",
        || held_bytes() == 0.0 && reclaimed() > 0.0,
    );

    // A new client meanwhile gets the whole file.
    let f = repo.dir.path().join("fresh");
    let o = tool("curl", &[&"-sSf", &"-o", &f, &url]);
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(&f).unwrap() == want, "fresh download differs");

    // The stalled clients read on, all at once (they share the connection's window): every
    // byte from where each asked.
    let want = std::sync::Arc::new(want);
    let readers: Vec<_> = stalled
        .into_iter()
        .map(|(start, mut r)| {
            let want = std::sync::Arc::clone(&want);
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(SIZE - start);
                r.read_to_end(&mut got).unwrap();
                assert_eq!(got.len(), SIZE - start, "from {start}");
                assert!(got == want[start..], "from {start}: bytes differ");
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("gave back"), "no reclaim was logged:\n{log}");
}
