//! The parsers against pages real servers wrote (`../testdata/`: nginx 1.22.1 autoindex HTML,
//! JSON and `autoindex_exact_size off`; Apache 2.4.67 mod_autoindex fancy and `HTMLTable`),
//! all listing the same directory, and against hostile pages.

use super::*;

const MULLED: &str =
    "mulled-v2-0015f2b2fd2ea16fdb8bf1ce8a5f9e5b97a02f4c:e3a3e0ca7ea8b9e3fdc1a3bd8a1b6b61d2e1d8a1-0";
/// 2026-11-30 08:15 UTC.
const MINUTE: i64 = 1_796_026_500;

fn sample(name: &str) -> Listing {
    let path = format!("{}/src/sync/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    parse(&std::fs::read(&path).unwrap()).unwrap()
}

fn names(l: &Listing) -> Vec<&str> {
    let mut v: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
    v.sort();
    v
}

fn get<'a>(l: &'a Listing, name: &str) -> &'a Upstream {
    l.entries.iter().find(|e| e.name == name).unwrap()
}

#[test]
fn every_real_format_lists_the_same_files() {
    let want = vec![
        "a b&c<d>.sif",
        MULLED,
        "samtools:1.9--h91753b0_8",
        "tiny",
        "ünïcode:1.0--0",
    ];
    for page in [
        "nginx.html",
        "nginx.json",
        "nginx-approx.html",
        "apache-fancy.html",
        "apache-table.html",
    ] {
        let l = sample(page);
        assert_eq!(names(&l), want, "{page}");
        assert!(l.refused.is_empty(), "{page}: {:?}", l.refused);
        assert_eq!(l.dirs, 1, "{page}: the new/ directory");
        let s = get(&l, "samtools:1.9--h91753b0_8");
        let exact = page == "nginx.html" || page == "nginx.json";
        assert_eq!(s.size.exact(), exact.then_some(12345), "{page}");
        assert_eq!(get(&l, "tiny").size, Size::Exact(300), "{page}");
        if page.ends_with(".json") {
            assert_eq!((s.mtime_s, s.precision_s), (MINUTE + 42, 1), "{page}");
        } else {
            assert_eq!((s.mtime_s, s.precision_s), (MINUTE, 60), "{page}");
        }
    }
    // Rounded sizes are estimates in bytes.
    assert_eq!(
        get(&sample("apache-fancy.html"), MULLED).size,
        Size::About((4.8 * 1048576.0) as u64)
    );
    assert_eq!(
        get(&sample("nginx-approx.html"), "samtools:1.9--h91753b0_8").size,
        Size::About(12 << 10)
    );
}

fn row(href: &str) -> String {
    format!("<a href=\"{href}\">x</a>   30-Nov-2026 08:15    12\n")
}

fn html(rows: &[String]) -> Vec<u8> {
    format!(
        "<html><body><pre><a href=\"../\">../</a>\n{}</pre></body></html>",
        rows.concat()
    )
    .into_bytes()
}

#[test]
fn hostile_names_are_refused_with_a_reason() {
    let long = "a".repeat(4096);
    let page = html(&[
        row("ok%3A1"),
        row("..%2F..%2Fetc%2Fpasswd"),
        row("a%2Fb"),
        row(".."),
        row("%2E%2E"),
        row("nul%00byte"),
        row("line%0Afeed"),
        row(&long),
        row("%FF%FE"),
        row("/etc/passwd"),
        row("http://evil.example/x"),
        row("sub/file"),
        row("ok%3A1"),
        "<a href=\"nodate\">nodate</a>  -\n".to_string(),
        "<a href=\"nosize\">nosize</a>  30-Nov-2026 08:15\n".to_string(),
    ]);
    let l = parse(&page).unwrap();
    assert_eq!(names(&l), vec!["ok:1"]);
    let reasons: Vec<String> = l
        .refused
        .iter()
        .map(|r| format!("{} {}", r.raw, r.reason))
        .collect();
    assert_eq!(l.refused.len(), 14, "{reasons:#?}");
    for (raw, why) in [
        ("..%2F..%2Fetc%2Fpasswd", "contains '/'"),
        ("a%2Fb", "contains '/'"),
        ("%2E%2E", "not a file name"),
        ("nul%00byte", "control character"),
        ("line%0Afeed", "control character"),
        ("aaaa", "4096 bytes long"),
        ("%FF%FE", "not UTF-8"),
        ("/etc/passwd", "outside this directory"),
        ("http://evil.example/x", "outside this directory"),
        ("sub/file", "outside this directory"),
        ("ok:1", "more than once"),
        ("nodate", "no date"),
        ("nosize", "no size"),
    ] {
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(raw) && r.contains(why)),
            "{raw}: {why} not in {reasons:#?}"
        );
    }
}

#[test]
fn hostile_json_is_refused_per_entry_or_as_a_whole() {
    let page = br#"[
        {"name":"good","type":"file","mtime":"Mon, 30 Nov 2026 08:15:42 GMT","size":5},
        {"name":"a/b","type":"file","mtime":"Mon, 30 Nov 2026 08:15:42 GMT","size":5},
        {"name":"nul\u0000","type":"file","mtime":"Mon, 30 Nov 2026 08:15:42 GMT","size":5},
        {"name":"nosize","type":"file","mtime":"Mon, 30 Nov 2026 08:15:42 GMT"},
        {"name":"neg","type":"file","mtime":"Mon, 30 Nov 2026 08:15:42 GMT","size":-1},
        {"name":"link","type":"other","mtime":"Mon, 30 Nov 2026 08:15:42 GMT"},
        {"type":"file"},
        "a string"
    ]"#;
    let l = parse(page).unwrap();
    assert_eq!(names(&l), vec!["good"]);
    assert_eq!(l.refused.len(), 7, "{:#?}", l.refused);
    let e = parse(b"[{\"name\": ").unwrap_err();
    assert!(e.contains("not an nginx JSON listing"), "{e}");
}

#[test]
fn broken_pages_yield_nothing_and_never_panic() {
    for page in [
        &b""[..],
        b"<html>",
        b"<a href=",
        b"<a href=\"x\"",
        b"<a href='x'>x</a> 31-Feb-2026 99:99 1\n",
        b"<a hrefx=\"y\" href=\"ok\">ok</a> 2026-12-06 10:04 12\n",
        b"\xff\xfe<a href=\"\xff\">\xff</a> 06-Dec-2026 10:04 1.5Q\n",
        b"<a href=\"x\">x</a> 06-Dec-2026 10:04 99999999999999999999999T\n",
    ] {
        let _ = parse(page).unwrap();
    }
    let l = parse(b"<a hrefx=\"y\" href=\"ok\">ok</a> 2026-12-06 10:04:05 12\n").unwrap();
    assert_eq!(names(&l), vec!["ok"]);
}

#[test]
fn the_date_arithmetic_matches_known_days() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(
        days_from_civil(2026, 11, 30) * 86_400 + 8 * 3600 + 15 * 60,
        MINUTE
    );
}
