//! `depotfs add --trace FILE`, run as the real binary: the published chunk list of a traced
//! file carries the chunks the trace read, in first-read order, with the same chunks (the
//! content reads back unchanged); paths that are missing or not chunked files are skipped
//! with a warning naming them; a malformed trace is refused naming FILE:LINE, and nothing is
//! published.

mod cli_run;
mod http_suite;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use cli_run::{depotfs, ok};
use depotfs_catalog::dir::{DirNode, NODE_MAX_BYTES};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{ChunkList, EntryKind, FileContent, Manifest, ObjectId, PublicKey};
use http_suite::random_bytes;

fn manifest(store: &Path) -> Manifest {
    let public = store.join("public");
    let key = PublicKey::from_text(&fs::read_to_string(public.join("repo.pub")).unwrap()).unwrap();
    Manifest::parse_verified(&fs::read(public.join("manifest")).unwrap(), &key, None).unwrap()
}

fn read_object(store: &Path, id: ObjectId, kind: ObjectKind) -> object::Verified {
    let bytes = fs::read(store.join("public").join(id.store_path())).unwrap();
    object::decode(id, kind, &bytes, NODE_MAX_BYTES).unwrap()
}

/// The content of the file at repository path `path` in the published revision (a path of
/// names in directories small enough to be single leaves).
fn content(store: &Path, path: &str) -> FileContent {
    let mut tree = manifest(store).root;
    let parts: Vec<&str> = path.split('/').collect();
    for (i, name) in parts.iter().enumerate() {
        let node = DirNode::from_verified(&read_object(store, tree, ObjectKind::DirNode)).unwrap();
        let DirNode::Leaf(entries) = node else {
            panic!("test directories are single leaves")
        };
        let e = entries.into_iter().find(|e| e.name == *name).unwrap();
        match e.kind {
            EntryKind::Dir { tree: t, .. } => tree = t,
            EntryKind::File { content, .. } if i + 1 == parts.len() => return content,
            other => panic!("{path}: unexpected {other:?}"),
        }
    }
    panic!("{path} is a directory")
}

fn chunk_list(store: &Path, path: &str) -> ChunkList {
    let FileContent::Chunked(id) = content(store, path) else {
        panic!("{path} is not chunked")
    };
    ChunkList::from_verified(&read_object(store, id, ObjectKind::ChunkList)).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn cat(&self, path: &str) -> Vec<u8> {
        ok(depotfs(&[
            OsStr::new("cat"),
            self.store().as_os_str(),
            OsStr::new(path),
        ]))
        .stdout
    }
}

/// A store with `img/big.sif` (6 MiB, many chunks) and `img/small` published.
fn setup() -> (Setup, Vec<u8>) {
    let s = Setup {
        dir: tempfile::tempdir().unwrap(),
    };
    let src = s.dir.path().join("src/img");
    fs::create_dir_all(&src).unwrap();
    let big = random_bytes(6 << 20, 11);
    fs::write(src.join("big.sif"), &big).unwrap();
    fs::write(src.join("small"), b"small file\n").unwrap();
    ok(depotfs(&[
        OsStr::new("init"),
        s.store().as_os_str(),
        OsStr::new("--name"),
        OsStr::new("trace.test.org"),
    ]));
    ok(depotfs(&[
        OsStr::new("add"),
        s.store().as_os_str(),
        src.as_os_str(),
    ]));
    (s, big)
}

#[test]
fn trace_sets_prefetch_in_first_read_order_and_keeps_content() {
    let (s, big) = setup();
    let before = chunk_list(&s.store(), "img/big.sif");
    assert!(before.chunks.len() >= 10, "{} chunks", before.chunks.len());
    assert!(before.prefetch.is_empty());
    let offs = before.offsets();
    // Reads: inside chunk 7; across the 2|3 boundary; chunk 7 again; the first byte; a
    // small file; a missing path; a read past the end (touches nothing).
    let trace = format!(
        "# recorded by a test\n\
         img/big.sif\t{}\t100\n\
         \n\
         img/big.sif\t{}\t20\n\
         img/big.sif\t{}\t4096\n\
         img/small\t0\t1\n\
         img/missing\t0\t10\n\
         img/big.sif\t0\t1\n\
         img/big.sif\t99999999\t10\n",
        offs[7] + 5,
        offs[3] - 10,
        offs[7] + 1000,
    );
    let tf = s.dir.path().join("start.trace");
    fs::write(&tf, trace).unwrap();
    let out = ok(depotfs(&[
        OsStr::new("add"),
        s.store().as_os_str(),
        OsStr::new("--trace"),
        tf.as_os_str(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("img/small is not a chunked file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("img/missing is not in the repository"),
        "{stderr}"
    );
    assert_eq!(manifest(&s.store()).revision, 2);

    let after = chunk_list(&s.store(), "img/big.sif");
    assert_eq!(after.prefetch, vec![7, 2, 3, 0]);
    assert_eq!(after.chunks, before.chunks, "the chunks stay");
    assert!(s.cat("img/big.sif") == big, "content changed");
    assert_eq!(s.cat("img/small"), b"small file\n");

    // The same trace again changes nothing, so nothing is published.
    let out = ok(depotfs(&[
        OsStr::new("add"),
        s.store().as_os_str(),
        OsStr::new("--trace"),
        tf.as_os_str(),
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing staged"),
        "{out:?}"
    );
    assert_eq!(manifest(&s.store()).revision, 2);

    // Paths and a trace in one run: the trace applies to the tree after the add.
    let src2 = s.dir.path().join("src/img2");
    fs::create_dir_all(&src2).unwrap();
    fs::write(src2.join("other.sif"), random_bytes(3 << 20, 12)).unwrap();
    let tf2 = s.dir.path().join("img2.trace");
    fs::write(&tf2, "img2/other.sif\t2000000\t1\nimg2/other.sif\t0\t1\n").unwrap();
    ok(depotfs(&[
        OsStr::new("add"),
        s.store().as_os_str(),
        src2.as_os_str(),
        OsStr::new("--trace"),
        tf2.as_os_str(),
    ]));
    assert_eq!(manifest(&s.store()).revision, 3);
    let l2 = chunk_list(&s.store(), "img2/other.sif");
    let at = l2.locate(&l2.offsets(), 2_000_000).unwrap().index as u32;
    assert!(at > 0);
    assert_eq!(l2.prefetch, vec![at, 0]);
    assert_eq!(
        ok(depotfs(&[OsStr::new("verify"), s.store().as_os_str()]))
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn malformed_trace_is_refused_with_file_and_line() {
    let (s, _) = setup();
    let tf = s.dir.path().join("bad.trace");
    for (text, line, what) in [
        (
            "img/big.sif\t0\t10\n# ok\nimg/big.sif\tx\t10\n",
            3,
            "offset \"x\"",
        ),
        ("img/big.sif\t0\n", 1, "expected PATH<TAB>OFFSET<TAB>LENGTH"),
        ("\n/img/big.sif\t0\t1\n", 2, "no leading '/'"),
        ("img/big.sif\t0\t-4\n", 1, "length \"-4\""),
    ] {
        fs::write(&tf, text).unwrap();
        let out = depotfs(&[
            OsStr::new("add"),
            s.store().as_os_str(),
            OsStr::new("--trace"),
            tf.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} accepted");
        assert!(
            stderr.contains(&format!("{}:{line}: ", tf.display())) && stderr.contains(what),
            "{text:?}: {stderr}"
        );
        assert_eq!(manifest(&s.store()).revision, 1, "published after {text:?}");
        assert!(chunk_list(&s.store(), "img/big.sif").prefetch.is_empty());
    }
}
