//! Micro-benchmarks of the publisher's per-chunk pipeline (Criterion, `harness = false`):
//! blake3 naming ([`ObjectId::of`]) and [`object::encode`] (hash + zstd at
//! [`ZSTD_LEVEL`], the level `depotfs add` uses) of 256 KiB chunks, on incompressible data
//! (compressed payloads inside images: zstd tries, then the object is stored raw) and on
//! compressible text-like data. Throughput is plaintext bytes.
//!
//! `cargo bench -p depotfs-publisher`; `benches/run` records the estimates in
//! `benches/RESULTS.md`. Measurement times are short on purpose (shared 2-core machine).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use depotfs_catalog::ObjectId;
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_publisher::ingest::ZSTD_LEVEL;

/// The average chunk size of the format (`chunking::CHUNK_AVG`).
const CHUNK: usize = depotfs_catalog::chunking::CHUNK_AVG;
/// Chunks per iteration: 16 × 256 KiB = 4 MiB.
const CHUNKS: usize = 16;

/// Deterministic pseudo-random bytes: blake3's extendable output keyed by `context`.
fn random_bytes(len: usize, context: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key(context)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Text-like bytes: words of a small vocabulary picked by the same generator.
fn text_bytes(len: usize, context: &str) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "lib",
        "bin",
        "site-packages",
        "import",
        "return",
        "static",
        "const",
        "samtools",
        "htslib",
        "GLIBC_2.17",
        ".text",
        "def",
    ];
    let picks = random_bytes(len, context);
    let mut out = Vec::with_capacity(len + 16);
    for b in picks {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[b as usize % WORDS.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn bench_pipeline(c: &mut Criterion) {
    let inputs = [
        (
            "random",
            random_bytes(CHUNK * CHUNKS, "depotfs bench random"),
        ),
        ("text", text_bytes(CHUNK * CHUNKS, "depotfs bench text")),
    ];
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    for (name, data) in &inputs {
        g.bench_function(format!("blake3_256KiB_{name}"), |b| {
            b.iter(|| {
                data.chunks(CHUNK)
                    .map(|c| ObjectId::of(black_box(c)).0[0] as u64)
                    .sum::<u64>()
            })
        });
        g.bench_function(format!("encode_256KiB_{name}"), |b| {
            b.iter(|| {
                data.chunks(CHUNK)
                    .map(|c| {
                        object::encode(ObjectKind::Chunk, black_box(c), ZSTD_LEVEL)
                            .bytes
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

/// Short runs (shared 2-core machine); command-line options such as `--measurement-time` win.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_pipeline
}
criterion_main!(benches);
