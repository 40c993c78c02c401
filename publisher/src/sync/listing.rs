//! A depot's directory listing, parsed: nginx autoindex (HTML, and JSON with
//! `autoindex_format json`) and Apache mod_autoindex (fancy `<pre>` and `HTMLTable` pages).
//!
//! Pure functions over the page's bytes. HTML pages are read by their links: each
//! `<a href="…">` whose row carries a date is an entry; the name is the href, HTML-unescaped
//! and percent-decoded (the displayed text is truncated by nginx past 50 characters), and the
//! date and size are the first date and the size token after the link on its row. Links to
//! directories (`…/`) and sort links (`?C=N;O=D`) are not entries. Every name is validated
//! ([`check_name`]); a refused one is returned with the reason, never as an entry.

use std::collections::HashSet;

/// Longest name accepted, in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// A file's size as the listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The exact number of bytes (nginx; Apache below 1 KiB).
    Exact(u64),
    /// A rounded display (`1.2K`, `244M`: Apache, nginx with `autoindex_exact_size off`),
    /// here in bytes: good for estimates only, never compared.
    About(u64),
}

impl Size {
    /// The exact size, if the listing gives it.
    pub fn exact(self) -> Option<u64> {
        match self {
            Size::Exact(n) => Some(n),
            Size::About(_) => None,
        }
    }

    /// The size, exact or estimated.
    pub fn estimate(self) -> u64 {
        match self {
            Size::Exact(n) | Size::About(n) => n,
        }
    }

    /// The most bytes the file can have: exact, or, for a rounded display, twice it and a
    /// MiB (a display rounds to less than its next unit: `1G` is under 2 GiB, `1.2K` under
    /// 1.3 KiB). A download that runs past it is refused before it fills the disk.
    pub fn most(self) -> u64 {
        match self {
            Size::Exact(n) => n,
            Size::About(n) => n.saturating_mul(2).saturating_add(1 << 20),
        }
    }
}

/// One file of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The decoded, validated name.
    pub name: String,
    /// Its size.
    pub size: Size,
    /// Its modification time, Unix seconds (UTC), truncated to `precision_s`.
    pub mtime_s: i64,
    /// The resolution of the listing's dates: 60 for HTML pages (minutes), 1 for JSON.
    pub precision_s: i64,
}

/// A link or record of the listing that is not accepted as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The raw href or name (shortened to 120 characters for logs).
    pub raw: String,
    /// Why.
    pub reason: String,
}

/// A parsed listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Files, in page order, each name once.
    pub entries: Vec<Upstream>,
    /// Refused names.
    pub refused: Vec<Refused>,
    /// Subdirectories (not synced).
    pub dirs: u64,
}

/// Parse a listing page: JSON if it starts with `[`, HTML otherwise. Errors only when the
/// page as a whole is not a listing (bad JSON); single bad entries are refused instead.
pub fn parse(body: &[u8]) -> Result<Listing, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut l = if first == Some(&b'[') {
        parse_json(body)?
    } else {
        parse_html(&String::from_utf8_lossy(body))
    };
    // Each name once: the first occurrence wins, later ones are refused.
    let mut seen = HashSet::with_capacity(l.entries.len());
    let mut dups = Vec::new();
    l.entries.retain(|e| {
        let new = seen.insert(e.name.clone());
        if !new {
            dups.push(refused(
                &e.name,
                "listed more than once (the first entry is used)",
            ));
        }
        new
    });
    l.refused.extend(dups);
    Ok(l)
}

fn refused(raw: &str, reason: &str) -> Refused {
    let raw = if raw.chars().count() > 120 {
        format!("{}…", raw.chars().take(120).collect::<String>())
    } else {
        raw.to_string()
    };
    Refused {
        raw: raw.escape_debug().to_string(),
        reason: reason.to_string(),
    }
}

