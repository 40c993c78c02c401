//! # depotfs-fuzz: the fuzz targets
//!
//! One function per parser that reads bytes depotfs does not trust, each taking the raw
//! fuzzer input and returning nothing: a target fails only by panicking (or hanging, or
//! allocating without bound), never by returning an error — errors are the right answer to
//! garbage. [`TARGETS`] lists them by name; the name is also the corpus directory
//! (`fuzz/corpus/NAME/`) and the AFL++ binary (`fuzz/afl/src/bin/NAME.rs`).
//!
//! | target | what it feeds |
//! |---|---|
//! | `object` | an object file as fetched: [`object::peek_header`], [`object::decode`] / [`object::decode_owned`] as every kind, with a tight and a loose bound |
//! | `manifest` | a manifest as fetched: [`Manifest::parse_verified`] of the raw bytes, and of the bytes as a body signed by a test key (so the fuzzer reaches the field parser) |
//! | `dir_node` | a directory node's plaintext: [`DirNode::from_verified`], then [`dir::lookup`] and [`dir::list_from`] over it |
//! | `chunk_list` | a chunk list's plaintext: [`ChunkList::from_verified`], its offsets, `locate` and the publisher's `prefetch_order` (with the `publisher` feature) |
//! | `trace` | an access trace (`depotfs add --trace`): [`ingest::parse_trace_bytes`] |
//! | `serve_request` | a request's path and headers in `depotfs serve`: [`parse::parse_path`], [`parse::parse_range`], `If-None-Match`, `If-Range` |
//! | `listing` | a depot's directory listing as `depotfs sync` fetches it (nginx autoindex HTML and JSON, Apache mod_autoindex): [`listing::parse`] |
//! | `layer` | an image layer as `depotfs import` fetches it (a tar, plain, gzip or zstd): [`layers::read_layer`] under small [`layers::Limits`], then [`layers::Tree::apply`] twice (the layer over itself) |
//!
//! Adding a parser: write `pub fn NAME(data: &[u8])` here, add
//! it to [`TARGETS`], put a few seed files in `fuzz/corpus/NAME/` and a three-line binary in
//! `fuzz/afl/src/bin/NAME.rs`; `tests/corpus.rs` replays it from then on.
#![forbid(unsafe_code)]

use std::sync::Arc;
#[cfg(feature = "publisher")]
use std::time::{Duration, UNIX_EPOCH};

use depotfs_catalog::dir::{self, DirNode, NodeSource};
use depotfs_catalog::object::{self, ObjectKind, Verified};
use depotfs_catalog::{ChunkList, Error, Manifest, ObjectId, SecretKey};
#[cfg(feature = "publisher")]
use depotfs_publisher::{import::layers, ingest, serve::parse, sync::listing};

/// A fuzz target: fails only by panicking.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("object", object),
    ("manifest", manifest),
    ("dir_node", dir_node),
    ("chunk_list", chunk_list),
    #[cfg(feature = "publisher")]
    ("trace", trace),
    #[cfg(feature = "publisher")]
    ("serve_request", serve_request),
    #[cfg(feature = "publisher")]
    ("listing", listing),
    #[cfg(feature = "publisher")]
    ("layer", layer),
];

const KINDS: [ObjectKind; 3] = [
    ObjectKind::Chunk,
    ObjectKind::ChunkList,
    ObjectKind::DirNode,
];

/// An object file as a server sends it, decoded as each kind under two bounds. The id is
/// taken from the plaintext when the header parses (so the hash check can pass and the
/// fuzzer gets past it), else from the bytes. Also decoded in place behind junk, as the
/// client decodes a cache file it read with direct I/O to an aligned place of its buffer
/// (`decode_owned_at`), and with that place past the buffer's end.
pub fn object(data: &[u8]) {
    for kind in KINDS {
        let id = id_for(kind, data);
        let _ = object::peek_header(id, data);
        for bound in [64, 1 << 20] {
            let a = object::decode(id, kind, data, bound);
            let b = object::decode_owned(id, kind, data.to_vec(), bound);
            assert_eq!(a.is_ok(), b.is_ok(), "decode and decode_owned disagree");
            for at in [1, 4095] {
                let mut behind = vec![0xA5; at];
                behind.extend_from_slice(data);
                let times = &mut object::DecodeTimes::default();
                let c = object::decode_owned_at(id, kind, behind, at, bound, times);
                assert_eq!(a.is_ok(), c.is_ok(), "decode and decode_owned_at disagree");
                if let (Ok(a), Ok((c, _))) = (&a, c) {
                    assert_eq!(a.data(), c.data());
                }
            }
            let times = &mut object::DecodeTimes::default();
            let past =
                object::decode_owned_at(id, kind, data.to_vec(), data.len() + 1, bound, times);
            assert!(past.is_err(), "an object past its buffer's end decoded");
            if let (Ok(a), Ok(b)) = (a, b) {
                assert_eq!(a.data(), b.data());
                assert!(a.data().len() as u64 <= bound);
                assert_eq!(ObjectId::of_kind(kind, a.data()), id);
            }
        }
    }
}

