//! `depotfs rebuild-catalog STORE`: a new catalog made from the published store, for when
//! `catalog.redb` is damaged (a zeroed page, a bad disk block) or lost.
//!
//! The published store is the truth a client sees: the signed manifest names the root, and
//! every directory node, chunk list and chunk below it is verified as it is read. From it
//! the rebuild recreates everything the publisher needs to go on:
//!
//! - `nodes`: one row per path of the published tree (mode, mtime, content);
//! - `dirs`: each directory as published (tree id, entries, mtime, the digest that decides
//!   whether its mtime moves, file and byte counts), so the next publish rewrites only what
//!   changes and keeps the mtimes of what does not;
//! - `revisions` and `tags`: those of the damaged catalog that can still be read (older than
//!   the manifest's revision), and the manifest's revision; if none can be read, the
//!   manifest's revision alone (then `gc` no longer knows the older revisions' objects);
//! - `meta`: name and TTL from the manifest, the format.
//!
//! What cannot come back: changes staged with `--no-publish` and not yet published (add
//! them again). The damaged file is kept as `catalog.redb.damaged` (the previous one of that
//! name is replaced); the new catalog is built in `STORE/tmp` and renamed into place.

use std::collections::BTreeMap;
use std::fs;

use depotfs_catalog::{EntryKind, FORMAT_VERSION, Manifest, ObjectId};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::db::{
    self, DIRS, DIRTY, DirState, META, NODES, Node, NodeKind, REVISIONS, RevisionRecord, TAGS,
};
use crate::error::{Error, Result};
use crate::reader::LocalTree;
use crate::repo::{digest_entry, panic_text};
use crate::store::{Layout, Lock, Objects};

/// What a rebuild recovered.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// The published revision the tree was read from.
    pub revision: u64,
    /// Paths recorded (files, directories, links; not the root).
    pub paths: u64,
    /// Directories recorded (with the root).
    pub dirs: u64,
    /// Revisions recorded (salvaged ones and the manifest's).
    pub revisions: u64,
    /// Why older revisions could not be salvaged, if they could not.
    pub salvage_failed: Option<String>,
}

/// Rows of the rebuilt catalog, gathered before anything is written.
#[derive(Default)]
struct Rows {
    nodes: Vec<((String, String), Node)>,
    dirs: Vec<(String, DirState)>,
}

/// Rebuild the catalog of the store at `root` from its published tree (see the module doc).
pub fn rebuild_catalog(root: &std::path::Path) -> Result<RebuildReport> {
    let layout = Layout::new(root);
    if !layout.objects().is_dir() && !layout.bucket_file().is_file() {
        return Err(Error::BadStore {
            path: layout.root.clone(),
            what: "not a depotfs store (no public/objects)".into(),
        });
    }
    let _lock = Lock::acquire(&layout)?;
    let objects = Objects::open(layout.clone())?;
    let m = objects.load_manifest()?;
    let reader = LocalTree::new(objects);
    let mut rows = Rows::default();
    let top = rebuild_dir(&reader, "", m.root, m.root_mtime_ns, &mut rows)?;
    if top.entries != m.root_entries {
        return Err(Error::BadStore {
            path: layout.manifest(),
            what: format!(
                "names {} root entries, its tree holds {}",
                m.root_entries, top.entries
            ),
        });
    }
    rows.dirs.push((String::new(), top));
    let (mut revisions, tags, salvage_failed) = match salvage(&layout) {
        Ok((r, t)) => (r, t, None),
        Err(e) => (BTreeMap::new(), BTreeMap::new(), Some(e)),
    };
    if let Some(why) = &salvage_failed {
        tracing::warn!(
            "the damaged catalog's revision history cannot be read ({why}): only revision {} is recorded; `depotfs gc` will no longer keep older revisions' objects",
            m.revision
        );
    }
    revisions.retain(|rev, _| *rev < m.revision);
    let tag = revisions_tag(&tags, m.revision);
    revisions.insert(m.revision, current_record(&m, &top, tag));

    let tmp = layout.tmp().join("catalog.redb.rebuilding");
    let _ = fs::remove_file(&tmp);
    {
        let db = Database::create(&tmp)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("name", m.name.as_bytes())?;
            meta.insert("ttl", m.ttl.to_string().as_bytes())?;
            meta.insert("format", FORMAT_VERSION.to_string().as_bytes())?;
            let mut nodes = txn.open_table(NODES)?;
            for ((parent, name), node) in &rows.nodes {
                nodes.insert((parent.as_str(), name.as_str()), db::enc(node).as_slice())?;
            }
            let mut dirs = txn.open_table(DIRS)?;
            for (path, st) in &rows.dirs {
                dirs.insert(path.as_str(), db::enc(st).as_slice())?;
            }
            txn.open_table(DIRTY)?;
            let mut revs = txn.open_table(REVISIONS)?;
            for (rev, rec) in &revisions {
                revs.insert(*rev, db::enc(rec).as_slice())?;
            }
            let mut t = txn.open_table(TAGS)?;
            for (tag, rev) in tags.iter().filter(|(_, r)| revisions.contains_key(r)) {
                t.insert(tag.as_str(), *rev)?;
            }
        }
        txn.commit()?;
    }
    let catalog = layout.catalog();
    if catalog.exists() {
        let keep = root.join("catalog.redb.damaged");
        fs::rename(&catalog, &keep).map_err(Error::io(&keep))?;
    }
    fs::rename(&tmp, &catalog).map_err(Error::io(&catalog))?;
    Ok(RebuildReport {
        revision: m.revision,
        paths: rows.nodes.len() as u64,
        dirs: rows.dirs.len() as u64,
        revisions: revisions.len() as u64,
        salvage_failed,
    })
}

