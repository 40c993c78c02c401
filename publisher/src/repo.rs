//! A repository opened for publishing: the lock, the catalog, staging, publishing, and the
//! maintenance operations (rollback, gc, verify).
//!
//! Crash safety rests on one ordering: objects first, then the catalog commit (which records
//! the new revision), then the manifest. A process killed anywhere before the manifest
//! rename leaves the old manifest served; objects it wrote are unreferenced and `gc` removes
//! them. A process killed between the commit and the manifest rename leaves a recorded
//! revision without its manifest: the next open rewrites the manifest from the record
//! ([`Repo::open`]), so a revision number is never published twice with different trees.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use depotfs_catalog::dir;
use depotfs_catalog::graph::{self, Child};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{
    ChunkList, Entry, EntryKind, FORMAT_VERSION, FileContent, Manifest, ObjectId,
};
use rayon::prelude::*;
use redb::Database;

use crate::clean_close::{self, RecordOnClose};
use crate::db::{self, Catalog, DirState, Node, NodeKind, RevisionRecord};
use crate::error::{Error, Result};
use crate::ingest::{TraceRead, ZSTD_LEVEL, prefetch_order};
use crate::mark::{Leaf, Marker};
use crate::progress::{Counter, Progress};
use crate::reader::{CHUNK_LIST_MAX, LocalTree};
use crate::staged::{self, Recorder, RunId};
use crate::store::{Layout, Lock, Objects};

/// Default manifest TTL in seconds.
pub const DEFAULT_TTL: u64 = 240;

/// An open, locked repository.
#[derive(Debug)]
pub struct Repo {
    /// Its paths.
    pub layout: Layout,
    /// Its objects.
    pub objects: Objects,
    db: Catalog,
    /// Records the clean close once `db` is closed (fields drop in order), before the lock
    /// is released.
    _clean: RecordOnClose,
    /// This process as a staging run.
    run: RunId,
    _lock: Lock,
}

/// How [`Repo::open_with`] checks the catalog file before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogCheck {
    /// Every page's checksum (redb's integrity check): reads the whole file.
    Full,
    /// In full unless the file is exactly as the last clean close by a depotfs writer left it
    /// ([`crate::clean_close`]): what every command but `verify` and `gc` does.
    IfChanged,
}

/// What `gc` did.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    /// Objects kept.
    pub kept: u64,
    /// Objects deleted.
    pub removed: u64,
    /// Bytes deleted.
    pub removed_bytes: u64,
    /// Revisions whose objects may now be gone.
    pub pruned_revisions: u64,
}

/// What `stage_trace` did.
#[derive(Debug, Default, Clone)]
pub struct TraceReport {
    /// Chunked files the trace names.
    pub files: u64,
    /// Of those, files whose chunk list changed.
    pub changed: u64,
    /// Chunk indices in all their prefetch lists.
    pub chunks: u64,
    /// Traced paths skipped: missing, or not chunked files.
    pub skipped: Vec<String>,
}

/// `meta` key of an interrupted gc's sweep checkpoint.
const GC_SWEEP: &str = "gc_sweep";
/// `meta` key of an interrupted verify's checkpoint.
const VERIFY_PROGRESS: &str = "verify_progress";
/// `meta` key of the revision of the last clean full verify.
const VERIFY_FULL: &str = "verify_full";
/// How often gc and verify save their checkpoint (the first right after the first fan-out
/// directory or batch): each is a durable catalog commit, ~0.1-0.2 s on a busy disk.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Data objects verified in parallel between checkpoints.
const VERIFY_BATCH: usize = 4096;

/// Where an interrupted gc's sweep stopped.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GcSweep {
    /// The first fan-out directory not yet swept.
    next: u16,
    kept: u64,
    removed: u64,
    removed_bytes: u64,
}

/// Where an interrupted verify stopped: the data objects are checked in (id, length) order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VerifyProgress {
    /// Which run this is (the `--since` argument and the revisions walked).
    key: [u8; 32],
    /// The last object checked.
    through: Option<Leaf>,
    objects: u64,
    bytes: u64,
    problems: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Objects checked.
    pub objects: u64,
    /// Revisions checked.
    pub revisions: u64,
    /// Everything wrong, one line each.
    pub problems: Vec<String>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn catalog_err(e: Error) -> depotfs_catalog::Error {
    depotfs_catalog::Error::Invalid(e.to_string())
}

impl Repo {
    /// Create a repository at `root` named `name`, and publish its empty revision 0.
    pub fn init(root: &Path, name: &str) -> Result<Repo> {
        Repo::init_with_public(root, name, None)
    }

