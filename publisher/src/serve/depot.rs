//! The depot view: the published tree of the current revision, browsable and downloadable
//! file by file under a prefix (`--depot-prefix`, default `/files/`), and the page for people
//! at `/` ([`pages`](super::pages)).
//!
//! Everything is read through [`LocalTree`], the one reader over verified objects:
//! directory nodes, chunk lists and every chunk are checked against their hash on the way
//! out. A chunk that fails (corrupt on disk, or missing because `gc` removed it) ends the
//! response where it is: the connection is closed before `Content-Length` is reached, so a
//! client sees a short transfer (curl: "transfer closed with N bytes remaining"), never a
//! wrong byte; the server logs the path, revision and object, and counts it in
//! `depotfs_serve_depot_failures_total{stage="body"}`.
//!
//! Revisions: the manifest is checked (a `stat`) on every request and re-read when it was
//! replaced; a request is answered entirely from the revision current when it arrived, and
//! its body holds that revision (an `Arc`), so a download that started before a publish
//! finishes with the old bytes. Objects are immutable and never overwritten, so that holds
//! until `depotfs gc` deletes objects the old revision alone needed (`--keep N` keeps the
//! last N revisions, 10 by default: a download is cut only if N publishes and a gc happen
//! while it lasts, and is then counted and logged as above).
//!
//! HTTP: GET and HEAD, `Content-Length`, `Last-Modified` (the entry's mtime), a strong
//! `ETag` (the file's content object: its blake3 for one-chunk files, its chunk list's
//! otherwise), one `Range` (206, 416 past the end; several ranges get the whole file, like
//! nginx with `max_ranges 1`; a header of more than [`MAX_RANGE_PARTS`] ranges or
//! [`MAX_RANGE_HEADER`] bytes is refused with 416), `If-Range`, `If-None-Match`,
//! `If-Modified-Since`. Directories: `/files/dir` redirects (301) to `/files/dir/`, like
//! nginx; `?format=json` gives nginx's JSON listing. Paths are split before percent-decoding
//! and a `.`/`..` segment, an encoded `/` or a NUL is a 400; names are looked up in the
//! signed tree, never on the file system, so nothing outside the tree can be named.
//!
//! Symlinks in the tree are followed the way nginx follows them on a file system, but only
//! inside the published tree: a link whose target resolves (relative to the link's
//! directory, through further links, at most [`MAX_LINKS`] of them) to a file or directory
//! of the tree is listed under its own name with its target's type, size and date, and
//! served with its target's content (a directory link redirects and lists like a
//! directory). A link that escapes the tree (an absolute target, or `..` above the root),
//! dangles, or loops (more than [`MAX_LINKS`] links, or a link back into a directory above
//! it, which a recursive crawler would follow forever) is neither listed nor served (404).
//!
//! Downloads ([`VerifiedStream`]) are read ahead and verified on the blocking pool, within
//! one memory budget for all of them, cold ones with direct I/O: [`download`](super::download).

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime};

use depotfs_catalog::{ChunkRef, Entry, EntryKind, FileContent, Manifest, ObjectId, PublicKey};
use hyper::body::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION,
};
use hyper::{Response, StatusCode};

use super::download::{Downloads, VerifiedStream};
use super::files::{CHUNK, ServeBody};
use super::handler::{ranged, text};
use super::metrics::Metrics;
use super::pages::{self, RepoInfo};
use super::parse::{self, PathRefused};
use super::search::SearchIndex;
use crate::reader::LocalTree;
use crate::store::{Layout, Objects};

pub use super::parse::{MAX_RANGE_HEADER, MAX_RANGE_PARTS};
/// Symbolic links followed while resolving one path, at most (Linux's `MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;
/// Directory listings kept per revision (the big flat directory is the one that matters).
const LISTINGS_KEPT: usize = 64;
/// Matches shown on the page (all are counted).
const SEARCH_SHOWN: usize = 500;
/// `Cache-Control` of files and pages of the depot view: a path's content changes with
/// revisions, and the ETag tells a cache whether it did.
const CACHE_DEPOT: &str = "public, max-age=60";
/// The header naming the revision a depot response was answered from.
pub const REVISION_HEADER: &str = "x-depotfs-revision";

/// What a request path of the depot view names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the page for people.
    Page,
    /// A path in the tree (components, decoded), and whether the URL ended in `/`.
    Tree {
        /// Path components below the root.
        parts: Vec<String>,
        /// The URL path ended in `/` (or was the prefix itself).
        slash: bool,
    },
}

