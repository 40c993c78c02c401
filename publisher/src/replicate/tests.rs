//! The walk's two rules against a directory mirror and a real `serve_on` of a store's
//! `public/`: an object present in the mirror is skipped with its whole subtree, and an
//! object is written only once everything it references is present.

use std::collections::BTreeMap;

use depotfs_catalog::FileContent;

use super::*;
use crate::db::{Node, NodeKind};
use crate::repo::Repo;

/// A store whose `public/` is served over HTTP until the fixture is dropped.
struct Served {
    dir: tempfile::TempDir,
    repo: Repo,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(&dir.path().join("store"), "test").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let public = dir.path().join("store/public");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                crate::serve::serve_on(listener, public, "/files/".into(), shutdown)
                    .await
                    .unwrap();
            });
        });
        Served {
            dir,
            repo,
            url,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Put file `name` (content `text`, one chunk object) into directory `to`, and publish.
    fn publish(&self, files: &[(&str, &str, &[u8])]) -> u64 {
        for (to, name, text) in files {
            let enc = object::encode(ObjectKind::Chunk, text, 3);
            let path = self.public().join(enc.id.store_path());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &enc.bytes).unwrap();
            let node = Node {
                mode: 0o644,
                mtime_ns: 1,
                kind: NodeKind::File {
                    size: text.len() as u64,
                    content: FileContent::Single(enc.id),
                },
            };
            self.repo
                .stage_add(to, vec![(name.to_string(), node)])
                .unwrap();
        }
        self.repo.publish(None, false).unwrap().unwrap().0
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("store/public")
    }

    fn mirror(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }

    fn replicate(&self, full: bool) -> Result<Report> {
        run(&Options {
            source_url: self.url.clone(),
            dest: self.mirror(),
            key: self.public().join("repo.pub"),
            name: None,
            jobs: 4,
            full,
            timeout: Duration::from_secs(30),
        })
    }

    /// Every object reachable from the source's current root, with its children (read from
    /// the source).
    fn graph(&self) -> BTreeMap<ObjectId, Vec<ObjectId>> {
        let root = self.repo.revisions().unwrap().last().unwrap().1.root;
        let mut out = BTreeMap::new();
        let mut todo = vec![(root, ObjectKind::DirNode, NODE_MAX_BYTES)];
        while let Some((id, kind, max_len)) = todo.pop() {
            let bytes = fs::read(self.public().join(id.store_path())).unwrap();
            let v = object::decode(id, kind, &bytes, max_len).unwrap();
            let kids = graph::children(&v).unwrap();
            out.insert(id, kids.iter().map(|c| c.id).collect());
            todo.extend(kids.iter().map(|c| (c.id, c.kind, c.max_len)));
        }
        out
    }

    fn in_mirror(&self, id: &ObjectId) -> bool {
        self.mirror().join(id.store_path()).exists()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn chunk_id(text: &[u8]) -> ObjectId {
    object::encode(ObjectKind::Chunk, text, 3).id
}

/// An object the mirror has is not entered: with a chunk removed from under the mirror's
/// (present) root, a second run of the same revision fetches nothing and leaves it missing;
/// `--full`, which descends into present objects, brings it back.
#[test]
fn a_present_object_is_skipped_with_its_subtree_unless_full() {
    let s = Served::new();
    s.publish(&[("old", "a", b"alpha"), ("old", "b", b"beta")]);
    let first = s.replicate(false).unwrap();
    assert_eq!(first.fetched as usize, s.graph().len());
    let alpha = chunk_id(b"alpha");
    fs::remove_file(s.mirror().join(alpha.store_path())).unwrap();

    let second = s.replicate(false).unwrap();
    assert_eq!((second.fetched, second.present), (0, 1), "{second}");
    assert!(!s.in_mirror(&alpha), "a present subtree was entered");

    let full = s.replicate(true).unwrap();
    assert_eq!(full.fetched, 1, "{full}");
    assert!(s.in_mirror(&alpha));
}

/// Children first: a run that cannot fetch one chunk (gone from the source) fails, and
/// leaves in the mirror no object whose subtree is incomplete: not the chunk's directory
/// node, not the root, not the manifest; every object it did write has all its children.
#[test]
fn objects_are_written_only_after_their_children() {
    let s = Served::new();
    s.publish(&[
        ("d", "a", b"alpha"),
        ("d", "b", b"beta"),
        ("d/e", "c", b"gamma"),
        ("f", "g", b"delta"),
    ]);
    let graph = s.graph();
    let gone = chunk_id(b"gamma");
    fs::remove_file(s.public().join(gone.store_path())).unwrap();
    let err = s.replicate(false).unwrap_err().to_string();
    assert!(
        err.contains(&gone.store_path()) && err.contains("404"),
        "{err}"
    );
    let parents: Vec<_> = graph
        .iter()
        .filter(|(_, kids)| kids.contains(&gone))
        .collect();
    assert_eq!(parents.len(), 1, "d/e's node");
    assert!(
        !s.in_mirror(parents[0].0),
        "d/e's node written without its chunk"
    );
    let root = s.repo.revisions().unwrap().last().unwrap().1.root;
    assert!(!s.in_mirror(&root), "the root written without its subtree");
    for (id, kids) in &graph {
        if s.in_mirror(id) {
            let missing: Vec<_> = kids.iter().filter(|k| !s.in_mirror(k)).collect();
            assert!(
                missing.is_empty(),
                "{id} written before its children {missing:?}"
            );
        }
    }
    assert!(!s.mirror().join("manifest").exists());
}
