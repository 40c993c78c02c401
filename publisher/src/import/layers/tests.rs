//! Crafted layers: every rule of the module docs, without a registry.

use std::collections::HashMap;
use std::io::{Read, Write};

use depotfs_catalog::{FileContent, ObjectId};

use super::*;

/// One tar entry: raw name bytes (written as-is, so hostile names are possible), type,
/// mode, data, link target.
struct E<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    mode: u32,
    data: &'a [u8],
    link: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name: name.as_bytes(),
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data,
        link: b"",
    }
}
fn dir(name: &str) -> E<'_> {
    E {
        name: name.as_bytes(),
        kind: tar::EntryType::Directory,
        mode: 0o755,
        data: b"",
        link: b"",
    }
}
fn link<'a>(kind: tar::EntryType, name: &'a str, target: &'a str) -> E<'a> {
    E {
        name: name.as_bytes(),
        kind,
        mode: 0o777,
        data: b"",
        link: target.as_bytes(),
    }
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

/// Contents kept in memory by id; a short read is refused as store_reader does.
#[derive(Default)]
struct Mem(HashMap<ObjectId, Vec<u8>>);

impl Mem {
    fn read(&mut self, bytes: &[u8], name: &str, limits: &Limits) -> Result<Changes> {
        let mut sink = |r: &mut dyn Read, size: u64| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)
                .map_err(|e| Error::Input(e.to_string()))?;
            if v.len() as u64 != size {
                return Err(Error::Input(format!(
                    "truncated: {} bytes of {size}",
                    v.len()
                )));
            }
            let id = ObjectId::of(&v);
            self.0.insert(id, v);
            Ok(FileContent::Single(id))
        };
        read_layer(bytes, name, limits, &mut sink)
    }

    fn content(&self, tree: &Tree, path: &str) -> Vec<u8> {
        match &tree
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing"))
            .kind
        {
            NodeKind::File {
                content: FileContent::Single(id),
                ..
            } => self.0[id].clone(),
            other => panic!("{path}: {other:?}"),
        }
    }
}

fn apply_all(layers: &[Vec<u8>]) -> (Mem, Result<Tree>) {
    let mut mem = Mem::default();
    let mut tree = Tree::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("L{i}");
        let r = mem
            .read(l, &name, &Limits::default())
            .and_then(|c| tree.apply(&name, &c, &Limits::default()));
        if let Err(e) = r {
            return (mem, Err(e));
        }
    }
    (mem, Ok(tree))
}

#[test]
fn layers_apply_with_whiteouts_opaque_dirs_links_and_modes() {
    use tar::EntryType as T;
    let mut su = file("bin/su", b"setuid binary");
    su.mode = 0o4755;
    let mut sticky = dir("tmp/");
    sticky.mode = 0o1777;
    let l0 = tar_of(&[
        dir("./"),
        dir("./a/"),
        file("./a/x", b"x from L0"),
        file("a/y", b"y from L0"),
        dir("keep/"),
        file("keep/k", b"hidden by the opaque dir"),
        dir("keep/sub/"),
        file("keep/sub/deep", b"deep"),
        su,
        sticky,
        link(T::Symlink, "s", "/a/y"),
        E {
            name: b"dev/null",
            kind: T::Char,
            mode: 0o666,
            data: b"",
            link: b"",
        },
        E {
            name: b"fifo",
            kind: T::Fifo,
            mode: 0o644,
            data: b"",
            link: b"",
        },
        file("implicit/parent/f", b"no dir entries before me"),
    ]);
    let l1 = tar_of(&[
        file("a/.wh.x", b""),
        file("keep/.wh..wh..opq", b""),
        file("keep/new", b"new in L1"),
        link(T::Link, "bin/su2", "bin/su"),
        file("c/z", b"z in L1"),
        file("c/.wh.z", b""), // same layer: does not hide c/z
        file("s", b"a file replaces the symlink"),
    ]);
    let (mem, tree) = apply_all(&[l0, gzip(&l1)]);
    let tree = tree.unwrap();
    assert!(tree.get("a/x").is_none(), "whiteout removes a/x");
    assert_eq!(mem.content(&tree, "a/y"), b"y from L0");
    assert!(
        tree.get("keep/k").is_none()
            && tree.get("keep/sub").is_none()
            && tree.get("keep/sub/deep").is_none()
    );
    assert_eq!(tree.get("keep").unwrap().kind, NodeKind::Dir);
    assert_eq!(mem.content(&tree, "keep/new"), b"new in L1");
    assert_eq!(tree.get("bin/su").unwrap().mode, 0o755, "setuid stripped");
    assert_eq!(tree.get("tmp").unwrap().mode, 0o1777, "sticky kept");
    assert_eq!(mem.content(&tree, "bin/su2"), b"setuid binary");
    assert_eq!(mem.content(&tree, "c/z"), b"z in L1");
    assert_eq!(mem.content(&tree, "s"), b"a file replaces the symlink");
    assert!(
        tree.get("dev/null").is_none() && tree.get("fifo").is_none(),
        "devices skipped"
    );
    assert_eq!(tree.get("implicit/parent").unwrap().mode, 0o755);
    assert_eq!(tree.get("a/y").unwrap().mtime_ns, 1_700_000_000_000_000_000);
    let nodes = tree.into_nodes("img/busybox:1");
    assert_eq!(nodes[0].0, "img/busybox:1");
    assert!(nodes.iter().any(|(p, _)| p == "img/busybox:1/keep/new"));
}

