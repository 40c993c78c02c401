//! Turning files on disk into stored objects: walking the inputs, chunking, hashing and
//! compressing in parallel (rayon, two workers per core), and writing only the objects the store
//! lacks (by the store's own writer threads, [`Objects::with_background_writes`]).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use depotfs_catalog::chunking::{self, ChunkList, ChunkRef, SMALL_FILE_MAX};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{FileContent, ObjectId};
use rayon::prelude::*;

use crate::db::{self, Node, NodeKind};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::Objects;

/// zstd level for data and metadata: measured in docs/format.md.
pub const ZSTD_LEVEL: i32 = 3;

/// One path to create in the repository.
#[derive(Debug, Clone)]
pub enum Planned {
    /// A directory.
    Dir {
        /// Repository path.
        dest: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file to read from `src`.
    File {
        /// Source on disk.
        src: PathBuf,
        /// Repository path.
        dest: String,
        /// Permission bits.
        mode: u32,
        /// Source mtime.
        mtime_ns: i64,
        /// Size when walked.
        size: u64,
    },
    /// A symbolic link (never followed).
    Symlink {
        /// Repository path.
        dest: String,
        /// Link target.
        target: String,
        /// Source mtime.
        mtime_ns: i64,
    },
}

impl Planned {
    /// The repository path.
    pub fn dest(&self) -> &str {
        match self {
            Planned::Dir { dest, .. }
            | Planned::File { dest, .. }
            | Planned::Symlink { dest, .. } => dest,
        }
    }
}

fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

fn utf8_name(path: &Path) -> Result<String> {
    let name = path.file_name().ok_or_else(|| {
        Error::Input(format!(
            "{}: has no file name to add it under",
            path.display()
        ))
    })?;
    let name = name.to_str().ok_or_else(|| {
        Error::Input(format!(
            "{}: file name is not UTF-8; depotfs stores UTF-8 names only",
            path.display()
        ))
    })?;
    depotfs_catalog::dir::validate_name(name)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    Ok(name.to_string())
}

/// Walk `sources` and plan what to create under the repository directory `to`.
/// Devices, fifos and sockets are skipped with a warning; symlinks are never followed.
pub fn plan(sources: &[PathBuf], to: &str) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for src in sources {
        let name = utf8_name(src)?;
        walk(src, db::join(to, &name), &mut out)?;
    }
    Ok(out)
}

fn walk(src: &Path, dest: String, out: &mut Vec<Planned>) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(Error::io(src))?;
    let ft = md.file_type();
    let mode = md.mode() & 0o7777;
    if ft.is_file() {
        out.push(Planned::File {
            src: src.to_path_buf(),
            dest,
            mode,
            mtime_ns: mtime_ns(&md),
            size: md.len(),
        });
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(Error::io(src))?;
        let target = target.to_str().ok_or_else(|| {
            Error::Input(format!("{}: symlink target is not UTF-8", src.display()))
        })?;
        out.push(Planned::Symlink {
            dest,
            target: target.to_string(),
            mtime_ns: mtime_ns(&md),
        });
    } else if ft.is_dir() {
        out.push(Planned::Dir {
            dest: dest.clone(),
            mode,
        });
        let mut kids: Vec<PathBuf> = fs::read_dir(src)
            .map_err(Error::io(src))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(Error::io(src))?;
        kids.sort();
        for k in kids {
            let name = utf8_name(&k)?;
            walk(&k, db::join(&dest, &name), out)?;
        }
    } else {
        let what = if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        tracing::warn!("skipping {}: a {what} cannot be stored", src.display());
    }
    Ok(())
}

/// Workers of the ingest pool: twice the cores. (Before the object files were written by
/// threads of their own, each worker spent part of its time blocked in a direct write; with
/// one worker per core, a 2 GiB ingest on 2 cores kept them about 70 % busy: 2 workers
/// 4.1–4.5 s, 4 workers 3.0–3.5 s, 8 no better than 4. With the writes in the background, 2
/// workers were still slower than 4 in the same minutes: `benches/RESULTS.md`, "#21 P1 on the
/// disk (p1d, session 13)".) `RAYON_NUM_THREADS` overrides.
pub(crate) fn ingest_workers() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Store all planned files in parallel and return the nodes to record, in plan order, once
/// every object they name is written. The object files are written by threads of their own
/// ([`Objects::with_background_writes`]), so the workers hash and compress while the disk
/// writes.
pub fn store_all(
    objects: &Objects,
    plan: Vec<Planned>,
    progress: &Progress,
) -> Result<Vec<(String, Node)>> {
    let objects = objects.with_background_writes();
    let nodes = match rayon::ThreadPoolBuilder::new()
        .num_threads(ingest_workers())
        .thread_name(|i| format!("ingest-{i}"))
        .build()
    {
        Ok(pool) => pool.install(|| store_all_here(&objects, plan, progress)),
        // No threads to be had: the global pool will do.
        Err(_) => store_all_here(&objects, plan, progress),
    }?;
    objects.uploaded()?;
    Ok(nodes)
}

