//! Every seed and every input the fuzzer kept (`fuzz/corpus/TARGET/*`) replayed through its
//! target, so a regression shows in `cargo test` without a fuzzer. A target fails by
//! panicking; the panic names the file.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in depotfs_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs seeds)", dir.display()))
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seeds", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{}: target {name} panicked: {msg}", f.display());
            }
        }
    }
}

/// Every target has a corpus directory and an AFL++ binary; every corpus directory is a
/// target (a renamed target leaves no orphan corpus behind).
#[test]
fn targets_corpora_and_binaries_match() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut corpora: Vec<String> = std::fs::read_dir(here.join("corpus"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    let mut names: Vec<String> = depotfs_fuzz::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names.sort();
    assert_eq!(corpora, names);
    let mut bins: Vec<String> = std::fs::read_dir(here.join("afl/src/bin"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().replace(".rs", ""))
        .collect();
    bins.sort();
    assert_eq!(bins, names);
    for n in &names {
        let bin = here.join("afl/src/bin").join(format!("{n}.rs"));
        let text =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("depotfs_fuzz::{n}(")),
            "{}",
            bin.display()
        );
    }
}

/// Write the seed files (`cargo test -p depotfs-fuzz --test corpus -- --ignored write_seeds`):
/// real encodings of each format, made by the code that writes them, so the fuzzer starts
/// from valid inputs. Inputs the fuzzer finds are added next to them (see fuzz/README.md).
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    use depotfs_catalog::dir::{self, DirNode};
    use depotfs_catalog::object::{self, ObjectKind};
    use depotfs_catalog::{ChunkList, ChunkRef, Entry, EntryKind, FileContent, Manifest, ObjectId};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    };
    let entry = |i: u32, kind: EntryKind| Entry {
        name: format!("samtools:1.{i:05}--h91753b0_{i}"),
        mode: 0o644,
        mtime_ns: 1_769_558_400_000_000_000 + i64::from(i),
        kind,
    };
    let file = |i: u32| {
        entry(
            i,
            EntryKind::File {
                size: u64::from(i) * 1000,
                content: FileContent::Single(ObjectId::of(&i.to_le_bytes())),
            },
        )
    };
    let leaf = DirNode::Leaf(vec![
        file(1),
        entry(
            2,
            EntryKind::Dir {
                tree: ObjectId::of_kind(ObjectKind::DirNode, b"x"),
                entries: 3,
            },
        ),
        entry(
            3,
            EntryKind::Symlink {
                target: "samtools:1.1--h91753b0_1".into(),
            },
        ),
        entry(
            4,
            EntryKind::File {
                size: 5 << 20,
                content: FileContent::Chunked(ObjectId::of_kind(ObjectKind::ChunkList, b"y")),
            },
        ),
        entry(
            5,
            EntryKind::File {
                size: 0,
                content: FileContent::Empty,
            },
        ),
    ]);
    put("dir_node", "leaf", &leaf.to_bytes());
    put("dir_node", "empty", &DirNode::Leaf(Vec::new()).to_bytes());
    // A big directory: its index node and one of its leaves, as `dir::build` makes them.
    let mut nodes = Vec::new();
    let built = dir::build((0..3000).map(file).collect(), 3, &mut |enc| {
        nodes.push(enc);
        Ok(())
    })
    .unwrap();
    for (i, enc) in nodes
        .iter()
        .enumerate()
        .filter(|(_, e)| e.id == built.tree)
        .take(1)
    {
        let v = object::decode(enc.id, ObjectKind::DirNode, &enc.bytes, u64::MAX).unwrap();
        put("dir_node", &format!("index-{i}"), v.data());
        put("object", "dir-index-zstd", &enc.bytes);
    }
    let list = ChunkList {
        chunks: (0..6u32)
            .map(|i| ChunkRef {
                id: ObjectId::of(&i.to_le_bytes()),
                len: 200_000 + i * 1000,
            })
            .collect(),
        prefetch: vec![3, 0, 5],
    };
    put("chunk_list", "six", &list.to_bytes());
    put("chunk_list", "empty", &ChunkList::default().to_bytes());
    let text = b"bioconda samtools 1.9 h91753b0_8\n".repeat(50);
    for (name, kind, data, level) in [
        ("chunk-zstd", ObjectKind::Chunk, &text[..], 3),
        (
            "chunk-raw",
            ObjectKind::Chunk,
            &b"\x00\x01\x02 short"[..],
            3,
        ),
        ("list-zstd", ObjectKind::ChunkList, &list.to_bytes()[..], 3),
        ("leaf-zstd", ObjectKind::DirNode, &leaf.to_bytes()[..], 3),
        ("empty-dir", ObjectKind::DirNode, &[0u8, 0][..], 3),
    ] {
        put("object", name, &object::encode(kind, data, level).bytes);
    }
    let key = depotfs_catalog::SecretKey::from_seed([7; 32]);
    let m = Manifest {
        format: depotfs_catalog::FORMAT_VERSION,
        name: "fuzz.example.org".into(),
        revision: 42,
        root: ObjectId::of_kind(ObjectKind::DirNode, b"root"),
        root_mtime_ns: 1_769_558_400_000_000_000,
        root_entries: 2,
        published_ns: 1_769_558_400_000_000_001,
        ttl: 240,
    };
    let signed = m.sign(&key);
    put("manifest", "signed", signed.as_bytes());
    let body = &signed[..signed.find("signature ").unwrap()];
    put("manifest", "body", body.as_bytes());
    put(
        "trace",
        "reads",
        b"# depotfs access trace\nall/samtools:1.9--h91753b0_8\t0\t4096\nall/samtools:1.9--h91753b0_8\t131072\t65536\n\nall/x\t18446744073709551615\t1\n",
    );
    put(
        "trace",
        "bad",
        b"/abs\t1\t2\nrel\tx\t2\nrel\t1\n../up\t0\t0\n",
    );
    put(
        "serve_request",
        "object-range",
        b"/objects/ab/cdef0123\nbytes=0-1023\n\"17f-400\"\nSun, 22 Nov 2026 01:48:24 GMT\n",
    );
    put(
        "serve_request",
        "escapes",
        b"/%2e%2e/objects/../repo.key\nbytes=-500\nW/\"x\", *\n\"abc\"\n",
    );
    put("serve_request", "metrics", b"/metrics\nbytes=5-,7-9\n\n\n");
}
