//! The encoding of one stored object, and the one place fetched bytes are verified.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DPO1"
//! 4       1     kind   (1 chunk, 2 chunk list, 3 directory node)
//! 5       1     codec  (0 raw, 1 zstd)
//! 6       2     reserved, zero
//! 8       8     plaintext length, little endian
//! 16      ...   payload (the plaintext, or its zstd frame)
//! ```
//!
//! The object's name is the blake3 hash of its plaintext in its kind's mode
//! ([`ObjectId::of_kind`]): one id is one object. A reader decodes the payload, refusing to
//! produce more than the recorded length (or than the caller's own bound), and hashes it as
//! the kind it expects.

use std::cell::RefCell;

use crate::{Error, ObjectId};

const MAGIC: &[u8; 4] = b"DPO1";
/// Size of the object header in bytes.
pub const HEADER_LEN: usize = 16;

/// What an object holds. Recorded in the header so `verify` and `gc` can tell objects apart,
/// and so a client refuses an object used in the wrong place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    /// File data: a whole small file or one chunk of a large one.
    Chunk = 1,
    /// A [`crate::ChunkList`].
    ChunkList = 2,
    /// A [`crate::DirNode`].
    DirNode = 3,
}

impl ObjectKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Chunk),
            2 => Some(Self::ChunkList),
            3 => Some(Self::DirNode),
            _ => None,
        }
    }
}

/// How the payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The plaintext itself (data zstd does not shrink).
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

/// Plaintext that has been checked against its name. Only [`decode`] makes one.
#[derive(Debug, Clone)]
pub struct Verified {
    id: ObjectId,
    kind: ObjectKind,
    /// The plaintext is `buf[start..]`: a raw object decoded in place keeps its header in
    /// front ([`decode_owned`]) rather than being copied out (and, read to an aligned place
    /// of its buffer, whatever precedes the header: [`decode_owned_at`]). A decompressed
    /// object starts at 0.
    buf: Vec<u8>,
    start: usize,
}

impl Verified {
    /// The object's name.
    pub fn id(&self) -> ObjectId {
        self.id
    }
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        self.kind
    }
    /// The verified plaintext.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    /// The object's encoded bytes (header and payload, exactly as fetched), when they are
    /// this buffer: a raw object decoded in place by [`decode_owned`]. A cache can then store
    /// what was served without keeping a second copy.
    pub fn encoded(&self) -> Option<&[u8]> {
        (self.start >= HEADER_LEN).then(|| &self.buf[self.start - HEADER_LEN..])
    }
    /// The verified plaintext, owned.
    pub fn into_data(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// An object ready to be stored: its name and its encoded bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// [`ObjectId::of_kind`] of the plaintext.
    pub id: ObjectId,
    /// Header and payload, as written to `objects/…`.
    pub bytes: Vec<u8>,
    /// The codec chosen.
    pub codec: Codec,
}

