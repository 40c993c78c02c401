//! Measure FastCDC parameters on real images: object count, dedup, and what a container start
//! fetches. The numbers in docs/format.md come from this program.
//!
//! `cargo run --release -p depotfs-catalog --example chunk_sizes -- IMAGE[=TRACE]...`
//!
//! - Images named `TOOL@VERSION…` form one group per TOOL (versions of the same tool, in the
//!   order given); dedup is reported across all images and within each group only.
//! - TRACE is a recorded start of that image in the `depotfs mount --record` format
//!   (`PATH<TAB>OFFSET<TAB>LENGTH`, `#` comments; the PATH column is ignored): each read
//!   fetches every chunk it touches, once per start. "After the previous version" counts only
//!   the chunks the previous version's start of the same tool did not already fetch (a node
//!   that ran that version has them cached).
//!
//! `benches/chunk_study.sh` builds SIF-like squashfs images and their traces and runs this.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;

/// Parameter sets (min, avg, max), in bytes; the format's own is the second.
const PARAMS: [(usize, usize, usize); 5] = [
    (16 << 10, 64 << 10, 256 << 10),
    (64 << 10, 256 << 10, 1 << 20),
    (128 << 10, 512 << 10, 2 << 20),
    (256 << 10, 1 << 20, 4 << 20),
    (1 << 20, 4 << 20, 16 << 20),
];

/// The repository the projection is for: 32.4 TB (docs FIELD-NOTES, `../shared/data`).
const REPOSITORY_BYTES: f64 = 32.4e12;

const MIB: f64 = (1 << 20) as f64;

/// One image given on the command line.
struct Image {
    path: String,
    group: String,
    /// Byte ranges (offset, length) a recorded start read, if a trace was given.
    reads: Option<Vec<(u64, u64)>>,
}

/// What one image looks like cut with one parameter set.
struct Cut {
    /// (offset, length, blake3) of every chunk, in order.
    chunks: Vec<(u64, u64, [u8; 32])>,
}

impl Cut {
    /// Indices of the chunks the reads touch, each once.
    fn touched(&self, reads: &[(u64, u64)]) -> HashSet<usize> {
        let mut out = HashSet::new();
        for &(off, len) in reads {
            let end = off.saturating_add(len.max(1));
            let mut i = self.chunks.partition_point(|c| c.0 + c.1 <= off);
            while i < self.chunks.len() && self.chunks[i].0 < end {
                out.insert(i);
                i += 1;
            }
        }
        out
    }
}

/// Totals for one parameter set.
#[derive(Default)]
struct Totals {
    chunks: usize,
    unique: HashMap<[u8; 32], u64>,
    per_group: HashMap<String, HashSet<[u8; 32]>>,
    group_unique_bytes: u64,
    starts: usize,
    start_requests: usize,
    start_bytes: u64,
    updates: usize,
    update_requests: usize,
    update_bytes: u64,
    /// Per group: the chunk ids the last start of that group fetched.
    last_start: HashMap<String, HashSet<[u8; 32]>>,
}

/// Bytes the ranges cover, each byte once.
fn distinct(reads: &[(u64, u64)]) -> u64 {
    let mut r = reads.to_vec();
    r.sort_unstable();
    let (mut total, mut end) = (0, 0);
    for (off, len) in r {
        let e = off.saturating_add(len);
        if e > end {
            total += e - off.max(end);
            end = e;
        }
    }
    total
}

fn parse_trace(path: &str) -> Result<Vec<(u64, u64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut cols = line.rsplit('\t');
        let (len, off) = (cols.next(), cols.next());
        let parse = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u64>().ok());
        match (parse(off), parse(len)) {
            (Some(off), Some(len)) => out.push((off, len)),
            _ => {
                return Err(format!(
                    "{path}:{}: expected PATH<TAB>OFFSET<TAB>LENGTH, got {line:?}",
                    n + 1
                ));
            }
        }
    }
    Ok(out)
}

fn parse_args() -> Result<Vec<Image>, String> {
    let mut images = Vec::new();
    for arg in std::env::args().skip(1) {
        let (path, trace) = match arg.split_once('=') {
            Some((p, t)) => (p.to_string(), Some(t.to_string())),
            None => (arg, None),
        };
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone());
        let group = name.split('@').next().unwrap_or(&name).to_string();
        let reads = trace.as_deref().map(parse_trace).transpose()?;
        images.push(Image { path, group, reads });
    }
    if images.is_empty() {
        return Err(
            "usage: chunk_sizes IMAGE[=TRACE]... (TOOL@VERSION names group versions)".into(),
        );
    }
    Ok(images)
}