/// The id the object would have if its payload were its raw plaintext: lets a raw object
/// verify, so its header handling is exercised on the success path too.
fn id_for(kind: ObjectKind, data: &[u8]) -> ObjectId {
    ObjectId::of_kind(kind, data.get(object::HEADER_LEN..).unwrap_or_default())
}

/// The plaintext `data` as a verified object of `kind` (a raw object built by hand, then
/// decoded: the only way to get a [`Verified`]).
fn verified(kind: ObjectKind, data: &[u8]) -> Option<Verified> {
    let mut bytes = Vec::with_capacity(object::HEADER_LEN + data.len());
    bytes.extend_from_slice(b"DPO1");
    bytes.extend_from_slice(&[kind as u8, 0, 0, 0]);
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(data);
    object::decode(ObjectId::of_kind(kind, data), kind, &bytes, u64::MAX).ok()
}

fn test_key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

/// A manifest as fetched: the raw bytes, and the bytes as a correctly signed body.
pub fn manifest(data: &[u8]) {
    let key = test_key();
    let public = key.public();
    let _ = Manifest::parse_verified(data, &public, None);
    let _ = Manifest::parse_verified(data, &public, Some("fuzz.example.org"));
    if let Ok(body) = std::str::from_utf8(data) {
        let signed = key.sign_body(body);
        if let Ok(m) = Manifest::parse_verified(signed.as_bytes(), &public, None) {
            // A manifest that parses re-signs to one that parses to the same value.
            let again = m.sign(&key);
            let back = Manifest::parse_verified(again.as_bytes(), &public, None)
                .expect("a parsed manifest, re-signed, parses");
            assert_eq!(back, m);
        }
    }
}

/// The nodes of one fuzzed directory: the node itself, under its id; every other id is
/// missing.
struct OneNode(Arc<DirNode>, ObjectId);

impl NodeSource for OneNode {
    fn node(&self, id: &ObjectId) -> Result<Arc<DirNode>, Error> {
        if *id == self.1 {
            Ok(Arc::clone(&self.0))
        } else {
            Err(Error::Fetch {
                id: *id,
                message: "not in the fuzz input".into(),
            })
        }
    }
}

/// A directory node's plaintext: parsed, then looked up and listed (an index node that
/// names itself as its child must not loop forever).
pub fn dir_node(data: &[u8]) {
    let Some(v) = verified(ObjectKind::DirNode, data) else {
        return;
    };
    let Ok(node) = DirNode::from_verified(&v) else {
        return;
    };
    let _ = node.count();
    let src = OneNode(Arc::new(node.clone()), v.id());
    let names: Vec<String> = match &node {
        DirNode::Leaf(es) => es.iter().map(|e| e.name.clone()).collect(),
        DirNode::Index(cs) => cs.iter().map(|c| c.first.clone()).collect(),
    };
    for name in names
        .iter()
        .take(4)
        .map(String::as_str)
        .chain(["", "a", "\u{10FFFF}"])
    {
        let _ = dir::lookup(&src, &v.id(), name);
    }
    let mut listed = 0usize;
    for start in [0, 1, u64::MAX] {
        let _ = dir::list_from(&src, &v.id(), start, &mut |_, _| {
            listed += 1;
            listed < 10_000
        });
    }
    let _ = dir::node_ids(&src, &v.id());
}

/// A chunk list's plaintext: parsed, then located into and turned into a prefetch order.
pub fn chunk_list(data: &[u8]) {
    let Some(v) = verified(ObjectKind::ChunkList, data) else {
        return;
    };
    let Ok(list) = ChunkList::from_verified(&v) else {
        return;
    };
    let offsets = list.offsets();
    let total = list.total_len();
    assert_eq!(offsets.last().copied(), Some(total));
    for at in [0, 1, total / 2, total.saturating_sub(1), total, u64::MAX] {
        if let Some(p) = list.locate(&offsets, at) {
            assert!(p.offset <= at && at < p.offset + u64::from(p.chunk.len));
        }
    }
    #[cfg(feature = "publisher")]
    {
        let reads = [
            (0, 1),
            (total / 3, 1 << 20),
            (u64::MAX, u64::MAX),
            (total, 0),
        ];
        let order = ingest::prefetch_order(&list, reads);
        assert!(order.iter().all(|&i| (i as usize) < list.chunks.len()));
    }
}

