//! `--format sif`: a Singularity Image Format file whose one data object is a squashfs
//! partition holding the flattened tree — the kind of file the Galaxy depot serves.
//!
//! SIF (sylabs/sif, `pkg/sif`, spec version 01, little-endian, Go `binary` packing): a
//! 128-byte global header (launch script, `SIF_MAGIC`, version, primary architecture, UUID,
//! times, descriptor table place and size, data place and size), the descriptor table at
//! 4096 (48 descriptors of 585 bytes, the library's defaults), then data objects, a
//! partition aligned to 4096. Our one descriptor: data type `FS` (0x4004), squashfs, primary
//! system partition, amd64/arm64 from `--platform`, group 1, id 1.
//!
//! The squashfs is made by Debian's `sqfstar` (squashfs-tools >= 4.5), which reads a tar on
//! its stdin: we write that tar from the tree's nodes, file contents read back (verified)
//! from the store's objects, so the tree is never materialised on disk. Only the squashfs
//! image itself is a temporary file (`STORE/tmp`; mksquashfs must seek in its output), which
//! is then streamed, behind the SIF header, through `ingest::store_reader` and deleted.
//! Why not a Rust squashfs writer: `backhand` writes squashfs, but keeps every file's
//! compressed data in memory until it finishes the image (GBs for large images), and is
//! slower than mksquashfs's multithreaded compressor; `sqfstar` is the reference
//! implementation that Singularity/Apptainer themselves run.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use depotfs_catalog::chunking::SMALL_FILE_MAX;
use depotfs_catalog::object::ObjectKind;
use depotfs_catalog::{ChunkList, FileContent, ObjectId};

use crate::db::{Node, NodeKind};
use crate::error::{Error, Result};
use crate::import::layers::Tree;
use crate::ingest;
use crate::progress::Progress;
use crate::reader::CHUNK_LIST_MAX;
use crate::store::Objects;

const LAUNCH: &[u8] = b"#!/usr/bin/env run-singularity\n";
const DESCRIPTORS_OFFSET: u64 = 4096;
const DESCRIPTORS: u64 = 48;
/// Packed size of one descriptor: 4+1+4+4+4 + 3×8 + 4×8 + 128 + 384.
pub const DESCRIPTOR_LEN: u64 = 585;
const ALIGN: u64 = 4096;
const DATA_PARTITION: i32 = 0x4004;
const FS_SQUASH: i32 = 1;
const PART_PRIMSYS: i32 = 2;

/// The SIF architecture code for a platform (`linux/amd64` → `02`).
fn arch(platform: &str) -> [u8; 3] {
    let code: &[u8; 2] = match platform.split('/').nth(1).unwrap_or("") {
        "386" => b"01",
        "amd64" => b"02",
        "arm" => b"03",
        "arm64" => b"04",
        "ppc64" => b"05",
        "ppc64le" => b"06",
        "s390x" => b"13",
        "riscv64" => b"14",
        _ => b"00",
    };
    [code[0], code[1], 0]
}

/// Everything before the squashfs bytes: header, descriptor table, padding.
pub fn head(squashfs_len: u64, platform: &str, now: i64, id: [u8; 16]) -> Vec<u8> {
    let table = DESCRIPTORS * DESCRIPTOR_LEN;
    let data_offset = DESCRIPTORS_OFFSET + table;
    let part_offset = data_offset.div_ceil(ALIGN) * ALIGN;
    let with_padding = part_offset - data_offset + squashfs_len;
    let arch = arch(platform);
    let mut h = Vec::with_capacity(part_offset as usize);
    let mut launch = [0u8; 32];
    launch[..LAUNCH.len()].copy_from_slice(LAUNCH);
    h.extend_from_slice(&launch);
    h.extend_from_slice(b"SIF_MAGIC\0");
    h.extend_from_slice(b"01\0");
    h.extend_from_slice(&arch);
    h.extend_from_slice(&id);
    for v in [
        now,
        now,
        (DESCRIPTORS - 1) as i64,
        DESCRIPTORS as i64,
        DESCRIPTORS_OFFSET as i64,
        table as i64,
        data_offset as i64,
        with_padding as i64,
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(h.len(), 128);
    h.resize(DESCRIPTORS_OFFSET as usize, 0);
    // The partition's descriptor; the other 47 stay zero (unused).
    h.extend_from_slice(&DATA_PARTITION.to_le_bytes());
    h.push(1); // used
    h.extend_from_slice(&1u32.to_le_bytes()); // id
    h.extend_from_slice(&(0xf000_0000u32 | 1).to_le_bytes()); // group 1
    h.extend_from_slice(&0u32.to_le_bytes()); // linked id
    for v in [
        part_offset as i64,
        squashfs_len as i64,
        with_padding as i64,
        now,
        now,
        0,
        0,
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0u8; 128]); // name
    let mut extra = [0u8; 384];
    extra[..4].copy_from_slice(&FS_SQUASH.to_le_bytes());
    extra[4..8].copy_from_slice(&PART_PRIMSYS.to_le_bytes());
    extra[8..11].copy_from_slice(&arch);
    h.extend_from_slice(&extra);
    h.resize(part_offset as usize, 0);
    h
}

