//! Prometheus metrics of the batch commands (`sync`, `import`) for node_exporter's textfile
//! collector: a batch job is not running when Prometheus scrapes, so each run writes its
//! figures to a `.prom` file (`--metrics-file FILE`) that node_exporter serves with its own.
//!
//! Every figure is a gauge of the last run, labelled `command="sync"|"import"`, so one
//! textfile directory can hold both commands' files:
//!
//! | metric | meaning |
//! |---|---|
//! | `depotfs_batch_items{outcome}` | images or files by outcome: `fetched`, `replaced`, `unchanged`, `skipped`, `removed`, `failed` |
//! | `depotfs_batch_downloaded_bytes` | bytes read from the source (file lengths for `sync`, blob bytes for `import`) |
//! | `depotfs_batch_stored_bytes` | bytes of new objects written to the store (after deduplication and compression) |
//! | `depotfs_batch_layers_reused` | `import`: layers replayed from their record, not downloaded |
//! | `depotfs_batch_duration_seconds` | wall time of the run |
//! | `depotfs_batch_last_run_timestamp_seconds` | when the run ended |
//! | `depotfs_batch_last_success_timestamp_seconds` | when a run last ended with exit status 0 (kept from the previous file when this run failed) |
//! | `depotfs_batch_exit_status` | 0 success, 1 some items failed or the run stopped |
//!
//! The file is written whole to a temporary name in its directory and renamed over FILE, so
//! the collector never reads half a file. An alert on
//! `time() - depotfs_batch_last_success_timestamp_seconds` catches a sync that stopped
//! succeeding.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

/// What a run did; the command fills what applies to it (the rest is not written).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Items by outcome (`fetched`, `replaced`, `unchanged`, `skipped`, `removed`, `failed`).
    pub items: Vec<(&'static str, u64)>,
    /// Bytes read from the source.
    pub downloaded_bytes: u64,
    /// Bytes of new objects written to the store.
    pub stored_bytes: u64,
    /// `import`: layers not downloaded because already imported.
    pub layers_reused: Option<u64>,
}

const LAST_SUCCESS: &str = "depotfs_batch_last_success_timestamp_seconds";

/// Run `f` (a batch command's body, filling `Counts` as it goes) and, when `file` is given,
/// write the metrics of the run there whatever its outcome. The outcome of `f` is returned
/// unchanged: a file that cannot be written is logged as an error, and the file left stale
/// is what an alert on the last success time sees.
pub fn run(
    command: &'static str,
    file: Option<&Path>,
    f: impl FnOnce(&mut Counts) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut counts = Counts::default();
    let result = f(&mut counts);
    let Some(file) = file else {
        return result;
    };
    let status = match &result {
        Ok(code) if *code == ExitCode::SUCCESS => 0,
        _ => 1,
    };
    if let Err(e) = write(file, command, &counts, start.elapsed(), status) {
        tracing::error!("--metrics-file {}: {e:#}", file.display());
    }
    result
}

/// Write the metrics of one run of `command` to `file`, atomically.
pub fn write(
    file: &Path,
    command: &str,
    counts: &Counts,
    elapsed: Duration,
    exit_status: u8,
) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let last_success = if exit_status == 0 {
        Some(now)
    } else {
        previous_success(file, command)
    };
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| -> anyhow::Result<Gauge> {
        let g = Gauge::with_opts(Opts::new(name, help).const_label("command", command))?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let items = GaugeVec::new(
        Opts::new(
            "depotfs_batch_items",
            "Images or files of the last run, by outcome",
        )
        .const_label("command", command),
        &["outcome"],
    )?;
    registry.register(Box::new(items.clone()))?;
    for (outcome, n) in &counts.items {
        items.with_label_values(&[*outcome]).set(*n as f64);
    }
    gauge(
        "depotfs_batch_downloaded_bytes",
        "Bytes read from the source in the last run",
    )?
    .set(counts.downloaded_bytes as f64);
    gauge(
        "depotfs_batch_stored_bytes",
        "Bytes of new objects written to the store in the last run",
    )?
    .set(counts.stored_bytes as f64);
    if let Some(n) = counts.layers_reused {
        gauge(
            "depotfs_batch_layers_reused",
            "Layers of the last run replayed from their record, not downloaded",
        )?
        .set(n as f64);
    }
    gauge(
        "depotfs_batch_duration_seconds",
        "Wall time of the last run",
    )?
    .set(elapsed.as_secs_f64());
    gauge(
        "depotfs_batch_last_run_timestamp_seconds",
        "Unix time the last run ended",
    )?
    .set(now);
    if let Some(t) = last_success {
        gauge(
            LAST_SUCCESS,
            "Unix time a run last ended with exit status 0",
        )?
        .set(t);
    }
    gauge(
        "depotfs_batch_exit_status",
        "Exit status of the last run (0 success)",
    )?
    .set(f64::from(exit_status));

    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The one atomic writer: a world-readable temporary file (node_exporter runs as another
    // user) named `NAME.PID.SEQ`, which the collector ignores (not `*.prom`), renamed over it.
    depotfs_catalog::object_file::replace(file, &text, dir, false)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// The last-success time of `command` in an earlier file, if any.
fn previous_success(file: &Path, command: &str) -> Option<f64> {
    let text = std::fs::read_to_string(file).ok()?;
    let label = format!("command=\"{command}\"");
    text.lines()
        .filter(|l| l.starts_with(LAST_SUCCESS) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, metric: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(metric))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// A failed run keeps the earlier success time and says exit status 1; nothing else is
    /// left in the directory, and the file is world-readable.
    #[test]
    fn a_failed_run_keeps_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sync.prom");
        let c = Counts {
            items: vec![("fetched", 3), ("failed", 0)],
            downloaded_bytes: 10,
            stored_bytes: 7,
            layers_reused: None,
        };
        write(&f, "sync", &c, Duration::from_millis(1500), 0).unwrap();
        let first = std::fs::read_to_string(&f).unwrap();
        let ok_at = value(&first, LAST_SUCCESS).unwrap();
        assert!(first.contains("depotfs_batch_items{command=\"sync\",outcome=\"fetched\"} 3"));
        assert_eq!(value(&first, "depotfs_batch_duration_seconds"), Some(1.5));
        assert!(!first.contains("layers_reused"));
        std::thread::sleep(Duration::from_millis(20));
        write(&f, "sync", &c, Duration::ZERO, 1).unwrap();
        let second = std::fs::read_to_string(&f).unwrap();
        assert_eq!(value(&second, LAST_SUCCESS), Some(ok_at));
        assert_eq!(value(&second, "depotfs_batch_exit_status"), Some(1.0));
        assert!(
            value(&second, "depotfs_batch_last_run_timestamp_seconds").unwrap() > ok_at,
            "{second}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // node_exporter runs as another user.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