fn main() -> ExitCode {
    let images = match parse_args() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("chunk_sizes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut totals: Vec<Totals> = PARAMS.iter().map(|_| Totals::default()).collect();
    let (mut input, mut read_bytes, mut read_calls, mut traced) = (0u64, 0u64, 0usize, 0usize);
    let mut read_distinct = 0u64;
    let groups: HashSet<&str> = images.iter().map(|i| i.group.as_str()).collect();
    for img in &images {
        // One image in memory at a time; every parameter set cuts it.
        let data = match std::fs::read(&img.path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("chunk_sizes: {}: {e}", img.path);
                return ExitCode::FAILURE;
            }
        };
        input += data.len() as u64;
        if let Some(reads) = &img.reads {
            traced += 1;
            read_calls += reads.len();
            read_bytes += reads.iter().map(|r| r.1).sum::<u64>();
            read_distinct += distinct(reads);
        }
        for (&(min, avg, max), t) in PARAMS.iter().zip(&mut totals) {
            let cut = Cut {
                chunks: fastcdc::v2020::FastCDC::new(&data, min, avg, max)
                    .map(|c| {
                        let bytes = &data[c.offset..c.offset + c.length];
                        (
                            c.offset as u64,
                            c.length as u64,
                            *blake3::hash(bytes).as_bytes(),
                        )
                    })
                    .collect(),
            };
            t.chunks += cut.chunks.len();
            let in_group = t.per_group.entry(img.group.clone()).or_default();
            for &(_, len, id) in &cut.chunks {
                t.unique.insert(id, len);
                if in_group.insert(id) {
                    t.group_unique_bytes += len;
                }
            }
            let Some(reads) = &img.reads else { continue };
            let fetched: HashSet<[u8; 32]> = cut
                .touched(reads)
                .into_iter()
                .map(|i| cut.chunks[i].2)
                .collect();
            let len_of = |id: &[u8; 32]| t.unique[id];
            t.starts += 1;
            t.start_requests += fetched.len();
            t.start_bytes += fetched.iter().map(len_of).sum::<u64>();
            if let Some(cached) = t.last_start.get(&img.group) {
                let new: Vec<_> = fetched.difference(cached).collect();
                t.updates += 1;
                t.update_requests += new.len();
                t.update_bytes += new.iter().map(|id| len_of(id)).sum::<u64>();
            }
            t.last_start.insert(img.group.clone(), fetched);
        }
    }

    println!(
        "{} images of {} tools, {:.0} MiB; {traced} recorded starts read {:.1} MiB ({:.1} MiB distinct) in {:.0} reads each (mean)",
        images.len(),
        groups.len(),
        input as f64 / MIB,
        read_bytes as f64 / MIB / traced.max(1) as f64,
        read_distinct as f64 / MIB / traced.max(1) as f64,
        read_calls as f64 / traced.max(1) as f64,
    );
    println!(
        "| min / avg / max | chunks | mean chunk | unique MiB | dedup saved (all / within tool) | objects at 32.4 TB (no dedup / this dedup) | start: requests, MiB fetched | start after the previous version: requests, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (&(min, avg, max), t) in PARAMS.iter().zip(&totals) {
        let unique: u64 = t.unique.values().sum();
        let saved = |u: u64| 100.0 * (1.0 - u as f64 / input as f64);
        let mean_chunk = input as f64 / t.chunks.max(1) as f64;
        let per = |n: usize, k: usize| n as f64 / k.max(1) as f64;
        println!(
            "| {} / {} / {} KiB | {} | {:.0} KiB | {:.0} | {:.1} % / {:.1} % | {:.1}M / {:.1}M | {:.0}, {:.1} | {:.0}, {:.1} |",
            min >> 10,
            avg >> 10,
            max >> 10,
            t.chunks,
            mean_chunk / 1024.0,
            unique as f64 / MIB,
            saved(unique),
            saved(t.group_unique_bytes),
            REPOSITORY_BYTES / mean_chunk / 1e6,
            REPOSITORY_BYTES * t.unique.len() as f64 / input as f64 / 1e6,
            per(t.start_requests, t.starts),
            t.start_bytes as f64 / MIB / t.starts.max(1) as f64,
            per(t.update_requests, t.updates),
            t.update_bytes as f64 / MIB / t.updates.max(1) as f64,
        );
    }
    ExitCode::SUCCESS
}