/// [`store_all`] on the current rayon pool.
fn store_all_here(
    objects: &Objects,
    plan: Vec<Planned>,
    progress: &Progress,
) -> Result<Vec<(String, Node)>> {
    plan.into_par_iter()
        .map(|p| {
            let node = match p {
                Planned::Dir { dest, mode } => (
                    dest,
                    Node {
                        mode,
                        mtime_ns: 0,
                        kind: NodeKind::Dir,
                    },
                ),
                Planned::Symlink {
                    dest,
                    target,
                    mtime_ns,
                } => (
                    dest,
                    Node {
                        mode: 0o777,
                        mtime_ns,
                        kind: NodeKind::Symlink { target },
                    },
                ),
                Planned::File {
                    src,
                    dest,
                    mode,
                    mtime_ns,
                    size,
                } => {
                    let (size, content) = store_file(objects, &src, size, progress)?;
                    progress.file_done();
                    (
                        dest,
                        Node {
                            mode,
                            mtime_ns,
                            kind: NodeKind::File { size, content },
                        },
                    )
                }
            };
            Ok(node)
        })
        .collect()
}

/// Store the file at `src` (walked with length `walked_size`) and return its length and
/// content reference. A file that changes length while it is read is refused.
pub fn store_file(
    objects: &Objects,
    src: &Path,
    walked_size: u64,
    progress: &Progress,
) -> Result<(u64, FileContent)> {
    let f = File::open(src).map_err(Error::io(src))?;
    store_reader(objects, f, Some(walked_size), progress).map_err(|e| match e {
        StreamError::Read(e) => Error::io(src)(e),
        StreamError::Length { expected, got } => Error::Input(format!(
            "{}: changed while being read ({expected} bytes when listed, {got} read); not added",
            src.display()
        )),
        StreamError::Store(e) => e,
    })
}

/// Why [`store_reader`] failed: the caller names its input (a path, a URL, a layer entry).
#[derive(Debug)]
pub enum StreamError {
    /// Reading the input failed (for a network source: the connection dropped, timed out…).
    Read(std::io::Error),
    /// The input ended at a different length than expected.
    Length {
        /// What the caller said it would be.
        expected: u64,
        /// What was read.
        got: u64,
    },
    /// Writing objects to the store failed.
    Store(Error),
}

/// **The one staging path for file contents**, for every source (files on disk, an HTTP
/// depot, registry layers): read `input` to its end, cut it into chunks (small inputs are one
/// object), hash, compress and store every object the store lacks, and return the length and
/// the content reference to put in a [`Node`]. With `expected`, an input of any other length
/// is refused (nothing is staged; objects already written are garbage for `gc`). Memory use is
/// bounded by the chunker's buffer, whatever the input's length: no whole-file copy is made.
pub fn store_reader<R: Read + Send>(
    objects: &Objects,
    input: R,
    expected: Option<u64>,
    progress: &Progress,
) -> std::result::Result<(u64, FileContent), StreamError> {
    let check = |got: u64| match expected {
        Some(expected) if expected != got => Err(StreamError::Length { expected, got }),
        _ => Ok(()),
    };
    // Read up to one byte past the small-file bound: a small input is one object.
    let mut head = Vec::with_capacity(expected.unwrap_or(0).min(SMALL_FILE_MAX) as usize);
    let mut input = input;
    (&mut input)
        .take(SMALL_FILE_MAX + 1)
        .read_to_end(&mut head)
        .map_err(StreamError::Read)?;
    if head.len() as u64 <= SMALL_FILE_MAX {
        check(head.len() as u64)?;
        progress.bytes(head.len() as u64);
        if head.is_empty() {
            return Ok((0, FileContent::Empty));
        }
        let id = put_data(objects, &head).map_err(StreamError::Store)?;
        return Ok((head.len() as u64, FileContent::Single(id)));
    }
    let mut chunks: Vec<(u64, ChunkRef)> =
        chunking::stream_chunks(std::io::Cursor::new(head).chain(input))
            .par_bridge()
            .map(|r| {
                let (offset, data) = r.map_err(StreamError::Read)?;
                let id = put_data(objects, &data).map_err(StreamError::Store)?;
                progress.bytes(data.len() as u64);
                Ok((
                    offset,
                    ChunkRef {
                        id,
                        len: data.len() as u32,
                    },
                ))
            })
            .collect::<std::result::Result<_, StreamError>>()?;
    chunks.sort_by_key(|c| c.0);
    let list = ChunkList {
        chunks: chunks.into_iter().map(|c| c.1).collect(),
        prefetch: Vec::new(),
    };
    let total = list.total_len();
    check(total)?;
    let enc = object::encode(ObjectKind::ChunkList, &list.to_bytes(), ZSTD_LEVEL);
    objects.put(&enc).map_err(StreamError::Store)?;
    Ok((total, FileContent::Chunked(enc.id)))
}

/// Hash `data`; compress and write it only if the store lacks it.
fn put_data(objects: &Objects, data: &[u8]) -> Result<ObjectId> {
    let id = ObjectId::of(data);
    if !objects.has(&id) {
        objects.put_parts(&object::encode_parts(
            id,
            ObjectKind::Chunk,
            data,
            ZSTD_LEVEL,
        ))?;
    }
    Ok(id)
}