/// An access trace file's bytes.
#[cfg(feature = "publisher")]
pub fn trace(data: &[u8]) {
    if let Ok(reads) = ingest::parse_trace_bytes("fuzz.trace", data) {
        for r in reads {
            assert!(!r.path.is_empty() && !r.path.starts_with('/'));
        }
    }
}

#[cfg(feature = "publisher")]
/// A request as `depotfs serve` sees it: line 1 the path, line 2 a `Range` value, line 3 an
/// `If-None-Match` value, line 4 an `If-Range` value; the file length from the input size.
pub fn serve_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let range = lines.next().unwrap_or_default();
    let none_match = lines.next().unwrap_or_default();
    let if_range = lines.next().unwrap_or_default();
    if let Ok(parse::Target::File { rel, .. }) = parse::parse_path(path) {
        assert!(rel.is_relative());
        assert!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        );
    }
    for len in [0, 1, data.len() as u64, u64::MAX] {
        if let parse::RangeAnswer::Partial { start, end } = parse::parse_range(range, len) {
            assert!(
                start < end && end <= len,
                "{range:?} of {len}: {start}..{end}"
            );
        }
    }
    let mtime = UNIX_EPOCH + Duration::from_nanos(data.len() as u64 * 1_000_003);
    let etag = parse::etag(mtime, data.len() as u64);
    let _ = parse::none_match(none_match, &etag);
    let _ = parse::if_range_holds(if_range, &etag, mtime);
    let _ = parse::not_modified(Some(none_match), Some(if_range), &etag, mtime);
    let _ = parse::not_modified(None, Some(if_range), &etag, mtime);
}

/// A depot listing page: parsed; every accepted name is a valid name, listed once.
#[cfg(feature = "publisher")]
pub fn listing(data: &[u8]) {
    let Ok(l) = listing::parse(data) else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for e in &l.entries {
        assert!(listing::check_name(&e.name).is_ok(), "{:?}", e.name);
        assert!(seen.insert(&e.name), "{:?} listed twice", e.name);
        assert!(e.precision_s == 1 || e.precision_s == 60);
    }
}

/// An image layer: read under small limits (so a bomb stops early), its files read to their
/// end by a sink that refuses short contents as the store's does; then applied to an empty
/// tree and once more over itself. Every path that ends in the tree is relative, without
/// `.`/`..`, and its parents are directories.
#[cfg(feature = "publisher")]
pub fn layer(data: &[u8]) {
    use depotfs_catalog::FileContent;
    use depotfs_publisher::db::NodeKind;
    use std::io::Read;

    let limits = layers::Limits {
        layer_entries: 4096,
        image_entries: 8192,
        file_bytes: 1 << 20,
        layer_bytes: 4 << 20,
        path_bytes: 1 << 20,
    };
    let mut sink = |r: &mut dyn Read, size: u64| {
        let mut v = Vec::new();
        r.take(size + 1)
            .read_to_end(&mut v)
            .map_err(|e| depotfs_publisher::Error::Input(e.to_string()))?;
        if v.len() as u64 != size {
            return Err(depotfs_publisher::Error::Input(format!(
                "{} bytes of {size}",
                v.len()
            )));
        }
        Ok(FileContent::Single(ObjectId::of(&v)))
    };
    let Ok(changes) = layers::read_layer(data, "fuzz", &limits, &mut sink) else {
        return;
    };
    let mut tree = layers::Tree::new();
    for _ in 0..2 {
        if tree.apply("fuzz", &changes, &limits).is_err() {
            return;
        }
    }
    for (path, _) in tree.iter() {
        assert!(!path.is_empty() && !path.starts_with('/'), "{path:?}");
        assert!(path.len() <= layers::PATH_MAX, "{} bytes", path.len());
        assert!(path.split('/').count() <= layers::MAX_DEPTH, "{path:?}");
        assert!(
            path.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{path:?}"
        );
        if let Some((parent, _)) = path.rsplit_once('/') {
            assert!(
                matches!(tree.get(parent).map(|n| &n.kind), Some(NodeKind::Dir)),
                "{path:?}: parent is not a directory"
            );
        }
    }
    assert!(tree.len() as u64 <= limits.image_entries);
}
