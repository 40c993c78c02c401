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
//! refused (the store keeps UTF-8 names). [`Limits`] bound entries per layer and per image,
//! one file's size and the decompressed bytes of a layer (a gzip bomb stops there); a
//! truncated layer fails (the tar, gzip or zstd stream ends early). Every error names the
//! layer and the entry.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};

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
}

impl Default for Limits {
    /// Far above any BioContainer (the largest depot image is 10.3 GB, a few 100k files).
    fn default() -> Self {
        Limits {
            layer_entries: 2_000_000,
            image_entries: 4_000_000,
            file_bytes: 64 << 30,
            layer_bytes: 256 << 30,
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
        let mut archive = tar::Archive::new(&mut bounded);
        let entries = archive
            .entries()
            .map_err(|e| layer_err(format!("not a tar: {e}")))?;
        let mut count = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("bad tar entry: {e}")))?;
            count += 1;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            if count > limits.layer_entries {
                return Err(err(
                    &shown,
                    format!("more than {} entries in one layer", limits.layer_entries),
                ));
            }
            let path = entry_path(&raw).map_err(|w| err(&shown, w))?;
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().map_err(|e| err(&shown, e.to_string()))?;
            // setuid/setgid stripped; permission bits and sticky kept.
            let mode = mode & 0o1777;
            let mtime_ns = header
                .mtime()
                .map(|s| (s.min(i64::MAX as u64 / 1_000_000_000) as i64) * 1_000_000_000)
                .unwrap_or(0);
            let (dir, base) = split(&path);
            if base == OPAQUE {
                out.changes.push(Change::Opaque {
                    dir: dir.to_string(),
                });
                continue;
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT) {
                if hidden.is_empty() || hidden.starts_with(WHITEOUT) {
                    return Err(err(&shown, "malformed whiteout name".into()));
                }
                out.changes.push(Change::Whiteout {
                    path: join(dir, hidden),
                });
                continue;
            }
            use tar::EntryType as T;
            match kind {
                T::Directory => {
                    if path.is_empty() {
                        continue; // the image root: its own metadata is not stored
                    }
                    out.changes.push(Change::Put {
                        path,
                        node: Node {
                            mode,
                            mtime_ns,
                            kind: NodeKind::Dir,
                        },
                    });
                }
                T::Regular | T::Continuous => {
                    if path.is_empty() {
                        return Err(err(&shown, "a file at the image root".into()));
                    }
                    let size = entry.size();
                    if size > limits.file_bytes {
                        return Err(err(
                            &shown,
                            format!(
                                "file of {size} bytes exceeds the limit of {} bytes",
                                limits.file_bytes
                            ),
                        ));
                    }
                    let content =
                        sink(&mut entry, size).map_err(|e| err(&shown, format!("content: {e}")))?;
                    out.file_bytes += size;
                    out.changes.push(Change::Put {
                        path,
                        node: Node {
                            mode,
                            mtime_ns,
                            kind: NodeKind::File { size, content },
                        },
                    });
                }
                T::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| err(&shown, "symlink without a target".into()))?;
                    let target = std::str::from_utf8(&target)
                        .map_err(|_| err(&shown, "symlink target is not UTF-8".into()))?
                        .to_string();
                    if path.is_empty() || target.is_empty() || target.contains('\0') {
                        return Err(err(&shown, "bad symlink".into()));
                    }
                    out.changes.push(Change::Put {
                        path,
                        node: Node {
                            mode: 0o777,
                            mtime_ns,
                            kind: NodeKind::Symlink { target },
                        },
                    });
                }
                T::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| err(&shown, "hard link without a target".into()))?;
                    let target = entry_path(&target)
                        .map_err(|w| err(&shown, format!("hard link target: {w}")))?;
                    if path.is_empty() || target.is_empty() {
                        return Err(err(&shown, "bad hard link".into()));
                    }
                    out.changes.push(Change::Link { path, target });
                }
                T::Char | T::Block | T::Fifo => {
                    tracing::warn!(
                        "layer {name}: entry {shown:?}: skipped (a device or fifo cannot be stored)"
                    );
                }
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
                other => {
                    return Err(err(&shown, format!("unsupported tar entry type {other:?}")));
                }
            }
        }
    }
    // Whatever follows the end-of-archive blocks, and the compression trailer.
    let (diff_id, _) = bounded
        .finish()
        .map_err(|e| layer_err(format!("truncated or corrupt after the tar: {e}")))?;
    out.diff_id = diff_id;
    Ok(out)
}

/// The flattened tree of the layers applied so far: path → node.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
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

    fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        for k in self.below(path) {
            self.nodes.remove(&k);
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
                    self.nodes.insert(
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
                        self.nodes.remove(&k);
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
            self.nodes.insert(path.clone(), node);
            if self.nodes.len() as u64 > limits.image_entries {
                return Err(err(
                    path,
                    format!("image has more than {} paths", limits.image_entries),
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