/// One read of a recorded access trace (`depotfs add --trace FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRead {
    /// Repository path of the file read (normalized).
    pub path: String,
    /// First byte read.
    pub offset: u64,
    /// Bytes read.
    pub len: u64,
}

/// Parse an access trace: UTF-8 text, one read per line, `PATH<TAB>OFFSET<TAB>LENGTH`, PATH
/// relative to the repository root (no leading `/`), in the order the reads happened; blank
/// lines and lines starting with `#` are ignored. `depotfs mount --record` writes this format.
/// Errors name `FILE:LINE` and what is wrong.
pub fn parse_trace(file: &Path) -> Result<Vec<TraceRead>> {
    let bytes = fs::read(file).map_err(Error::io(file))?;
    parse_trace_bytes(&file.display().to_string(), &bytes)
}

/// [`parse_trace`] of bytes already read from the file called `name` (errors name it).
pub fn parse_trace_bytes(name: &str, bytes: &[u8]) -> Result<Vec<TraceRead>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::Input(format!("{name}: not UTF-8 text: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |what: String| Error::Input(format!("{name}:{}: {what}", i + 1));
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, offset, len] = fields[..] else {
            return Err(bad(format!(
                "expected PATH<TAB>OFFSET<TAB>LENGTH, found {} tab-separated fields in {line:?}",
                fields.len()
            )));
        };
        if path.is_empty() || path.starts_with('/') {
            return Err(bad(format!(
                "path {path:?} must be relative to the repository root (no leading '/')"
            )));
        }
        let raw = path;
        let path = db::normalize(path).map_err(|e| bad(e.to_string()))?;
        if path.is_empty() {
            // Found by fuzzing (fuzz/corpus/trace/crash-root): `.` was read as the root.
            return Err(bad(format!(
                "path {raw:?} names the repository root, not a file"
            )));
        }
        let number = |field: &str, s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("{field} {s:?} is not a non-negative integer")))
        };
        let offset = number("offset", offset)?;
        let len = number("length", len)?;
        out.push(TraceRead { path, offset, len });
    }
    Ok(out)
}

/// The prefetch list of a chunked file: indices of the chunks covering `reads` (offset,
/// length), in the order they are first touched, each once. Bytes past the end of the file
/// and empty reads touch nothing.
pub fn prefetch_order(list: &ChunkList, reads: impl IntoIterator<Item = (u64, u64)>) -> Vec<u32> {
    let offsets = list.offsets();
    let mut seen = vec![false; list.chunks.len()];
    let mut out = Vec::new();
    for (offset, len) in reads {
        let end = offset.saturating_add(len).min(list.total_len());
        if offset >= end {
            continue;
        }
        let (Some(first), Some(last)) = (
            list.locate(&offsets, offset),
            list.locate(&offsets, end - 1),
        ) else {
            continue;
        };
        for (i, s) in seen
            .iter_mut()
            .enumerate()
            .take(last.index + 1)
            .skip(first.index)
        {
            if !*s {
                *s = true;
                out.push(i as u32);
            }
        }
    }
    out
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    fn list(lens: &[u32]) -> ChunkList {
        ChunkList {
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    id: ObjectId::of(&[i as u8]),
                    len,
                })
                .collect(),
            prefetch: Vec::new(),
        }
    }

    #[test]
    fn prefetch_is_first_touch_order_without_repeats() {
        // Chunks at 0..10, 10..30, 30..60, 60..100.
        let l = list(&[10, 20, 30, 40]);
        let reads = [
            (35, 5),
            (5, 10),
            (0, 1),
            (99, 50),
            (60, 0),
            (200, 4),
            (29, 2),
        ];
        assert_eq!(prefetch_order(&l, reads), vec![2, 0, 1, 3]);
        assert!(prefetch_order(&l, []).is_empty());
    }

    #[test]
    fn trace_lines_are_checked_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.trace");
        fs::write(&f, "# recorded\n\na/b\t0\t4096\n./a//c\t8\t1\n").unwrap();
        let reads = parse_trace(&f).unwrap();
        assert_eq!(reads.len(), 2);
        assert_eq!(reads[1].path, "a/c");
        for (text, what) in [
            ("a\t0\t1\n/abs\t0\t1\n", ":2: path \"/abs\""),
            ("a\t-1\t5\n", ":1: offset \"-1\""),
            ("a\t1\t2\t3\n", ":1: expected PATH"),
            ("x\t0\t1\na/../b\t0\t1\n", ":2: repository path"),
            ("a 0 1\n", ":1: expected PATH"),
            (
                "a\t0\t1\n.\t0\t1\n",
                ":2: path \".\" names the repository root",
            ),
        ] {
            fs::write(&f, text).unwrap();
            let e = parse_trace(&f).unwrap_err().to_string();
            assert!(e.contains(&format!("t.trace{what}")), "{text:?}: {e}");
        }
    }
}
