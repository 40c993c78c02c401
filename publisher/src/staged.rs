//! What is staged and not yet published, and which run staged it: the publisher's open
//! transaction, visible (`depotfs status STORE`) and undoable (`depotfs abort STORE`).
//!
//! Every staging write (`add`, `rm`, `add --trace`, `rollback`) records, in the same catalog
//! transaction as the change itself, one [`StagedChange`] per path in [`STAGED`] and the
//! [`Run`] that made it in [`RUNS`]. Publishing empties both tables in its commit.
//!
//! The rule: a run is *interrupted* when it staged changes and neither published them nor
//! finished as `--no-publish` (which marks its run [`Run::on_purpose`]). `add`, `rm` and
//! `publish` refuse while interrupted changes are staged, naming them, until the operator
//! chooses: `depotfs publish STORE --include-interrupted` publishes them as they are,
//! `depotfs abort STORE` discards everything staged.

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::error::{Error, Result};

/// Staged changes, one row per repository path.
pub const STAGED: TableDefinition<&str, &[u8]> = TableDefinition::new("staged");
/// The runs that staged them, keyed by their start time (ns since the epoch).
pub const RUNS: TableDefinition<i64, &[u8]> = TableDefinition::new("runs");

/// How a path differs from the last published revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// New.
    Added,
    /// Replaced by different content, metadata or type.
    Changed,
    /// Gone (a directory: with everything below it).
    Removed,
}

impl Change {
    fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Removed => 'R',
        }
    }
}

/// One staged path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedChange {
    /// What changed.
    pub change: Change,
    /// File bytes added (Added, Changed) or removed (Removed).
    pub bytes: u64,
    /// The run that last staged it ([`RUNS`] key).
    pub run: i64,
}

/// A run of `depotfs` that staged changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Its command line.
    pub command: String,
    /// Its process id.
    pub pid: u32,
    /// Set when it finished staging without publishing on purpose (`--no-publish`).
    pub on_purpose: bool,
}

/// This process as a staging run: its start time and command line.
#[derive(Debug, Clone)]
pub struct RunId {
    /// Start time, ns since the epoch: the [`RUNS`] key.
    pub started_ns: i64,
    /// The command line.
    pub command: String,
}

impl RunId {
    /// The current process, started now.
    pub fn current(started_ns: i64) -> RunId {
        let command = std::env::args()
            .enumerate()
            .map(|(i, a)| {
                let a = if i == 0 {
                    std::path::Path::new(&a)
                        .file_name()
                        .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
                } else {
                    a
                };
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("'{}'", a.replace('\'', "'\\''"))
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        RunId {
            started_ns,
            command,
        }
    }
}

/// Records the changes of one staging transaction.
pub struct Recorder<'t> {
    staged: Table<'t, &'static str, &'static [u8]>,
    run: i64,
}

impl std::fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("run", &self.run).finish()
    }
}

impl<'t> Recorder<'t> {
    /// Start recording in `txn` on behalf of `run` (registered if new).
    pub fn new(txn: &'t redb::WriteTransaction, run: &RunId) -> Result<Recorder<'t>> {
        let mut runs = txn.open_table(RUNS)?;
        if runs.get(run.started_ns)?.is_none() {
            let r = Run {
                command: run.command.clone(),
                pid: std::process::id(),
                on_purpose: false,
            };
            runs.insert(run.started_ns, db::enc(&r).as_slice())?;
        }
        Ok(Recorder {
            staged: txn.open_table(STAGED)?,
            run: run.started_ns,
        })
    }

    fn prior(&self, path: &str) -> Result<Option<Change>> {
        Ok(self
            .staged
            .get(path)?
            .map(|v| db::dec::<StagedChange>("staged change", v.value()))
            .transpose()?
            .map(|c| c.change))
    }

    /// `path` now holds something with `bytes` of file content; `existed` says whether the
    /// tree had something there just before.
    pub fn put(&mut self, path: &str, existed: bool, bytes: u64) -> Result<()> {
        let change = match self.prior(path)? {
            Some(Change::Added) => Change::Added,
            Some(_) => Change::Changed,
            None if existed => Change::Changed,
            None => Change::Added,
        };
        self.write(path, change, bytes)
    }

    /// `path` (and, for a directory, everything below it) was removed; `bytes` of files went
    /// with it.
    pub fn removed(&mut self, path: &str, bytes: u64) -> Result<()> {
        // Changes staged below a removed directory are covered by its removal.
        let below: Vec<String> = {
            let lo = format!("{path}/");
            let hi = format!("{path}0"); // '0' follows '/'
            let mut v = Vec::new();
            for row in self.staged.range(lo.as_str()..hi.as_str())? {
                v.push(row?.0.value().to_string());
            }
            v
        };
        for p in below {
            self.staged.remove(p.as_str())?;
        }
        match self.prior(path)? {
            // Added in this transaction, gone again: nothing to publish.
            Some(Change::Added) => {
                self.staged.remove(path)?;
                Ok(())
            }
            _ => self.write(path, Change::Removed, bytes),
        }
    }

    fn write(&mut self, path: &str, change: Change, bytes: u64) -> Result<()> {
        let c = StagedChange {
            change,
            bytes,
            run: self.run,
        };
        self.staged.insert(path, db::enc(&c).as_slice())?;
        Ok(())
    }
}

/// Mark `run`'s staging as done on purpose (`--no-publish`).
pub fn keep(txn: &redb::WriteTransaction, run: &RunId) -> Result<()> {
    let mut runs = txn.open_table(RUNS)?;
    let got = runs
        .get(run.started_ns)?
        .map(|v| db::dec::<Run>("run", v.value()))
        .transpose()?;
    if let Some(mut r) = got {
        r.on_purpose = true;
        runs.insert(run.started_ns, db::enc(&r).as_slice())?;
    }
    Ok(())
}

/// Forget everything staged (after publishing or aborting).
pub fn clear(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(STAGED)?.retain(|_, _| false)?;
    txn.open_table(RUNS)?.retain(|_, _| false)?;
    Ok(())
}

/// One run and the paths it staged.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Start time, ns since the epoch.
    pub started_ns: i64,
    /// The run.
    pub run: Run,
    /// (path, change), in path order.
    pub changes: Vec<(String, StagedChange)>,
}

