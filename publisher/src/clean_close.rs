//! `STORE/catalog.redb.clean`: the catalog file as the last clean close by a depotfs writer
//! left it, so that the next open can skip redb's full integrity check (#18, `docs/scale.md`).
//!
//! redb verifies page checksums only in its integrity check and in its recovery after an
//! unclean shutdown (which it detects by itself and which reads every page); an ordinary read
//! trusts the page, and a page damaged outside redb may panic inside it (#16). The check reads
//! the whole file: ~0.5 s of every command at 1M entries (`log` 0.55 s → 0.04 s without it),
//! more at 20M. So a writer that closes the catalog cleanly records the file's identity and
//! times here (device, inode, size, mtime, ctime), and an open that finds them unchanged skips
//! the check. Anything that touches the
//! file in between (a write by another program, a copy, a restore, `rebuild-catalog`) changes
//! the ctime or the inode, and a process that dies holding the catalog leaves no record (the
//! open removes it), so those opens check in full. `verify` and `gc` always check in full.
//!
//! What this cannot see: damage below the file system (a disk that flips bits without the
//! kernel knowing) between a clean close and the next open. `depotfs verify` finds it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{Layout, write_atomic};
use crate::{Error, Result};

const HEADER: &str = "depotfs catalog clean close 1";

/// What identifies one state of the catalog file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: mtime_ns(&m),
            ctime_ns: ctime_ns(&m),
        })
    }

    fn to_text(self) -> String {
        format!(
            "{HEADER}\ndev {}\nino {}\nsize {}\nmtime_ns {}\nctime_ns {}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }

    /// The stamp in `text`, or None for anything else (then the open checks in full).
    fn parse(text: &str) -> Option<Stamp> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut field = |name: &str| -> Option<i128> {
            let (k, v) = lines.next()?.split_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        };
        Some(Stamp {
            dev: field("dev")?.try_into().ok()?,
            ino: field("ino")?.try_into().ok()?,
            size: field("size")?.try_into().ok()?,
            mtime_ns: field("mtime_ns")?,
            ctime_ns: field("ctime_ns")?,
        })
    }
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// `STORE/catalog.redb.clean`.
pub(crate) fn record_path(layout: &Layout) -> PathBuf {
    layout.root.join("catalog.redb.clean")
}

/// Whether the catalog is exactly as the last clean close left it. Removes the record either
/// way: from here until this process closes the catalog cleanly, nothing vouches for it.
pub(crate) fn take(layout: &Layout) -> Result<bool> {
    let path = record_path(layout);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Unreadable (not UTF-8, a directory...): no record; the removal below reports the rest.
        Err(_) => String::new(),
    };
    let recorded_at = std::fs::metadata(&path).map(|m| mtime_ns(&m)).ok();
    std::fs::remove_file(&path).map_err(Error::io(&path))?;
    let (Some(recorded), Some(recorded_at)) = (Stamp::parse(&text), recorded_at) else {
        return Ok(false);
    };
    let Ok(now) = Stamp::of(&layout.catalog()) else {
        return Ok(false);
    };
    // A write in the same tick of the file system's clock as the record would leave the
    // catalog's times as recorded: only a catalog changed strictly before the record counts.
    Ok(now == recorded && now.ctime_ns < recorded_at)
}

/// Records the catalog as clean when dropped, which [`crate::Repo`] does right after it has
/// closed the catalog (its field order), unless the thread is panicking.
#[derive(Debug)]
pub(crate) struct RecordOnClose {
    layout: Layout,
}

impl RecordOnClose {
    pub(crate) fn new(layout: Layout) -> Self {
        RecordOnClose { layout }
    }

    fn record(&self) -> std::io::Result<()> {
        let catalog = self.layout.catalog();
        let path = record_path(&self.layout);
        let stamp = Stamp::of(&catalog)?;
        // The record must be strictly newer than the catalog's last change (see `take`): the
        // file system's clock moves in ticks of a few milliseconds, so wait out at most a few.
        for _ in 0..10 {
            write_atomic(&self.layout, &path, stamp.to_text().as_bytes())
                .map_err(std::io::Error::other)?;
            if mtime_ns(&std::fs::metadata(&path)?) > stamp.ctime_ns {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::remove_file(&path)
    }
}

impl Drop for RecordOnClose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Err(e) = self.record() {
            let _ = std::fs::remove_file(record_path(&self.layout));
            tracing::warn!(
                "{}: could not record the clean close ({e}); the next open checks the whole catalog",
                self.layout.catalog().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_anything_else_is_no_record() {
        let s = Stamp {
            dev: 2049,
            ino: 77,
            size: 1 << 20,
            mtime_ns: 1_765_000_000_123_456_789,
            ctime_ns: 1_765_000_000_123_456_790,
        };
        assert_eq!(Stamp::parse(&s.to_text()), Some(s));
        let text = s.to_text();
        for bad in [
            "",
            "depotfs catalog clean close 2\n",
            &text.replace("ino 77", "ino x"),
            &text.replace("ino 77", "inode 77"),
            &text.replace("size ", "size -"),
            &text[..text.len() / 2],
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad:?}");
        }
    }

    /// The record exists only while no writer holds the catalog (a writer that dies leaves
    /// none), is used once, and does not survive an outside change to the file.
    #[test]
    fn the_record_vouches_only_for_the_file_a_clean_close_left() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let layout = Layout::new(&root);
        drop(crate::Repo::init(&root, "clean.test").unwrap());
        assert!(record_path(&layout).is_file());
        let repo = crate::Repo::open(&root).unwrap();
        assert!(
            !record_path(&layout).exists(),
            "a record while the catalog is open"
        );
        drop(repo);
        assert!(take(&layout).unwrap());
        assert!(!take(&layout).unwrap(), "a record used twice");

        drop(crate::Repo::open(&root).unwrap());
        // The same bytes written again: same inode and size, a new ctime.
        let bytes = std::fs::read(layout.catalog()).unwrap();
        std::fs::write(layout.catalog(), bytes).unwrap();
        assert!(!take(&layout).unwrap());

        drop(crate::Repo::open(&root).unwrap());
        // A copy put in its place (same size, a new inode).
        let copy = root.join("copy");
        std::fs::copy(layout.catalog(), &copy).unwrap();
        std::fs::rename(&copy, layout.catalog()).unwrap();
        assert!(!take(&layout).unwrap());
    }
}
