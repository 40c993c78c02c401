//! Measure FastCDC parameters on real files: object count, dedup, and fetch granularity.
//! `cargo run --release -p depotfs-catalog --example chunk_sizes -- FILE...`
//! The numbers in docs/format.md come from this program.

use std::collections::HashSet;

fn main() {
    let files: Vec<Vec<u8>> = std::env::args()
        .skip(1)
        .map(|p| std::fs::read(&p).expect("read"))
        .collect();
    let input: usize = files.iter().map(Vec::len).sum();
    println!("{} files, {} MiB", files.len(), input >> 20);
    println!(
        "| min / avg / max | chunks | mean chunk | unique MiB | dedup saved | mean fetch for a 128 KiB read |"
    );
    println!("|---|---|---|---|---|---|");
    for (min, avg, max) in [
        (16 << 10, 64 << 10, 256 << 10),
        (64 << 10, 256 << 10, 1 << 20),
        (256 << 10, 1 << 20, 4 << 20),
        (1 << 20, 4 << 20, 16 << 20),
    ] {
        let mut seen = HashSet::new();
        let (mut chunks, mut unique, mut weighted) = (0usize, 0usize, 0f64);
        for f in &files {
            for c in fastcdc::v2020::FastCDC::new(f, min, avg, max) {
                chunks += 1;
                // A read lands in a chunk with probability proportional to its length and
                // fetches that whole chunk (plus the next one when it crosses the end).
                weighted += (c.length as f64) * (c.length as f64 + 128.0 * 1024.0) / f.len() as f64;
                if seen.insert(blake3::hash(&f[c.offset..c.offset + c.length])) {
                    unique += c.length;
                }
            }
        }
        println!(
            "| {} / {} / {} KiB | {chunks} | {} KiB | {} | {:.1} % | {} KiB |",
            min >> 10,
            avg >> 10,
            max >> 10,
            (input / chunks.max(1)) >> 10,
            unique >> 20,
            100.0 * (1.0 - unique as f64 / input as f64),
            ((weighted / files.len() as f64) as usize) >> 10
        );
    }
}
