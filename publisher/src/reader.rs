//! Reading a published tree straight from the store's objects, without a mount: used by
//! `ls`, `cat`, `verify`, `gc`, `rollback` and the depot view of `depotfs serve`. Every object
//! is verified as it is read.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;

use depotfs_catalog::dir::{self, NODE_MAX_BYTES, NodeSource};
use depotfs_catalog::object::ObjectKind;
use depotfs_catalog::{
    ChunkList, ChunkRef, DirNode, Entry, EntryKind, FileContent, ObjectId, Verified,
};

use crate::error::{Error, Result};
use crate::store::Objects;

/// Largest chunk-list object accepted (the format's bound).
pub use depotfs_catalog::graph::CHUNK_LIST_MAX;

/// A [`NodeSource`] over a store's objects, remembering the nodes it has parsed.
#[derive(Debug)]
pub struct LocalTree {
    objects: Objects,
    nodes: Mutex<HashMap<ObjectId, Arc<DirNode>>>,
}

impl NodeSource for LocalTree {
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, depotfs_catalog::Error> {
        if let Some(n) = self.nodes.lock().expect("not poisoned").get(id) {
            return Ok(n.clone());
        }
        let v = self
            .objects
            .get(id, ObjectKind::DirNode, NODE_MAX_BYTES)
            .map_err(|e| depotfs_catalog::Error::Fetch {
                id: *id,
                message: e.to_string(),
            })?;
        let n = Arc::new(DirNode::from_verified(&v)?);
        self.nodes
            .lock()
            .expect("not poisoned")
            .insert(*id, n.clone());
        Ok(n)
    }
}

impl LocalTree {
    /// A reader over `objects`.
    pub fn new(objects: Objects) -> Self {
        LocalTree {
            objects,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// The entry at repository path `path` (already normalized) below root tree `root`;
    /// `None` for the root itself.
    pub fn resolve(&self, root: &ObjectId, path: &str) -> Result<Option<Entry>> {
        let mut tree = *root;
        let mut found = None;
        if path.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let e = dir::lookup(self, &tree, part)?.ok_or_else(|| {
                Error::Input(format!(
                    "{path}: no such file or directory in the published revision"
                ))
            })?;
            if i + 1 < parts.len() {
                match e.kind {
                    EntryKind::Dir { tree: t, .. } => tree = t,
                    _ => return Err(Error::Input(format!("{path}: {part} is not a directory"))),
                }
            }
            found = Some(e);
        }
        Ok(found)
    }

    /// All entries of directory tree `tree`, in name order.
    pub fn list(&self, tree: &ObjectId) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        dir::list_from(self, tree, 0, &mut |_, e| {
            out.push(e.clone());
            true
        })?;
        Ok(out)
    }

    /// The chunk list of a chunked file.
    pub fn chunk_list(&self, id: &ObjectId) -> Result<ChunkList> {
        let v = self
            .objects
            .get(id, ObjectKind::ChunkList, CHUNK_LIST_MAX)?;
        Ok(ChunkList::from_verified(&v)?)
    }

    /// The pieces of a file of `size` bytes, in order: one per chunk (none for an empty
    /// file). Lengths add up to the file's size, or the published data is malformed.
    pub fn pieces(&self, content: &FileContent, size: u64) -> Result<Vec<ChunkRef>> {
        let pieces = match content {
            FileContent::Empty => Vec::new(),
            FileContent::Single(id) => {
                let len = u32::try_from(size)
                    .ok()
                    .filter(|&l| u64::from(l) <= depotfs_catalog::chunking::SMALL_FILE_MAX)
                    .ok_or_else(|| {
                        Error::Input(format!("object {id}: a single-chunk file of {size} bytes"))
                    })?;
                vec![ChunkRef { id: *id, len }]
            }
            FileContent::Chunked(list) => self.chunk_list(list)?.chunks,
        };
        let total: u64 = pieces.iter().map(|c| u64::from(c.len)).sum();
        if total != size {
            return Err(Error::Input(format!(
                "the chunks of a file add up to {total} bytes, its entry says {size}"
            )));
        }
        Ok(pieces)
    }

    /// The verified plaintext of one piece of a file; exactly `piece.len` bytes.
    pub fn piece(&self, piece: &ChunkRef) -> Result<Verified> {
        self.read_piece(piece)?.verified()
    }

