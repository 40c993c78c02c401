//! Progress of long operations: a bar on a terminal, periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts files and bytes done against a known total.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    total_bytes: u64,
    total_files: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    start: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// Start reporting an operation over `total_files` files of `total_bytes` bytes.
    pub fn new(what: &'static str, total_files: u64, total_bytes: u64) -> Self {
        Self::with_bar(
            what,
            total_files,
            total_bytes,
            std::io::stderr().is_terminal(),
        )
    }

    /// Counts that show nowhere: for work whose progress another [`Progress`] reports in
    /// other units (`import` counts blob bytes, not the file bytes it stages).
    pub fn hidden() -> Self {
        Self::with_bar("", 0, 0, false)
    }

    fn with_bar(what: &'static str, total_files: u64, total_bytes: u64, bar: bool) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::new(total_bytes);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_message(what);
            b
        });
        Progress {
            bar,
            what,
            total_bytes,
            total_files,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            start: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// `n` more bytes done.
    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// One more file done.
    pub fn file_done(&self) {
        if self.what.is_empty() {
            return; // hidden
        }
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.set_message(format!("{} {files}/{}", self.what, self.total_files));
            return;
        }
        let mut last = self.last_log.lock().expect("not poisoned");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            let bytes = self.bytes.load(Ordering::Relaxed);
            tracing::info!(
                "{}: {files}/{} files, {}/{} MiB, {:.0} MiB/s",
                self.what,
                self.total_files,
                bytes >> 20,
                self.total_bytes >> 20,
                bytes as f64 / (1 << 20) as f64 / self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// Stop the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Progress of an operation whose total is unknown until it ends (a graph walk): a spinner
/// with the caller's message on a terminal, the message as a log line every 5 s otherwise.
#[derive(Debug)]
pub struct Counter {
    bar: Option<ProgressBar>,
    what: &'static str,
    last: Mutex<Instant>,
}

impl Counter {
    /// Start reporting `what`.
    pub fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(200));
            b.set_message(what);
            b
        });
        Counter {
            bar,
            what,
            last: Mutex::new(Instant::now()),
        }
    }

    /// Something more was done; `msg` says how much (called only when it is shown: at most
    /// every 200 ms on a terminal, every 5 s in a log).
    pub fn tick(&self, msg: impl FnOnce() -> String) {
        let every = if self.bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        let mut last = self.last.lock().expect("not poisoned");
        if last.elapsed() < every {
            return;
        }
        *last = Instant::now();
        match &self.bar {
            Some(b) => b.set_message(format!("{}: {}", self.what, msg())),
            None => tracing::info!("{}: {}", self.what, msg()),
        }
    }

    /// Stop the spinner.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
