//! The chunker alone, for `perf stat`: `cut_speed lanes|crate [ROUNDS]` cuts 64 MiB of
//! pseudo-random bytes ROUNDS times (default 16) with `chunking::cut_points` (the lane scan)
//! or with `fastcdc`'s `FastCDC` (the reference), and prints MiB/s of wall time (run it under `perf stat` for
//! CPU time and cycles: the machine is shared).

use depotfs_catalog::chunking::{self, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "lanes".into());
    let rounds: usize = args
        .next()
        .map_or(16, |r| r.parse().expect("ROUNDS: a number"));
    let mut data = vec![0u8; 64 << 20];
    blake3::Hasher::new()
        .update(b"cut_speed")
        .finalize_xof()
        .fill(&mut data);
    let start = std::time::Instant::now();
    let mut chunks = 0;
    for _ in 0..rounds {
        chunks += match which.as_str() {
            "lanes" => chunking::cut_points(std::hint::black_box(&data)).len(),
            "crate" => fastcdc::v2020::FastCDC::new(
                std::hint::black_box(&data),
                CHUNK_MIN,
                CHUNK_AVG,
                CHUNK_MAX,
            )
            .count(),
            other => panic!("lanes or crate, not {other}"),
        };
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{which}: {chunks} chunks, {:.0} MiB/s wall ({secs:.2} s for {rounds} x 64 MiB)",
        (rounds * 64) as f64 / secs
    );
}