    /// [`Repo::init`], with the public side in the bucket `public` (`s3://BUCKET/PREFIX`)
    /// if given, else in `STORE/public/`.
    pub fn init_with_public(root: &Path, name: &str, public: Option<&str>) -> Result<Repo> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Error::Input(format!(
                "repository name {name:?} must be non-empty, without spaces"
            )));
        }
        let layout = Layout::new(root);
        if let Some(url) = public {
            // Refuse a bad URL or a prefix holding another repository before STORE exists.
            let objects = Objects::open_bucket(&layout, url)?;
            if objects.has_manifest()? {
                return Err(Error::Input(format!(
                    "{url} already holds a manifest (another repository's public side?); \
                     depotfs init needs an empty prefix"
                )));
            }
        }
        layout.create(public)?;
        Catalog::new(db_builder().create(layout.catalog())?).create(&[
            ("name", name.as_bytes()),
            ("ttl", DEFAULT_TTL.to_string().as_bytes()),
            ("format", FORMAT_VERSION.to_string().as_bytes()),
        ])?;
        let repo = Repo::open(root)?;
        repo.objects.publish_key()?;
        repo.publish(None, false)?;
        Ok(repo)
    }

    /// Open and lock the repository at `root`, finishing a publish that was interrupted
    /// between its catalog commit and its manifest. The catalog is checked in full only if it
    /// changed since the last clean close ([`CatalogCheck::IfChanged`]).
    pub fn open(root: &Path) -> Result<Repo> {
        Repo::open_with(root, CatalogCheck::IfChanged)
    }

    /// [`Repo::open`], checking the catalog as `check` says.
    pub fn open_with(root: &Path, check: CatalogCheck) -> Result<Repo> {
        let layout = Layout::new(root);
        layout.check()?;
        let lock = Lock::acquire(&layout)?;
        // Whatever is in STORE/tmp was left by a killed command: every writer there holds
        // the lock. (Also made again if an operator deleted it.) Housekeeping: a failure is
        // said, and whatever needs tmp/ later fails with its own error.
        if let Err(e) = layout.clear_tmp() {
            tracing::warn!("cannot empty the store's tmp directory: {e}");
        }
        let db = open_catalog(&layout, check)?;
        let repo = Repo {
            objects: Objects::open(layout.clone())?,
            _clean: RecordOnClose::new(layout.clone()),
            layout,
            db: Catalog::new(db),
            run: RunId::current(now_ns()),
            _lock: lock,
        };
        repo.check_format()?;
        repo.recover_manifest()?;
        Ok(repo)
    }

    /// Refuse a store of another format (a catalog without a `format` row is format 1).
    fn check_format(&self) -> Result<()> {
        let format = match self.db.meta("format")? {
            None => 1,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| Error::Db("meta format is not a number".into()))?,
        };
        if format == FORMAT_VERSION {
            return Ok(());
        }
        let what = if format < FORMAT_VERSION {
            format!(
                "store format {format} is older than this depotfs writes ({FORMAT_VERSION}: objects \
                 named by kind, so a file never shares an id with a directory node); it cannot be \
                 converted in place: create a new store with `depotfs init` and add the images to it \
                 again (data chunks keep their names; see docs/format.md, \"Format versions\")"
            )
        } else {
            format!(
                "store format {format} is newer than this depotfs understands ({FORMAT_VERSION}); \
                 use a newer depotfs"
            )
        };
        Err(Error::BadStore {
            path: self.layout.root.clone(),
            what,
        })
    }

    fn meta(&self, key: &str) -> Result<String> {
        let v = self
            .db
            .meta(key)?
            .ok_or_else(|| Error::Db(format!("missing meta {key}")))?;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// The repository name.
    pub fn name(&self) -> Result<String> {
        self.meta("name")
    }

    /// Make the published manifest show the catalog's last revision, if a publish was
    /// interrupted between its catalog commit and its manifest (the manifest is older, or
    /// missing or unreadable). A manifest at that revision or later with another tree means
    /// the catalog is the older one (restored from a copy, say): that is refused, never
    /// "recovered" by publishing a revision number again with another tree. A missing
    /// `public/repo.pub` is made again from the signing key first.
    fn recover_manifest(&self) -> Result<()> {
        let Some((rev, rec)) = self.db.latest_revision()? else {
            return Ok(());
        };
        self.restore_public_key()?;
        match self.objects.load_manifest() {
            Ok(m) if (m.revision, m.root) == (rev, rec.root) => return Ok(()),
            Ok(m) if m.revision >= rev => {
                return Err(Error::BadStore {
                    path: self.layout.root.clone(),
                    what: format!(
                        "the catalog is damaged or older than what was published (restored from \
                         a copy?): the published manifest is at revision {} (root {}), the \
                         catalog's last revision is {rev} (root {}). Nothing was changed; make \
                         the catalog again from the published store with `depotfs rebuild-catalog \
                         {}`",
                        m.revision,
                        m.root,
                        rec.root,
                        self.layout.root.display()
                    ),
                });
            }
            Ok(m) => tracing::warn!(
                "the manifest shows revision {}, the catalog's last is {rev}: rewriting it (an earlier publish was interrupted)",
                m.revision
            ),
            Err(e) => {
                tracing::warn!("the manifest cannot be read ({e}): rewriting it for revision {rev}")
            }
        }
        self.write_manifest(rev, &rec)
    }

    /// Write `public/repo.pub` from the signing key if it is missing (and upload it, when the
    /// public side is a bucket).
    fn restore_public_key(&self) -> Result<()> {
        let path = self.layout.public_key();
        if path.exists() {
            return Ok(());
        }
        let key = self.layout.load_secret_key()?.public();
        crate::store::write_atomic(&self.layout, &path, key.to_text().as_bytes())?;
        self.objects.publish_key()?;
        tracing::warn!(
            "{} was missing: made again from the signing key",
            path.display()
        );
        Ok(())
    }

    fn write_manifest(&self, rev: u64, rec: &RevisionRecord) -> Result<()> {
        let m = Manifest {
            format: FORMAT_VERSION,
            name: self.name()?,
            revision: rev,
            root: rec.root,
            root_mtime_ns: rec.root_mtime_ns,
            root_entries: rec.root_entries,
            published_ns: rec.published_ns,
            ttl: self.meta("ttl")?.parse().unwrap_or(DEFAULT_TTL),
        };
        let text = m.sign(&self.layout.load_secret_key()?);
        self.objects.write_manifest(text.as_bytes())
    }

    /// Stage `nodes` (repository path, node), created under directory `to` (made if missing).
    /// Existing paths are replaced; a file replacing a directory (or the reverse) removes
    /// the old subtree.
    pub fn stage_add(&self, to: &str, nodes: Vec<(String, Node)>) -> Result<()> {
        self.db.change(|t| self.add_in(t, None, to, nodes))
    }

    /// [`Repo::stage_add`]'s work in transaction `t`, after removing the subtree at `replace`
    /// (if given, and there) in the same transaction: a replacement that fails leaves the
    /// old subtree staged as it was.
    fn add_in(
        &self,
        t: &mut db::Tree<'_>,
        replace: Option<&str>,
        to: &str,
        nodes: Vec<(String, Node)>,
    ) -> Result<()> {
        let mut rec = Recorder::new(t.txn(), &self.run)?;
        if let Some(root) = replace
            && t.node(root)?.is_some()
        {
            let gone = t.remove_subtree(root)?;
            rec.removed(root, gone)?;
        }
        // The target directory and its ancestors.
        let mut at = String::new();
        for part in to.split('/').filter(|p| !p.is_empty()) {
            at = db::join(&at, part);
            match t.node(&at)? {
                Some(Node {
                    kind: NodeKind::Dir,
                    ..
                }) => {}
                Some(_) => {
                    return Err(Error::Input(format!(
                        "{at} exists in the repository and is not a directory"
                    )));
                }
                None => {
                    let n = Node {
                        mode: 0o755,
                        mtime_ns: 0,
                        kind: NodeKind::Dir,
                    };
                    t.put(&at, &n)?;
                    rec.put(&at, false, 0)?;
                    t.mark_dirty(&at);
                }
            }
        }
        for (path, node) in nodes {
            let (parent, _) =
                db::split(&path).ok_or_else(|| Error::Input("cannot replace the root".into()))?;
            let old = t.node(&path)?;
            if old.as_ref() == Some(&node) {
                continue; // the same again: no change
            }
            if let Some(old) = &old
                && matches!(old.kind, NodeKind::Dir) != matches!(node.kind, NodeKind::Dir)
            {
                let gone = t.remove_subtree(&path)?;
                rec.removed(&path, gone)?;
            }
            let bytes = match &node.kind {
                NodeKind::File { size, .. } => *size,
                _ => 0,
            };
            rec.put(&path, old.is_some(), bytes)?;
            t.put(&path, &node)?;
            if matches!(node.kind, NodeKind::Dir) {
                t.mark_dirty(&path);
            } else {
                t.mark_dirty(parent);
            }
        }
        // What this records must be in the public store first (a bucket's uploads).
        self.objects.uploaded()?;
        Ok(())
    }

    /// Attach the recorded access order of `reads` to the chunked files they name: for each
    /// traced file (in order of first appearance) a new chunk-list object with the same
    /// chunks and `prefetch` set, its node pointing at it and its directory marked dirty.
    /// A traced path that is missing or not a chunked file is skipped with a warning. A file
    /// whose list already carries the same order is left alone.
    pub fn stage_trace(&self, reads: &[TraceRead]) -> Result<TraceReport> {
        let mut order: Vec<&str> = Vec::new();
        let mut by_path: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for r in reads {
            by_path
                .entry(r.path.as_str())
                .or_insert_with(|| {
                    order.push(r.path.as_str());
                    Vec::new()
                })
                .push((r.offset, r.len));
        }
        let mut report = TraceReport::default();
        self.db.change(|t| {
            let mut rec = Recorder::new(t.txn(), &self.run)?;
            for path in order {
                let Some((parent, _)) = db::split(path) else {
                    continue;
                };
                let node = t.node(path)?;
                let (mut node, list_id) = match node {
                    Some(
                        n @ Node {
                            kind:
                                NodeKind::File {
                                    content: FileContent::Chunked(l),
                                    ..
                                },
                            ..
                        },
                    ) => (n, l),
                    Some(_) => {
                        tracing::warn!(
                            "trace: {path} is not a chunked file (a directory, link or file of at most one chunk): skipped"
                        );
                        report.skipped.push(path.to_string());
                        continue;
                    }
                    None => {
                        tracing::warn!("trace: {path} is not in the repository: skipped");
                        report.skipped.push(path.to_string());
                        continue;
                    }
                };
                let v = self
                    .objects
                    .get(&list_id, ObjectKind::ChunkList, CHUNK_LIST_MAX)?;
                let mut list = ChunkList::from_verified(&v)?;
                let prefetch = prefetch_order(&list, by_path[path].iter().copied());
                report.chunks += prefetch.len() as u64;
                report.files += 1;
                if list.prefetch == prefetch {
                    continue;
                }
                list.prefetch = prefetch;
                let enc = object::encode(ObjectKind::ChunkList, &list.to_bytes(), ZSTD_LEVEL);
                self.objects.put(&enc)?;
                if let NodeKind::File { content, size } = &mut node.kind {
                    *content = FileContent::Chunked(enc.id);
                    rec.put(path, true, *size)?;
                }
                t.put(path, &node)?;
                t.mark_dirty(parent);
                report.changed += 1;
            }
            // What this records must be in the public store first (a bucket's uploads).
            self.objects.uploaded()?;
            Ok(())
        })?;
        Ok(report)
    }

    /// Stage the removal of `paths` (normalized repository paths).
    pub fn stage_rm(&self, paths: &[String]) -> Result<()> {
        self.db.change(|t| {
            let mut rec = Recorder::new(t.txn(), &self.run)?;
            for p in paths {
                if db::split(p).is_none() {
                    return Err(Error::Input("cannot remove the root".into()));
                }
                if t.node(p)?.is_none() {
                    return Err(Error::Input(format!("{p}: no such path in the repository")));
                }
                let gone = t.remove_subtree(p)?;
                rec.removed(p, gone)?;
            }
            Ok(())
        })
    }

    /// The children of directory `dir` in the current tree (staged, not only published), in
    /// name order; empty when `dir` does not exist.
    pub fn list_dir(&self, dir: &str) -> Result<Vec<(String, Node)>> {
        self.db.children(dir)
    }

    /// Stage `nodes` as the whole subtree at `root` (the first node): whatever was there
    /// before is removed first, in the same transaction.
    pub fn stage_replace(&self, root: &str, nodes: Vec<(String, Node)>) -> Result<()> {
        let (parent, _) =
            db::split(root).ok_or_else(|| Error::Input("cannot replace the root".into()))?;
        self.db
            .change(|t| self.add_in(t, Some(root), parent, nodes))
    }

    /// The record kept for an imported layer (`depotfs import`), if any.
    pub fn layer_record(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.db.layer(digest)
    }

    /// Keep the record of an imported layer whose digests held.
    pub fn record_layer(&self, digest: &str, record: &[u8]) -> Result<()> {
        // What this records must be in the public store first (a bucket's uploads).
        self.objects.uploaded()?;
        self.db.set_layer(digest, record)
    }

    /// Is anything staged?
    pub fn has_staged(&self) -> Result<bool> {
        self.db.has_dirty()
    }

    /// What is staged and by which runs.
    pub fn staged(&self) -> Result<staged::Report> {
        self.db.staged()
    }

    /// Refuse (naming them) while changes staged by an interrupted run wait for the
    /// operator's choice; see [`staged`].
    pub fn refuse_if_interrupted(&self) -> Result<()> {
        self.staged()?
            .refuse_if_interrupted(self.run.started_ns, &self.layout.root)
    }

    /// Leave what this run staged for a later `publish`, on purpose (`--no-publish`).
    pub fn keep_staged(&self) -> Result<()> {
        self.db.keep_staged(&self.run)
    }

    /// Discard everything staged: the tree becomes the latest revision's again; objects only
    /// the staged tree used are left for `gc`. Returns what was discarded.
    pub fn abort(&self) -> Result<staged::Report> {
        let report = self.staged()?;
        let (_, rec) = self
            .revisions()?
            .pop()
            .ok_or_else(|| Error::Db("no published revision".into()))?;
        let rows = self.tree_rows(&rec.root)?;
        self.db.change(|t| {
            t.replace_all(&rows)?;
            t.clear_dirty();
            staged::clear(t.txn())
        })?;
        Ok(report)
    }

    /// Publish what is staged as a new signed revision. Returns `None` when nothing was
    /// staged (a tag, if given, then names the current revision). Refuses while changes
    /// staged by an interrupted run are staged, unless `include_interrupted`.
    pub fn publish(
        &self,
        tag: Option<&str>,
        include_interrupted: bool,
    ) -> Result<Option<(u64, RevisionRecord)>> {
        if !include_interrupted {
            self.refuse_if_interrupted()?;
        }
        let published = self.db.publishing(|p| {
            if let Some(tag) = tag
                && let Some(r) = p.tagged(tag)?
            {
                return Err(Error::Input(format!(
                    "tag {tag:?} already names revision {r}"
                )));
            }
            let dirty = p.dirty()?;
            let last = p.latest()?;
            if dirty.is_empty() {
                // Nothing staged: a tag names the current revision.
                return Ok(match (tag, last) {
                    (Some(tag), Some((rev, rec))) => {
                        p.tag(rev, rec, tag)?;
                        (None, true)
                    }
                    _ => (None, false),
                });
            }
            let now = now_ns().max(last.as_ref().map_or(0, |l| l.1.published_ns + 1000));
            for d in &dirty {
                if !p.is_dir(d)? {
                    p.set_dir(d, None)?;
                    continue;
                }
                let state = self.build_dir(p, d, now)?;
                p.set_dir(d, Some(&state))?;
            }
            let root = p
                .dir("")?
                .ok_or_else(|| Error::Db("root not built".into()))?;
            let rev = last.map_or(0, |l| l.0 + 1);
            let rec = RevisionRecord {
                root: root.tree,
                root_mtime_ns: root.mtime_ns,
                root_entries: root.entries,
                published_ns: now,
                tag: tag.map(str::to_string),
                files: root.files,
                bytes: root.bytes,
                pruned: false,
            };
            p.add_revision(rev, &rec)?;
            // Objects first, durably; the commit that records the revision after them.
            self.objects.flush()?;
            Ok((Some((rev, rec)), true))
        })?;
        let Some(result) = published else {
            return Ok(None);
        };
        self.write_manifest(result.0, &result.1)
            .map_err(|e| Error::ManifestPending {
                store: self.layout.root.clone(),
                rev: result.0,
                source: Box::new(e),
            })?;
        tracing::info!(
            "published revision {} (root {}, {} files, {} bytes)",
            result.0,
            &result.1.root.to_hex()[..12],
            result.1.files,
            result.1.bytes
        );
        Ok(Some(result))
    }

    /// Build the tree of directory `d` from its children in the catalog; its subdirectories
    /// are already built.
    fn build_dir(&self, p: &db::Publishing<'_>, d: &str, now: i64) -> Result<DirState> {
        let mut entries = Vec::new();
        let mut digest = blake3::Hasher::new();
        let (mut files, mut bytes) = (0u64, 0u64);
        for (name, node) in p.children(d)? {
            let path = db::join(d, &name);
            digest_entry(&mut digest, &name, &node);
            let (kind, mtime_ns) = match node.kind {
                NodeKind::File { size, content } => {
                    files += 1;
                    bytes += size;
                    (EntryKind::File { size, content }, node.mtime_ns)
                }
                NodeKind::Symlink { target } => (EntryKind::Symlink { target }, node.mtime_ns),
                NodeKind::Dir => {
                    let st = p.dir(&path)?.ok_or_else(|| {
                        Error::Db(format!("directory {path} was not built before its parent"))
                    })?;
                    files += st.files;
                    bytes += st.bytes;
                    (
                        EntryKind::Dir {
                            tree: st.tree,
                            entries: st.entries,
                        },
                        st.mtime_ns,
                    )
                }
            };
            entries.push(Entry {
                name,
                mode: node.mode,
                mtime_ns,
                kind,
            });
        }
        let digest = *digest.finalize().as_bytes();
        let old = p.dir(d)?;
        let mtime_ns = match old {
            Some(o) if o.digest == digest => o.mtime_ns,
            _ => now,
        };
        let built = dir::build(entries, ZSTD_LEVEL, &mut |enc| {
            self.objects.put(&enc).map(|_| ()).map_err(catalog_err)
        })?;
        Ok(DirState {
            tree: built.tree,
            entries: built.entries,
            mtime_ns,
            digest,
            files,
            bytes,
        })
    }

    /// All revisions, oldest first.
    pub fn revisions(&self) -> Result<Vec<(u64, RevisionRecord)>> {
        self.db.revisions()
    }

    /// Publish a new revision whose tree is revision `rev`'s.
    pub fn rollback(&self, rev: u64) -> Result<(u64, RevisionRecord)> {
        if !self.staged()?.runs.is_empty() {
            return Err(Error::Input(format!(
                "changes are staged (`depotfs status {s}` lists them): publish them or \
                 `depotfs abort {s}` before a rollback",
                s = self.layout.root.display()
            )));
        }
        let revs = self.revisions()?;
        let rec = revs
            .iter()
            .find(|r| r.0 == rev)
            .map(|r| r.1.clone())
            .ok_or_else(|| Error::Input(format!("no revision {rev} (see `depotfs log`)")))?;
        if rec.pruned {
            return Err(Error::Input(format!(
                "revision {rev} was garbage-collected; its objects are gone"
            )));
        }
        let rows = self.tree_rows(&rec.root)?;
        self.db.change(|t| {
            Recorder::new(t.txn(), &self.run)?.put("", true, rec.bytes)?;
            t.mark_published_dirty()?;
            t.replace_all(&rows)?;
            for (path, node) in &rows {
                if matches!(node.kind, NodeKind::Dir) {
                    t.mark_dirty(path);
                }
            }
            Ok(())
        })?;
        self.publish(None, false)?
            .ok_or_else(|| Error::Db("rollback staged nothing".into()))
    }

    /// The catalog rows (path, node) of the published tree `root`.
    fn tree_rows(&self, root: &ObjectId) -> Result<Vec<(String, Node)>> {
        let reader = LocalTree::new(self.objects.clone());
        let mut rows: Vec<(String, Node)> = Vec::new();
        reader.walk(root, "", &mut |path, e| {
            let kind = match &e.kind {
                EntryKind::File { size, content } => NodeKind::File {
                    size: *size,
                    content: *content,
                },
                EntryKind::Dir { .. } => NodeKind::Dir,
                EntryKind::Symlink { target } => NodeKind::Symlink {
                    target: target.clone(),
                },
            };
            rows.push((
                path.to_string(),
                Node {
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    kind,
                },
            ));
            Ok(true)
        })?;
        Ok(rows)
    }

    /// Delete objects unreachable from the newest `keep` revisions, tagged revisions and
    /// the staged tree. Also clears STORE/tmp.
    ///
    /// Marks with a [`Marker`] (memory bounded by the metadata objects, chunks spilled to
    /// sorted runs), flags the revisions it prunes, then sweeps the fan-out directories in
    /// order, merge-joining each listing with the marked ids. A checkpoint (`meta`
    /// `gc_sweep`, after the first directory and then every 2 s) lets a killed gc resume where it stopped: skipping a
    /// directory already swept can only leave garbage, never delete a live object.
    pub fn gc(&self, keep: u64) -> Result<GcReport> {
        let keep = keep.max(1);
        let revs = self.revisions()?;
        let newest_kept = revs.len().saturating_sub(keep as usize);
        let mut report = GcReport::default();
        let mut to_prune = Vec::new();
        let mut marker = Marker::new(&self.objects, &self.layout.tmp(), "gc: marking")?;
        let abort = &mut |_: &Child, e: Error| Err(e);
        for (i, (rev, rec)) in revs.iter().enumerate() {
            if i < newest_kept && rec.tag.is_none() {
                if !rec.pruned {
                    to_prune.push(*rev);
                }
                continue;
            }
            if rec.pruned {
                // An earlier gc with a smaller --keep deleted its objects: nothing to keep.
                tracing::debug!("revision {rev} was pruned by an earlier gc");
                continue;
            }
            marker
                .mark_tree(rec.root, abort)
                .map_err(|e| Error::BadStore {
                    path: self.layout.root.clone(),
                    what: format!(
                        "gc deleted nothing: marking what revision {rev} needs failed ({e}); \
                     `depotfs verify` names what is missing or damaged"
                    ),
                })?;
        }
        // The staged tree: files added with --no-publish are referenced only here. With
        // nothing staged it is the latest revision's tree, marked above: walking its rows
        // again would read the whole catalog and push every leaf twice.
        if self.has_staged()? {
            self.db
                .for_each_staged_file(
                    &mut |content, size| match graph::content_child(content, size) {
                        Some(c) => marker.mark(c, abort),
                        None => Ok(()),
                    },
                )?;
        }
        marker.finish();
        // Flag the pruned revisions before any of their objects goes: a gc killed during
        // the sweep never leaves a half-deleted revision that `rollback` would accept.
        self.db.mark_pruned(&to_prune)?;
        report.pruned_revisions = to_prune.len() as u64;

        let mut interior: Vec<ObjectId> = marker.interior().iter().map(|(id, _)| *id).collect();
        interior.sort_unstable();
        interior.dedup();
        let mut leaves = marker.leaves.merged()?;
        let resumed: Option<GcSweep> = self
            .db
            .meta(GC_SWEEP)?
            .and_then(|v| db::dec("gc checkpoint", &v).ok());
        let first = resumed.as_ref().map_or(0, |r| r.next);
        if let Some(r) = &resumed {
            tracing::info!(
                "gc: resuming an interrupted sweep at fan-out directory {:02x}",
                r.next
            );
            (report.kept, report.removed, report.removed_bytes) =
                (r.kept, r.removed, r.removed_bytes);
        }
        let mut last_save = None;
        let progress = Progress::new(
            "gc: sweeping",
            256 - u64::from(first),
            256 - u64::from(first),
        );
        for b in first..=255u16 {
            let b = b as u8;
            let mut upper = [0xffu8; 32];
            upper[0] = b;
            let mut live: Vec<ObjectId> = Vec::new();
            while let Some(l) = leaves.next_if_at_most(&ObjectId(upper))? {
                if l.id.0[0] == b {
                    live.push(l.id);
                }
            }
            let lo = interior.partition_point(|id| id.0[0] < b);
            let hi = interior.partition_point(|id| id.0[0] <= b);
            live.extend_from_slice(&interior[lo..hi]);
            live.sort_unstable();
            live.dedup();
            let (kept, removed, removed_bytes) = self
                .objects
                .sweep_fanout(b, &|id| live.binary_search(id).is_ok())?;
            report.kept += kept;
            report.removed += removed;
            report.removed_bytes += removed_bytes;
            let checkpoint = GcSweep {
                next: u16::from(b) + 1,
                kept: report.kept,
                removed: report.removed,
                removed_bytes: report.removed_bytes,
            };
            if last_save.is_none_or(|t: Instant| t.elapsed() >= CHECKPOINT_EVERY) {
                self.db.set_meta(GC_SWEEP, Some(&db::enc(&checkpoint)))?;
                last_save = Some(Instant::now());
                tracing::debug!(
                    "gc: checkpoint saved: next fan-out directory {:02x}",
                    b as u16 + 1
                );
            }
            progress.bytes(1);
            progress.file_done();
        }
        progress.finish();
        drop(leaves);
        self.db.set_meta(GC_SWEEP, None)?;
        self.layout.clear_tmp()?;
        Ok(report)
    }

    /// Check the manifest and every object of every retained revision; with `since`, only
    /// what the retained revisions after `since` changed (each compared with the one before,
    /// path by path). A clean full verify is remembered (`meta` `verify_full`, shown by
    /// [`Repo::last_full_verify`]); a killed verify resumes after the last object it
    /// checkpointed when run again with the same arguments on the same revisions.
    pub fn verify(&self, since: Option<u64>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let revs = self.revisions()?;
        match self.objects.load_manifest() {
            Err(e) => report.problems.push(format!("manifest: {e}")),
            Ok(m) => {
                if let Some((rev, rec)) = revs.last()
                    && (m.revision, m.root) != (*rev, rec.root)
                {
                    report.problems.push(format!(
                        "manifest: shows revision {} root {}, the catalog's latest is {rev} root {}",
                        m.revision, m.root, rec.root
                    ));
                }
            }
        }
        let mut key = blake3::Hasher::new();
        key.update(&db::enc(&since));
        let mut marker = Marker::new(
            &self.objects,
            &self.layout.tmp(),
            "verify: reading metadata",
        )?;
        let mut problems = Vec::new();
        let mut base = match since {
            None => None,
            Some(s) => {
                let rec = revs
                    .iter()
                    .find(|r| r.0 == s)
                    .ok_or_else(|| Error::Input(format!("no revision {s} (see `depotfs log`)")))?;
                if rec.1.pruned {
                    return Err(Error::Input(format!(
                        "revision {s} was garbage-collected: verify without --since"
                    )));
                }
                Some(rec.1.root)
            }
        };
        for (rev, rec) in revs
            .iter()
            .filter(|r| !r.1.pruned && since.is_none_or(|s| r.0 > s))
        {
            report.revisions += 1;
            key.update(&db::enc(&(rev, rec.root)));
            let bad = &mut |c: &Child, e: Error| {
                problems.push(match c.kind {
                    ObjectKind::ChunkList => format!("chunk list {}: {e}", c.id),
                    _ => format!("revision {rev}: {e}"),
                });
                Ok(())
            };
            marker.mark_changes(base, rec.root, bad)?;
            if since.is_some() {
                base = Some(rec.root);
            }
        }
        marker.finish();
        let key = *key.finalize().as_bytes();
        let interior = marker.interior().len() as u64;
        let mut leaves = marker.leaves.merged()?;

        let mut done = VerifyProgress {
            key,
            through: None,
            objects: 0,
            bytes: 0,
            problems: Vec::new(),
        };
        if let Some(p) = self
            .db
            .meta(VERIFY_PROGRESS)?
            .and_then(|v| db::dec::<VerifyProgress>("verify checkpoint", &v).ok())
            .filter(|p| p.key == key)
        {
            tracing::info!(
                "verify: resuming an interrupted run after {} objects ({} MiB)",
                p.objects,
                p.bytes >> 20
            );
            done = p;
        }
        let counter = Counter::new("verify: reading data");
        let mut last_save = None;
        let mut batch = Vec::with_capacity(VERIFY_BATCH);
        loop {
            batch.clear();
            while batch.len() < VERIFY_BATCH
                && let Some(l) = leaves.next_leaf()?
            {
                if done.through.is_none_or(|t| l > t) {
                    batch.push(l);
                }
            }
            if batch.is_empty() {
                break;
            }
            let bad: Vec<String> = batch
                .par_iter()
                .filter_map(|l| {
                    self.objects
                        .get(&l.id, ObjectKind::Chunk, l.len)
                        .err()
                        .map(|e| e.to_string())
                })
                .collect();
            done.problems.extend(bad);
            done.objects += batch.len() as u64;
            done.bytes += batch.iter().map(|l| l.len).sum::<u64>();
            done.through = batch.last().copied();
            counter.tick(|| format!("{} objects, {} MiB", done.objects, done.bytes >> 20));
            if last_save.is_none_or(|t: Instant| t.elapsed() >= CHECKPOINT_EVERY) {
                self.db.set_meta(VERIFY_PROGRESS, Some(&db::enc(&done)))?;
                last_save = Some(Instant::now());
                tracing::debug!("verify: checkpoint saved after {} objects", done.objects);
            }
        }
        counter.finish();
        self.db.set_meta(VERIFY_PROGRESS, None)?;
        report.problems.extend(problems);
        report.problems.extend(done.problems);
        // Metadata objects were verified as they were read; count them too.
        report.objects = interior + done.objects;
        if since.is_none()
            && report.problems.is_empty()
            && let Some((rev, _)) = revs.last()
        {
            self.db
                .set_meta(VERIFY_FULL, Some(rev.to_string().as_bytes()))?;
        }
        Ok(report)
    }

    /// The latest revision at the last full `verify` that found nothing wrong.
    pub fn last_full_verify(&self) -> Result<Option<u64>> {
        Ok(self
            .db
            .meta(VERIFY_FULL)?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
    }
}

/// Add one child of a directory to the digest that decides whether the directory's mtime
/// moves at publish ([`DirState::digest`]): subdirectories count by name and mode only.
pub(crate) fn digest_entry(digest: &mut blake3::Hasher, name: &str, node: &Node) {
    match &node.kind {
        NodeKind::File { size, content } => {
            digest.update(&db::enc(&(name, node.mode, node.mtime_ns, size, content)))
        }
        NodeKind::Symlink { target } => digest.update(&db::enc(&(name, node.mtime_ns, target))),
        NodeKind::Dir => digest.update(&db::enc(&(name, node.mode, "dir"))),
    };
}

/// Open the catalog of `layout`, checking every page first (redb's integrity check on open)
/// unless `check` allows skipping it for a file unchanged since its last clean close: a
/// damaged page is reported as [`Error::CatalogDamaged`] instead of panicking inside redb
/// later. A panic in redb during the open is caught and reported the same way.
pub(crate) fn open_catalog(layout: &Layout, check: CatalogCheck) -> Result<Database> {
    let path = layout.catalog();
    let damaged = |what: String| Error::CatalogDamaged {
        store: layout.root.clone(),
        what,
    };
    let unchanged = clean_close::take(layout)?;
    let full = check == CatalogCheck::Full || !unchanged;
    if full {
        tracing::debug!(
            "{}: checking every page of the catalog ({})",
            path.display(),
            if unchanged {
                "asked for"
            } else {
                "not as the last clean close left it"
            }
        );
    } else {
        tracing::debug!(
            "{}: unchanged since the last clean close: integrity check skipped",
            path.display()
        );
    }
    let opened =
        std::panic::catch_unwind(|| db_builder().set_check_integrity_on_open(full).open(&path));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(e @ redb::StorageError::Corrupted(_)))) => {
            Err(damaged(e.to_string()))
        }
        // A damaged header (magic number gone).
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(damaged(e.to_string()))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => Err(damaged(format!("redb panicked: {}", panic_text(&panic)))),
    }
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// redb's page cache for the catalog (reads and the write buffer together). redb's default
/// is 1 GiB, and an open that checks the catalog reads the whole file through it, so a
/// process's memory grew with the catalog: ~80 bytes per entry in `gc` and `verify` of a
/// 3M-entry catalog, ~1 GB at 20M entries. Every operation reads a bounded part of the
/// catalog (a directory's rows, the revisions), so 16 MiB costs them nothing measurable; a
/// larger write transaction spills its dirty pages to the file (#18, `docs/scale.md`).
pub const CATALOG_CACHE_BYTES: usize = 16 << 20;

/// The catalog is opened by one writer (the locked publisher) while any number of readers
/// (`depotfs status STORE`) follow its commits.
fn db_builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    b.set_cache_size(CATALOG_CACHE_BYTES);
    b
}

/// Open the catalog of `layout` read-only, beside a publisher at work.
pub fn open_read_only(layout: &Layout) -> Result<redb::ReadOnlyDatabase> {
    Ok(db_builder().open_read_only(layout.catalog())?)
}

#[cfg(test)]
mod tests;