fn header(kind: ObjectKind, codec: Codec, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = kind as u8;
    h[5] = codec as u8;
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// Plaintexts of at least this many bytes are sampled before they are compressed.
const SAMPLE_FROM: usize = 64 * 1024;
/// Samples taken, evenly spaced, and the bytes of each.
const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 4096;
/// The zstd level the sample is compressed at: zstd's fast strategy, which sees the same
/// literal statistics and nearly the same matches as the level a chunk is then compressed at.
/// On the suite's 2 GiB image corpus (6,409 chunks of 64 KiB or more, cut as `depotfs add`
/// cuts them), level 3 on the samples took 0.059 CPU s per GiB of chunks and this level 0.019,
/// and the two judged all but 18 chunks alike (`examples/sample_level.rs`; `benches/RESULTS.md`,
/// "Session 14 (lead)").
const SAMPLE_LEVEL: i32 = -1;

/// A sample compressor, with its sample and output buffers.
type Sampler = (zstd::bulk::Compressor<'static>, Vec<u8>, Vec<u8>);

thread_local! {
    /// This thread's sample compressor and its sample and output buffers, reused: the sample
    /// has its own context because one context per level is kept (see [`COMPRESSOR`]), and
    /// alternating levels on one would make a new one for every chunk.
    static SAMPLER: RefCell<Option<Sampler>> = const { RefCell::new(None) };
}

/// Would zstd fail to save 1/32 of `plaintext`, judging by [`SAMPLES`] evenly spaced pieces of
/// it compressed together (at [`SAMPLE_LEVEL`])? Chunks of already-compressed data (the
/// squashfs images this project publishes are zstd or gzip inside) are the common case;
/// compressing them whole only to keep the raw bytes was a fifth of the publisher's CPU time
/// on the 2 GiB image corpus. A chunk that is compressible anywhere a sample falls is still
/// compressed whole; one compressible only between the samples is stored raw (no wrong bytes,
/// a few more).
fn looks_incompressible(plaintext: &[u8]) -> bool {
    if plaintext.len() < SAMPLE_FROM {
        return false;
    }
    SAMPLER.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            let Ok(c) = zstd::bulk::Compressor::new(SAMPLE_LEVEL) else {
                return false;
            };
            let bound = zstd::zstd_safe::compress_bound(SAMPLES * SAMPLE_LEN);
            *s = Some((
                c,
                Vec::with_capacity(SAMPLES * SAMPLE_LEN),
                Vec::with_capacity(bound),
            ));
        }
        let (c, sample, out) = s.as_mut().expect("just set");
        sample.clear();
        let stride = plaintext.len() / SAMPLES;
        for i in 0..SAMPLES {
            sample.extend_from_slice(&plaintext[i * stride..i * stride + SAMPLE_LEN]);
        }
        out.clear();
        c.compress_to_buffer(sample, out)
            .is_ok_and(|n| n >= sample.len() - sample.len() / 32)
    })
}

/// An object's encoding as its two parts, header and payload, not joined: the payload
/// borrows the plaintext when it is stored raw. The publisher writes both parts straight into
/// its direct-I/O buffer, so a raw chunk (the common case: squashfs images are compressed
/// already) is copied once on its way to the disk rather than twice ([`Encoded`] joins them).
#[derive(Debug, Clone)]
pub struct EncodedParts<'a> {
    /// [`ObjectId::of_kind`] of the plaintext.
    pub id: ObjectId,
    /// The object's header.
    pub header: [u8; HEADER_LEN],
    /// The payload: the plaintext itself, or its zstd frame.
    pub payload: std::borrow::Cow<'a, [u8]>,
    /// The codec chosen.
    pub codec: Codec,
}

impl EncodedParts<'_> {
    /// Length of the encoded object (header and payload).
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Never: an object has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Encode `plaintext` whose id is already known (the publisher hashes first to skip work for
/// objects it already has): `id` must be [`ObjectId::of_kind`]`(kind, plaintext)`. Compresses with zstd at `level`; keeps the raw bytes when zstd
/// does not save at least 1/32 of them, or when a sample says it would not
/// ([`looks_incompressible`]).
pub fn encode_with_id(id: ObjectId, kind: ObjectKind, plaintext: &[u8], level: i32) -> Encoded {
    let parts = encode_parts(id, kind, plaintext, level);
    let mut bytes = Vec::with_capacity(parts.len());
    bytes.extend_from_slice(&parts.header);
    bytes.extend_from_slice(&parts.payload);
    Encoded {
        id,
        bytes,
        codec: parts.codec,
    }
}

/// [`encode_with_id`] without joining header and payload ([`EncodedParts`]).
pub fn encode_parts(
    id: ObjectId,
    kind: ObjectKind,
    plaintext: &[u8],
    level: i32,
) -> EncodedParts<'_> {
    let len = plaintext.len() as u64;
    let limit = plaintext.len() - plaintext.len() / 32;
    if !plaintext.is_empty()
        && !looks_incompressible(plaintext)
        && let Some(frame) = compress(plaintext, level)
        && frame.len() < limit
    {
        return EncodedParts {
            id,
            header: header(kind, Codec::Zstd, len),
            payload: frame.into(),
            codec: Codec::Zstd,
        };
    }
    EncodedParts {
        id,
        header: header(kind, Codec::Raw, len),
        payload: plaintext.into(),
        codec: Codec::Raw,
    }
}

