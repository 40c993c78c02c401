//! Layers → entries: the pure part of an import, testable without a registry.
//!
//! [`read_layer`] turns one layer (a tar, plain, gzip or zstd) into its [`Changes`]: the
//! paths it puts (file contents handed to a caller-given sink, which stages them through
//! `ingest::store_reader`), hard links, whiteouts and opaque directories. [`Tree::apply`]
//! applies a layer's changes to the tree of the layers below it. Nothing is written to disk
//! here: the flattened tree ends as `(path, Node)` pairs for `Repo::stage_add`.
//!
//! What the store keeps of a layer entry: the type (file, directory, symlink), the permission
//! bits and sticky bit, the mtime (seconds). What it drops, by design: owners (uid/gid; a
//! mount shows the mounting user's), setuid/setgid bits (stripped: an imported tree runs
//! unprivileged), hard-link identity (a hard link becomes a second file with the same
//! content; the objects are shared), xattrs, device nodes, fifos and sockets (skipped with a
//! warning; the container runtime provides `/dev`).
//!
//! Hostile layers: an entry path that is absolute or contains `..` is refused; an entry
//! written below a symlink (`a -> /etc`, then `a/passwd`) is refused, so nothing can land
//! outside the image's tree even in a runtime that would follow it; non-UTF-8 names are
//! refused (the store keeps UTF-8 names). A path longer than Linux's `PATH_MAX` (4 KiB) or
//! deeper than [`MAX_DEPTH`] is refused: every entry also makes its parents, so without that a
//! few hundred bytes of tar naming one very deep path cost memory and catalog space with the
//! square of its depth. [`Limits`] bound entries per layer and per image, the bytes of the
//! paths they name, one file's size and the decompressed bytes of a layer (a gzip bomb stops
//! there); a truncated layer fails (the tar, gzip or zstd stream ends early). The tar crate
//! reads a GNU long name or a PAX record whole into memory before it hands out the entry it
//! belongs to, so the tar stream itself is bounded too: at most [`TAR_META_MAX`] bytes of
//! headers and records per entry ([`MetaBounded`]). Every error names the layer and the entry.
//!
//! AUFS's own bookkeeping (`.wh..wh.aufs`, `.wh..wh.plnk/`, `.wh..wh.orph/`), which old
//! docker versions left in exported layers, is skipped with a warning, as docker does.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;

use depotfs_catalog::FileContent;
use serde::{Deserialize, Serialize};

use crate::db::{Node, NodeKind};
use crate::error::{Error, Result};
use crate::import::image::Hashing;

/// Bounds on what one image may contain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tar entries in one layer.
    pub layer_entries: u64,
    /// Paths in the flattened image.
    pub image_entries: u64,
    /// Bytes of one file.
    pub file_bytes: u64,
    /// Decompressed bytes of one layer.
    pub layer_bytes: u64,
    /// Bytes of the paths one layer names, and of the paths of the flattened image.
    pub path_bytes: u64,
}

impl Default for Limits {
    /// Far above any BioContainer (the largest depot image is 10.3 GB, a few 100k files).
    fn default() -> Self {
        Limits {
            layer_entries: 2_000_000,
            image_entries: 4_000_000,
            file_bytes: 64 << 30,
            layer_bytes: 256 << 30,
            // A real image: a few 100k paths of ~80 bytes, tens of MB.
            path_bytes: 512 << 20,
        }
    }
}

/// One change a layer makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Create or replace `path` (a directory keeps what lies below it).
    Put {
        /// Path in the image, normalized.
        path: String,
        /// What to put there.
        node: Node,
    },
    /// `path` becomes a copy of the file at `target` (a hard link).
    Link {
        /// Path in the image.
        path: String,
        /// The linked file, in this layer or below.
        target: String,
    },
    /// Remove `path` (and what lies below it) from the layers below: `.wh.NAME`.
    Whiteout {
        /// Path in the image.
        path: String,
    },
    /// Hide everything the layers below have under `dir`: `.wh..wh..opq`.
    Opaque {
        /// Directory path in the image ("" for the root).
        dir: String,
    },
}

/// Everything one layer changes, in layer order, and the digest of its uncompressed tar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The changes.
    pub changes: Vec<Change>,
    /// `sha256:HEX` of the uncompressed tar (the image config's `diff_id`).
    pub diff_id: String,
    /// Bytes of regular files in the layer.
    pub file_bytes: u64,
}

/// Stages a file's content: `(reader, exact length)` → its content reference.
pub type Sink<'a> = dyn FnMut(&mut dyn Read, u64) -> Result<FileContent> + 'a;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of AUFS's own entries (and of [`OPAQUE`]).
const AUFS_META: &str = ".wh..wh.";

