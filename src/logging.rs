//! Where log lines go, and the rules they keep.
//!
//! - Logging never fails the program: a line that cannot be written (a full disk under the
//!   log file, a closed stderr) is dropped, never reported through a second
//!   write that could panic (tracing-subscriber's own fallback `eprintln!`s, which panics
//!   when stderr is that same full file).
//! - Colour only on a terminal, and not when `NO_COLOR` is set (<https://no-color.org/>).
//! - A log file ([`LogFile`], the daemon of a background mount) is appended to, never
//!   truncated, and rotated when it would pass its size limit: `FILE` → `FILE.1` → … →
//!   `FILE.{KEEP}`, the oldest dropped; so it takes at most `(KEEP + 1) × limit` bytes.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Rotated files kept beside the current one.
pub const KEEP: u32 = 2;

/// Set up `tracing` for the whole process: to `file` (limit in bytes) if given, else to
/// stderr. `RUST_LOG` selects what is logged (default `info`).
pub fn init(file: Option<(&Path, u64)>) {
    let sink = match file {
        Some((path, limit)) => Sink::File(Arc::new(Mutex::new(LogFile::open(path, limit)))),
        None => Sink::Stderr,
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = matches!(sink, Sink::Stderr) && std::io::stderr().is_terminal() && !no_color;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(ansi)
        .log_internal_errors(false)
        .with_writer(sink)
        .init();
}

/// Where each log line goes; writing it never fails.
#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<LogFile>>),
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A line that cannot be written is dropped: an error here would only make
        // tracing-subscriber try stderr, which is where this failure may be.
        let _ = match self {
            Sink::Stderr => std::io::stderr().write_all(buf),
            Sink::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write_line(buf),
        };
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An appended, size-limited, rotated log file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    limit: u64,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    /// Open `path` for appending (created if missing); rotated at `limit` bytes. A file that
    /// cannot be opened now is tried again at the next line.
    pub fn open(path: &Path, limit: u64) -> LogFile {
        let mut f = LogFile {
            path: path.to_path_buf(),
            limit: limit.max(4096),
            file: None,
            size: 0,
        };
        let _ = f.reopen();
        f
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata().map_or(0, |m| m.len());
        self.file = Some(file);
        Ok(())
    }

    /// `FILE.n` → `FILE.n+1` for n = KEEP-1 … 1, then `FILE` → `FILE.1`, then a new `FILE`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.reopen()
    }

    /// Append one formatted line, rotating first if it would pass the limit.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.limit {
            self.rotate()?;
        }
        let file = self.file.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
        // One write per line (O_APPEND): a line is never interleaved with stderr's.
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_rotates_within_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.log");
        std::fs::write(&p, "earlier run\n").unwrap();
        let mut f = LogFile::open(&p, 4096);
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..200 {
            f.write_line(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&p) <= 4096 && size(&p) > 0);
        let one = d.path().join("m.log.1");
        let two = d.path().join("m.log.2");
        assert!(size(&one) >= 4000 && size(&one) <= 4096);
        assert!(size(&two) >= 4000 && size(&two) <= 4096);
        assert!(!d.path().join("m.log.3").exists());
        // Reopened: appended to, not truncated.
        let before = size(&p);
        let mut again = LogFile::open(&p, 4096);
        again.write_line(b"y\n").unwrap();
        assert_eq!(size(&p), before + 2);
    }
}