thread_local! {
    /// One zstd compression context per thread (and level), reused: creating one costs a
    /// large zeroed workspace, which was 9 % of the publisher's CPU time on 118,594 small
    /// files. Likewise one decompression context.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `plaintext` as one zstd frame at `level`, with this thread's context.
fn compress(plaintext: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut()?.1.compress(plaintext).ok()
    })
}

/// Decompress the zstd frame `payload` into at most `len` bytes (a frame that would produce
/// more is an error: the bound a hostile server cannot lift), with this thread's context.
fn decompress(payload: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        let mut out = Vec::with_capacity(len);
        d.as_mut()
            .expect("just set")
            .decompress_to_buffer(payload, &mut out)?;
        Ok(out)
    })
}

/// Hash and encode `plaintext`.
pub fn encode(kind: ObjectKind, plaintext: &[u8], level: i32) -> Encoded {
    encode_with_id(ObjectId::of_kind(kind, plaintext), kind, plaintext, level)
}

/// Read the header of an encoded object: kind, codec, plaintext length.
pub fn peek_header(id: ObjectId, bytes: &[u8]) -> Result<(ObjectKind, Codec, u64), Error> {
    let bad = |what: &str| Error::BadObject {
        id,
        what: what.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(bad("shorter than its header"));
    }
    if &bytes[..4] != MAGIC {
        return Err(bad("bad magic (not a depotfs object)"));
    }
    let kind = ObjectKind::from_u8(bytes[4]).ok_or_else(|| bad("unknown object kind"))?;
    let codec = match bytes[5] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        _ => return Err(bad("unknown codec")),
    };
    if bytes[6..8] != [0, 0] {
        return Err(bad("reserved header bytes are not zero"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok((kind, codec, len))
}

/// Decode and verify the bytes fetched for `id`.
///
/// `expect` is the kind the caller needs; `max_len` bounds the plaintext (a hostile server
/// cannot make the client inflate more than this). Fails unless the plaintext hashes to `id`.
pub fn decode(
    id: ObjectId,
    expect: ObjectKind,
    bytes: &[u8],
    max_len: u64,
) -> Result<Verified, Error> {
    let (kind, codec, len) = checked_header(id, expect, bytes, max_len)?;
    let payload = &bytes[HEADER_LEN..];
    let data = match codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => inflate(id, payload, len)?,
    };
    verified(id, kind, data, 0, len)
}

/// Verify a raw object in the caller's buffer, without copying or owning it: the range of
/// `bytes` that is its verified plaintext, or `None` when the object is compressed (decode
/// it with [`decode_owned`]). The depot view's direct reads land in a reused buffer, and it
/// sends only the bytes this range names.
pub fn verify_raw_in(
    id: ObjectId,
    expect: ObjectKind,
    bytes: &[u8],
    max_len: u64,
) -> Result<Option<std::ops::Range<usize>>, Error> {
    let (kind, codec, len) = checked_header(id, expect, bytes, max_len)?;
    if codec != Codec::Raw {
        return Ok(None);
    }
    check_plain(id, kind, &bytes[HEADER_LEN..], len)?;
    Ok(Some(HEADER_LEN..bytes.len()))
}

/// [`decode`] of bytes the caller gives up: a raw object is verified in place, without
/// copying its plaintext out (the client's warm reads from its disk cache).
pub fn decode_owned(
    id: ObjectId,
    expect: ObjectKind,
    bytes: Vec<u8>,
    max_len: u64,
) -> Result<Verified, Error> {
    decode_owned_then(id, expect, bytes, max_len, |_| {})
}

/// [`decode_owned`], handing the object's encoded bytes to `keep` once they are verified and
/// before they are dropped: only a good object is ever handed over, and a raw object's
/// plaintext is not copied out of the fetched buffer.
pub fn decode_owned_then(
    id: ObjectId,
    expect: ObjectKind,
    bytes: Vec<u8>,
    max_len: u64,
    keep: impl FnOnce(&[u8]),
) -> Result<Verified, Error> {
    let (v, encoded) = decode_owned_timed(id, expect, bytes, max_len, &mut DecodeTimes::default())?;
    keep(match &encoded {
        Some(e) => e,
        None => v.encoded().expect("a raw object is decoded in place"),
    });
    Ok(v)
}

/// The time a decode spent decompressing and hashing (the client's read-path stage
/// counters, `fusefs/src/stages.rs`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeTimes {
    /// zstd decompression (zero for a raw object).
    pub inflate: std::time::Duration,
    /// blake3 of the plaintext, checked against the name.
    pub hash: std::time::Duration,
}