/// A file's content read back from the store, chunk by chunk, each verified.
struct Content<'a> {
    objects: &'a Objects,
    chunks: VecDeque<(ObjectId, u64)>,
    cur: io::Cursor<Vec<u8>>,
}

impl<'a> Content<'a> {
    fn new(objects: &'a Objects, content: &FileContent) -> Result<Self> {
        let chunks = match content {
            FileContent::Empty => VecDeque::new(),
            FileContent::Single(id) => VecDeque::from([(*id, SMALL_FILE_MAX)]),
            FileContent::Chunked(list) => {
                let v = objects.get(list, ObjectKind::ChunkList, CHUNK_LIST_MAX)?;
                ChunkList::from_verified(&v)?
                    .chunks
                    .into_iter()
                    .map(|c| (c.id, c.len as u64))
                    .collect()
            }
        };
        Ok(Content {
            objects,
            chunks,
            cur: io::Cursor::new(Vec::new()),
        })
    }
}

impl Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some((id, max)) = self.chunks.pop_front() else {
                return Ok(0);
            };
            let v = self
                .objects
                .get(&id, ObjectKind::Chunk, max)
                .map_err(io::Error::other)?;
            self.cur = io::Cursor::new(v.data().to_vec());
        }
    }
}

/// Write `tree` as a tar to `out` (owners root, setuid already stripped).
fn write_tar(objects: &Objects, tree: &Tree, out: impl Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    let err = |p: &str, e: io::Error| Error::Input(format!("sif: writing {p}: {e}"));
    for (path, node) in tree.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode);
        h.set_mtime((node.mtime_ns.max(0) / 1_000_000_000) as u64);
        h.set_uid(0);
        h.set_gid(0);
        match &node.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, io::empty())
                    .map_err(|e| err(path, e))?;
            }
            NodeKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target)
                    .map_err(|e| err(path, e))?;
            }
            NodeKind::File { size, content } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                b.append_data(&mut h, path, Content::new(objects, content)?)
                    .map_err(|e| err(path, e))?;
            }
        }
    }
    b.into_inner()
        .map_err(|e| err("the end", e))?
        .flush()
        .map_err(|e| err("the end", e))?;
    Ok(())
}

/// Make the SIF file of `tree` and stage its content; returns its node (mode 0755, like
/// `singularity build`'s output).
pub fn stage(
    objects: &Objects,
    tmp: &Path,
    tree: &Tree,
    platform: &str,
    progress: &Progress,
) -> Result<Node> {
    let dir = tempfile::Builder::new()
        .prefix("sif-")
        .tempdir_in(tmp)
        .map_err(Error::io(tmp))?;
    let sqfs = dir.path().join("rootfs.squashfs");
    let mut child = Command::new("sqfstar")
        .args([
            "-quiet",
            "-no-progress",
            "-all-root",
            "-comp",
            "gzip",
            "-no-xattrs",
        ])
        .arg(&sqfs)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Input(format!(
                "sif: cannot run sqfstar (Debian squashfs-tools >= 4.5): {e}"
            ))
        })?;
    let stdin = child.stdin.take().expect("piped");
    let written = write_tar(objects, tree, io::BufWriter::with_capacity(1 << 20, stdin));
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Input(format!("sif: sqfstar: {e}")))?;
    written?;
    if !out.status.success() {
        return Err(Error::Input(format!(
            "sif: sqfstar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let f = std::fs::File::open(&sqfs).map_err(Error::io(&sqfs))?;
    let len = f.metadata().map_err(Error::io(&sqfs))?.len();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let id = *blake3::hash(&[&len.to_le_bytes()[..], &now.to_le_bytes()].concat()).as_bytes();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&id[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let head = head(len, platform, now, uuid);
    let total = head.len() as u64 + len;
    let (size, content) = ingest::store_reader(
        objects,
        io::Cursor::new(head).chain(f),
        Some(total),
        progress,
    )
    .map_err(|e| match e {
        ingest::StreamError::Store(e) => e,
        other => Error::Input(format!("sif: reading {}: {other:?}", sqfs.display())),
    })?;
    Ok(Node {
        mode: 0o755,
        mtime_ns: now * 1_000_000_000,
        kind: NodeKind::File { size, content },
    })
}
