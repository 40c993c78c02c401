//! The FastCDC 2020 cut search of [`super::cut_points`], computed in four hash lanes at once.
//!
//! `fastcdc` 5.0.0 (`v2020::cut_gear`, normalization level 1, seed 0) hashes a chunk from
//! [`CHUNK_MIN`] on with the gear hash `h = (h << 1) + GEAR[byte]` and cuts at the first
//! position `p` whose hash has none of the mask's bits set: the chunk is `p` bytes long. The
//! mask is the strict `mask_s` before the average size and the looser `mask_l` from there to
//! [`CHUNK_MAX`]; if nothing hits, the chunk is [`CHUNK_MAX`] bytes (or the rest of the input).
//! The crate steps two bytes at a time (`(h << 2) + GEAR_LS[a]`, tested with the mask shifted
//! left by one, then `+ GEAR[b]` tested with the mask): `GEAR_LS` is `GEAR << 1`, so the first
//! step's value is the one-byte hash at `a` shifted left by one, and its test is the one-byte
//! test on bits 0–62; the masks have bit 63 clear, so the test is the same as the one-byte test.
//!
//! That hash is a single dependency chain, one shift and one add per byte, which leaves the
//! CPU mostly idle. But every step shifts the hash left by one, so a byte's contribution has
//! left the 64-bit hash 64 bytes later: the hash at `p` is a function of the bytes
//! `max(CHUNK_MIN, p - 63)..=p` alone. So a stretch of positions can be hashed starting from
//! zero 63 bytes before it (or at [`CHUNK_MIN`], where the crate starts from zero), exactly.
//! [`next_cut`] cuts the search range into blocks of four segments and hashes the four
//! segments side by side, four independent chains the CPU runs in parallel; a block in which
//! some lane hits is scanned again one byte at a time from its start for the first hit.
//!
//! The gear table and the masks are the crate's own (`get_gear_with_seed(0)`,
//! `select_masks`); the tests compare every cut with the crate's `FastCDC`.

use std::sync::LazyLock;

use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};

use super::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Bytes per lane per block. Each lane hashes 63 bytes before its segment (1.5 % here), and
/// the block with the cut is hashed once more up to it; both shrink relative to the search
/// with longer segments, the second grows with them.
const SEGMENT: usize = 2048;
/// Lanes hashed side by side.
const LANES: usize = 4;
/// Bytes per block of the lane scan.
const BLOCK: usize = LANES * SEGMENT;

/// The crate's gear table and masks for the format's parameters.
struct Gear {
    table: [u64; 256],
    /// `table << 1`, for two bytes per step.
    table_ls: [u64; 256],
    /// Mask before [`CHUNK_AVG`].
    mask_s: u64,
    /// Mask from [`CHUNK_AVG`] on.
    mask_l: u64,
}

static GEAR: LazyLock<Gear> = LazyLock::new(|| {
    let (crate_table, _) = get_gear_with_seed(0);
    let mut table = [0u64; 256];
    for (t, &c) in table.iter_mut().zip(crate_table.iter()) {
        *t = c;
    }
    let (mask_s, mask_l) = select_masks(CHUNK_AVG, Normalization::Level1);
    Gear {
        table,
        table_ls: table.map(|v| v << 1),
        mask_s,
        mask_l,
    }
});

/// Length of the chunk that starts at `data[0]`, as `fastcdc::v2020::FastCDC` cuts it with
/// [`CHUNK_MIN`], [`CHUNK_AVG`], [`CHUNK_MAX`]: `data.len()` when it is at most [`CHUNK_MIN`].
pub(super) fn next_cut(data: &[u8]) -> usize {
    next_cut_from(data, CHUNK_MIN)
}

/// [`next_cut`], given that no position before `from` hits (see [`first_hit`]).
pub(super) fn next_cut_from(data: &[u8], from: usize) -> usize {
    if data.len() <= CHUNK_MIN {
        return data.len();
    }
    let end = data.len().min(CHUNK_MAX);
    first_hit(data, from, end & !1).unwrap_or(end)
}