/// Everything staged, by run (oldest first).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The runs with changes still staged.
    pub runs: Vec<RunReport>,
}

impl Report {
    /// Read what is staged.
    pub fn read(txn: &ReadTransaction) -> Result<Report> {
        let (runs, staged) = match (txn.open_table(RUNS), txn.open_table(STAGED)) {
            (Ok(r), Ok(s)) => (r, s),
            // A store no publisher has opened since this record was introduced.
            (Err(TableError::TableDoesNotExist(_)), _)
            | (_, Err(TableError::TableDoesNotExist(_))) => return Ok(Report::default()),
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let mut out: Vec<RunReport> = Vec::new();
        for row in runs.iter()? {
            let (k, v) = row?;
            out.push(RunReport {
                started_ns: k.value(),
                run: db::dec("run", v.value())?,
                changes: Vec::new(),
            });
        }
        for row in staged.iter()? {
            let (k, v) = row?;
            let c: StagedChange = db::dec("staged change", v.value())?;
            match out.iter_mut().find(|r| r.started_ns == c.run) {
                Some(r) => r.changes.push((k.value().to_string(), c)),
                None => {
                    return Err(Error::Db(format!(
                        "staged change of {} names run {} that is not recorded",
                        k.value(),
                        c.run
                    )));
                }
            }
        }
        out.retain(|r| !r.changes.is_empty());
        Ok(Report { runs: out })
    }

    /// The runs that were interrupted: not on purpose, and not `current` (still running).
    pub fn interrupted(&self, current: Option<i64>) -> Vec<&RunReport> {
        self.runs
            .iter()
            .filter(|r| !r.run.on_purpose && Some(r.started_ns) != current)
            .collect()
    }

    /// The refusal `add`, `rm` and `publish` give while interrupted changes are staged.
    pub fn refuse_if_interrupted(&self, current: i64, store: &std::path::Path) -> Result<()> {
        let runs = self.interrupted(Some(current));
        if runs.is_empty() {
            return Ok(());
        }
        let mut msg = String::from("changes staged by an interrupted run are not published:");
        for r in runs {
            msg.push_str(&format!("\n  {}", r.headline()));
            for (path, c) in r.changes.iter().take(10) {
                msg.push_str(&format!("\n    {}", line(path, c)));
            }
            if r.changes.len() > 10 {
                msg.push_str(&format!("\n    ... and {} more", r.changes.len() - 10));
            }
        }
        let s = store.display();
        msg.push_str(&format!(
            "\nchoose: publish them as they are with `depotfs publish {s} --include-interrupted`, \
             or discard everything staged with `depotfs abort {s}` (`depotfs status {s}` lists it all)"
        ));
        Err(Error::Interrupted(msg))
    }
}

impl RunReport {
    /// `by `CMD` (pid N, started T): A added, C changed, R removed, B bytes`
    pub fn headline(&self) -> String {
        let count = |k: Change| self.changes.iter().filter(|c| c.1.change == k).count();
        let bytes: u64 = self
            .changes
            .iter()
            .filter(|c| c.1.change != Change::Removed)
            .map(|c| c.1.bytes)
            .sum();
        let removed: u64 = self
            .changes
            .iter()
            .filter(|c| c.1.change == Change::Removed)
            .map(|c| c.1.bytes)
            .sum();
        format!(
            "by `{}` (pid {}, started {}): {} added, {} changed, {} removed; {bytes} bytes added or changed, {removed} bytes removed",
            self.run.command,
            self.run.pid,
            time(self.started_ns),
            count(Change::Added),
            count(Change::Changed),
            count(Change::Removed),
        )
    }
}

/// `A path  BYTES bytes`
pub fn line(path: &str, c: &StagedChange) -> String {
    format!("{} /{path}  {} bytes", c.change.letter(), c.bytes)
}

/// RFC 3339 UTC, to the second.
pub fn time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