/// Linux's `PATH_MAX`: the longest entry path (in bytes) a layer may name.
pub const PATH_MAX: usize = 4096;
/// The deepest entry path a layer may name, in components (`a/b/c` has 3) (far deeper than any real image;
/// the publisher's walks over a tree recurse once per level).
pub const MAX_DEPTH: usize = 256;
/// Bytes of tar metadata (header blocks, GNU long names and links, PAX records, padding)
/// read for one entry, at most. A real entry needs a few KiB.
pub const TAR_META_MAX: u64 = 1 << 20;
/// How much of a refused path an error shows.
const SHOWN_MAX: usize = 200;

/// A tar stream that fails once more than [`TAR_META_MAX`] bytes are read outside the data
/// of entries between two entries. Its [`MetaCount`] is told when an entry is handed out and
/// when its data is read ([`EntryData`]); what the tar crate reads on its own is headers,
/// records and padding. Seeks pass through, so an archive indexed with
/// `entries_with_seek` counts only its headers.
#[derive(Debug)]
pub struct MetaBounded<R> {
    inner: R,
    count: Rc<MetaCount>,
}

/// What [`MetaBounded`] has counted.
#[derive(Debug, Default)]
pub struct MetaCount {
    in_data: Cell<bool>,
    since_entry: Cell<u64>,
}

impl MetaCount {
    /// An entry was handed out: its headers are read, the count starts again.
    pub fn entry(&self) {
        self.since_entry.set(0);
    }
}

impl<R> MetaBounded<R> {
    /// Bound `inner`; the count is shared with whoever reads the entries' data.
    pub fn new(inner: R) -> (MetaBounded<R>, Rc<MetaCount>) {
        let count = Rc::new(MetaCount::default());
        (
            MetaBounded {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: Read> Read for MetaBounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.count.in_data.get() {
            let m = self.count.since_entry.get() + n as u64;
            self.count.since_entry.set(m);
            if m > TAR_META_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "more than {TAR_META_MAX} bytes of tar headers (long names, PAX records) for one entry; refused"
                    ),
                ));
            }
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for MetaBounded<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Reads of an entry's own data, which its [`MetaBounded`] stream does not count.
struct EntryData<'a, R> {
    entry: R,
    count: &'a MetaCount,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.count.in_data.set(true);
        let r = self.entry.read(buf);
        self.count.in_data.set(false);
        r
    }
}

/// A path for an error message: lossy UTF-8, cut after [`SHOWN_MAX`] characters.
pub fn shown(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], raw.len()),
        None => s.into_owned(),
    }
}

/// A reader that fails once more than `left` bytes pass.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "layer decompresses to more than the limit of {} bytes",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The decompressed stream of a layer: gzip and zstd are recognised by their magic bytes
/// (media types lie in the wild), anything else is read as a plain tar.
fn decompress<'a, R: Read + 'a>(input: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let head = input.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else {
        Box::new(input)
    })
}

/// Normalize a tar entry path: `./a//b/` → `a/b`; "" is the root. Absolute paths, `..`,
/// non-UTF-8 and names the store cannot hold are refused.
fn entry_path(raw: &[u8]) -> std::result::Result<String, String> {
    if raw.len() > PATH_MAX {
        return Err(format!(
            "path of {} bytes, longer than PATH_MAX ({PATH_MAX})",
            raw.len()
        ));
    }
    let s = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains '..'".into()),
            c => {
                depotfs_catalog::dir::validate_name(c).map_err(|e| e.to_string())?;
                parts.push(c);
            }
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(format!(
            "path of {} components, more than {MAX_DEPTH}",
            parts.len()
        ));
    }
    Ok(parts.join("/"))
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Read one layer (`name` is how errors call it: its digest) into its changes. File
/// contents go to `sink` as they are read. The stream is read to its end (so a caller that
/// hashes it sees every byte), and a gzip trailer is checked.
pub fn read_layer(
    input: impl Read,
    name: &str,
    limits: &Limits,
    sink: &mut Sink,
) -> Result<Changes> {
    let err =
        |entry: &str, what: String| Error::Input(format!("layer {name}: entry {entry:?}: {what}"));
    let layer_err = |what: String| Error::Input(format!("layer {name}: {what}"));
    let stream = decompress(input).map_err(|e| layer_err(format!("cannot read: {e}")))?;
    let mut bounded = Hashing::new(Bounded {
        inner: stream,
        left: limits.layer_bytes,
        limit: limits.layer_bytes,
    });
    let mut out = Changes::default();
    {
        let (meta_bounded, count) = MetaBounded::new(&mut bounded);
        let mut archive = tar::Archive::new(meta_bounded);
        let entries = archive
            .entries()
            .map_err(|e| layer_err(format!("not a tar: {e}")))?;
        let (mut entries_seen, mut path_bytes) = (0u64, 0u64);
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("bad tar entry: {e}")))?;
            count.entry();
            entries_seen += 1;
            let raw = entry.path_bytes().into_owned();
            let shown = shown(&raw);
            if entries_seen > limits.layer_entries {
                return Err(err(
                    &shown,
                    format!("more than {} entries in one layer", limits.layer_entries),
                ));
            }
            let mut data = EntryData {
                entry: &mut entry,
                count: &count,
            };
            let change =
                entry_change(&mut data, &raw, name, limits, sink).map_err(|w| err(&shown, w))?;
            // What the entry did not read (a device's data, say) is skipped as data.
            io::copy(&mut data, &mut io::sink()).map_err(|e| err(&shown, e.to_string()))?;
            let Some(change) = change else { continue };
            path_bytes += change.path_bytes();
            if path_bytes > limits.path_bytes {
                return Err(err(
                    &shown,
                    format!(
                        "the layer's paths exceed the limit of {} bytes",
                        limits.path_bytes
                    ),
                ));
            }
            if let Change::Put {
                node:
                    Node {
                        kind: NodeKind::File { size, .. },
                        ..
                    },
                ..
            } = &change
            {
                out.file_bytes += size;
            }
            out.changes.push(change);
        }
    }
    // Whatever follows the end-of-archive blocks, and the compression trailer.
    let (diff_id, _) = bounded
        .finish()
        .map_err(|e| layer_err(format!("truncated or corrupt after the tar: {e}")))?;
    out.diff_id = diff_id;
    Ok(out)
}

