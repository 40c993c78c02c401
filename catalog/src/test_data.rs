//! Test data shared by this crate's unit tests.

/// `len` pseudo-random bytes (xorshift64 from `seed`): incompressible, deterministic.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}
