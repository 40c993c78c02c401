//! What a set of revisions needs, marked in bounded memory: `gc`'s live set and `verify`'s
//! work list.
//!
//! A revision's graph ([`depotfs_catalog::graph`]) has few *interior* objects (directory
//! nodes and chunk lists: about one per directory leaf of 256 entries and one per large file)
//! and many *data* objects (chunks: ~100 million in the full repository). The [`Marker`] keeps
//! the interior ones in memory — it must, to skip a subtree it has already walked, which is
//! what makes marking ten revisions that share most of their tree cost little more than one —
//! and spills the data ones to sorted runs on disk ([`Runs`]), merged into one sorted,
//! de-duplicated stream when the walk is done. `gc` merge-joins that stream with each fan-out
//! directory's listing; `verify` reads the objects in that order and can resume after the
//! last one it checkpointed.
//!
//! Memory: the interior set (~80 bytes an object) plus one run buffer ([`RUN_RECORDS`]
//! records of 40 bytes, 80 MiB) plus 64 KiB of read buffer per run during the merge. At the
//! full repository (≈ 120k chunk lists, ≈ 10k directory nodes per revision of the flat
//! directory, 100M chunks in 50 runs) that is well under 200 MiB; see `docs/scale.md`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use depotfs_catalog::dir::{self, DirNode, NodeSource};
use depotfs_catalog::graph::{self, Child, Edge};
use depotfs_catalog::object::ObjectKind;
use depotfs_catalog::{EntryKind, ObjectId};

use crate::error::{Error, Result};
use crate::progress::Counter;
use crate::store::Objects;

/// Records per sorted run (40 bytes each: 80 MiB of buffer).
pub const RUN_RECORDS: usize = 2 << 20;

/// One data object to keep or check: its id and the length its referrer gives it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Leaf {
    /// The chunk.
    pub id: ObjectId,
    /// Its plaintext length as referenced.
    pub len: u64,
}

const LEAF_BYTES: usize = 40;

impl Leaf {
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.id.0)?;
        out.write_all(&self.len.to_be_bytes())
    }

    fn read(input: &mut impl Read) -> std::io::Result<Option<Leaf>> {
        let mut b = [0u8; LEAF_BYTES];
        match input.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[32..]);
        Ok(Some(Leaf {
            id: ObjectId(id),
            len: u64::from_be_bytes(len),
        }))
    }
}

/// Leaves gathered in sorted runs: in memory up to `run_records`, then spilled to files in a
/// private temporary directory (removed when dropped).
#[derive(Debug)]
pub struct Runs {
    dir: tempfile::TempDir,
    buf: Vec<Leaf>,
    run_records: usize,
    runs: Vec<PathBuf>,
    pushed: u64,
}

impl Runs {
    /// Runs spilled under `parent` (the store's `tmp/`).
    pub fn new(parent: &Path, run_records: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mark-")
            .tempdir_in(parent)
            .map_err(Error::io(parent))?;
        Ok(Runs {
            dir,
            buf: Vec::new(),
            run_records: run_records.max(1),
            runs: Vec::new(),
            pushed: 0,
        })
    }

    /// Add one leaf.
    pub fn push(&mut self, leaf: Leaf) -> Result<()> {
        self.buf.push(leaf);
        self.pushed += 1;
        if self.buf.len() >= self.run_records {
            self.spill()?;
        }
        Ok(())
    }

    /// Leaves pushed so far (with repeats).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let path = self.dir.path().join(format!("run-{}", self.runs.len()));
        let f = File::create(&path).map_err(Error::io(&path))?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        for l in &self.buf {
            l.write(&mut w).map_err(Error::io(&path))?;
        }
        w.flush().map_err(Error::io(&path))?;
        self.buf.clear();
        self.runs.push(path);
        Ok(())
    }

    /// Every leaf once, in (id, len) order.
    pub fn merged(mut self) -> Result<Merged> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let mut readers = Vec::new();
        for p in &self.runs {
            let f = File::open(p).map_err(Error::io(p))?;
            readers.push((BufReader::with_capacity(1 << 16, f), p.clone()));
        }
        let mut m = Merged {
            _dir: self.dir,
            mem: std::mem::take(&mut self.buf).into_iter(),
            readers,
            heap: BinaryHeap::new(),
            last: None,
        };
        if let Some(l) = m.mem.next() {
            m.heap.push(Reverse((l, usize::MAX)));
        }
        for i in 0..m.readers.len() {
            m.refill(i)?;
        }
        Ok(m)
    }
}