/// Check a `--depot-prefix` value: `/name/` or `/a/b/` (a trailing `/` is added), made of
/// letters, digits, `-`, `_` and `.`, and not shadowing the store's own files.
pub fn normalize_prefix(prefix: &str) -> anyhow::Result<String> {
    let bad = |why: &str| anyhow::anyhow!("--depot-prefix {prefix:?}: {why}");
    let inner = prefix
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with /"))?;
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if inner.is_empty() {
        return Err(bad(
            "must name a path below / (the page for people is at /)",
        ));
    }
    for seg in inner.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(
                "each component must be letters, digits, '-', '_' or '.' (not . or ..)",
            ));
        }
    }
    let first = inner.split('/').next().unwrap_or_default();
    if ["objects", "manifest", "repo.pub", "metrics"].contains(&first) {
        return Err(bad(&format!("{first} is a file of the store itself")));
    }
    Ok(format!("/{inner}/"))
}

/// What `path` (a request URI's path) names in the depot view with prefix `prefix`
/// (normalized); `None` when it is not the depot view's.
pub fn route(prefix: &str, path: &str) -> Option<Result<Route, PathRefused>> {
    if path == "/" {
        return Some(Ok(Route::Page));
    }
    if path == &prefix[..prefix.len() - 1] {
        return Some(Ok(Route::Tree {
            parts: Vec::new(),
            slash: false,
        }));
    }
    let rest = path.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let seg: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        if seg.contains(&b'/') || seg.contains(&0) || seg == b"." || seg == b".." {
            return Some(Err(PathRefused::BadRequest));
        }
        match String::from_utf8(seg) {
            Ok(s) => parts.push(s),
            // Names in the tree are UTF-8: nothing has this one.
            Err(_) => return Some(Err(PathRefused::NotFound)),
        }
    }
    Some(Ok(Route::Tree {
        parts,
        slash: rest.is_empty() || rest.ends_with('/'),
    }))
}

/// The value of `key` in a query string (`a=1&q=x+y`), form-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The depot view of one served public directory.
#[derive(Debug)]
pub struct Depot {
    prefix: String,
    layout: Layout,
    current: Mutex<Option<(Stamp, Arc<Revision>)>>,
    /// The downloads' read-ahead and its budget.
    downloads: Arc<Downloads>,
}

/// Identity of the manifest file: it is replaced by rename, so a new one has a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: SystemTime,
}

/// One published revision, as the depot view serves it.
#[derive(Debug)]
pub struct Revision {
    manifest: Manifest,
    key: String,
    tree: LocalTree,
    listings: Mutex<HashMap<String, Arc<Listing>>>,
    search: OnceLock<Arc<SearchIndex>>,
    /// Held while the search index is built: requests that come together after a publish
    /// wait for one build instead of each making its own.
    search_build: Mutex<()>,
    /// The depot's downloads.
    downloads: Arc<Downloads>,
    /// Chunk lists of files being downloaded, by list and file size: downloads of one file
    /// share one (pruned of dead ones as the map grows).
    chunk_lists: Mutex<ChunkLists>,
}

/// Chunk lists shared by downloads, by list object and file size.
type ChunkLists = HashMap<(ObjectId, u64), Weak<[ChunkRef]>>;

/// A directory's page, rendered on first use.
#[derive(Debug)]
struct Listing {
    uri: String,
    entries: Vec<Entry>,
    html: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

/// A request, as the blocking part of the depot view needs it.
#[derive(Debug)]
pub struct Request {
    /// The URI path.
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// HEAD (no body).
    pub head: bool,
    /// It came over HTTP/2.
    pub h2: bool,
}

/// Why a depot response failed, for the log and the metrics.
pub(super) fn reason(e: &crate::Error) -> &'static str {
    match e {
        crate::Error::Format(_) => "verify",
        crate::Error::Io { .. } => "io",
        _ => "malformed",
    }
}

impl Depot {
    /// The depot view of public directory `public` under `prefix` (normalized).
    pub fn new(public: PathBuf, prefix: String) -> Self {
        Depot {
            prefix,
            layout: Layout::of_public(public),
            current: Mutex::new(None),
            downloads: Arc::new(Downloads::default()),
        }
    }