/// The first position in `from.max(CHUNK_MIN)..to` where the chunk that starts at `data[0]`
/// is cut. The crate tests positions in pairs up to the last even position below the end
/// (or [`CHUNK_MAX`]), with `mask_s` below the last even position below the average (or the
/// end, if shorter), `mask_l` from there: for every position it tests, that is `mask_s`
/// exactly below [`CHUNK_AVG`]. So a position below `data.len() - 1` is tested, with the same
/// mask, whatever bytes come after `data`: a hit found in a prefix of a chunk's bytes is
/// final, and a prefix without one need not be scanned again when more bytes come
/// ([`super::stream_chunks`] cuts each piece of its input as soon as it is read).
pub(super) fn first_hit(data: &[u8], from: usize, to: usize) -> Option<usize> {
    let gear = &*GEAR;
    let from = from.max(CHUNK_MIN);
    scan(data, gear, from, to.min(CHUNK_AVG), gear.mask_s)
        .or_else(|| scan(data, gear, from.max(CHUNK_AVG), to, gear.mask_l))
}

/// The first position in `from..to` whose hash matches `mask`.
fn scan(data: &[u8], gear: &Gear, from: usize, to: usize, mask: u64) -> Option<usize> {
    if to <= from {
        return None;
    }
    let mut at = from;
    while to.saturating_sub(at) >= BLOCK {
        if lanes_hit(data, gear, at, mask) {
            if let Some(p) = scan_bytes(data, gear, at, at + BLOCK, mask) {
                return Some(p);
            }
            debug_assert!(
                false,
                "a lane hit in {at}..+{BLOCK} that the byte scan missed"
            );
        }
        at += BLOCK;
    }
    scan_bytes(data, gear, at, to, mask)
}

/// The hash just before position `at`: that of the (at most 63) bytes before it, from
/// [`CHUNK_MIN`] on.
fn hash_before(data: &[u8], gear: &Gear, at: usize) -> u64 {
    let from = at.saturating_sub(63).max(CHUNK_MIN).min(at);
    data[from..at].iter().fold(0u64, |h, &b| {
        (h << 1).wrapping_add(gear.table[usize::from(b)])
    })
}

/// The first position in `from..to` whose hash matches `mask`, one byte at a time.
fn scan_bytes(data: &[u8], gear: &Gear, from: usize, to: usize, mask: u64) -> Option<usize> {
    let mut h = hash_before(data, gear, from);
    for (i, &b) in data[from..to].iter().enumerate() {
        h = (h << 1).wrapping_add(gear.table[usize::from(b)]);
        if h & mask == 0 {
            return Some(from + i);
        }
    }
    None
}

/// Whether any position in the block `at..at + BLOCK` matches `mask`: its four segments
/// hashed side by side, two bytes per step as the crate steps.
fn lanes_hit(data: &[u8], gear: &Gear, at: usize, mask: u64) -> bool {
    let mask_ls = mask << 1;
    let block = &data[at..at + BLOCK];
    let (s0, rest) = block.split_at(SEGMENT);
    let (s1, rest) = rest.split_at(SEGMENT);
    let (s2, s3) = rest.split_at(SEGMENT);
    let [mut h0, mut h1, mut h2, mut h3] =
        std::array::from_fn(|j| hash_before(data, gear, at + j * SEGMENT));
    let (t, tls) = (&gear.table, &gear.table_ls);
    let quads = s0
        .as_chunks::<4>()
        .0
        .iter()
        .zip(s1.as_chunks::<4>().0)
        .zip(s2.as_chunks::<4>().0)
        .zip(s3.as_chunks::<4>().0);
    for (((q0, q1), q2), q3) in quads {
        for k in [0, 2] {
            h0 = (h0 << 2).wrapping_add(tls[usize::from(q0[k])]);
            h1 = (h1 << 2).wrapping_add(tls[usize::from(q1[k])]);
            h2 = (h2 << 2).wrapping_add(tls[usize::from(q2[k])]);
            h3 = (h3 << 2).wrapping_add(tls[usize::from(q3[k])]);
            if h0 & mask_ls == 0 || h1 & mask_ls == 0 || h2 & mask_ls == 0 || h3 & mask_ls == 0 {
                return true;
            }
            h0 = h0.wrapping_add(t[usize::from(q0[k + 1])]);
            h1 = h1.wrapping_add(t[usize::from(q1[k + 1])]);
            h2 = h2.wrapping_add(t[usize::from(q2[k + 1])]);
            h3 = h3.wrapping_add(t[usize::from(q3[k + 1])]);
            if h0 & mask == 0 || h1 & mask == 0 || h2 & mask == 0 || h3 & mask == 0 {
                return true;
            }
        }
    }
    false
}

