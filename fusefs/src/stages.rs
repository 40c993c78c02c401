//! Where a read's time goes: per-stage counters of the client's read path (issue 21).
//!
//! Each [`Stage`] counts its calls, the wall time they took and the bytes they handled. The
//! stages of a cold read, in order: `http` (one download: request sent until its whole body
//! is in memory, including the wait for a connection permit), `decompress` (zstd),
//! `hash` (blake3 of the plaintext against the object's name: every byte served is
//! verified), `cache_write` (the verified bytes into the disk cache, on the cache's writer
//! thread after the object was handed to its reader: not on the reader's path), and
//! `cache_wait` (a download that waited, before it started, for room in the writer's queue:
//! the backpressure of a disk slower than the network, see `cache.rs`); a warm read has
//! `cache_load` (reading a cached object back) instead of `http`. Then `read` (a FUSE read
//! request, from its arrival until its bytes are assembled: the reader's wait, which overlaps
//! the stages above) and `reply` (writing the answer to `/dev/fuse`, the kernel's copy into
//! the page cache).
//!
//! Times are summed over tasks running side by side, so a stage can add up to more than the
//! read's wall time: `http` overlaps itself (several downloads in flight) and every other
//! stage. `decompress`, `hash` and `cache_load` run on the blocking pool, one object per
//! thread, `cache_write` on one writer thread, so their wall time is close to the CPU they used when the machine has
//! CPU to spare. Read by `benches/read.py` (the stage table in `benches/RESULTS.md`) through
//! the mount root's `user.depotfs.stages` attribute; metrics `depotfs_read_stage_*`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One stage of the read path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// One download, request to complete body.
    Http,
    /// zstd decompression of a fetched or cached object.
    Decompress,
    /// blake3 of the plaintext (verification).
    Hash,
    /// Storing verified bytes in the disk cache.
    CacheWrite,
    /// A download waiting for room in the cache writer's queue before it starts.
    CacheWait,
    /// Reading a cached object back from disk.
    CacheLoad,
    /// A FUSE read request, arrival until its bytes are ready.
    Read,
    /// The reply to a FUSE read written to the kernel.
    Reply,
}

/// Every stage, in read-path order.
pub const ALL: [Stage; 8] = [
    Stage::Http,
    Stage::Decompress,
    Stage::Hash,
    Stage::CacheWrite,
    Stage::CacheWait,
    Stage::CacheLoad,
    Stage::Read,
    Stage::Reply,
];

impl Stage {
    /// The stage's name in `user.depotfs.stages` and the metrics' `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Http => "http",
            Stage::Decompress => "decompress",
            Stage::Hash => "hash",
            Stage::CacheWrite => "cache_write",
            Stage::CacheWait => "cache_wait",
            Stage::CacheLoad => "cache_load",
            Stage::Read => "read",
            Stage::Reply => "reply",
        }
    }
}

#[derive(Debug, Default)]
struct Counter {
    calls: AtomicU64,
    nanos: AtomicU64,
    bytes: AtomicU64,
}

/// The counters of every stage.
#[derive(Debug, Default)]
pub struct Stages {
    counters: [Counter; ALL.len()],
}

/// One stage's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Calls.
    pub calls: u64,
    /// Wall time, summed over calls.
    pub nanos: u64,
    /// Bytes handled.
    pub bytes: u64,
}

/// A metric family of the stages: name, help, and its value from a stage's totals.
pub type Metric = (&'static str, &'static str, fn(Totals) -> f64);

/// The metric families of the stages, each sampled per `stage` label.
pub const METRICS: [Metric; 3] = [
    (
        "depotfs_read_stage_seconds_total",
        "Wall time spent in each stage of the read path, summed over tasks running side by side (see fusefs/src/stages.rs).",
        |t| t.nanos as f64 / 1e9,
    ),
    (
        "depotfs_read_stage_bytes_total",
        "Bytes each stage of the read path handled.",
        |t| t.bytes as f64,
    ),
    (
        "depotfs_read_stage_calls_total",
        "Calls of each stage of the read path (downloads, objects, FUSE reads).",
        |t| t.calls as f64,
    ),
];

impl Stages {
    /// Count one call of `stage` that took `took` and handled `bytes`.
    pub fn add(&self, stage: Stage, took: Duration, bytes: u64) {
        let c = &self.counters[stage as usize];
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Run `f`, counting it as one call of `stage` that handled `bytes`.
    pub fn time<T>(&self, stage: Stage, bytes: u64, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.add(stage, t.elapsed(), bytes);
        r
    }

    /// The totals of `stage` so far.
    pub fn get(&self, stage: Stage) -> Totals {
        let c = &self.counters[stage as usize];
        Totals {
            calls: c.calls.load(Ordering::Relaxed),
            nanos: c.nanos.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// Every stage's totals by name, in read-path order (for [`crate::status::Status`]).
    pub fn snapshot(&self) -> Vec<(String, Totals)> {
        ALL.iter()
            .map(|&s| (s.name().to_string(), self.get(s)))
            .collect()
    }

    /// `user.depotfs.stages` now (see [`to_text`]).
    pub fn to_text(&self) -> String {
        to_text(&self.snapshot())
    }
}

/// `user.depotfs.stages`: one line per stage, `NAME CALLS NANOSECONDS BYTES`.
pub fn to_text(stages: &[(String, Totals)]) -> String {
    stages
        .iter()
        .map(|(name, t)| format!("{name} {} {} {}\n", t.calls, t.nanos, t.bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_and_print_one_line_each() {
        let s = Stages::default();
        s.add(Stage::Hash, Duration::from_micros(3), 100);
        s.add(Stage::Hash, Duration::from_micros(4), 50);
        assert_eq!(s.time(Stage::Reply, 7, || 42), 42);
        assert_eq!(
            s.get(Stage::Hash),
            Totals {
                calls: 2,
                nanos: 7000,
                bytes: 150
            }
        );
        let text = s.to_text();
        assert_eq!(text.lines().count(), ALL.len());
        assert!(text.contains("hash 2 7000 150\n"), "{text}");
        assert!(text.starts_with("http 0 0 0\n"), "{text}");
        assert!(text.contains("\nreply 1 "), "{text}");
    }
}
