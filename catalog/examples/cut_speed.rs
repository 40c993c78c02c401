//! The chunker alone: `cut_speed lanes|crate [ROUNDS [MIB]]` cuts MIB (default 16) MiB of
//! pseudo-random bytes ROUNDS times (default 64) with `chunking::cut_points` (the lane scan)
//! or with `fastcdc`'s `FastCDC` (the reference it must equal), and prints the speed of the
//! fastest round and of the median round, in wall time (the kernel's CPU-time accounting
//! here moves in 4 ms ticks, too coarse for a round). On a shared machine the fastest round
//! is the one least disturbed by its neighbours.

use depotfs_catalog::chunking::{self, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "lanes".into());
    let rounds: usize = args
        .next()
        .map_or(64, |r| r.parse().expect("ROUNDS: a number"));
    let mib: usize = args
        .next()
        .map_or(16, |m| m.parse().expect("MIB: a number"));
    let mut data = vec![0u8; mib << 20];
    blake3::Hasher::new()
        .update(b"cut_speed")
        .finalize_xof()
        .fill(&mut data);
    let mut times = Vec::new();
    let mut chunks = 0;
    for _ in 0..rounds {
        let start = std::time::Instant::now();
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
        times.push(start.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let speed = |ns: u64| mib as f64 / (ns as f64 * 1e-9);
    println!(
        "{which}: {chunks} chunks in {rounds} x {mib} MiB: fastest round {:.0} MiB/s, median {:.0} MiB/s",
        speed(times[0]),
        speed(times[times.len() / 2])
    );
}