/// [`decode_owned`], adding the time of its steps to `times`, and handing back the encoded
/// bytes of a compressed object with it (a raw object's are [`Verified::encoded`]): the
/// client serves the object first and caches those bytes afterwards, off the reader's path.
pub fn decode_owned_timed(
    id: ObjectId,
    expect: ObjectKind,
    bytes: Vec<u8>,
    max_len: u64,
    times: &mut DecodeTimes,
) -> Result<(Verified, Option<Vec<u8>>), Error> {
    decode_owned_at(id, expect, bytes, 0, max_len, times)
}

/// [`decode_owned_timed`] of the object `bytes[at..]` (read to an aligned place of its
/// buffer: [`crate::object_file::read_direct`]); a raw object's plaintext stays where it
/// is. A compressed object's buffer is handed back whole: its encoded bytes are `[at..]`.
pub fn decode_owned_at(
    id: ObjectId,
    expect: ObjectKind,
    bytes: Vec<u8>,
    at: usize,
    max_len: u64,
    times: &mut DecodeTimes,
) -> Result<(Verified, Option<Vec<u8>>), Error> {
    let (kind, codec, len) = checked_header(id, expect, &bytes[at.min(bytes.len())..], max_len)?;
    let t = std::time::Instant::now();
    match codec {
        Codec::Raw => {
            let v = verified(id, kind, bytes, at + HEADER_LEN, len);
            times.hash += t.elapsed();
            Ok((v?, None))
        }
        Codec::Zstd => {
            let data = inflate(id, &bytes[at + HEADER_LEN..], len);
            let t2 = std::time::Instant::now();
            times.inflate += t2 - t;
            let v = verified(id, kind, data?, 0, len);
            times.hash += t2.elapsed();
            Ok((v?, Some(bytes)))
        }
    }
}

/// The header of `bytes`, checked against the kind wanted and the caller's bound.
fn checked_header(
    id: ObjectId,
    expect: ObjectKind,
    bytes: &[u8],
    max_len: u64,
) -> Result<(ObjectKind, Codec, u64), Error> {
    let (kind, codec, len) = peek_header(id, bytes)?;
    let bad = |what: String| Error::BadObject { id, what };
    if kind != expect {
        return Err(bad(format!("is a {kind:?}, expected a {expect:?}")));
    }
    if len > max_len {
        return Err(bad(format!(
            "claims {len} bytes, more than the {max_len} allowed here"
        )));
    }
    Ok((kind, codec, len))
}

/// Inflate a zstd payload. Bounded: the output buffer holds `len` bytes and zstd refuses to
/// write past it, so a lying header is caught without inflating an arbitrary amount.
///
/// A payload at least as long as its plaintext is refused: the encoder keeps zstd only when
/// it is shorter ([`encode_parts`]), so only a tampered object has one (padded with
/// skippable frames, say). Clients cut a body longer than header and plaintext while it
/// arrives; without this, a mirror would keep such an object, verified by its plaintext,
/// and serve what its clients refuse.
fn inflate(id: ObjectId, payload: &[u8], len: u64) -> Result<Vec<u8>, Error> {
    if payload.len() as u64 >= len {
        return Err(Error::BadObject {
            id,
            what: format!(
                "a zstd payload of {} bytes for {len} bytes of plaintext (stored raw when \
                 compression does not shrink it)",
                payload.len()
            ),
        });
    }
    decompress(payload, len as usize).map_err(|e| Error::BadObject {
        id,
        what: format!("zstd: {e}"),
    })
}

/// `buf[start..]` as the plaintext of `id`, if it has the length the header gave and
/// hashes to `id` as an object of `kind`.
fn verified(
    id: ObjectId,
    kind: ObjectKind,
    buf: Vec<u8>,
    start: usize,
    len: u64,
) -> Result<Verified, Error> {
    check_plain(id, kind, &buf[start..], len)?;
    Ok(Verified {
        id,
        kind,
        buf,
        start,
    })
}

