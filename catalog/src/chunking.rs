//! Content-defined chunking of large files, and the chunk-list object that describes them.
//!
//! Files up to [`SMALL_FILE_MAX`] bytes are stored as one object. Larger files are cut with
//! FastCDC 2020 (`fastcdc =5.0.0`, normalization level 1, seed 0) using [`CHUNK_MIN`],
//! [`CHUNK_AVG`] and [`CHUNK_MAX`]; the cut points are part of the format, which is why the
//! crate version is pinned exactly. The numbers behind these sizes are in `docs/format.md`.
//! The cut search itself is this crate's own (`gear`: the crate's hash in four lanes at once,
//! 1.4 times as fast on bytes in cache), proven against the crate's `FastCDC` by the tests.

use serde::{Deserialize, Serialize};

use crate::object::{self, ObjectKind};
use crate::{Error, ObjectId};

mod gear;

/// Smallest chunk FastCDC may cut (except the file's last).
pub const CHUNK_MIN: usize = 64 * 1024;
/// Target average chunk size.
pub const CHUNK_AVG: usize = 256 * 1024;
/// Largest chunk.
pub const CHUNK_MAX: usize = 1024 * 1024;
/// Files of at most this many bytes are stored as a single object.
pub const SMALL_FILE_MAX: u64 = CHUNK_AVG as u64;

/// Chunk boundaries of `data`, as `(offset, length)` pairs covering it exactly.
pub fn cut_points(data: &[u8]) -> Vec<(usize, usize)> {
    cuts(data).collect()
}

/// The chunks of `data`, as `(offset, length)`, in order.
fn cuts(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = &data[offset..];
        if rest.is_empty() {
            return None;
        }
        let len = gear::next_cut(rest);
        offset += len;
        Some((offset - len, len))
    })
}

/// Bytes the streaming chunker reads per refill of its buffer.
const STREAM_BLOCK: usize = 8 << 20;

/// Bytes the streaming chunker reads at a time into its block before it cuts what it can: the
/// cut search then reads bytes still in the CPU's cache (512 KiB of L2 per core here). Cutting
/// the whole block after reading it read it back from memory: the cut search took 0.73 CPU s
/// per GiB in `depotfs add`, against 0.3–0.45 over cached bytes (`benches/RESULTS.md`).
const READ_STEP: usize = 256 << 10;

/// Free blocks kept for the next refill of any streaming chunker (8 per [`STREAM_BLOCK`]:
/// 64 MiB at most). A block returns here when the last chunk cut from it is dropped, whichever
/// chunker cut it. A fresh block costs a page fault and a zeroed page per 4 KiB on its first
/// fill: when each chunker kept its own one spare, that spare was nearly always still held by
/// the workers hashing its chunks when the next refill came, and the allocator gave freed
/// blocks back to the kernel, so most refills got fresh pages — 0.14 CPU s per GiB, 8 % of
/// `depotfs add` on tmpfs (`benches/RESULTS.md`, "#21 P1 (p1, session 12)").
const POOL_MAX: usize = 8;

/// The free blocks ([`POOL_MAX`] at most).
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// An empty block with room for [`STREAM_BLOCK`] bytes: a pooled one if any, else a new one.
fn take_block() -> Vec<u8> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| Vec::with_capacity(STREAM_BLOCK))
}

/// A block of the streaming chunker, shared by the chunks cut from it; its buffer goes back to
/// the pool when the last of them is dropped.
#[derive(Debug, Default)]
struct Block(Vec<u8>);

impl Drop for Block {
    fn drop(&mut self) {
        if self.0.capacity() < STREAM_BLOCK {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            let mut buf = std::mem::take(&mut self.0);
            buf.clear();
            pool.push(buf);
        }
    }
}

/// A streaming chunker over any reader, yielding `(offset, chunk)` per chunk, cut exactly as
/// [`cut_points`] cuts the whole input.
///
/// It reads [`STREAM_BLOCK`] bytes at a time into one block, [`READ_STEP`] bytes per read,
/// and after each read cuts every chunk whose cut is final: that starts at least
/// [`CHUNK_MAX`] bytes before the end of what was read (FastCDC sees at most that many bytes
/// of a chunk), or whose cut point is found in what was read; the rest is carried to the next
/// block. A [`Chunk`] is
/// a view of its block, not a copy: each byte is copied once into a block, and at most one
/// chunk in eight once more by a carry. Blocks are reused, across chunkers, from a small pool
/// ([`POOL_MAX`]). (`fastcdc`'s own `StreamCDC` keeps a `CHUNK_MAX`
/// buffer and shifts its remainder down after every chunk: about three extra copies of the
/// input, 12 % of the publisher's time in `memmove` on a 2 GiB ingest, seen with `perf`; a
/// copy of each chunk out of the block was another 7 %.)
pub fn stream_chunks<R: std::io::Read>(reader: R) -> StreamChunks<R> {
    StreamChunks {
        reader,
        block: std::sync::Arc::new(Block::default()),
        cut: 0,
        base: 0,
        pending: std::collections::VecDeque::new(),
        eof: false,
        scanned: 0,
    }
}