    /// Its downloads' read-ahead.
    pub fn downloads(&self) -> &Arc<Downloads> {
        &self.downloads
    }

    /// The prefix, `/files/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The current revision: the cached one while the manifest file is the same, else the
    /// manifest read and verified afresh (with the served `repo.pub`). Blocking.
    fn revision(&self, metrics: &Metrics) -> crate::Result<Arc<Revision>> {
        let path = self.layout.manifest();
        let meta = std::fs::metadata(&path).map_err(crate::Error::io(&path))?;
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().map_err(crate::Error::io(&path))?,
        };
        let mut cur = self.current.lock().expect("not poisoned");
        if let Some((s, rev)) = cur.as_ref()
            && *s == stamp
        {
            return Ok(Arc::clone(rev));
        }
        let manifest = self.layout.load_manifest()?;
        let key_path = self.layout.public_key();
        let key = std::fs::read_to_string(&key_path).map_err(crate::Error::io(&key_path))?;
        let _: PublicKey = PublicKey::from_text(&key)?;
        tracing::info!(
            revision = manifest.revision,
            name = manifest.name,
            "depot view: serving revision {}",
            manifest.revision
        );
        metrics.depot_revision(manifest.revision);
        let rev = Arc::new(Revision {
            manifest,
            key,
            tree: LocalTree::new(Objects::new(self.layout.clone())),
            listings: Mutex::new(HashMap::new()),
            search: OnceLock::new(),
            search_build: Mutex::new(()),
            downloads: Arc::clone(&self.downloads),
            chunk_lists: Mutex::new(HashMap::new()),
        });
        *cur = Some((stamp, Arc::clone(&rev)));
        Ok(rev)
    }

    /// Answer a request [`route`] gave `route` for (blocking: runs on the blocking pool).
    pub fn respond(
        &self,
        metrics: &Metrics,
        route: Route,
        req: &Request,
    ) -> (Response<ServeBody>, &'static str) {
        let rev = match self.revision(metrics) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("depot view: no usable revision: {e}");
                return (text(StatusCode::SERVICE_UNAVAILABLE), "error");
            }
        };
        let res = match route {
            Route::Page => self.page(metrics, &rev, req).map(|r| (r, "page")),
            Route::Tree { parts, slash } => self.tree(metrics, &rev, &parts, slash, req),
        };
        let (mut resp, label) = match res {
            Ok(x) => x,
            Err(e) => {
                metrics.depot_failure("head", reason(&e));
                tracing::error!(
                    path = req.path,
                    revision = rev.manifest.revision,
                    "depot view: {e}"
                );
                (text(StatusCode::INTERNAL_SERVER_ERROR), "error")
            }
        };
        resp.headers_mut().insert(
            HeaderName::from_static(REVISION_HEADER),
            rev.manifest.revision.into(),
        );
        (resp, label)
    }

    fn page(
        &self,
        metrics: &Metrics,
        rev: &Arc<Revision>,
        req: &Request,
    ) -> crate::Result<Response<ServeBody>> {
        let index = rev.search_index()?;
        let query = query_param(req.query.as_deref(), "q").unwrap_or_default();
        let host = req
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            })
            .unwrap_or("SERVER");
        let base = format!("http://{host}");
        let info = RepoInfo {
            name: &rev.manifest.name,
            revision: rev.manifest.revision,
            published: pages::time_of(rev.manifest.published_ns),
            key: &rev.key,
            base_url: &base,
            prefix: &self.prefix,
        };
        let started = Instant::now();
        let body = pages::index_page(&info, &index, query.trim(), SEARCH_SHOWN);
        if !query.is_empty() {
            metrics.depot_search(started.elapsed());
        }
        Ok(document(
            body.into(),
            "text/html; charset=utf-8",
            "no-cache",
            req.head,
        ))
    }

    fn tree(
        &self,
        metrics: &Metrics,
        rev: &Arc<Revision>,
        parts: &[String],
        slash: bool,
        req: &Request,
    ) -> crate::Result<(Response<ServeBody>, &'static str)> {
        let path = parts.join("/");
        let root = Place::root(rev.manifest.root);
        let Some(place) = resolve(&rev.tree, root, parts)? else {
            return Ok((text(StatusCode::NOT_FOUND), "error"));
        };
        match place.leaf {
            Leaf::Dir(_) if !slash => {
                let mut location = format!("{}{}", self.prefix, pages::href_path(&path));
                if !path.is_empty() {
                    location.push('/');
                }
                if let Some(q) = &req.query {
                    location.push('?');
                    location.push_str(q);
                }
                let mut r = text(StatusCode::MOVED_PERMANENTLY);
                r.headers_mut().insert(
                    LOCATION,
                    HeaderValue::from_str(&location)
                        .map_err(|e| crate::Error::Input(e.to_string()))?,
                );
                Ok((r, "depot_listing"))
            }
            Leaf::Dir(_) => {
                let listing = rev.listing(&self.prefix, &path, &place)?;
                let json = query_param(req.query.as_deref(), "format").as_deref() == Some("json");
                let (body, ctype) = if json {
                    (
                        listing
                            .json
                            .get_or_init(|| pages::autoindex_json(&listing.entries).into())
                            .clone(),
                        "application/json",
                    )
                } else {
                    (
                        listing
                            .html
                            .get_or_init(|| {
                                pages::autoindex_html(&listing.uri, &listing.entries).into()
                            })
                            .clone(),
                        "text/html",
                    )
                };
                Ok((
                    document(body, ctype, CACHE_DEPOT, req.head),
                    "depot_listing",
                ))
            }
            Leaf::File(e) => match e.kind {
                EntryKind::File { size, content } if !slash => Ok((
                    file_response(metrics, rev, &path, &e, size, &content, req)?,
                    "depot_file",
                )),
                // A file named with a trailing slash: nothing to serve.
                _ => Ok((text(StatusCode::NOT_FOUND), "error")),
            },
        }
    }
}

