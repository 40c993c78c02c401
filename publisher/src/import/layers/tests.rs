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
        path_bytes: 1 << 20,
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

/// A tar built by the tar crate: GNU long names for paths over 100 bytes.
fn long_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A PAX extended header (type `x`) of `records`, as the raw bytes of its entry.
fn pax_entry(records: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_mut_bytes()[..9].copy_from_slice(b"PaxHeader");
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_size(records.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(records);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// One PAX record `key=value`, its length prefix included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    while n != body + n.to_string().len() {
        n = body + n.to_string().len();
    }
    let mut r = format!("{n} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), n);
    r
}

#[test]
fn long_and_deep_paths_within_linux_limits_are_kept_beyond_them_refused() {
    // 255 directories and a file, 2,816 bytes: kept, through a GNU long name.
    let deep: String = (0..255).map(|i| format!("d{i:08}/")).collect::<String>() + "f";
    let (mem, tree) = apply_all(&[long_tar(&[(&deep, b"deep")])]);
    let tree = tree.unwrap();
    assert_eq!(mem.content(&tree, &deep), b"deep");
    assert_eq!(tree.len(), 256);
    // A PAX path of the same depth: kept too.
    let mut pax = pax_entry(&pax_record("path", deep.replace("d0", "p0").as_bytes()));
    pax.extend(tar_of(&[file("short-name-replaced-by-pax", b"pax")]));
    let (mem, tree) = apply_all(&[pax]);
    assert_eq!(
        mem.content(&tree.unwrap(), &deep.replace("d0", "p0")),
        b"pax"
    );
    // One level deeper: refused, naming the depth.
    let deeper = format!("x/{deep}");
    refused(
        &[long_tar(&[(&deeper, b"")])],
        &["layer L0", "path of 257 components, more than 256"],
    );
    // Longer than PATH_MAX (a few directories with long names): refused; the error shows
    // the start of the path, not all of it.
    let long = format!("{}/f", vec!["n".repeat(250); 17].join("/"));
    let (_, r) = apply_all(&[long_tar(&[(&long, b"")])]);
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("path of 4268 bytes, longer than PATH_MAX (4096)"),
        "{e}"
    );
    assert!(e.contains("... (4268 bytes)") && e.len() < 600, "{e}");
    // A symlink target longer than PATH_MAX.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "l", "t".repeat(5000)).unwrap();
    refused(
        &[b.into_inner().unwrap()],
        &["\"l\"", "symlink target of 5000 bytes"],
    );
}

#[test]
fn a_huge_pax_record_or_long_name_is_refused_before_it_is_read_whole() {
    // 64 MiB of PAX record (a comment): the tar crate would read it whole into memory.
    // The layer is refused once the first MiB of it has passed.
    let mut records = pax_record("comment", &vec![b'z'; 64 << 20]);
    records.extend(pax_record("path", b"f"));
    let mut t = pax_entry(&records);
    t.extend(tar_of(&[file("g", b"")]));
    refused(
        &[gzip(&t)],
        &["layer L0", "more than 1048576 bytes of tar headers"],
    );
    // The same for a GNU long name of 2 MiB.
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(2 << 20);
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.extend(vec![b'a'; 2 << 20]);
    t.extend(tar_of(&[file("g", b"")]));
    refused(&[t], &["more than 1048576 bytes of tar headers"]);
    // Data is not metadata: a device entry that carries 3 MiB of data, skipped, and a 3 MiB
    // file are read through.
    let big = vec![5u8; 3 << 20];
    let mut dev = tar_of(&[E {
        name: b"dev/weird",
        kind: tar::EntryType::Char,
        mode: 0o644,
        data: &big,
        link: b"",
    }]);
    dev.truncate(dev.len() - 1024); // its end-of-archive blocks
    dev.extend(tar_of(&[file("big", &big)]));
    let (mem, tree) = apply_all(&[dev]);
    let tree = tree.unwrap();
    assert_eq!(mem.content(&tree, "big"), big);
    assert!(tree.get("dev/weird").is_none());
}

#[test]
fn aufs_metadata_is_skipped_and_odd_whiteouts_refused() {
    let (mem, tree) = apply_all(&[tar_of(&[
        file(".wh..wh.aufs", b""),
        dir(".wh..wh.plnk/"),
        file(".wh..wh.plnk/123.456", b"hard link store"),
        dir(".wh..wh.orph/"),
        file("kept", b"k"),
    ])]);
    let tree = tree.unwrap();
    assert_eq!(mem.content(&tree, "kept"), b"k");
    assert_eq!(tree.len(), 1, "{:?}", tree.iter().collect::<Vec<_>>());
    refused(&[tar_of(&[file("a/.wh..", b"")])], &["malformed whiteout"]);
    refused(&[tar_of(&[file(".wh...", b"")])], &["malformed whiteout"]);
}

#[test]
fn the_bytes_of_paths_are_bounded_per_layer_and_per_image() {
    let tight = Limits {
        path_bytes: 1000,
        ..Limits::default()
    };
    let names: Vec<String> = (0..20)
        .map(|i| format!("{}{i:02}", "p".repeat(48)))
        .collect();
    let files: Vec<E> = names.iter().map(|n| file(n, b"")).collect();
    // 20 paths of 50 bytes: exactly the limit, kept; one more byte of path is refused.
    let mut mem = Mem::default();
    let c = mem.read(&tar_of(&files), "L0", &tight).unwrap();
    let mut more = names.clone();
    more.push("q".into());
    let more: Vec<E> = more.iter().map(|n| file(n, b"")).collect();
    let e = mem.read(&tar_of(&more), "L1", &tight).unwrap_err();
    assert!(
        e.to_string()
            .contains("entry \"q\": the layer's paths exceed the limit of 1000 bytes"),
        "{e}"
    );
    // Image-wide: the parents a path makes count too.
    let mut t = Tree::new();
    t.apply("L0", &c, &tight).unwrap();
    let deep = mem
        .read(&tar_of(&[file("a/b/c", b"")]), "L2", &tight)
        .unwrap();
    let e = t.apply("L2", &deep, &tight).unwrap_err();
    assert!(
        e.to_string().contains("the image's paths exceed the limit"),
        "{e}"
    );
}
