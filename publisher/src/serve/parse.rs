//! The pure part of serving: what a request path names, which byte range it asks for, and
//! whether its validators still match. No I/O here, so every rule is unit-tested.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Cache-Control` of objects: their name is their content, so they never change.
pub const CACHE_OBJECT: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of the manifest: it changes with every publish, and a proxy must pass a
/// new revision on within seconds (clients themselves re-check after the manifest's TTL).
pub const CACHE_MANIFEST: &str = "public, max-age=10";
/// `Cache-Control` of `repo.pub`: changes only when the key is rotated.
pub const CACHE_PUBLIC_KEY: &str = "public, max-age=300";
/// `Cache-Control` of anything else under `public/` (no such file is part of the format today).
pub const CACHE_OTHER: &str = "public, max-age=60";

/// What kind of file a path under `public/` is; decides headers and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `objects/…`: immutable, content-addressed.
    Object,
    /// `manifest`: the signed, ever-changing head of the repository.
    Manifest,
    /// `repo.pub`: the repository's public key.
    PublicKey,
    /// Anything else under `public/`.
    Other,
}

impl Kind {
    /// The `Cache-Control` header for a successful response.
    pub fn cache_control(self) -> &'static str {
        match self {
            Kind::Object => CACHE_OBJECT,
            Kind::Manifest => CACHE_MANIFEST,
            Kind::PublicKey => CACHE_PUBLIC_KEY,
            Kind::Other => CACHE_OTHER,
        }
    }

    /// The `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Manifest | Kind::PublicKey => "text/plain; charset=utf-8",
            Kind::Object | Kind::Other => "application/octet-stream",
        }
    }

    /// The `kind` label in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Manifest => "manifest",
            Kind::PublicKey => "repo_pub",
            Kind::Other => "other",
        }
    }
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/metrics`: the Prometheus text exposition.
    Metrics,
    /// A file under the served root.
    File {
        /// Relative path, one decoded component per path segment; never empty, never
        /// absolute, no `.`/`..` components.
        rel: PathBuf,
        /// What it is.
        kind: Kind,
    },
}

/// Why a path is refused before touching the file system.
#[derive(Debug, PartialEq, Eq)]
pub enum PathRefused {
    /// 400: not an origin-form path, or a `.`/`..` segment (also percent-encoded), an encoded
    /// `/`, or a NUL byte.
    BadRequest,
    /// 404: the root itself, or a hidden (dot) file such as rsync's temporary files.
    NotFound,
}

/// Map the path of a request URI (without the query) to what it names.
///
/// Segments are split on `/` *before* percent-decoding, so `%2F` cannot smuggle in a
/// separator, and every decoded segment is checked, so `%2e%2e` is refused like `..`.
/// Empty segments (`//`) are skipped, so `//etc/passwd` names `etc/passwd` under the root.
/// The file system open is confined to the root independently of this check
/// (see `files::Root`); this is the first of two fences.
pub fn parse_path(path: &str) -> Result<Target, PathRefused> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRefused::BadRequest);
    };
    if rest.ends_with('/') {
        return Err(PathRefused::NotFound); // a directory's name: nothing here lists one
    }
    let mut rel = PathBuf::new();
    let mut first: Option<Vec<u8>> = None;
    let mut n = 0usize;
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let seg: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        if seg.contains(&b'/') || seg.contains(&0) || seg == b"." || seg == b".." {
            return Err(PathRefused::BadRequest);
        }
        if seg.first() == Some(&b'.') {
            return Err(PathRefused::NotFound);
        }
        rel.push(OsStr::from_bytes(&seg));
        if first.is_none() {
            first = Some(seg);
        }
        n += 1;
    }
    let Some(first) = first else {
        return Err(PathRefused::NotFound);
    };
    let kind = match (first.as_slice(), n) {
        (b"metrics", 1) => return Ok(Target::Metrics),
        (b"manifest", 1) => Kind::Manifest,
        (b"repo.pub", 1) => Kind::PublicKey,
        (b"objects", _) => Kind::Object,
        _ => Kind::Other,
    };
    Ok(Target::File { rel, kind })
}

/// The answer to a `Range` header for a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: send everything with 200.
    Full,
    /// Send bytes `start..end` (end exclusive) with 206.
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 416: the one range asked for starts past the end.
    Unsatisfiable,
}

/// A `Range` header with more ranges than this is refused (416).
pub const MAX_RANGE_PARTS: usize = 16;
/// A `Range` header longer than this is refused (416).
pub const MAX_RANGE_HEADER: usize = 1024;