/// Does `data` have the length the header gave and hash to `id` as an object of `kind`?
fn check_plain(id: ObjectId, kind: ObjectKind, data: &[u8], len: u64) -> Result<(), Error> {
    if data.len() as u64 != len {
        return Err(Error::BadObject {
            id,
            what: format!("holds {} bytes, header says {len}", data.len()),
        });
    }
    let actual = ObjectId::of_kind(kind, data);
    if actual != id {
        return Err(Error::HashMismatch { id, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::noise;

    #[test]
    fn compressible_round_trip() {
        let text = b"samtools samtools samtools ".repeat(1000);
        let enc = encode(ObjectKind::Chunk, &text, 3);
        assert_eq!(enc.codec, Codec::Zstd);
        assert!(enc.bytes.len() < text.len() / 10);
        let v = decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20).unwrap();
        assert_eq!(v.data(), &text[..]);
    }

    #[test]
    fn incompressible_is_raw() {
        let data = noise(100_000, 0x9E3779B97F4A7C15);
        let enc = encode(ObjectKind::Chunk, &data, 3);
        assert_eq!(enc.codec, Codec::Raw);
        assert_eq!(
            decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20)
                .unwrap()
                .data(),
            &data[..]
        );
        // In place: the same bytes; a flipped payload byte, a short payload, a lying
        // length or the wrong kind are refused.
        let v = decode_owned(enc.id, ObjectKind::Chunk, enc.bytes.clone(), 1 << 20).unwrap();
        assert_eq!(v.data(), &data[..]);
        assert_eq!(v.into_data(), data);
        let mut bad = enc.bytes.clone();
        bad[HEADER_LEN + 500] ^= 1;
        assert!(decode_owned(enc.id, ObjectKind::Chunk, bad, 1 << 20).is_err());
        let short = enc.bytes[..enc.bytes.len() - 1].to_vec();
        assert!(decode_owned(enc.id, ObjectKind::Chunk, short, 1 << 20).is_err());
        assert!(decode_owned(enc.id, ObjectKind::DirNode, enc.bytes.clone(), 1 << 20).is_err());
        assert!(decode_owned(enc.id, ObjectKind::Chunk, enc.bytes.clone(), 1000).is_err());
    }

    /// An object read to an offset of its buffer decodes in place like one at its start, raw
    /// or compressed, and is refused alike when it is bad.
    #[test]
    fn decoded_at_an_offset() {
        let raw = noise(100_000, 11);
        let text = b"bioconda samtools 1.9 h91753b0_8\n".repeat(3000);
        for data in [&raw[..], &text[..]] {
            let enc = encode(ObjectKind::Chunk, data, 3);
            for at in [0, 1, 4080, 4096] {
                let mut buf = vec![0xAA; at];
                buf.extend_from_slice(&enc.bytes);
                let mut times = DecodeTimes::default();
                let (v, handed) = decode_owned_at(
                    enc.id,
                    ObjectKind::Chunk,
                    buf.clone(),
                    at,
                    1 << 20,
                    &mut times,
                )
                .unwrap();
                assert_eq!(v.data(), data);
                // A raw object's encoded bytes are its header and payload, not what precedes;
                // a compressed one's buffer comes back whole.
                if enc.codec == Codec::Raw {
                    assert_eq!(v.encoded(), Some(&enc.bytes[..]));
                    assert_eq!(handed, None);
                } else {
                    assert_eq!(v.encoded(), None);
                    assert_eq!(handed.as_deref(), Some(&buf[..]));
                }
                let mut bad = buf.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert!(
                    decode_owned_at(enc.id, ObjectKind::Chunk, bad, at, 1 << 20, &mut times)
                        .is_err()
                );
                let short = buf[..buf.len() - 1].to_vec();
                assert!(
                    decode_owned_at(enc.id, ObjectKind::Chunk, short, at, 1 << 20, &mut times)
                        .is_err()
                );
                // Shorter than its offset: refused, not a panic.
                assert!(
                    decode_owned_at(
                        enc.id,
                        ObjectKind::Chunk,
                        vec![0; 3],
                        5,
                        1 << 20,
                        &mut times
                    )
                    .is_err()
                );
            }
        }
    }

    /// The sample decides only for chunks that are incompressible where it looks: a chunk
    /// with a compressible part that a sample lands in is compressed whole, and every result
    /// decodes to its plaintext.
    #[test]
    fn sampling_skips_only_incompressible_chunks() {
        let random = noise(256 << 10, 5);
        assert!(looks_incompressible(&random));
        assert_eq!(encode(ObjectKind::Chunk, &random, 3).codec, Codec::Raw);
        // 200 KiB of noise then 56 KiB of zeros: the last samples land in the zeros.
        let mut mixed = noise(200 << 10, 6);
        mixed.resize(256 << 10, 0);
        assert!(!looks_incompressible(&mixed));
        let enc = encode(ObjectKind::Chunk, &mixed, 3);
        assert_eq!(enc.codec, Codec::Zstd);
        assert!(enc.bytes.len() < 210 << 10);
        // Text only where the last sample falls, after incompressible samples: still
        // compressed (16 KiB of text: the whole shrinks by more than 1/32).
        let mut one = noise(256 << 10, 7);
        one[224 << 10..240 << 10]
            .copy_from_slice(&b"bioconda samtools 1.9 h91753b0_8\n".repeat(500)[..16 << 10]);
        assert!(!looks_incompressible(&one));
        assert_eq!(encode(ObjectKind::Chunk, &one, 3).codec, Codec::Zstd);
        // Text throughout; and small objects are never sampled.
        let text = b"bioconda samtools 1.9 h91753b0_8\n".repeat(8000);
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&random[..SAMPLE_FROM - 1]));
        for data in [&random[..], &mixed[..], &one[..], &text[..]] {
            let enc = encode(ObjectKind::Chunk, data, 3);
            let v = decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20).unwrap();
            assert_eq!(v.data(), data);
            // The parts are the joined encoding, and a raw payload is the plaintext itself.
            let parts = encode_parts(enc.id, ObjectKind::Chunk, data, 3);
            assert_eq!([&parts.header[..], &parts.payload].concat(), enc.bytes);
            assert_eq!(parts.codec, enc.codec);
            if parts.codec == Codec::Raw {
                assert!(matches!(parts.payload, std::borrow::Cow::Borrowed(_)));
            }
        }
    }

    #[test]
    fn empty_round_trip() {
        let enc = encode(ObjectKind::Chunk, b"", 3);
        assert!(
            decode(enc.id, ObjectKind::Chunk, &enc.bytes, 0)
                .unwrap()
                .data()
                .is_empty()
        );
    }

    #[test]
    fn no_single_byte_flip_yields_wrong_bytes() {
        // A flip may land in a zstd frame field that does not change the output (the window
        // descriptor, say); then the plaintext is still right. What must never happen is a
        // successful decode that returns different bytes.
        let text = b"0123456789abcdef".repeat(64);
        for enc in [
            encode(ObjectKind::Chunk, &text, 3),
            encode(ObjectKind::Chunk, &text, -100),
        ] {
            for i in 0..enc.bytes.len() {
                let mut bad = enc.bytes.clone();
                bad[i] ^= 0x01;
                let owned = decode_owned(enc.id, ObjectKind::Chunk, bad.clone(), 1 << 20);
                let borrowed = decode(enc.id, ObjectKind::Chunk, &bad, 1 << 20);
                assert_eq!(owned.is_ok(), borrowed.is_ok(), "flip at byte {i}");
                if let Ok(v) = owned {
                    assert_eq!(v.data(), &text[..], "flip at byte {i} yielded wrong bytes");
                    assert_eq!(v.into_data(), text, "flip at byte {i}: into_data");
                }
                if let Ok(v) = borrowed {
                    assert_eq!(v.data(), &text[..], "flip at byte {i} yielded wrong bytes");
                    assert!(
                        i >= HEADER_LEN,
                        "flip in the header at byte {i} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn decode_owned_then_keeps_only_verified_bytes() {
        let text = b"0123456789abcdef".repeat(4096);
        for enc in [
            encode(ObjectKind::Chunk, &text, 3),
            encode(ObjectKind::Chunk, &noise(100_000, 7), 3),
        ] {
            // Good: `keep` sees exactly the encoded bytes, once, and the plaintext is right.
            let mut kept = Vec::new();
            let v = decode_owned_then(enc.id, ObjectKind::Chunk, enc.bytes.clone(), 1 << 20, |b| {
                kept.push(b.to_vec())
            })
            .unwrap();
            assert_eq!(kept, vec![enc.bytes.clone()], "{:?}", enc.codec);
            assert_eq!(ObjectId::of(v.data()), enc.id);
            // Bad: `keep` is never called.
            let mut bad = enc.bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let mut called = false;
            let r = decode_owned_then(enc.id, ObjectKind::Chunk, bad, 1 << 20, |_| called = true);
            assert!(r.is_err() && !called, "{:?}", enc.codec);
        }
    }

    /// Format 2: a file whose bytes equal an encoded directory node (two NUL bytes are the
    /// empty leaf) is a different object, and an object relabelled as another kind in its
    /// header no longer verifies under its own name (in format 1 it did, because the name was
    /// the plaintext's hash alone).
    #[test]
    fn one_id_is_one_object() {
        let empty_dir = crate::DirNode::Leaf(Vec::new()).to_bytes();
        assert_eq!(empty_dir, [0, 0]);
        let node = encode(ObjectKind::DirNode, &empty_dir, 3);
        let file = encode(ObjectKind::Chunk, &empty_dir, 3);
        assert_ne!(node.id, file.id);
        assert_eq!(
            decode(file.id, ObjectKind::Chunk, &file.bytes, 1 << 20)
                .unwrap()
                .data(),
            &empty_dir[..]
        );
        assert!(decode(node.id, ObjectKind::DirNode, &node.bytes, 1 << 20).is_ok());
        // The node served under the file's name, or relabelled as a chunk: refused.
        assert!(decode(file.id, ObjectKind::Chunk, &node.bytes, 1 << 20).is_err());
        let mut relabelled = node.bytes.clone();
        relabelled[4] = ObjectKind::Chunk as u8;
        assert!(matches!(
            decode(node.id, ObjectKind::Chunk, &relabelled, 1 << 20),
            Err(Error::HashMismatch { .. })
        ));
    }

    #[test]
    fn wrong_kind_and_bombs_are_refused() {
        let text = vec![0u8; 10 << 20];
        let enc = encode(ObjectKind::Chunk, &text, 3);
        assert!(decode(enc.id, ObjectKind::DirNode, &enc.bytes, 1 << 30).is_err());
        // A header within bounds but a payload that inflates further is cut off.
        let mut lying = enc.bytes.clone();
        lying[8..16].copy_from_slice(&1000u64.to_le_bytes());
        assert!(decode(enc.id, ObjectKind::Chunk, &lying, 1 << 30).is_err());
        assert!(decode(enc.id, ObjectKind::Chunk, &enc.bytes, 1 << 20).is_err());
    }

    /// A zstd skippable frame ahead of the payload: the plaintext, and so the hash, stay the
    /// same. An object padded to its plaintext's length or beyond is refused (a mirror must
    /// not keep what its clients cut); a few bytes of it are harmless and read.
    #[test]
    fn payloads_padded_to_their_plaintext_are_refused() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let enc = encode(ObjectKind::Chunk, &text, 3);
        assert_eq!(enc.codec, Codec::Zstd);
        let padded = |pad: usize| {
            let mut b = enc.bytes[..HEADER_LEN].to_vec();
            b.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
            b.extend_from_slice(&(pad as u32).to_le_bytes());
            b.resize(b.len() + pad, 0);
            b.extend_from_slice(&enc.bytes[HEADER_LEN..]);
            b
        };
        let small = padded(16);
        assert_eq!(
            decode(enc.id, ObjectKind::Chunk, &small, 1 << 20)
                .unwrap()
                .data(),
            &text[..]
        );
        let pad = text.len() - (enc.bytes.len() - HEADER_LEN);
        for bytes in [padded(pad), padded(10 << 20)] {
            let e = decode(enc.id, ObjectKind::Chunk, &bytes, 1 << 20).unwrap_err();
            assert!(e.to_string().contains("zstd payload of"), "{e}");
            let e = decode_owned(enc.id, ObjectKind::Chunk, bytes, 1 << 20).unwrap_err();
            assert!(e.to_string().contains("zstd payload of"), "{e}");
        }
    }
}