/// The crate's chunker, the reference every test compares with.
#[cfg(test)]
pub(super) fn reference_cuts(data: &[u8]) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|c| (c.offset, c.length))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::noise;

    /// Our cuts and the crate's, for all of `data` and for the chunk at its start.
    fn assert_same(data: &[u8], what: &str) {
        let ours = super::super::cut_points(data);
        let theirs = reference_cuts(data);
        assert_eq!(ours, theirs, "{what}: {} bytes", data.len());
    }

    /// The gear hash at `p` by its definition: the bytes from [`CHUNK_MIN`] on, at most 64.
    fn hash_at(data: &[u8], p: usize) -> u64 {
        (p.saturating_sub(63).max(CHUNK_MIN)..=p).fold(0u64, |h, i| {
            (h << 1).wrapping_add(GEAR.table[usize::from(data[i])])
        })
    }

    /// The mask the crate tests position `p` of a chunk of `len` bytes with.
    fn mask_at(p: usize, len: usize) -> u64 {
        if p < (CHUNK_AVG.min(len.min(CHUNK_MAX)) & !1) {
            GEAR.mask_s
        } else {
            GEAR.mask_l
        }
    }

    /// Set the bytes `p - 2..=p` so that the first cut of `data` is at `p`: the hash hits
    /// there and not at `p - 2` or `p - 1` (checked with the crate). Panics if no choice does.
    fn craft_hit(data: &mut [u8], p: usize) {
        let len = data.len();
        let hits = |d: &[u8], q: usize| hash_at(d, q) & mask_at(q, len) == 0;
        for c in 0..=255u8 {
            for b in 0..=255u8 {
                data[p - 2] = c;
                data[p - 1] = b;
                if hits(data, p - 2) || hits(data, p - 1) {
                    continue;
                }
                let before = hash_at(data, p - 1) << 1;
                if let Some(a) = (0..=255u8).find(|&a| {
                    before.wrapping_add(GEAR.table[usize::from(a)]) & mask_at(p, len) == 0
                }) {
                    data[p] = a;
                    assert!(hits(data, p));
                    return;
                }
            }
        }
        panic!("no bytes make a hit at {p}");
    }

    #[test]
    fn gear_table_and_masks_are_the_crates() {
        let (table, table_ls) = get_gear_with_seed(0);
        assert_eq!(&GEAR.table[..], &table[..]);
        assert_eq!(&GEAR.table_ls[..], &table_ls[..]);
        // The one-byte test equals the crate's shifted test at even positions only if the
        // masks leave bit 63 alone.
        assert_eq!((GEAR.mask_s >> 63, GEAR.mask_l >> 63), (0, 0));
        assert_ne!(GEAR.mask_s, GEAR.mask_l);
    }

    #[test]
    fn same_cuts_as_fastcdc_on_random_data_of_many_lengths() {
        let data = noise(7 << 20, 2026);
        let mut lens = vec![0, 1, 2, 1000, 3 << 20, (7 << 20) - 1, 7 << 20];
        for base in [
            CHUNK_MIN,
            CHUNK_AVG,
            CHUNK_MAX,
            CHUNK_MIN + BLOCK,
            CHUNK_AVG + BLOCK,
        ] {
            for d in [-65isize, -64, -63, -3, -2, -1, 0, 1, 2, 3, 63, 64, 65] {
                lens.push(base.checked_add_signed(d).unwrap());
            }
        }
        // And lengths from a seeded generator, short and long.
        let mut seed = 99u64;
        for i in 0..60 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let max = if i % 2 == 0 { 2 * CHUNK_MAX } else { 7 << 20 };
            lens.push((seed % max as u64) as usize);
        }
        for len in lens {
            assert_same(&data[..len], "random prefix");
            // The same length at an odd offset: other bytes, other alignment.
            assert_same(&data[(7 << 20) - len..], "random suffix");
        }
    }

    #[test]
    fn same_cuts_as_fastcdc_on_low_entropy_data() {
        let len = 5 * CHUNK_MAX + 3;
        assert_same(&vec![0u8; len], "zeros");
        assert_same(&vec![0xffu8; len], "ones");
        // Repeating patterns: the hash repeats with the period, so a period that hits cuts
        // often, one that does not cuts at the maximum.
        for period in [
            2usize,
            3,
            7,
            48,
            63,
            64,
            65,
            100,
            4096,
            SEGMENT + 1,
            3 * SEGMENT - 5,
        ] {
            for seed in 1..4u64 {
                let unit = noise(period, seed * 1000 + period as u64);
                let data: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
                assert_same(&data, &format!("period {period} seed {seed}"));
            }
        }
        // Two-letter text, and sparse noise in zeros.
        let two: Vec<u8> = noise(len, 5).iter().map(|b| b'a' + (b & 1)).collect();
        assert_same(&two, "two letters");
        let mut sparse = vec![0u8; len];
        for (i, b) in noise(len / 97, 6).into_iter().enumerate() {
            sparse[i * 97] = b;
        }
        assert_same(&sparse, "sparse");
    }

    /// Positions where the lane scan changes hands: the edges of segments and blocks, the
    /// start of the hash at the minimum, the mask switch at the average, the end.
    fn edge_positions() -> Vec<usize> {
        let mut at = vec![CHUNK_MIN + 2, CHUNK_MIN + 3, CHUNK_MIN + 62, CHUNK_MIN + 63];
        at.extend([CHUNK_MIN + 64, CHUNK_MIN + 65]);
        let split = CHUNK_AVG;
        for start in [CHUNK_MIN, CHUNK_MIN + 7 * BLOCK, split, split + 3 * BLOCK] {
            for lane in 0..=LANES {
                let edge = start + lane * SEGMENT;
                for d in [-2isize, -1, 0, 1, 2, 47, 48, 63, 64] {
                    at.push(edge.checked_add_signed(d).unwrap());
                }
            }
        }
        at.extend([split - 2, split - 1, split, split + 1]);
        at.extend([
            CHUNK_MAX - BLOCK - 1,
            CHUNK_MAX - BLOCK,
            CHUNK_MAX - 2,
            CHUNK_MAX - 1,
        ]);
        at.retain(|&p| p >= CHUNK_MIN + 2);
        at
    }

    #[test]
    fn same_cuts_as_fastcdc_with_hits_at_lane_and_block_edges() {
        for (i, p) in edge_positions().into_iter().enumerate() {
            // Zeros never hit; noise in the 64 bytes before `p` feeds the lanes' warm-up.
            let mut data = vec![0u8; 3 * CHUNK_MAX];
            let from = p.saturating_sub(80).max(CHUNK_MIN);
            data[from..p].copy_from_slice(&noise(p - from, i as u64 + 1));
            craft_hit(&mut data, p);
            let theirs = reference_cuts(&data);
            assert_eq!(theirs[0], (0, p), "crafted hit at {p}");
            assert_same(&data, &format!("hit at {p}"));
            // Shorter inputs: the hit then falls near their end and the mask switch moves.
            for len in [p + 1, p + 2, p + 3] {
                assert_same(&data[..len], &format!("hit at {p} of {len}"));
            }
        }
    }

    /// Hits in two lanes of one block: the lanes run side by side, so the later lane's hit
    /// is seen first when it is closer to its segment's start; the earlier one must win.
    #[test]
    fn the_earliest_of_several_lane_hits_wins() {
        let block = CHUNK_MIN + 2 * BLOCK;
        for (early, late) in [
            (block + 1000, block + 2 * SEGMENT + 10),
            (block + SEGMENT - 3, block + 3 * SEGMENT + 2),
            (block + SEGMENT + 500, block + 3 * SEGMENT + 100),
            (block + 4, block + 3 * SEGMENT + 4),
        ] {
            let mut data = vec![0u8; 2 * CHUNK_MAX];
            craft_hit(&mut data, late);
            craft_hit(&mut data, early);
            assert_eq!(reference_cuts(&data)[0], (0, early));
            assert_same(&data, &format!("hits at {early} and {late}"));
        }
    }

    /// The streaming chunker cuts after every read of [`super::super::READ_STEP`] bytes what it
    /// can: a chunk whose cut point is already read. Hits around the ends of those reads (the
    /// last two positions of a read are not tested until more is read) and a chunk that spans
    /// several reads must cut as the whole input does.
    #[test]
    fn stream_cuts_the_same_around_read_ends() {
        let step = super::super::READ_STEP;
        for d in [-3isize, -2, -1, 0, 1, 2] {
            let mut data = vec![0u8; 4 * step + 3 * CHUNK_MAX];
            // A chunk from 0 cut `d` from the end of the first read, the next one that of the
            // third read (after a chunk that spans reads).
            let first = step.checked_add_signed(d).unwrap();
            craft_hit(&mut data, first);
            let second = (3 * step).checked_add_signed(d).unwrap();
            craft_hit(&mut data[first..], second - first);
            let theirs = reference_cuts(&data);
            assert_eq!(&theirs[..2], &[(0, first), (first, second - first)]);
            let streamed: Vec<(usize, usize)> = super::super::stream_chunks(&data[..])
                .map(|r| r.map(|(o, c)| (o as usize, c.len())).unwrap())
                .collect();
            assert_eq!(streamed, theirs, "hits {d} from the ends of reads");
        }
    }
}
