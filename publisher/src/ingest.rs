//! Turning files on disk into stored objects: walking the inputs, chunking, hashing and
//! compressing in parallel (rayon, both cores), and writing only the objects the store lacks.

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

/// Store all planned files in parallel and return the nodes to record, in plan order.
pub fn store_all(
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
    let mut f = File::open(src).map_err(Error::io(src))?;
    let changed = |got: u64| {
        Error::Input(format!(
            "{}: changed while being read ({walked_size} bytes when listed, {got} read); not added",
            src.display()
        ))
    };
    if walked_size <= SMALL_FILE_MAX {
        let mut data = Vec::with_capacity(walked_size as usize);
        (&mut f)
            .take(SMALL_FILE_MAX + 1)
            .read_to_end(&mut data)
            .map_err(Error::io(src))?;
        if data.len() as u64 != walked_size {
            return Err(changed(data.len() as u64));
        }
        progress.bytes(data.len() as u64);
        if data.is_empty() {
            return Ok((0, FileContent::Empty));
        }
        let id = put_data(objects, &data)?;
        return Ok((walked_size, FileContent::Single(id)));
    }
    let mut chunks: Vec<(u64, ChunkRef)> = chunking::stream_chunks(f)
        .par_bridge()
        .map(|r| {
            let (offset, data) = r.map_err(Error::io(src))?;
            let id = put_data(objects, &data)?;
            progress.bytes(data.len() as u64);
            Ok((
                offset,
                ChunkRef {
                    id,
                    len: data.len() as u32,
                },
            ))
        })
        .collect::<Result<_>>()?;
    chunks.sort_by_key(|c| c.0);
    let list = ChunkList {
        chunks: chunks.into_iter().map(|c| c.1).collect(),
        prefetch: Vec::new(),
    };
    let total = list.total_len();
    if total != walked_size {
        return Err(changed(total));
    }
    let enc = object::encode(ObjectKind::ChunkList, &list.to_bytes(), ZSTD_LEVEL);
    objects.put(&enc)?;
    Ok((total, FileContent::Chunked(enc.id)))
}

/// Hash `data`; compress and write it only if the store lacks it.
fn put_data(objects: &Objects, data: &[u8]) -> Result<ObjectId> {
    let id = ObjectId::of(data);
    if !objects.has(&id) {
        objects.put(&object::encode_with_id(
            id,
            ObjectKind::Chunk,
            data,
            ZSTD_LEVEL,
        ))?;
    }
    Ok(id)
}