/// Is `name` acceptable as one file name in the repository? Not empty, `.` or `..`, no `/`,
/// no control characters (NUL, newline, DEL…), at most [`NAME_MAX`] bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') {
        return Err("contains '/' (a path, not a name in this directory)".into());
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "is {} bytes long, more than {NAME_MAX}",
            name.len()
        ));
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Listing, String> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("not an nginx JSON listing (an array of entries): {e}"))?;
    let mut l = Listing::default();
    for item in items {
        let name = item.get("name").and_then(|v| v.as_str());
        let kind = item.get("type").and_then(|v| v.as_str());
        let Some(name) = name else {
            l.refused
                .push(refused(&item.to_string(), "entry without a name"));
            continue;
        };
        match kind {
            Some("directory") => {
                l.dirs += 1;
                continue;
            }
            Some("file") => {}
            _ => {
                l.refused
                    .push(refused(name, "not a regular file (type is not \"file\")"));
                continue;
            }
        }
        if let Err(e) = check_name(name) {
            l.refused.push(refused(name, &e));
            continue;
        }
        let size = item.get("size").and_then(|v| v.as_u64());
        let mtime = item
            .get("mtime")
            .and_then(|v| v.as_str())
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        match (size, mtime) {
            (Some(size), Some(mtime)) => l.entries.push(Upstream {
                name: name.to_string(),
                size: Size::Exact(size),
                mtime_s: mtime.as_secs() as i64,
                precision_s: 1,
            }),
            _ => l
                .refused
                .push(refused(name, "entry without a size or an HTTP date")),
        }
    }
    Ok(l)
}

/// Where a tag, a link's text or a row may end: searches never look further than this past
/// their start, so a hostile page without closing tags or line ends costs linear time.
const SPAN_MAX: usize = 16 << 10;

/// Find `needle` (lower-case ASCII) in `hay` (already lower-cased) within `SPAN_MAX` bytes
/// from `at`.
fn find(hay: &str, needle: &str, at: usize) -> Option<usize> {
    find_before(hay, needle, at, at.saturating_add(SPAN_MAX))
}

/// Find `needle` in `hay` from `at`, lying whole before `end` (SIMD search: a row of the
/// 118,594-name page is scanned for three needles, so a byte-by-byte window compare over
/// the whole span was 72 % of a sync's planning time).
fn find_before(hay: &str, needle: &str, at: usize, end: usize) -> Option<usize> {
    let end = end.min(hay.len());
    memchr::memmem::find(hay.as_bytes().get(at..end)?, needle.as_bytes()).map(|i| i + at)
}

/// The next `<a ` from `at`, anywhere in the page.
fn next_link(hay: &str, at: usize) -> Option<usize> {
    hay.get(at..)?.find("<a ").map(|i| i + at)
}

