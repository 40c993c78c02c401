//! Micro-benchmarks of the published format's hot paths (Criterion, `harness = false`):
//!
//! - `chunking`: FastCDC cut points ([`chunking::cut_points`]) and the streaming chunker
//!   ([`chunking::stream_chunks`]) over 64 MiB of pseudo-random data (throughput in bytes),
//!   and `fastcdc`'s own `FastCDC` over the same bytes (the cuts `cut_points` must equal).
//! - `dir`: [`dir::build`] of the 118,594 names of the real `all/` listing
//!   (`tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz`, read with `gzip -dc`), and
//!   [`dir::lookup`] / [`dir::list_from`] over the built tree, with nodes decoded once into
//!   memory (so the figures are the tree walk, not the network or the cache).
//!
//! `cargo bench -p depotfs-catalog`; `benches/run` records the estimates in `benches/RESULTS.md`.
//! Measurement times are short on purpose: these run on a shared 2-core machine.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use depotfs_catalog::dir::{self, NodeSource};
use depotfs_catalog::object::{self, Encoded};
use depotfs_catalog::{
    DirNode, Entry, EntryKind, Error, FileContent, ObjectId, ObjectKind, chunking,
};

/// Size of the chunker's input.
const CHUNK_INPUT: usize = 64 << 20;
/// zstd level used for directory nodes in the `dir::build` benchmark (the publisher's level).
const LEVEL: i32 = 3;

/// Deterministic pseudo-random bytes (blake3's extendable output), the same every run.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn bench_chunking(c: &mut Criterion) {
    let data = pseudo_random(CHUNK_INPUT, 7);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cut_points_64MiB", |b| {
        b.iter(|| chunking::cut_points(black_box(&data)).len())
    });
    // The crate's own chunker, which `cut_points` must match cut for cut: the reference
    // for the lane scan's speed-up.
    g.bench_function("fastcdc_crate_64MiB", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(
                black_box(&data),
                chunking::CHUNK_MIN,
                chunking::CHUNK_AVG,
                chunking::CHUNK_MAX,
            )
            .count()
        })
    });
    g.bench_function("stream_chunks_64MiB", |b| {
        b.iter(|| {
            chunking::stream_chunks(Cursor::new(black_box(&data[..])))
                .map(|r| r.expect("reading from memory cannot fail").1.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// The 118,594 names of the real listing as sorted, unique file entries.
fn listing_entries() -> Vec<Entry> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running gzip -dc {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "gzip -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("the listing is UTF-8");
    let mut entries: Vec<Entry> = text
        .lines()
        .skip(1)
        .map(|line| {
            let mut f = line.split('\t');
            let name = f.next().expect("a name column").to_string();
            let size: u64 = f
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{}: bad size column in {line:?}", path.display()));
            let mtime: i64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            Entry {
                kind: EntryKind::File {
                    size,
                    content: FileContent::Single(ObjectId::of(name.as_bytes())),
                },
                name,
                mode: 0o644,
                mtime_ns: mtime * 1_000_000_000,
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    entries
}

/// Directory nodes held decoded in memory.
struct MemNodes(HashMap<ObjectId, Arc<DirNode>>);

impl NodeSource for MemNodes {
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, Error> {
        self.0
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("directory node {id} not built")))
    }
}

fn bench_dir(c: &mut Criterion) {
    let entries = listing_entries();
    assert!(
        entries.len() > 100_000,
        "expected the 118,594-name listing, got {} names",
        entries.len()
    );
    let mut g = c.benchmark_group("dir");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("build_118594", |b| {
        b.iter_batched(
            || entries.clone(),
            |es| {
                let mut n = 0usize;
                dir::build(es, LEVEL, &mut |e: Encoded| {
                    n += e.bytes.len();
                    Ok(())
                })
                .expect("build");
                n
            },
            criterion::BatchSize::LargeInput,
        )
    });

    let mut nodes = HashMap::new();
    let built = dir::build(entries.clone(), LEVEL, &mut |e: Encoded| {
        let v = object::decode(e.id, ObjectKind::DirNode, &e.bytes, dir::NODE_MAX_BYTES)?;
        nodes.insert(e.id, Arc::new(DirNode::from_verified(&v)?));
        Ok(())
    })
    .expect("build");
    let src = MemNodes(nodes);
    // Every 997th name: spread over the whole tree, the same each run.
    let probes: Vec<&str> = entries
        .iter()
        .step_by(997)
        .map(|e| e.name.as_str())
        .collect();
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup", |b| {
        b.iter(|| {
            for name in &probes {
                let hit = dir::lookup(&src, &built.tree, black_box(name)).expect("lookup");
                assert!(hit.is_some(), "{name} not found in the built tree");
            }
        })
    });
    g.throughput(Throughput::Elements(built.entries));
    g.bench_function("list_from_0_all", |b| {
        b.iter(|| {
            let mut n = 0u64;
            dir::list_from(&src, &built.tree, 0, &mut |_, e| {
                n += e.name.len() as u64;
                true
            })
            .expect("list");
            n
        })
    });
    g.finish();
}

/// Short runs (shared 2-core machine); command-line options such as `--measurement-time` win.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_chunking, bench_dir
}
criterion_main!(benches);