    /// One piece read from disk, to be verified later (and elsewhere: the depot view reads
    /// far ahead but verifies only the next chunks to send).
    pub fn read_piece(&self, piece: &ChunkRef) -> Result<UnverifiedPiece> {
        Ok(UnverifiedPiece {
            piece: *piece,
            bytes: self.objects.read(&piece.id)?,
        })
    }

    /// Bytes `from..to` of one piece, verified, without copying them.
    pub fn piece_bytes(&self, piece: &ChunkRef, from: usize, to: usize) -> Result<Bytes> {
        self.read_piece(piece)?.verify(from, to)
    }

    /// [`LocalTree::piece_bytes`], and whether the piece came from the page cache whole
    /// ([`Objects::read_noting_cache`]; only asked when `probe`, else `false`).
    pub fn piece_bytes_noting_cache(
        &self,
        piece: &ChunkRef,
        from: usize,
        to: usize,
        probe: bool,
    ) -> Result<(Bytes, bool)> {
        let most = depotfs_catalog::object::HEADER_LEN + piece.len as usize;
        let (bytes, cached) = self.objects.read_noting_cache(&piece.id, most, probe)?;
        let raw = UnverifiedPiece {
            piece: *piece,
            bytes,
        };
        Ok((raw.verify(from, to)?, cached))
    }

    /// [`LocalTree::piece_bytes`] read with direct I/O ([`Objects::read_direct`]): a raw
    /// chunk is verified in the pooled buffer it was read into and the bytes share it; a
    /// compressed one is decoded as usual; where direct I/O is refused, a buffered read.
    pub fn piece_bytes_direct(&self, piece: &ChunkRef, from: usize, to: usize) -> Result<Bytes> {
        let most = depotfs_catalog::object::HEADER_LEN + piece.len as usize;
        let Some(read) = self.objects.read_direct(&piece.id, most)? else {
            return Ok(self.piece_bytes_noting_cache(piece, from, to, false)?.0);
        };
        let len = u64::from(piece.len);
        let plain = match depotfs_catalog::object::verify_raw_in(
            piece.id,
            ObjectKind::Chunk,
            read.bytes(),
            len,
        )? {
            Some(plain) => plain,
            None => {
                let raw = UnverifiedPiece {
                    piece: *piece,
                    bytes: read.bytes().to_vec(),
                };
                return raw.verify(from, to);
            }
        };
        if plain.len() as u64 != len || from > to || to > plain.len() {
            return Err(Error::Input(format!(
                "bytes {from}..{to} of a piece of {} bytes where its file expects {len}",
                plain.len()
            )));
        }
        // Only the verified plaintext's bytes `from..to` can be had from here on.
        Ok(Bytes::from_owner(
            read.narrow(plain.start + from..plain.start + to),
        ))
    }

    /// Write the verified content of a file of `size` bytes to `out`.
    pub fn copy_file(&self, content: &FileContent, size: u64, out: &mut dyn Write) -> Result<u64> {
        let mut n = 0u64;
        for p in self.pieces(content, size)? {
            let v = self.piece(&p)?;
            out.write_all(v.data())
                .map_err(Error::io("standard output"))?;
            n += v.data().len() as u64;
        }
        Ok(n)
    }
}

/// A piece's object as read from disk, not verified: its bytes can only be had through
/// [`UnverifiedPiece::verify`].
#[derive(Debug)]
pub struct UnverifiedPiece {
    piece: ChunkRef,
    bytes: Vec<u8>,
}

impl UnverifiedPiece {
    fn verified(self) -> Result<Verified> {
        let len = self.piece.len;
        let v = depotfs_catalog::object::decode_owned(
            self.piece.id,
            ObjectKind::Chunk,
            self.bytes,
            u64::from(len),
        )?;
        if v.data().len() != len as usize {
            return Err(Error::Format(depotfs_catalog::Error::BadObject {
                id: self.piece.id,
                what: format!("{} bytes where its file expects {len}", v.data().len()),
            }));
        }
        Ok(v)
    }

