//! The depot view's documents: directory pages in nginx's autoindex formats (HTML and JSON),
//! and the page for people at `/`. Pure functions from entries to bytes; no I/O.
//!
//! The autoindex formats follow nginx 1.22's `ngx_http_autoindex_module` byte for byte
//! (`autoindex_exact_size on`, `autoindex_localtime off`), checked against a real nginx in
//! `tests/depot.rs`: directories first, then names in byte order; dot files left out; hrefs
//! escaped like nginx's `NGX_ESCAPE_URI_COMPONENT` (`samtools%3A1.9--h91753b0_8`, upper-case
//! hex); names shown HTML-escaped and cut to 50 bytes (47 and `..&gt;`); dates as
//! `06-Dec-2026 10:05` (GMT); sizes right-aligned in 19 columns, `-` for directories; CRLF
//! line ends. JSON: `[`, one `{ "name":…, "type":…, "mtime":…, "size":… }` per line, `]`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use depotfs_catalog::{Entry, EntryKind};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::search::{Hit, SearchIndex};

/// Bytes nginx's `NGX_ESCAPE_URI_COMPONENT` escapes (besides controls and non-ASCII): every
/// ASCII character except letters, digits and `-._~`.
pub const URI_COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'!')
    .add(b'"')
    .add(b'#')
    .add(b'$')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'(')
    .add(b')')
    .add(b'*')
    .add(b'+')
    .add(b',')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Name column width of nginx's HTML autoindex.
const NAME_LEN: usize = 50;

/// One path component as nginx writes it in an href.
pub fn href(name: &str) -> String {
    utf8_percent_encode(name, URI_COMPONENT).to_string()
}

/// A path (components separated by `/`) as an href, each component escaped.
pub fn href_path(path: &str) -> String {
    path.split('/').map(href).collect::<Vec<_>>().join("/")
}

/// `&`, `<`, `>` and `"` as entities (what nginx's `ngx_escape_html` escapes).
pub fn html(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    push_html_bytes(&mut out, s.as_bytes());
    // Only ASCII bytes were replaced by ASCII: still UTF-8.
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

/// An entry's time (nanoseconds since the epoch; earlier times clamp to the epoch).
pub fn time_of(mtime_ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(mtime_ns).unwrap_or(0))
}

/// A tool's versions on the search page, each with its builds.
type Versions<'a> = Vec<(&'a str, Vec<&'a Hit>)>;

/// The entries a directory page shows, in nginx's order: directories first, then files, each
/// in byte order of their names; dot files and symlinks left out (the depot view replaces a
/// link that resolves inside the tree by its target first).
pub fn shown(entries: &[Entry]) -> Vec<Entry> {
    let visible =
        |e: &&Entry| !e.name.starts_with('.') && !matches!(e.kind, EntryKind::Symlink { .. });
    let mut out: Vec<Entry> = entries
        .iter()
        .filter(visible)
        .filter(|e| e.is_dir())
        .cloned()
        .collect();
    out.extend(
        entries
            .iter()
            .filter(visible)
            .filter(|e| !e.is_dir())
            .cloned(),
    );
    out
}

/// The HTML directory page of `entries` (already [`shown`]) at URL path `uri` (decoded,
/// ending in `/`). Names are measured and cut in bytes, as nginx does without
/// `charset utf-8` (a long non-ASCII name may be cut inside a character, as there).
pub fn autoindex_html(uri: &str, entries: &[Entry]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(200 + entries.len() * 140);
    let title = html(uri);
    out.extend_from_slice(
        format!(
            "<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n<h1>Index of {title}</h1><hr><pre><a href=\"../\">../</a>\r\n"
        )
        .as_bytes(),
    );
    for e in entries {
        let dir = e.is_dir();
        out.extend_from_slice(b"<a href=\"");
        for part in utf8_percent_encode(&e.name, URI_COMPONENT) {
            out.extend_from_slice(part.as_bytes());
        }
        if dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"\">");
        let name = e.name.as_bytes();
        let mut len = name.len();
        if len > NAME_LEN {
            push_html_bytes(&mut out, &name[..NAME_LEN - 3]);
            out.extend_from_slice(b"..&gt;</a>");
        } else {
            push_html_bytes(&mut out, name);
            if dir && len < NAME_LEN {
                out.push(b'/');
                len += 1;
            }
            out.extend_from_slice(b"</a>");
            out.resize(out.len() + (NAME_LEN - len), b' ');
        }
        // "Sun, 06 Dec 2026 10:05:37 GMT" -> "06-Dec-2026 10:05"
        let d = httpdate::fmt_http_date(time_of(e.mtime_ns));
        let mut row = format!(" {}-{}-{} {} ", &d[5..7], &d[8..11], &d[12..16], &d[17..22]);
        match e.kind {
            EntryKind::File { size, .. } => {
                let _ = write!(row, "{size:>19}");
            }
            _ => row.push_str("                  -"),
        }
        row.push_str("\r\n");
        out.extend_from_slice(row.as_bytes());
    }
    out.extend_from_slice(b"</pre><hr></body>\r\n</html>\r\n");
    out
}