impl Revision {
    /// The chunks of a file of `size` bytes with `content`, verified ([`LocalTree::pieces`]);
    /// the list another download of the file holds, if there is one.
    fn chunks(&self, content: &FileContent, size: u64) -> crate::Result<Arc<[ChunkRef]>> {
        let FileContent::Chunked(list) = content else {
            return Ok(self.tree.pieces(content, size)?.into());
        };
        let key = (*list, size);
        if let Some(c) = self.lists().get(&key).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let chunks: Arc<[ChunkRef]> = self.tree.pieces(content, size)?.into();
        let mut lists = self.lists();
        if lists.len() == lists.capacity() {
            lists.retain(|_, w| w.strong_count() > 0);
        }
        lists.insert(key, Arc::downgrade(&chunks));
        Ok(chunks)
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, ChunkLists> {
        self.chunk_lists.lock().expect("not poisoned")
    }

    /// The verified reader of its objects.
    pub(super) fn tree(&self) -> &LocalTree {
        &self.tree
    }

    /// Its number.
    pub(super) fn revision(&self) -> u64 {
        self.manifest.revision
    }

    /// The depot's downloads (their read-ahead budget).
    pub(super) fn downloads(&self) -> &Downloads {
        &self.downloads
    }

    /// The search index of this revision, built on first use.
    fn search_index(&self) -> crate::Result<Arc<SearchIndex>> {
        if let Some(ix) = self.search.get() {
            return Ok(Arc::clone(ix));
        }
        let _building = self.search_build.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = self.search.get() {
            return Ok(Arc::clone(ix)); // built while this request waited
        }
        let started = Instant::now();
        let ix = Arc::new(SearchIndex::build(&self.tree, &self.manifest.root)?);
        tracing::info!(
            revision = self.manifest.revision,
            files = ix.len(),
            millis = started.elapsed().as_millis() as u64,
            "depot view: indexed the revision's file names"
        );
        Ok(Arc::clone(self.search.get_or_init(|| ix)))
    }

    /// The listing of the directory `dir` reached at `path`, from the cache or read now:
    /// its entries, with each symlink that resolves inside the tree shown as its target.
    fn listing(&self, prefix: &str, path: &str, dir: &Place) -> crate::Result<Arc<Listing>> {
        if let Some(l) = self.listings.lock().expect("not poisoned").get(path) {
            return Ok(Arc::clone(l));
        }
        let mut entries = self.tree.list(&dir.tree())?;
        for e in &mut entries {
            if !matches!(e.kind, EntryKind::Symlink { .. }) {
                continue;
            }
            let from = Place {
                dirs: dir.dirs.clone(),
                leaf: Leaf::Dir(None),
            };
            // Escaping, dangling or looping: left a symlink, which is not shown.
            let Some(to) = resolve(&self.tree, from, std::slice::from_ref(&e.name))? else {
                continue;
            };
            let tree = to.tree();
            match to.leaf {
                Leaf::File(t) | Leaf::Dir(Some(t)) => {
                    e.mtime_ns = t.mtime_ns;
                    e.kind = t.kind;
                }
                // A directory reached through `..`: its tree, the link's own date.
                Leaf::Dir(None) => e.kind = EntryKind::Dir { tree, entries: 0 },
            }
        }
        let entries = pages::shown(&entries);
        let mut uri = format!("{prefix}{path}");
        if !path.is_empty() {
            uri.push('/');
        }
        let l = Arc::new(Listing {
            uri,
            entries,
            html: OnceLock::new(),
            json: OnceLock::new(),
        });
        let mut cache = self.listings.lock().expect("not poisoned");
        if cache.len() >= LISTINGS_KEPT {
            cache.clear();
        }
        cache.insert(path.to_owned(), Arc::clone(&l));
        Ok(l)
    }
}

/// Where a path led in the tree: the directories walked down to it (for `..` in link
/// targets) and what it names.
#[derive(Debug, Clone)]
struct Place {
    /// Directory trees from the root (first) to the one holding `leaf`, or `leaf` itself
    /// when it is a directory (last).
    dirs: Vec<ObjectId>,
    leaf: Leaf,
}

/// What a resolved path names.
#[derive(Debug, Clone)]
enum Leaf {
    /// A directory (its entry; `None` for the root), whose tree is the last of `dirs`.
    Dir(Option<Entry>),
    /// A regular file.
    File(Entry),
}

impl Place {
    fn root(tree: ObjectId) -> Place {
        Place {
            dirs: vec![tree],
            leaf: Leaf::Dir(None),
        }
    }