/// One chunk handed out by [`stream_chunks`]: a shared view of the block it was cut from
/// (the block is reused once every chunk of it is dropped). Dereferences to its bytes.
#[derive(Debug, Clone)]
pub struct Chunk {
    block: std::sync::Arc<Block>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.block.0[self.start..self.start + self.len]
    }
}

/// The iterator of [`stream_chunks`].
#[derive(Debug)]
pub struct StreamChunks<R> {
    reader: R,
    /// Bytes read and not yet dropped; `block[..cut]` are already cut into `pending`.
    block: std::sync::Arc<Block>,
    cut: usize,
    /// Stream offset of `block[0]`.
    base: u64,
    /// Cut chunks not yet handed out, as `(start, len)` in `block`.
    pending: std::collections::VecDeque<(usize, usize)>,
    /// The reader is exhausted (or failed): everything left in `block` has been cut.
    eof: bool,
    /// Positions of the chunk that starts at `block[cut]` below this one have been searched
    /// for its cut point, in vain.
    scanned: usize,
}

impl<R: std::io::Read> StreamChunks<R> {
    /// Carry what was not handed out into a free block, read the next bytes into it and cut
    /// what is final in it.
    fn refill(&mut self) -> std::io::Result<()> {
        let mut buf = take_block();
        buf.extend_from_slice(&self.block.0[self.cut..]);
        // The old block goes back to the pool now, or when its last chunk is dropped.
        self.block = std::sync::Arc::new(Block::default());
        self.base += self.cut as u64;
        self.cut = 0;
        let want = STREAM_BLOCK.saturating_sub(buf.len());
        buf.reserve(want);
        let mut read = 0;
        let mut result = Ok(());
        while read < want && !self.eof {
            let step = READ_STEP.min(want - read);
            match std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut self.reader, step as u64),
                &mut buf,
            ) {
                Ok(got) => {
                    read += got;
                    self.eof = got < step;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            self.cut_final(&buf);
        }
        self.block = std::sync::Arc::new(Block(buf));
        result
    }

    /// Cut the chunks of `buf` after `self.cut` whose ends are known: at the input's end all,
    /// else each that starts at least [`CHUNK_MAX`] bytes before the end of `buf` or whose
    /// cut point is already in `buf` (`gear::first_hit`: such a cut is final too).
    fn cut_final(&mut self, buf: &[u8]) {
        while self.cut < buf.len() {
            let rest = &buf[self.cut..];
            let len = if self.eof || rest.len() >= CHUNK_MAX {
                gear::next_cut_from(rest, self.scanned)
            } else if let Some(p) = gear::first_hit(rest, self.scanned, rest.len() - 1) {
                p
            } else {
                self.scanned = self.scanned.max(rest.len() - 1);
                return;
            };
            self.pending.push_back((self.cut, len));
            self.cut += len;
            self.scanned = 0;
        }
    }
}

impl<R: std::io::Read> Iterator for StreamChunks<R> {
    type Item = Result<(u64, Chunk), std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((start, len)) = self.pending.pop_front() {
                let chunk = Chunk {
                    block: self.block.clone(),
                    start,
                    len,
                };
                return Some(Ok((self.base + start as u64, chunk)));
            }
            if self.eof {
                return None;
            }
            if let Err(e) = self.refill() {
                self.eof = true;
                self.pending.clear();
                return Some(Err(e));
            }
        }
    }
}

/// One chunk of a large file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk object's name.
    pub id: ObjectId,
    /// Its plaintext length.
    pub len: u32,
}

/// The ordered chunks of one large file. Stored as an object of kind
/// [`ObjectKind::ChunkList`]; the file's directory entry names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
    /// Access list for prefetch: indices into `chunks` in the order a recorded container start
    /// first read them (`depotfs add --trace`), no index twice. Empty when nothing was
    /// recorded. A client that opens the file may fetch these in the background.
    pub prefetch: Vec<u32>,
}