    /// Verify the piece and give bytes `from..to` of it without copying them: a raw chunk
    /// is verified inside the buffer it was read into, and the slice shares that buffer.
    pub fn verify(self, from: usize, to: usize) -> Result<Bytes> {
        /// A verified plaintext as the owner of a [`Bytes`].
        struct Plain(Verified);
        impl AsRef<[u8]> for Plain {
            fn as_ref(&self) -> &[u8] {
                self.0.data()
            }
        }
        let v = self.verified()?;
        if from > to || to > v.data().len() {
            return Err(Error::Input(format!(
                "bytes {from}..{to} of a piece of {} bytes",
                v.data().len()
            )));
        }
        Ok(Bytes::from_owner(Plain(v)).slice(from..to))
    }
}

impl LocalTree {
    /// Visit every entry below directory tree `tree` (whose path is `prefix`) depth-first, in
    /// name order, calling `f(path, entry)`. For directories `f` returns whether to descend
    /// (gc and verify skip subtrees they have already seen).
    pub fn walk(
        &self,
        tree: &ObjectId,
        prefix: &str,
        f: &mut dyn FnMut(&str, &Entry) -> Result<bool>,
    ) -> Result<()> {
        for e in self.list(tree)? {
            let path = crate::db::join(prefix, &e.name);
            let descend = f(&path, &e)?;
            if let (true, EntryKind::Dir { tree: t, .. }) = (descend, &e.kind) {
                self.walk(t, &path, f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Layout;
    use depotfs_catalog::object::{Codec, encode};

    /// The depot view's reads (one `pread` into a buffer sized from the piece's length, its end
    /// taken from a short read; and the direct read into a pooled buffer) give a piece's bytes
    /// whole, raw or compressed, and an object file that is longer or shorter than it should
    /// be never gives a byte: it fails.
    #[test]
    fn piece_bytes_noting_cache_reads_whole_objects_and_no_wrong_byte() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::of_public(dir.path());
        let tree = LocalTree::new(Objects::new(layout.clone()));
        let mut noise = Vec::with_capacity(300_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while noise.len() < 300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let text = b"0123456789abcdef".repeat(20_000);
        for (data, codec) in [(&noise[..], Codec::Raw), (&text[..], Codec::Zstd)] {
            let enc = encode(ObjectKind::Chunk, data, 3);
            assert_eq!(enc.codec, codec);
            let path = layout.object(&enc.id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let piece = ChunkRef {
                id: enc.id,
                len: data.len() as u32,
            };
            let write = |bytes: &[u8]| {
                let _ = std::fs::remove_file(&path);
                std::fs::write(&path, bytes).unwrap();
            };
            write(&enc.bytes);
            let (got, _) = tree
                .piece_bytes_noting_cache(&piece, 0, data.len(), true)
                .unwrap();
            assert!(got == data, "{codec:?}: wrong bytes");
            let (part, _) = tree
                .piece_bytes_noting_cache(&piece, 5, 1005, false)
                .unwrap();
            assert_eq!(&part[..], &data[5..1005]);
            // The direct read (into a pooled buffer), whole and in part, twice: the second
            // reuses the first's buffer once it is dropped.
            for _ in 0..2 {
                let got = tree.piece_bytes_direct(&piece, 0, data.len()).unwrap();
                assert!(got == data, "{codec:?}: wrong bytes (direct)");
                let part = tree.piece_bytes_direct(&piece, 5, 1005).unwrap();
                assert_eq!(&part[..], &data[5..1005]);
                assert!(tree.piece_bytes_direct(&piece, 5, data.len() + 1).is_err());
            }

            // One byte more, many bytes more, one byte less, empty: an error, never bytes.
            let mut longer = enc.bytes.clone();
            longer.push(0);
            let mut much_longer = enc.bytes.clone();
            much_longer.extend_from_slice(&enc.bytes);
            let shorter = &enc.bytes[..enc.bytes.len() - 1];
            for (what, bad) in [
                ("longer", &longer[..]),
                ("much longer", &much_longer[..]),
                ("shorter", shorter),
                ("empty", &[][..]),
            ] {
                write(bad);
                let r = tree.piece_bytes_noting_cache(&piece, 0, data.len(), true);
                assert!(r.is_err(), "{codec:?}, {what}: {r:?}");
                let r = tree.piece_bytes_direct(&piece, 0, data.len());
                assert!(r.is_err(), "{codec:?}, {what} (direct): {r:?}");
            }
        }
    }
}