/// The sorted, de-duplicated stream of [`Runs::merged`].
#[derive(Debug)]
pub struct Merged {
    _dir: tempfile::TempDir,
    mem: std::vec::IntoIter<Leaf>,
    readers: Vec<(BufReader<File>, PathBuf)>,
    heap: BinaryHeap<Reverse<(Leaf, usize)>>,
    last: Option<Leaf>,
}

impl Merged {
    fn refill(&mut self, src: usize) -> Result<()> {
        let next = if src == usize::MAX {
            self.mem.next()
        } else {
            let (r, p) = &mut self.readers[src];
            Leaf::read(r).map_err(Error::io(p.as_path()))?
        };
        if let Some(l) = next {
            self.heap.push(Reverse((l, src)));
        }
        Ok(())
    }

    /// The next leaf, or `None` at the end.
    pub fn next_leaf(&mut self) -> Result<Option<Leaf>> {
        self.next_bounded(None)
    }

    /// The next leaf if its id is at most `bound`, without consuming a larger one.
    pub fn next_if_at_most(&mut self, bound: &ObjectId) -> Result<Option<Leaf>> {
        self.next_bounded(Some(bound))
    }

    fn next_bounded(&mut self, bound: Option<&ObjectId>) -> Result<Option<Leaf>> {
        loop {
            match self.heap.peek() {
                Some(Reverse((l, _))) if bound.is_none_or(|b| l.id <= *b) => {}
                _ => return Ok(None),
            }
            let Some(Reverse((l, src))) = self.heap.pop() else {
                return Ok(None);
            };
            self.refill(src)?;
            if self.last != Some(l) {
                self.last = Some(l);
                return Ok(Some(l));
            }
        }
    }
}

/// Walks revision graphs, keeping interior objects in memory and spilling leaves to [`Runs`].
#[derive(Debug)]
pub struct Marker<'a> {
    objects: &'a Objects,
    /// Interior objects walked, by (id, the kind they were referenced as): an id referenced
    /// as two kinds is checked as each.
    interior: HashSet<(ObjectId, ObjectKind)>,
    /// The data objects reached.
    pub leaves: Runs,
    counter: Counter,
}

impl<'a> Marker<'a> {
    /// A marker reading `objects`, spilling under `tmp`.
    pub fn new(objects: &'a Objects, tmp: &Path, what: &'static str) -> Result<Self> {
        Ok(Marker {
            objects,
            interior: HashSet::new(),
            leaves: Runs::new(tmp, RUN_RECORDS)?,
            counter: Counter::new(what),
        })
    }

    /// Interior objects walked so far.
    pub fn interior(&self) -> &HashSet<(ObjectId, ObjectKind)> {
        &self.interior
    }

    /// Mark everything below directory node `root`. A child that cannot be read is passed
    /// to `bad` (with the error) and its subtree skipped; `bad` returning an error stops the
    /// walk with it.
    pub fn mark_tree(
        &mut self,
        root: ObjectId,
        bad: &mut dyn FnMut(&Child, Error) -> Result<()>,
    ) -> Result<()> {
        self.mark(
            Child {
                id: root,
                kind: ObjectKind::DirNode,
                max_len: dir::NODE_MAX_BYTES,
                edge: Edge::Subdir,
            },
            bad,
        )
    }

    /// Mark `start` and everything below it.
    pub fn mark(
        &mut self,
        start: Child,
        bad: &mut dyn FnMut(&Child, Error) -> Result<()>,
    ) -> Result<()> {
        let mut stack = vec![start];
        while let Some(c) = stack.pop() {
            if c.is_data() {
                self.leaves.push(Leaf {
                    id: c.id,
                    len: c.max_len,
                })?;
                continue;
            }
            if !self.interior.insert((c.id, c.kind)) {
                continue;
            }
            self.counter
                .tick(|| format!("{} metadata objects read", self.interior.len()));
            match self
                .objects
                .get(&c.id, c.kind, c.max_len)
                .and_then(|v| graph::children(&v).map_err(Error::from))
            {
                Ok(kids) => stack.extend(kids),
                Err(e) => bad(&c, e)?,
            }
        }
        Ok(())
    }