/// Record directory `path` (tree `tree`, published mtime `mtime_ns`) and everything below
/// it; returns its state as its parent's publish would have recorded it.
fn rebuild_dir(
    reader: &LocalTree,
    path: &str,
    tree: ObjectId,
    mtime_ns: i64,
    rows: &mut Rows,
) -> Result<DirState> {
    let mut digest = blake3::Hasher::new();
    let (mut files, mut bytes, mut entries) = (0u64, 0u64, 0u64);
    for e in reader.list(&tree)? {
        entries += 1;
        let child = db::join(path, &e.name);
        let kind = match &e.kind {
            EntryKind::File { size, content } => {
                files += 1;
                bytes += size;
                NodeKind::File {
                    size: *size,
                    content: *content,
                }
            }
            EntryKind::Symlink { target } => NodeKind::Symlink {
                target: target.clone(),
            },
            EntryKind::Dir { tree, .. } => {
                let st = rebuild_dir(reader, &child, *tree, e.mtime_ns, rows)?;
                files += st.files;
                bytes += st.bytes;
                rows.dirs.push((child.clone(), st));
                NodeKind::Dir
            }
        };
        let node = Node {
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            kind,
        };
        digest_entry(&mut digest, &e.name, &node);
        rows.nodes.push(((path.to_string(), e.name.clone()), node));
    }
    Ok(DirState {
        tree,
        entries,
        mtime_ns,
        digest: *digest.finalize().as_bytes(),
        files,
        bytes,
    })
}

/// The record of the manifest's revision.
fn current_record(m: &Manifest, top: &DirState, tag: Option<String>) -> RevisionRecord {
    RevisionRecord {
        root: m.root,
        root_mtime_ns: m.root_mtime_ns,
        root_entries: m.root_entries,
        published_ns: m.published_ns,
        tag,
        files: top.files,
        bytes: top.bytes,
        pruned: false,
    }
}

fn revisions_tag(tags: &BTreeMap<String, u64>, rev: u64) -> Option<String> {
    tags.iter()
        .find(|(_, r)| **r == rev)
        .map(|(t, _)| t.clone())
}

type Salvaged = (BTreeMap<u64, RevisionRecord>, BTreeMap<String, u64>);

/// The revisions and tags of the (damaged) catalog, read without writing to it; a panic in
/// redb on a damaged page is caught and reported as a failure.
fn salvage(layout: &Layout) -> Result<Salvaged, String> {
    let path = layout.catalog();
    if !path.exists() {
        return Err(format!("{} is missing", path.display()));
    }
    let read = || -> Result<Salvaged> {
        let db = Database::builder().open_read_only(&path)?;
        let txn = db.begin_read()?;
        let mut revs = BTreeMap::new();
        for row in txn.open_table(REVISIONS)?.iter()? {
            let (k, v) = row?;
            revs.insert(k.value(), db::dec::<RevisionRecord>("revision", v.value())?);
        }
        let mut tags = BTreeMap::new();
        for row in txn.open_table(TAGS)?.iter()? {
            let (k, v) = row?;
            tags.insert(k.value().to_string(), v.value());
        }
        Ok((revs, tags))
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!("redb panicked reading the damaged catalog: {info}")
    }));
    let result = std::panic::catch_unwind(read);
    std::panic::set_hook(hook);
    match result {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!("redb panicked: {}", panic_text(&p))),
    }
}