    /// The tree of the directory this place is, or holds its file.
    fn tree(&self) -> ObjectId {
        *self.dirs.last().expect("the root at least")
    }
}

/// Resolve `parts` from the directory `from`, following symlinks inside the tree (module
/// docs); `None` when a component is missing, a non-final one is not a directory, or a link
/// escapes, dangles or loops.
fn resolve(tree: &LocalTree, from: Place, parts: &[String]) -> crate::Result<Option<Place>> {
    let mut at = from;
    let mut todo: VecDeque<String> = parts.iter().cloned().collect();
    let mut links = 0;
    // Links being followed: the components left once its target is walked, and the
    // directories from the root to the link's own (a link into one of them is a cycle).
    let mut following: Vec<(usize, Vec<ObjectId>)> = Vec::new();
    loop {
        while let Some((rest, above)) = following.last() {
            if todo.len() > *rest {
                break;
            }
            if matches!(at.leaf, Leaf::Dir(_)) && above.contains(&at.tree()) {
                return Ok(None);
            }
            following.pop();
        }
        let Some(part) = todo.pop_front() else {
            break;
        };
        if let Leaf::File(_) = at.leaf {
            return Ok(None); // a file is not a directory
        }
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if at.dirs.len() == 1 {
                    return Ok(None); // above the root: outside the tree
                }
                at.dirs.pop();
                // The parent's own entry is not needed: only its tree is listed or walked.
                at.leaf = Leaf::Dir(None);
                continue;
            }
            _ => {}
        }
        let Some(e) = depotfs_catalog::dir::lookup(tree, &at.tree(), &part)? else {
            return Ok(None);
        };
        match &e.kind {
            EntryKind::Dir { tree: t, .. } => {
                at.dirs.push(*t);
                at.leaf = Leaf::Dir(Some(e));
            }
            EntryKind::File { .. } => at.leaf = Leaf::File(e),
            EntryKind::Symlink { target } => {
                links += 1;
                if target.starts_with('/') || links > MAX_LINKS {
                    return Ok(None);
                }
                following.push((todo.len(), at.dirs.clone()));
                for p in target.split('/').rev() {
                    todo.push_front(p.to_owned());
                }
            }
        }
    }
    Ok(Some(at))
}

/// A whole document in memory (pages, listings).
fn document(
    body: Bytes,
    ctype: &'static str,
    cache: &'static str,
    head: bool,
) -> Response<ServeBody> {
    let len = body.len();
    let mut r = Response::new(if head {
        ServeBody::empty()
    } else {
        ServeBody::bytes(body)
    });
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(CONTENT_LENGTH, len.into());
    r
}

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The strong entity tag of a file: its content object's name.
fn etag_of(content: &FileContent) -> String {
    let id = match content {
        FileContent::Empty => ObjectId::of(b""),
        FileContent::Single(id) | FileContent::Chunked(id) => *id,
    };
    format!("\"{}\"", id.to_hex())
}