/// A chunk located by [`ChunkList::offsets`]: its index, file offset and reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedChunk {
    /// Position in the list.
    pub index: usize,
    /// Offset of the chunk's first byte in the file.
    pub offset: u64,
    /// The chunk.
    pub chunk: ChunkRef,
}

impl ChunkList {
    /// Serialize to the object plaintext.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing to a Vec cannot fail")
    }

    /// Parse a verified chunk-list object.
    pub fn from_verified(v: &object::Verified) -> Result<Self, Error> {
        if v.kind() != ObjectKind::ChunkList {
            return Err(Error::BadObject {
                id: v.id(),
                what: "not a chunk list".into(),
            });
        }
        let list: ChunkList = postcard::from_bytes(v.data()).map_err(|e| Error::BadObject {
            id: v.id(),
            what: format!("chunk list: {e}"),
        })?;
        let mut seen = vec![false; list.chunks.len()];
        for &i in &list.prefetch {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::BadObject {
                        id: v.id(),
                        what: format!(
                            "chunk list: prefetch index {i} repeated or beyond its {} chunks",
                            list.chunks.len()
                        ),
                    });
                }
            }
        }
        Ok(list)
    }

    /// Total length of the file.
    pub fn total_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len as u64).sum()
    }

    /// Start offset of every chunk, plus the total length at the end (`len() + 1` values).
    pub fn offsets(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        let mut at = 0u64;
        out.push(0);
        for c in &self.chunks {
            at += c.len as u64;
            out.push(at);
        }
        out
    }

    /// The chunk that holds byte `offset`, given the result of [`ChunkList::offsets`].
    pub fn locate(&self, offsets: &[u64], offset: u64) -> Option<PlacedChunk> {
        if offset >= *offsets.last()? {
            return None;
        }
        let index = offsets.partition_point(|&o| o <= offset) - 1;
        Some(PlacedChunk {
            index,
            offset: offsets[index],
            chunk: self.chunks[index],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data::noise as pseudo_random;

    /// Golden boundaries: if these change, every published chunk name changes. Update only
    /// with a format version bump.
    #[test]
    fn golden_cut_points() {
        let data = pseudo_random(16 << 20, 42);
        let cuts = cut_points(&data);
        let lens: Vec<usize> = cuts.iter().map(|c| c.1).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let h = blake3::hash(format!("{lens:?}").as_bytes())
            .to_hex()
            .to_string();
        assert_eq!(
            (cuts.len(), &h[..16]),
            (GOLDEN_COUNT, GOLDEN_HASH),
            "cut points changed: {lens:?}"
        );
    }
    const GOLDEN_COUNT: usize = 55;
    const GOLDEN_HASH: &str = "64d1be80852bf498";

    #[test]
    fn stream_matches_slice() {
        let data = pseudo_random(9 << 20, 7);
        let streamed: Vec<(u64, usize)> = stream_chunks(&data[..])
            .map(|r| r.map(|(o, d)| (o, d.len())).unwrap())
            .collect();
        let sliced: Vec<(u64, usize)> = cut_points(&data)
            .into_iter()
            .map(|(o, l)| (o as u64, l))
            .collect();
        assert_eq!(streamed, sliced);
    }

    /// A reader that hands out at most `step` bytes per read, to exercise refills and carries
    /// at every alignment.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn stream_matches_slice_across_refills_and_short_reads() {
        // Lengths around the block size and its carries, read in odd-sized pieces.
        for (len, step) in [
            (STREAM_BLOCK - 1, 4093),
            (STREAM_BLOCK, 1 << 20),
            (STREAM_BLOCK + CHUNK_MAX + 17, 65_537),
            (3 * STREAM_BLOCK + 5, 1 << 22),
            (CHUNK_MIN / 2, 7),
        ] {
            let data = pseudo_random(len, len as u64);
            let streamed: Vec<(u64, usize, blake3::Hash)> =
                stream_chunks(Trickle { data: &data, step })
                    .map(|r| r.map(|(o, d)| (o, d.len(), blake3::hash(&d))).unwrap())
                    .collect();
            let sliced: Vec<(u64, usize, blake3::Hash)> = cut_points(&data)
                .into_iter()
                .map(|(o, l)| (o as u64, l, blake3::hash(&data[o..o + l])))
                .collect();
            assert_eq!(streamed, sliced, "length {len}, reads of {step}");
        }
    }

    /// Chunks are views of the chunker's blocks, and blocks are reused: chunks still held
    /// after the chunker has moved on (several blocks later) keep their bytes, and so do
    /// chunks taken after earlier ones were dropped (a block reused).
    #[test]
    fn held_chunks_keep_their_bytes_while_blocks_are_reused() {
        let data = pseudo_random(5 * STREAM_BLOCK + 12_345, 11);
        let cuts = cut_points(&data);
        let mut held = Vec::new();
        for (i, r) in stream_chunks(&data[..]).enumerate() {
            let (offset, chunk) = r.unwrap();
            assert_eq!((offset as usize, chunk.len()), cuts[i]);
            // Keep every third chunk; drop the others at once.
            if i % 3 == 0 {
                held.push((offset as usize, chunk));
            }
        }
        assert!(held.len() > 10);
        for (offset, chunk) in held {
            assert_eq!(&chunk[..], &data[offset..offset + chunk.len()]);
        }
    }

    /// Blocks go back to one pool shared by every chunker: two chunkers read side by side,
    /// each keeping some of its chunks and dropping the others, never see each other's bytes.
    #[test]
    fn chunkers_side_by_side_share_the_block_pool_safely() {
        let a = pseudo_random(4 * STREAM_BLOCK + 777, 21);
        let b = pseudo_random(3 * STREAM_BLOCK + 5_001, 22);
        let (mut sa, mut sb) = (stream_chunks(&a[..]), stream_chunks(&b[..]));
        let mut held = Vec::new();
        let (mut na, mut nb) = (0usize, 0usize);
        loop {
            let (x, y) = (sa.next(), sb.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for (r, data, n, name) in [(x, &a, &mut na, 'a'), (y, &b, &mut nb, 'b')] {
                let Some(r) = r else { continue };
                let (offset, chunk) = r.unwrap();
                assert_eq!(
                    &chunk[..],
                    &data[offset as usize..offset as usize + chunk.len()]
                );
                if *n % 4 == 1 {
                    held.push((name, offset as usize, chunk));
                }
                *n += 1;
            }
        }
        assert_eq!(na, cut_points(&a).len());
        assert_eq!(nb, cut_points(&b).len());
        for (name, offset, chunk) in held {
            let data = if name == 'a' { &a } else { &b };
            assert_eq!(&chunk[..], &data[offset..offset + chunk.len()]);
        }
    }

    #[test]
    fn stream_reports_a_read_error_once() {
        struct Failing(usize);
        impl std::io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let out: Vec<_> = stream_chunks(Failing(3 << 20)).collect();
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("disk on fire")
        );
    }

    #[test]
    fn insertion_shifts_only_nearby_chunks() {
        let data = pseudo_random(20 << 20, 3);
        let mut edited = data[..10 << 20].to_vec();
        edited.extend_from_slice(b"an inserted line of text");
        edited.extend_from_slice(&data[10 << 20..]);
        let ids = |d: &[u8]| -> std::collections::HashSet<ObjectId> {
            cut_points(d)
                .iter()
                .map(|&(o, l)| ObjectId::of(&d[o..o + l]))
                .collect()
        };
        let (a, b) = (ids(&data), ids(&edited));
        let shared = a.intersection(&b).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks survive an insert",
            a.len()
        );
    }

    #[test]
    fn locate_finds_every_boundary() {
        let list = ChunkList {
            chunks: [10u32, 20, 30]
                .iter()
                .map(|&len| ChunkRef {
                    id: ObjectId::of(&[len as u8]),
                    len,
                })
                .collect(),
            prefetch: Vec::new(),
        };
        let offs = list.offsets();
        assert_eq!(offs, vec![0, 10, 30, 60]);
        assert_eq!(list.locate(&offs, 0).unwrap().index, 0);
        assert_eq!(list.locate(&offs, 9).unwrap().index, 0);
        assert_eq!(list.locate(&offs, 10).unwrap().index, 1);
        assert_eq!(list.locate(&offs, 59).unwrap().offset, 30);
        assert!(list.locate(&offs, 60).is_none());
        let bytes = list.to_bytes();
        let enc = object::encode(ObjectKind::ChunkList, &bytes, 3);
        let v = object::decode(enc.id, ObjectKind::ChunkList, &enc.bytes, 1 << 20).unwrap();
        assert_eq!(ChunkList::from_verified(&v).unwrap(), list);
    }
}