#[test]
fn diff_id_is_the_digest_of_the_uncompressed_tar_and_zstd_layers_read() {
    let t = tar_of(&[file("f", b"data")]);
    let want = crate::import::image::sha256(&t);
    for bytes in [t.clone(), gzip(&t), zstd::encode_all(&t[..], 3).unwrap()] {
        let c = Mem::default()
            .read(&bytes, "L", &Limits::default())
            .unwrap();
        assert_eq!(c.diff_id, want);
        assert_eq!(c.changes.len(), 1);
    }
}

fn refused(layers: &[Vec<u8>], want: &[&str]) {
    let (_, r) = apply_all(layers);
    let e = r.expect_err("must be refused").to_string();
    for w in want {
        assert!(e.contains(w), "{e:?} lacks {w:?}");
    }
}

#[test]
fn hostile_layers_are_refused_naming_layer_and_entry() {
    use tar::EntryType as T;
    refused(
        &[tar_of(&[file("../../etc/passwd", b"x")])],
        &["layer L0", "../../etc/passwd", ".."],
    );
    refused(
        &[tar_of(&[file("a/../../x", b"x")])],
        &["layer L0", "a/../../x"],
    );
    refused(
        &[tar_of(&[file("/etc/passwd", b"x")])],
        &["layer L0", "/etc/passwd", "absolute"],
    );
    // A symlink, then an entry written through it: same layer and a later layer.
    refused(
        &[tar_of(&[
            link(T::Symlink, "etc", "/etc"),
            file("etc/passwd", b"root::0:0"),
        ])],
        &["layer L0", "etc/passwd", "symlink etc -> /etc"],
    );
    refused(
        &[
            tar_of(&[link(T::Symlink, "d", "../../..")]),
            tar_of(&[dir("d/x/"), file("d/x/y", b"")]),
        ],
        &["layer L1", "d/x", "symlink"],
    );
    refused(
        &[tar_of(&[link(T::Link, "h", "nowhere")])],
        &["layer L0", "\"h\"", "does not exist"],
    );
    refused(
        &[tar_of(&[link(T::Link, "h", "../outside")])],
        &["layer L0", "hard link target", ".."],
    );
    refused(&[tar_of(&[file("a/.wh.", b"")])], &["malformed whiteout"]);
    refused(&[vec![0x42; 2048]], &["layer L0"]);
}

#[test]
fn limits_name_the_layer_and_entry() {
    let mut mem = Mem::default();
    let small = Limits {
        layer_entries: 2,
        image_entries: 3,
        file_bytes: 10,
        layer_bytes: 64 << 10,
    };
    let e = mem
        .read(
            &tar_of(&[file("a", b""), file("b", b""), file("c", b"")]),
            "L9",
            &small,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("layer L9: entry \"c\": more than 2 entries"),
        "{e}"
    );
    let e = mem
        .read(&tar_of(&[file("big", &[7; 11])]), "L9", &small)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"big\": file of 11 bytes exceeds the limit of 10"),
        "{e}"
    );
    // Image-wide: four paths over two layers.
    let c0 = mem
        .read(&tar_of(&[file("a", b""), file("b", b"")]), "L0", &small)
        .unwrap();
    let c1 = mem
        .read(&tar_of(&[file("c", b""), file("d", b"")]), "L1", &small)
        .unwrap();
    let mut t = Tree::new();
    t.apply("L0", &c0, &small).unwrap();
    let e = t.apply("L1", &c1, &small).unwrap_err();
    assert!(
        e.to_string()
            .contains("layer L1: entry \"d\": image has more than 3 paths"),
        "{e}"
    );
    // A gzip bomb: 64 MiB of zeros in a few kB, stopped at the layer-bytes limit.
    let zeros = vec![0u8; 64 << 20];
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    g.write_all(&tar_of(&[file("zeros", &zeros)])).unwrap();
    let bomb = g.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let big_file = Limits {
        file_bytes: u64::MAX,
        ..small
    };
    let e = mem.read(&bomb, "Lbomb", &big_file).unwrap_err();
    assert!(
        e.to_string().contains("layer Lbomb") && e.to_string().contains("limit of 65536 bytes"),
        "{e}"
    );
}

#[test]
fn truncated_layers_fail() {
    let t = tar_of(&[file("f", &[1u8; 4000]), file("g", b"tail")]);
    // Cut inside f's data: the entry reads short.
    let e = Mem::default()
        .read(&t[..1500], "Lcut", &Limits::default())
        .unwrap_err();
    assert!(e.to_string().contains("layer Lcut: entry \"f\""), "{e}");
    // A gzip stream without its end.
    let g = gzip(&t);
    let e = Mem::default()
        .read(&g[..g.len() - 12], "Lgz", &Limits::default())
        .unwrap_err();
    assert!(e.to_string().contains("layer Lgz"), "{e}");
}