/// What one tar entry (path `raw`, data read through `entry`) changes; `None` for what is
/// not stored. Why it is refused, otherwise.
fn entry_change<R: Read>(
    entry: &mut EntryData<'_, &mut tar::Entry<'_, R>>,
    raw: &[u8],
    name: &str,
    limits: &Limits,
    sink: &mut Sink,
) -> std::result::Result<Option<Change>, String> {
    let path = entry_path(raw)?;
    let header = entry.entry.header();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| e.to_string())?;
    // setuid/setgid stripped; permission bits and sticky kept.
    let mode = mode & 0o1777;
    let mtime_ns = header
        .mtime()
        .map(|s| (s.min(i64::MAX as u64 / 1_000_000_000) as i64) * 1_000_000_000)
        .unwrap_or(0);
    let (dir, base) = split(&path);
    if base == OPAQUE {
        return Ok(Some(Change::Opaque {
            dir: dir.to_string(),
        }));
    }
    if path.split('/').any(|c| c.starts_with(AUFS_META)) {
        tracing::warn!(
            "layer {name}: entry {:?}: skipped (AUFS metadata, not part of the image)",
            shown(raw)
        );
        return Ok(None);
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err("malformed whiteout name".into());
        }
        return Ok(Some(Change::Whiteout {
            path: join(dir, hidden),
        }));
    }
    let link_name = |what: &str| {
        entry
            .entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .ok_or_else(|| format!("{what} without a target"))
    };
    use tar::EntryType as T;
    Ok(match kind {
        T::Directory => {
            if path.is_empty() {
                return Ok(None); // the image root: its own metadata is not stored
            }
            Some(Change::Put {
                path,
                node: Node {
                    mode,
                    mtime_ns,
                    kind: NodeKind::Dir,
                },
            })
        }
        T::Regular | T::Continuous => {
            if path.is_empty() {
                return Err("a file at the image root".into());
            }
            let size = entry.entry.size();
            if size > limits.file_bytes {
                return Err(format!(
                    "file of {size} bytes exceeds the limit of {} bytes",
                    limits.file_bytes
                ));
            }
            let content = sink(entry, size).map_err(|e| format!("content: {e}"))?;
            Some(Change::Put {
                path,
                node: Node {
                    mode,
                    mtime_ns,
                    kind: NodeKind::File { size, content },
                },
            })
        }
        T::Symlink => {
            let target = link_name("symlink")?;
            let target =
                String::from_utf8(target).map_err(|_| "symlink target is not UTF-8".to_string())?;
            if path.is_empty() || target.is_empty() || target.contains('\0') {
                return Err("bad symlink".into());
            }
            if target.len() > PATH_MAX {
                return Err(format!(
                    "symlink target of {} bytes, longer than PATH_MAX ({PATH_MAX})",
                    target.len()
                ));
            }
            Some(Change::Put {
                path,
                node: Node {
                    mode: 0o777,
                    mtime_ns,
                    kind: NodeKind::Symlink { target },
                },
            })
        }
        T::Link => {
            let target = link_name("hard link")?;
            let target = entry_path(&target).map_err(|w| format!("hard link target: {w}"))?;
            if path.is_empty() || target.is_empty() {
                return Err("bad hard link".into());
            }
            Some(Change::Link { path, target })
        }
        T::Char | T::Block | T::Fifo => {
            tracing::warn!(
                "layer {name}: entry {:?}: skipped (a device or fifo cannot be stored)",
                shown(raw)
            );
            None
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => None,
        other => return Err(format!("unsupported tar entry type {other:?}")),
    })
}