fn push_html_bytes(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b => out.push(b),
        }
    }
}

/// JSON string escaping as nginx's `ngx_escape_json` does it.
fn push_json(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The JSON directory listing of `entries` (already [`shown`]), as nginx's
/// `autoindex_format json` writes it.
pub fn autoindex_json(entries: &[Entry]) -> Vec<u8> {
    let mut out = String::with_capacity(10 + entries.len() * 120);
    out.push_str("[\r\n");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push_str(",\r\n");
        }
        out.push_str("{ \"name\":\"");
        push_json(&mut out, &e.name);
        let kind = if e.is_dir() { "directory" } else { "file" };
        let _ = write!(
            out,
            "\", \"type\":\"{kind}\", \"mtime\":\"{}\"",
            httpdate::fmt_http_date(time_of(e.mtime_ns))
        );
        if let EntryKind::File { size, .. } = e.kind {
            let _ = write!(out, ", \"size\":{size}");
        }
        out.push_str(" }");
    }
    out.push_str("\r\n]");
    out.into_bytes()
}

/// `1.5 GB`-style size (decimal units, as `df -H` and the field notes use).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What the page at `/` shows about the repository.
#[derive(Debug)]
pub struct RepoInfo<'a> {
    /// Repository name.
    pub name: &'a str,
    /// Revision number.
    pub revision: u64,
    /// When it was published.
    pub published: SystemTime,
    /// The public key file's text.
    pub key: &'a str,
    /// `http://host` of this server as the client addressed it (no trailing `/`).
    pub base_url: &'a str,
    /// The depot view's prefix (`/files/`).
    pub prefix: &'a str,
}