fn file_response(
    metrics: &Metrics,
    rev: &Arc<Revision>,
    path: &str,
    e: &Entry,
    len: u64,
    content: &FileContent,
    req: &Request,
) -> crate::Result<Response<ServeBody>> {
    let mtime = pages::time_of(e.mtime_ns);
    let etag = etag_of(content);
    let mut r = Response::new(ServeBody::empty());
    let h = r.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| crate::Error::Input(e.to_string()));
    h.insert(ETAG, value(&etag)?);
    h.insert(
        LAST_MODIFIED,
        value(&httpdate::fmt_http_date(parse::whole_seconds(mtime)))?,
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_DEPOT));
    if parse::not_modified(
        header(&req.headers, &IF_NONE_MATCH),
        header(&req.headers, &IF_MODIFIED_SINCE),
        &etag,
        mtime,
    ) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(r);
    }
    let (start, end) = match ranged(&mut r, &req.headers, req.head, len, &etag, mtime) {
        Ok(span) => span,
        Err(unsatisfiable) => return Ok(*unsatisfiable),
    };
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, (end - start).into());
    if req.head || start == end {
        return Ok(r);
    }
    let chunks = rev.chunks(content, len)?;
    let mut stream = VerifiedStream::new(
        Arc::clone(rev),
        path.to_owned(),
        chunks,
        (start, end),
        req.h2,
        metrics.depot_failures_in_body(),
    );
    // A small answer is read (and verified) before the head goes out, so a corrupt small
    // file is a clean 500.
    let only = (end - start <= CHUNK)
        .then(|| stream.only_piece())
        .flatten();
    if let Some((piece, from, to)) = only {
        *r.body_mut() = ServeBody::bytes(rev.tree.piece_bytes(&piece, from, to)?);
    } else {
        stream.start();
        *r.body_mut() = ServeBody::stream(Box::new(stream));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix("/files/").unwrap(), "/files/");
        assert_eq!(normalize_prefix("/files").unwrap(), "/files/");
        assert_eq!(normalize_prefix("/a/b.c/").unwrap(), "/a/b.c/");
        for bad in [
            "files/",
            "/",
            "//",
            "/a//b/",
            "/../x/",
            "/objects/",
            "/metrics",
            "/a b/",
            "/%2e/",
        ] {
            let e = normalize_prefix(bad).unwrap_err().to_string();
            assert!(e.contains("--depot-prefix"), "{bad}: {e}");
        }
    }

    #[test]
    fn routes() {
        let p = "/files/";
        let tree = |parts: &[&str], slash| {
            Some(Ok(Route::Tree {
                parts: parts.iter().map(|s| s.to_string()).collect(),
                slash,
            }))
        };
        assert_eq!(route(p, "/"), Some(Ok(Route::Page)));
        assert_eq!(route(p, "/files"), tree(&[], false));
        assert_eq!(route(p, "/files/"), tree(&[], true));
        assert_eq!(route(p, "/files/all"), tree(&["all"], false));
        assert_eq!(
            route(p, "/files/all//samtools%3A1.9--h91753b0_8"),
            tree(&["all", "samtools:1.9--h91753b0_8"], false)
        );
        assert_eq!(route(p, "/files/a%20b/"), tree(&["a b"], true));
        assert_eq!(route(p, "/manifest"), None);
        assert_eq!(route(p, "/filesx"), None);
        for bad in [
            "/files/..",
            "/files/a/../b",
            "/files/%2e%2e/x",
            "/files/a%2fb",
            "/files/a%00",
        ] {
            assert_eq!(route(p, bad), Some(Err(PathRefused::BadRequest)), "{bad}");
        }
        assert_eq!(route(p, "/files/%ff"), Some(Err(PathRefused::NotFound)));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("q=sam+tools&x=1"), "q").as_deref(),
            Some("sam tools")
        );
        assert_eq!(
            query_param(Some("format=json"), "format").as_deref(),
            Some("json")
        );
        assert_eq!(query_param(Some("q=%3Cb%3E"), "q").as_deref(), Some("<b>"));
        assert_eq!(query_param(Some("qq=1"), "q"), None);
        assert_eq!(query_param(None, "q"), None);
    }
}