fn parse_html(page: &str) -> Listing {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` index `page`.
    let lower = page.to_ascii_lowercase();
    let mut l = Listing::default();
    let mut at = 0;
    while let Some(a) = next_link(&lower, at) {
        at = a + 3;
        let Some(tag_end) = find(&lower, ">", at) else {
            continue;
        };
        let Some(href) = attr(&page[at..tag_end], &lower[at..tag_end], "href") else {
            continue;
        };
        let close = find(&lower, "</a>", tag_end).unwrap_or(tag_end);
        let after = close + if close > tag_end { 4 } else { 1 };
        // The row: up to the next link, table row end or line end, whichever comes first
        // (each later needle searched only before the earliest end found so far).
        let mut row_end = None::<usize>;
        for needle in ["\n", "<a ", "</tr>"] {
            let limit = row_end.map_or(after.saturating_add(SPAN_MAX), |e| e + needle.len());
            if let Some(i) = find_before(&lower, needle, after, limit)
                && row_end.is_none_or(|e| i < e)
            {
                row_end = Some(i);
            }
        }
        let row_end = row_end.unwrap_or_else(|| (after + SPAN_MAX).min(page.len()));
        let row_end = (after..=row_end)
            .rev()
            .find(|&i| page.is_char_boundary(i))
            .unwrap_or(after);
        at = after.max(at);
        let href = unescape_html(href);
        // Apache writes `./name` for names with a `:` (not a URL scheme).
        let href = href.strip_prefix("./").map(str::to_string).unwrap_or(href);
        if href.starts_with('?') || href.starts_with('#') || href.is_empty() {
            continue; // sort links, anchors
        }
        let row = strip_tags(&page[after..row_end]);
        let tokens: Vec<&str> = row.split_whitespace().collect();
        let Some((mtime_s, rest)) = find_date(&tokens) else {
            // Not a listing row (a header or footer link), unless it looks like a file link.
            if !href.contains("://") && !href.ends_with('/') && !href.starts_with('/') {
                l.refused.push(refused(&href, "no date on its row"));
            }
            continue;
        };
        if href.ends_with('/') {
            l.dirs += 1;
            continue;
        }
        if href.contains("://") || href.starts_with('/') || href.contains('/') {
            l.refused.push(refused(
                &href,
                "links outside this directory (an absolute URL or a path)",
            ));
            continue;
        }
        let name = match percent_encoding::percent_decode_str(&href).decode_utf8() {
            Ok(n) => n.into_owned(),
            Err(_) => {
                l.refused.push(refused(
                    &href,
                    "percent-decodes to bytes that are not UTF-8",
                ));
                continue;
            }
        };
        if let Err(e) = check_name(&name) {
            l.refused.push(refused(&href, &e));
            continue;
        }
        let Some(size) = rest.first().and_then(|t| parse_size(t)) else {
            l.refused.push(refused(&href, "no size on its row"));
            continue;
        };
        l.entries.push(Upstream {
            name,
            size,
            mtime_s,
            precision_s: 60,
        });
    }
    l
}

/// The value of attribute `name` in a tag's inside (`lower` is its lower-cased copy).
fn attr<'a>(tag: &'a str, lower: &str, name: &str) -> Option<&'a str> {
    let mut at = 0;
    while let Some(i) = find(lower, name, at) {
        at = i + name.len();
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let rest = lower[at..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_at = lower.len() - rest.len() + 1;
        let v = tag[value_at..].trim_start();
        let start = tag.len() - v.len();
        return match v.chars().next()? {
            q @ ('"' | '\'') => {
                let end = tag[start + 1..].find(q)? + start + 1;
                Some(&tag[start + 1..end])
            }
            _ => {
                let end = v.find(char::is_whitespace).unwrap_or(v.len());
                Some(&v[..end])
            }
        };
    }
    None
}

fn unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape_html(&out)
}

/// The first `DATE TIME` pair among `tokens` (nginx `06-Dec-2026 10:04`, Apache
/// `2026-12-06 10:04`, seconds optional), as Unix seconds, and the tokens after it.
fn find_date<'a, 'b>(tokens: &'b [&'a str]) -> Option<(i64, &'b [&'a str])> {
    for i in 0..tokens.len().saturating_sub(1) {
        let Some((y, m, d)) = parse_day(tokens[i]) else {
            continue;
        };
        let t: Vec<&str> = tokens[i + 1].split(':').collect();
        let num = |s: &str| s.parse::<i64>().ok().filter(|_| s.len() == 2);
        let (h, min, s) = match t[..] {
            [h, m] => (num(h)?, num(m)?, 0),
            [h, m, s] => (num(h)?, num(m)?, num(s)?),
            _ => continue,
        };
        if h > 23 || min > 59 || s > 60 {
            continue;
        }
        let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60;
        return Some((secs, &tokens[i + 2..]));
    }
    None
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn parse_day(tok: &str) -> Option<(i64, i64, i64)> {
    let p: Vec<&str> = tok.split('-').collect();
    let [a, b, c] = p[..] else { return None };
    let n = |s: &str| s.parse::<i64>().ok();
    let (y, m, d) = if a.len() == 4 {
        (n(a)?, n(b)?, n(c)?)
    } else {
        let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(b))? as i64 + 1;
        (n(c)?, m, n(a)?)
    };
    ((1..=12).contains(&m) && (1..=31).contains(&d) && (1970..=9999).contains(&y))
        .then_some((y, m, d))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `1234` (exact), `1.2K`, `244M`, `1G` (rounded, powers of 1024).
fn parse_size(tok: &str) -> Option<Size> {
    if let Ok(n) = tok.parse::<u64>() {
        return Some(Size::Exact(n));
    }
    // The unit is the last character, which may be any character on a hostile page (split
    // at its boundary, not at `len - 1`: found by fuzzing, fuzz/corpus/listing/crash-*).
    let unit = tok.chars().next_back()?;
    let num = &tok[..tok.len() - unit.len_utf8()];
    let shift = match unit.to_ascii_uppercase() {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        'P' => 50,
        _ => return None,
    };
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    Some(Size::About((v * (1u64 << shift) as f64) as u64))
}

#[cfg(test)]
mod tests;