/// The Galaxy resolver configuration shipped in `deploy/galaxy/`, without its comments.
fn galaxy_lines(mount: &str) -> String {
    include_str!("../../../deploy/galaxy/container_resolvers.yml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.replace("/depotfs/singularity", mount))
        .collect::<Vec<_>>()
        .join("\n")
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:72em;margin:1.5em auto;padding:0 1em;color:#1b1b1b}\
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em}dl.facts dt{color:#555}dl.facts dd{margin:0}\
form.search{display:flex;gap:.5em;margin:1em 0}form.search input{flex:1;font-size:1.1em;padding:.35em .5em}\
form.search button{font-size:1.1em;padding:.35em 1em}\
table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.builds a{display:inline-block;margin-right:.8em}td.num{text-align:right;white-space:nowrap}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}code{font-size:.95em}.muted{color:#666}";

/// The page at `/`: the repository, the search box and its answer, how to use it.
pub fn index_page(info: &RepoInfo<'_>, index: &SearchIndex, query: &str, limit: usize) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let name = html(info.name);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{name} — depotfs</title><style>{STYLE}</style></head>\n<body>\n\
<h1>{name}</h1>\n<dl class=\"facts\">\
<dt>Revision</dt><dd id=\"revision\">{}</dd>\
<dt>Published</dt><dd>{}</dd>\
<dt>Images</dt><dd id=\"images\">{}</dd>\
<dt>Total size</dt><dd>{} ({} bytes)</dd>\
<dt>Browse</dt><dd><a href=\"{}\">{}</a> (autoindex; <a href=\"{}?format=json\">JSON</a>)</dd></dl>\n",
        info.revision,
        humantime::format_rfc3339_seconds(info.published),
        index.len(),
        human_size(index.total_size()),
        index.total_size(),
        html(info.prefix),
        html(info.prefix),
        html(info.prefix),
    );
    let _ = write!(
        o,
        "<h2>Search</h2>\n<form class=\"search\" action=\"/\" method=\"get\" role=\"search\">\
<input type=\"search\" id=\"q\" name=\"q\" value=\"{}\" placeholder=\"tool name, e.g. samtools\" autofocus>\
<button type=\"submit\">Search</button></form>\n",
        html(query)
    );
    if index.is_empty() {
        o.push_str("<p>This revision has no files yet.</p>\n");
    } else if !query.is_empty() {
        search_results(&mut o, info, index, query, limit);
    }
    usage(&mut o, info);
    o.push_str("</body>\n</html>\n");
    o
}

fn search_results(
    o: &mut String,
    info: &RepoInfo<'_>,
    index: &SearchIndex,
    query: &str,
    limit: usize,
) {
    let found = index.find(query, limit);
    let _ = writeln!(
        o,
        "<p id=\"count\">{} {} <q>{}</q>{}.</p>",
        found.total,
        if found.total == 1 {
            "image matches"
        } else {
            "images match"
        },
        html(query),
        if found.total > found.hits.len() {
            format!(", the first {} shown", found.hits.len())
        } else {
            String::new()
        }
    );
    // Group by tool (the part before `:`), a row per version, its builds side by side.
    let mut tools: Vec<(&str, Versions<'_>)> = Vec::new();
    for h in &found.hits {
        let (tool, version) = split_image(h.name());
        let t = match tools.iter().position(|(n, _)| *n == tool) {
            Some(i) => &mut tools[i].1,
            None => {
                tools.push((tool, Vec::new()));
                &mut tools.last_mut().expect("just pushed").1
            }
        };
        match t.iter().position(|(v, _)| *v == version) {
            Some(i) => t[i].1.push(h),
            None => t.push((version, vec![h])),
        }
    }
    for (tool, mut versions) in tools {
        versions.sort_by(|a, b| natural_cmp(b.0, a.0));
        let _ = write!(
            o,
            "<h3 class=\"tool\">{}</h3>\n<table class=\"versions\"><tr><th>version</th><th>builds</th><th>size</th></tr>\n",
            html(tool)
        );
        for (version, hits) in versions {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"builds\">",
                html(if version.is_empty() { "—" } else { version })
            );
            for h in &hits {
                let _ = write!(
                    o,
                    "<a class=\"image\" href=\"{}{}\" title=\"{}\">{}</a>",
                    html(info.prefix),
                    href_path(&h.path),
                    html(&h.path),
                    html(build_of(h.name()))
                );
            }
            let sizes: Vec<String> = hits.iter().map(|h| human_size(h.size)).collect();
            let _ = writeln!(o, "</td><td class=\"num\">{}</td></tr>", sizes.join(" / "));
        }
        o.push_str("</table>\n");
    }
}

fn usage(o: &mut String, info: &RepoInfo<'_>) {
    let short = info.name.split('.').next().unwrap_or(info.name);
    let mount = format!("/depotfs/{short}");
    let _ = write!(
        o,
        "<h2>Use it</h2>\n<p>Mount the repository on every node (a lazy, verified, cached read-only \
FUSE filesystem), with the key below saved as <code>{short}.pub</code>:</p>\n\
<pre><code>depotfs mount {base}/ {mount} --key /etc/depotfs/{short}.pub \\\n    --cache-dir /var/cache/depotfs --cache-size 50G</code></pre>\n\
<p>Or download an image whole: <code>curl -O {base}{prefix}all/samtools%3A1.9--h91753b0_8</code> \
(any file under <a href=\"{prefix}\">{prefix}</a>; resumable with <code>curl -C -</code> or <code>wget -c</code>).</p>\n\
<p>Key (<a href=\"/repo.pub\">/repo.pub</a>):</p>\n<pre><code>{key}</code></pre>\n\
<p>Galaxy (<code>container_resolvers_config_file</code>; <code>deploy/galaxy/</code> in depotfs):</p>\n\
<pre><code>{galaxy}</code></pre>\n",
        base = html(info.base_url),
        mount = html(&mount),
        short = html(short),
        prefix = html(info.prefix),
        key = html(info.key.trim()),
        galaxy = html(&galaxy_lines(&mount)),
    );
}

/// `samtools:1.9--h91753b0_8` -> (`samtools`, `1.9`); a name without `:` is all tool.
fn split_image(name: &str) -> (&str, &str) {
    match name.split_once(':') {
        Some((tool, rest)) => (tool, rest.split_once("--").map_or(rest, |(v, _)| v)),
        None => (name, ""),
    }
}

/// The build part of an image name (`h91753b0_8`), or the whole name when it has none.
fn build_of(name: &str) -> &str {
    name.split_once(':')
        .and_then(|(_, rest)| rest.split_once("--"))
        .map_or(name, |(_, b)| b)
}

/// Order versions so that `1.10` comes after `1.9`: runs of digits compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then(na.cmp(nb));
                if ord.is_ne() {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use depotfs_catalog::{FileContent, ObjectId};

    fn file(name: &str, size: u64) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o644,
            mtime_ns: 1_796_551_537_000_000_000,
            kind: EntryKind::File {
                size,
                content: FileContent::Empty,
            },
        }
    }

    #[test]
    fn hrefs_escape_like_nginx() {
        assert_eq!(
            href("samtools:1.9--h91753b0_8"),
            "samtools%3A1.9--h91753b0_8"
        );
        assert_eq!(href("a b&c<d>\"e"), "a%20b%26c%3Cd%3E%22e");
        assert_eq!(
            href("q'!()*+,;=?@[]^`{|}~x"),
            "q%27%21%28%29%2A%2B%2C%3B%3D%3F%40%5B%5D%5E%60%7B%7C%7D~x"
        );
        assert_eq!(href("pct%41/é"), "pct%2541%2F%C3%A9");
        assert_eq!(href_path("all/a:b"), "all/a%3Ab");
    }

    #[test]
    fn html_rows_pad_cut_and_order_like_nginx() {
        let dir = Entry {
            name: "sub".into(),
            mode: 0o755,
            mtime_ns: 1_796_551_537_000_000_000,
            kind: EntryKind::Dir {
                tree: ObjectId::of(b"x"),
                entries: 0,
            },
        };
        let entries = shown(&[
            file(".hidden", 1),
            file("a<b", 15),
            dir,
            file(&"m".repeat(60), 12),
        ]);
        let page = String::from_utf8(autoindex_html("/files/", &entries)).unwrap();
        let want = format!(
            "<html>\r\n<head><title>Index of /files/</title></head>\r\n<body>\r\n\
<h1>Index of /files/</h1><hr><pre><a href=\"../\">../</a>\r\n\
<a href=\"sub/\">sub/</a>{}06-Dec-2026 10:05                   -\r\n\
<a href=\"a%3Cb\">a&lt;b</a>{}06-Dec-2026 10:05                  15\r\n\
<a href=\"{m60}\">{m47}..&gt;</a> 06-Dec-2026 10:05                  12\r\n\
</pre><hr></body>\r\n</html>\r\n",
            " ".repeat(47),
            " ".repeat(48),
            m60 = "m".repeat(60),
            m47 = "m".repeat(47),
        );
        assert_eq!(page, want);
        let json = String::from_utf8(autoindex_json(&entries)).unwrap();
        assert!(json.starts_with("[\r\n{ \"name\":\"sub\", \"type\":\"directory\", \"mtime\":\"Sun, 06 Dec 2026 10:05:37 GMT\" },\r\n"));
        assert!(json.contains("{ \"name\":\"a<b\", \"type\":\"file\", \"mtime\":\"Sun, 06 Dec 2026 10:05:37 GMT\", \"size\":15 }"));
        assert!(json.ends_with(" }\r\n]"));
    }

    #[test]
    fn versions_sort_naturally() {
        let mut v = vec!["1.9", "1.10", "1.2", "0.1.19", "1.10a"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["0.1.19", "1.2", "1.9", "1.10", "1.10a"]);
        assert_eq!(split_image("samtools:1.9--h91753b0_8"), ("samtools", "1.9"));
        assert_eq!(build_of("samtools:1.9--h91753b0_8"), "h91753b0_8");
        assert_eq!(split_image("bin"), ("bin", ""));
    }
}
