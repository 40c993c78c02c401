//! How the zstd level of the incompressibility sample (`object::SAMPLE_LEVEL`) was chosen:
//! the corpus's files cut into chunks as `depotfs add` cuts them, each chunk's sample (8
//! evenly spaced 4 KiB pieces) compressed at several levels, with the CPU time per GiB of
//! chunks and how many chunks each level judges otherwise than level 3 (the level chunks are
//! compressed at).
//!
//! `cargo run --release -p depotfs-catalog --example sample_level -- DIR [MiB]`: every file
//! of DIR (the suite's corpus: `benches/gen_corpus.py images`), up to MiB of chunks (1024).

use std::time::Instant;

use depotfs_catalog::chunking::cut_points;

const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 4096;

fn sample(chunk: &[u8]) -> Vec<u8> {
    let stride = chunk.len() / SAMPLES;
    (0..SAMPLES)
        .flat_map(|i| &chunk[i * stride..i * stride + SAMPLE_LEN])
        .copied()
        .collect()
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: sample_level DIR [MiB]");
    let most = args
        .next()
        .map_or(1024, |m| m.parse::<usize>().expect("MiB"))
        << 20;
    let mut samples = Vec::new();
    let mut total = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    files.sort_by_key(|e| e.file_name());
    'files: for f in files {
        let data = std::fs::read(f.path())?;
        for (off, len) in cut_points(&data) {
            if len >= 64 * 1024 {
                samples.push(sample(&data[off..off + len]));
                total += len;
                if total >= most {
                    break 'files;
                }
            }
        }
    }
    let gib = total as f64 / f64::from(1u32 << 30);
    println!(
        "{} chunks of 64 KiB or more, {} MiB",
        samples.len(),
        total >> 20
    );
    let judge = |level: i32| -> std::io::Result<(Vec<bool>, f64)> {
        let mut c = zstd::bulk::Compressor::new(level)?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLES * SAMPLE_LEN));
        let t = Instant::now();
        let mut raw = Vec::with_capacity(samples.len());
        for s in &samples {
            out.clear();
            let n = c.compress_to_buffer(s, &mut out)?;
            raw.push(n >= s.len() - s.len() / 32);
        }
        Ok((raw, t.elapsed().as_secs_f64() / gib))
    };
    let (base, _) = judge(3)?;
    for level in [3, 1, -1, -3, -5] {
        let (raw, s_per_gib) = judge(level)?;
        let differ = raw.iter().zip(&base).filter(|(a, b)| a != b).count();
        let n_raw = raw.iter().filter(|r| **r).count();
        println!(
            "level {level:>2}: {s_per_gib:.4} CPU s/GiB, {n_raw} judged incompressible, {differ} judged otherwise than level 3"
        );
    }
    Ok(())
}