impl Change {
    /// Bytes of the paths this change names.
    fn path_bytes(&self) -> u64 {
        (match self {
            Change::Put { path, node } => {
                path.len()
                    + match &node.kind {
                        NodeKind::Symlink { target } => target.len(),
                        _ => 0,
                    }
            }
            Change::Link { path, target } => path.len() + target.len(),
            Change::Whiteout { path } => path.len(),
            Change::Opaque { dir } => dir.len(),
        }) as u64
    }
}

/// The flattened tree of the layers applied so far: path → node.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Bytes of the paths in `nodes`.
    path_bytes: u64,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// All (path, node) in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Paths strictly below `dir`.
    fn below(&self, dir: &str) -> Vec<String> {
        if dir.is_empty() {
            return self.nodes.keys().cloned().collect();
        }
        let lo = format!("{dir}/");
        let hi = format!("{dir}0"); // '0' follows '/'
        self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect()
    }

    fn insert(&mut self, path: String, node: Node) {
        let len = path.len() as u64;
        if self.nodes.insert(path, node).is_none() {
            self.path_bytes += len;
        }
    }

    fn remove(&mut self, path: &str) {
        if self.nodes.remove(path).is_some() {
            self.path_bytes -= path.len() as u64;
        }
    }

    fn remove_subtree(&mut self, path: &str) {
        self.remove(path);
        for k in self.below(path) {
            self.remove(&k);
        }
    }

    /// Make the parents of `path` directories: existing ones must be directories (a symlink
    /// there would make the entry land wherever it points); missing ones are created 0755.
    fn parents(&mut self, path: &str) -> std::result::Result<(), String> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            match self.nodes.get(dir).map(|n| &n.kind) {
                Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink { target }) => {
                    return Err(format!(
                        "written through the symlink {dir} -> {target}: refused"
                    ));
                }
                Some(NodeKind::File { .. }) => {
                    return Err(format!("{dir} is a file, not a directory"));
                }
                None => {
                    self.insert(
                        dir.to_string(),
                        Node {
                            mode: 0o755,
                            mtime_ns: 0,
                            kind: NodeKind::Dir,
                        },
                    );
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Apply one layer (`name` for errors): its whiteouts and opaque directories remove
    /// paths of the layers below only, then its entries are put in layer order.
    pub fn apply(&mut self, name: &str, layer: &Changes, limits: &Limits) -> Result<()> {
        let err = |entry: &str, what: String| {
            Error::Input(format!("layer {name}: entry {entry:?}: {what}"))
        };
        for c in &layer.changes {
            match c {
                Change::Whiteout { path } => self.remove_subtree(path),
                Change::Opaque { dir } => {
                    for k in self.below(dir) {
                        self.remove(&k);
                    }
                }
                _ => {}
            }
        }
        for c in &layer.changes {
            let (path, node) = match c {
                Change::Put { path, node } => (path, node.clone()),
                Change::Link { path, target } => match self.nodes.get(target) {
                    Some(
                        n @ Node {
                            kind: NodeKind::File { .. },
                            ..
                        },
                    ) => (path, n.clone()),
                    Some(_) => return Err(err(path, format!("hard link to {target}, not a file"))),
                    None => {
                        return Err(err(
                            path,
                            format!("hard link to {target}, which does not exist"),
                        ));
                    }
                },
                _ => continue,
            };
            self.parents(path).map_err(|w| err(path, w))?;
            match (self.nodes.get(path).map(|n| &n.kind), &node.kind) {
                (Some(NodeKind::Dir), NodeKind::Dir) => {}
                (Some(_), _) => self.remove_subtree(path),
                (None, _) => {}
            }
            self.insert(path.clone(), node);
            if self.nodes.len() as u64 > limits.image_entries {
                return Err(err(
                    path,
                    format!("image has more than {} paths", limits.image_entries),
                ));
            }
            if self.path_bytes > limits.path_bytes {
                return Err(err(
                    path,
                    format!(
                        "the image's paths exceed the limit of {} bytes",
                        limits.path_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The tree as nodes under `root` (itself a directory node first), for
    /// `Repo::stage_add`.
    pub fn into_nodes(self, root: &str) -> Vec<(String, Node)> {
        let mut out = Vec::with_capacity(self.nodes.len() + 1);
        out.push((
            root.to_string(),
            Node {
                mode: 0o755,
                mtime_ns: 0,
                kind: NodeKind::Dir,
            },
        ));
        out.extend(self.nodes.into_iter().map(|(p, n)| (join(root, &p), n)));
        out
    }
}

#[cfg(test)]
mod tests;