    /// Mark what the tree of directory `new` has that the tree of `old` (the same path in
    /// an earlier revision) has not: a path's subtree is entered only where its entry
    /// changed, and a changed file's content is marked whole. Cost: the changed directories'
    /// listings, old and new, and what they newly reference.
    pub fn mark_changes(
        &mut self,
        old: Option<ObjectId>,
        new: ObjectId,
        bad: &mut dyn FnMut(&Child, Error) -> Result<()>,
    ) -> Result<()> {
        let Some(old) = old else {
            return self.mark_tree(new, bad);
        };
        if old == new || self.interior.contains(&(new, ObjectKind::DirNode)) {
            return Ok(());
        }
        let subdir = |id| Child {
            id,
            kind: ObjectKind::DirNode,
            max_len: dir::NODE_MAX_BYTES,
            edge: Edge::Subdir,
        };
        // The new directory's own nodes, each verified once as it is listed.
        let mut before: HashMap<String, EntryKind> = HashMap::new();
        let listed = dir::list_from(
            &Uncached(self.objects, RefCell::default()),
            &old,
            0,
            &mut |_, e| {
                before.insert(e.name.clone(), e.kind.clone());
                true
            },
        );
        if let Err(e) = listed {
            // The old tree is unreadable: compare against nothing.
            tracing::warn!("revision tree {old}: {e}; checking the newer tree whole");
            return self.mark_tree(new, bad);
        }
        let mut changed = Vec::new();
        let src = Uncached(self.objects, RefCell::default());
        let listed = dir::list_from(&src, &new, 0, &mut |_, e| {
            if before.get(&e.name) != Some(&e.kind) {
                changed.push((before.get(&e.name).cloned(), e.kind.clone()));
            }
            true
        });
        if let Err(e) = listed {
            return bad(&subdir(new), Error::from(e));
        }
        self.interior.extend(
            src.1
                .into_inner()
                .into_iter()
                .map(|id| (id, ObjectKind::DirNode)),
        );
        drop(before);
        for (was, now) in changed {
            match (&was, &now) {
                (Some(EntryKind::Dir { tree: o, .. }), EntryKind::Dir { tree: n, .. }) => {
                    self.mark_changes(Some(*o), *n, bad)?
                }
                _ => {
                    if let Some(c) = graph::entry_child(&now) {
                        self.mark(c, bad)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Stop the progress display.
    pub fn finish(&self) {
        self.counter.finish();
    }
}

/// A [`NodeSource`] that reads (and verifies) every node from the store each time, keeping
/// nothing but, optionally, the ids it read: a walk of every directory must not hold every
/// parsed node.
struct Uncached<'a>(&'a Objects, RefCell<Vec<ObjectId>>);

impl NodeSource for Uncached<'_> {
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, depotfs_catalog::Error> {
        self.1.borrow_mut().push(*id);
        let v = self
            .0
            .get(id, ObjectKind::DirNode, dir::NODE_MAX_BYTES)
            .map_err(|e| depotfs_catalog::Error::Fetch {
                id: *id,
                message: e.to_string(),
            })?;
        Ok(Arc::new(DirNode::from_verified(&v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u8, len: u64) -> Leaf {
        let mut id = [0u8; 32];
        id[0] = i;
        id[31] = i.wrapping_mul(7);
        Leaf {
            id: ObjectId(id),
            len,
        }
    }

    /// Spilled runs and the in-memory rest merge into one sorted stream without repeats,
    /// and `next_if_at_most` stops at its bound.
    #[test]
    fn runs_merge_sorted_and_deduplicated() {
        let tmp = tempfile::tempdir().unwrap();
        let mut runs = Runs::new(tmp.path(), 3).unwrap();
        let input = [9u8, 3, 200, 3, 7, 9, 1, 255, 0, 7, 128];
        for &i in &input {
            runs.push(leaf(i, 1)).unwrap();
        }
        runs.push(leaf(3, 2)).unwrap();
        assert_eq!(runs.pushed(), 12);
        let mut m = runs.merged().unwrap();
        let mut bound = [0xffu8; 32];
        bound[0] = 7;
        let mut low = Vec::new();
        while let Some(l) = m.next_if_at_most(&ObjectId(bound)).unwrap() {
            low.push(l);
        }
        assert_eq!(
            low,
            vec![leaf(0, 1), leaf(1, 1), leaf(3, 1), leaf(3, 2), leaf(7, 1)]
        );
        let mut rest = Vec::new();
        while let Some(l) = m.next_leaf().unwrap() {
            rest.push(l.id.0[0]);
        }
        assert_eq!(rest, vec![9, 128, 200, 255]);
        // The spilled runs lived in a private directory, gone with the stream.
        drop(m);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