/// The part of a representation of `len` bytes (validators `etag`, `mtime`) that a GET or
/// HEAD with headers `Range: range` and `If-Range: if_range` gets: the one rule of the
/// store's files and of the depot view. An absurd header (more than [`MAX_RANGE_PARTS`]
/// ranges or [`MAX_RANGE_HEADER`] bytes) is refused with 416; a HEAD, or an `If-Range` that
/// does not hold, gets everything (RFC 9110 §14.2); otherwise [`parse_range`].
pub fn requested_range(
    range: Option<&str>,
    if_range: Option<&str>,
    head: bool,
    etag: &str,
    mtime: SystemTime,
    len: u64,
) -> RangeAnswer {
    match range {
        Some(v) if v.len() > MAX_RANGE_HEADER || v.split(',').count() > MAX_RANGE_PARTS => {
            RangeAnswer::Unsatisfiable
        }
        Some(v) if !head && if_range.is_none_or(|ir| if_range_holds(ir, etag, mtime)) => {
            parse_range(v, len)
        }
        _ => RangeAnswer::Full,
    }
}

/// Interpret a `Range` header value. One `bytes=` range is served; a malformed header or
/// several ranges are ignored (answered with the full body, as RFC 9110 allows, and as the
/// shipped nginx configuration does with `max_ranges 1`).
pub fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = num(b) else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial {
            start: len.saturating_sub(n),
            end: len,
        };
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Full;
    };
    let last = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(l) if l >= start => Some(l),
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    let end = last.map_or(len, |l| l.saturating_add(1).min(len));
    RangeAnswer::Partial { start, end }
}

/// The entity tag of a file: its mtime in nanoseconds and its length, in hex.
///
/// Nanoseconds, not seconds (nginx uses seconds): two publishes within one second write
/// manifests of the same length, and a client must not get a 304 for the older one.
pub fn etag(mtime: SystemTime, len: u64) -> String {
    let ns = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("\"{ns:x}-{len:x}\"")
}

/// `mtime` truncated to whole seconds, as `Last-Modified` carries it.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*` matches anything).
pub fn none_match(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|t| {
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag.strip_prefix("W/").unwrap_or(etag)
    })
}

/// Whether a request with these conditional headers gets 304 Not Modified.
/// `If-None-Match`, when present, decides alone (RFC 9110 §13.2.2).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    mtime: SystemTime,
) -> bool {
    if let Some(v) = if_none_match {
        return none_match(v, etag);
    }
    // Exactly the Last-Modified date, as nginx's `if_modified_since exact` (deploy/nginx): a
    // path's date can go back (a rollback, an older file published again), and a later date
    // than ours says nothing about our content.
    match if_modified_since.map(|v| httpdate::parse_http_date(v.trim())) {
        Some(Ok(since)) => whole_seconds(mtime) == since,
        _ => false,
    }
}

