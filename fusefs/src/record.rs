//! `depotfs mount --record FILE`: every read served, as a line `PATH<TAB>OFFSET<TAB>LENGTH`
//! (PATH relative to the repository root), the trace `depotfs add --trace` turns into an
//! image's access list. Start a container once on a recording mount, publish the trace, and
//! every later mount prefetches what that start needs when the image is opened.
//!
//! Lines are buffered and written out every second ([`FLUSH_EVERY`]) and when the mount ends,
//! so a trace can be read while the mount runs. A path the trace format cannot carry (one
//! with a tab or a newline in it) is skipped with a warning.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};

/// How often buffered lines reach the file.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// An open trace file.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl Recorder {
    /// Create (or truncate) the trace file `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let f =
            File::create(path).map_err(|e| Error::io(format!("--record {}", path.display()), e))?;
        let mut out = BufWriter::new(f);
        writeln!(out, "# depotfs mount --record: PATH<TAB>OFFSET<TAB>LENGTH")
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            out: Mutex::new(out),
        })
    }

    /// Append to the trace file `path` (a daemon taking a mount over goes on with the old
    /// one's trace).
    pub fn append(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("--record {}", path.display()), e))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::new(f)),
        })
    }

    /// The trace file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Note a read of `len` bytes at `offset` of `path` (relative to the repository root).
    pub fn read(&self, path: &str, offset: u64, len: u64) {
        if path.contains(['\t', '\n', '\r']) {
            tracing::warn!("--record: {path:?} cannot be written to a trace; skipped");
            return;
        }
        let mut out = self.out.lock().expect("poisoned");
        if let Err(e) = writeln!(out, "{path}\t{offset}\t{len}") {
            tracing::warn!("--record {}: {e}", self.path.display());
        }
    }

    /// Write buffered lines to the file.
    pub fn flush(&self) {
        if let Err(e) = self.out.lock().expect("poisoned").flush() {
            tracing::warn!("--record {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_what_add_trace_reads() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.trace");
        let r = Recorder::create(&f).unwrap();
        r.read("all/samtools:1.9--h91753b0_8", 4096, 131072);
        r.read("odd\tname", 0, 1);
        r.flush();
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["all/samtools:1.9--h91753b0_8\t4096\t131072"]);
        assert!(Recorder::create(&dir.path().join("no/such/dir/t")).is_err());
    }
}