/// Whether an `If-Range` value lets the `Range` header apply: a strong, equal entity tag, or
/// exactly the `Last-Modified` date.
pub fn if_range_holds(value: &str, etag: &str, mtime: SystemTime) -> bool {
    let v = value.trim();
    if v.starts_with('"') {
        return v == etag;
    }
    if v.starts_with("W/") {
        return false;
    }
    httpdate::parse_http_date(v).is_ok_and(|d| d == whole_seconds(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Result<(String, Kind), PathRefused> {
        match parse_path(p)? {
            Target::File { rel, kind } => Ok((rel.to_str().unwrap().to_owned(), kind)),
            Target::Metrics => Ok(("<metrics>".into(), Kind::Other)),
        }
    }

    #[test]
    fn paths_name_files_by_kind() {
        assert_eq!(file("/manifest"), Ok(("manifest".into(), Kind::Manifest)));
        assert_eq!(file("/repo.pub"), Ok(("repo.pub".into(), Kind::PublicKey)));
        assert_eq!(
            file("/objects/ab/cdef"),
            Ok(("objects/ab/cdef".into(), Kind::Object))
        );
        assert_eq!(
            file("//objects//ab/cd"),
            Ok(("objects/ab/cd".into(), Kind::Object))
        );
        assert_eq!(file("/manifest/x"), Ok(("manifest/x".into(), Kind::Other)));
        assert_eq!(file("/etc/passwd"), Ok(("etc/passwd".into(), Kind::Other)));
        assert_eq!(file("/a%20b"), Ok(("a b".into(), Kind::Other)));
        assert_eq!(parse_path("/metrics"), Ok(Target::Metrics));
    }

    #[test]
    fn traversal_and_odd_paths_are_refused() {
        for p in [
            "/../x",
            "/objects/../../x",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/objects/%2e%2e%2f%2e%2e/x",
            "/a%2fb",
            "/.",
            "/a/./b",
            "/a%00b",
            "*",
            "",
            "x/y",
        ] {
            assert_eq!(parse_path(p), Err(PathRefused::BadRequest), "{p}");
        }
        for p in [
            "/",
            "//",
            "/.tmp-manifest",
            "/objects/.partial",
            "/%2ehidden",
        ] {
            assert_eq!(parse_path(p), Err(PathRefused::NotFound), "{p}");
        }
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        let p = |start, end| Partial { start, end };
        assert_eq!(parse_range("bytes=0-99", 1000), p(0, 100));
        assert_eq!(parse_range("bytes=10-", 1000), p(10, 1000));
        assert_eq!(parse_range("bytes=990-2000", 1000), p(990, 1000));
        assert_eq!(parse_range("bytes=-100", 1000), p(900, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000), p(0, 1000));
        assert_eq!(parse_range("Bytes = 5-5", 1000), p(5, 6));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=5000-6000", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "items=0-1",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse_range(ignored, 1000), Full, "{ignored}");
        }
    }

    #[test]
    fn requested_ranges() {
        use RangeAnswer::*;
        let t = UNIX_EPOCH + Duration::new(1_769_558_400, 0);
        let tag = etag(t, 1000);
        let date = httpdate::fmt_http_date(t);
        let get = |range: Option<&str>, if_range: Option<&str>| {
            requested_range(range, if_range, false, &tag, t, 1000)
        };
        assert_eq!(get(None, None), Full);
        assert_eq!(get(Some("bytes=5-9"), None), Partial { start: 5, end: 10 });
        assert_eq!(
            get(Some("bytes=5-9"), Some(tag.as_str())),
            Partial { start: 5, end: 10 }
        );
        assert_eq!(
            get(Some("bytes=5-9"), Some(date.as_str())),
            Partial { start: 5, end: 10 }
        );
        assert_eq!(get(Some("bytes=5-9"), Some("\"old\"")), Full);
        assert_eq!(get(Some("bytes=1000-"), None), Unsatisfiable);
        // HEAD gets everything, but an absurd header is refused whatever the method.
        assert_eq!(
            requested_range(Some("bytes=5-9"), None, true, &tag, t, 1000),
            Full
        );
        let many = format!("bytes={}", vec!["0-1"; MAX_RANGE_PARTS + 1].join(","));
        let long = format!("bytes=0-{}", "9".repeat(MAX_RANGE_HEADER));
        for absurd in [many, long] {
            assert_eq!(get(Some(&absurd), None), Unsatisfiable);
            assert_eq!(
                requested_range(Some(&absurd), None, true, &tag, t, 1000),
                Unsatisfiable
            );
        }
        let several = format!("bytes={}", vec!["0-1"; MAX_RANGE_PARTS].join(","));
        assert_eq!(get(Some(&several), None), Full);
    }

    #[test]
    fn validators() {
        let t = UNIX_EPOCH + Duration::new(1_769_558_400, 123_456_789);
        let tag = etag(t, 4096);
        assert_eq!(tag, format!("\"{:x}-1000\"", 1_769_558_400_123_456_789u128));
        assert_ne!(etag(t + Duration::from_nanos(1), 4096), tag);

        assert!(none_match(&tag, &tag));
        assert!(none_match(&format!("\"x\", W/{tag}"), &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"x\"", &tag));

        let lm = httpdate::fmt_http_date(whole_seconds(t));
        let earlier = httpdate::fmt_http_date(whole_seconds(t) - Duration::from_secs(1));
        assert!(not_modified(None, Some(&lm), &tag, t));
        assert!(!not_modified(None, Some(&earlier), &tag, t));
        assert!(!not_modified(None, Some("garbage"), &tag, t));
        // If-None-Match decides alone when present.
        assert!(!not_modified(Some("\"x\""), Some(&lm), &tag, t));
        assert!(!not_modified(None, None, &tag, t));

        assert!(if_range_holds(&tag, &tag, t));
        assert!(!if_range_holds(&format!("W/{tag}"), &tag, t));
        assert!(!if_range_holds("\"other\"", &tag, t));
        assert!(if_range_holds(&lm, &tag, t));
        assert!(!if_range_holds(&earlier, &tag, t));
    }
}
