//! Generate a repository for `benches/scale`: OBJECTS distinct small data objects (24
//! bytes of counter-derived plaintext each, stored raw: the costs measured are per object),
//! one file each, in directories of PER_DIR files (`gen/dNNNNN/fNNNNNNNNN`), published as one
//! revision. Objects are written through the publisher's own store and staged through
//! `Repo::stage_add`, so the store is exactly what `depotfs add` would make of such files,
//! without a source tree of millions of files.
//!
//! `cargo run -p depotfs-publisher --example scale_gen -- STORE OBJECTS [PER_DIR] [FIRST]`
//! (an existing STORE gets OBJECTS more, numbered from FIRST).

use std::path::PathBuf;

use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{FileContent, ObjectId};
use depotfs_publisher::Repo;
use depotfs_publisher::db::{Node, NodeKind};
use rayon::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store = PathBuf::from(args.first().expect("STORE"));
    let n: u64 = args.get(1).expect("OBJECTS").parse()?;
    let per_dir: u64 = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let first: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let repo = if store.join("catalog.redb").exists() {
        Repo::open(&store)?
    } else {
        Repo::init(&store, "scale")?
    };
    let start = std::time::Instant::now();
    let mut i = first;
    let end = first + n;
    while i < end {
        let upto = (i + 20 * per_dir).min(end);
        let nodes: Vec<(String, Node)> = (i..upto)
            .into_par_iter()
            .map(|k| -> anyhow::Result<(String, Node)> {
                let mut plain = [0u8; 24];
                plain[..8].copy_from_slice(&k.to_le_bytes());
                plain[8..].copy_from_slice(&blake3::hash(&k.to_le_bytes()).as_bytes()[..16]);
                let id = ObjectId::of(&plain);
                repo.objects
                    .put(&object::encode_with_id(id, ObjectKind::Chunk, &plain, 1))?;
                let node = Node {
                    mode: 0o644,
                    mtime_ns: 1_700_000_000_000_000_000,
                    kind: NodeKind::File {
                        size: plain.len() as u64,
                        content: FileContent::Single(id),
                    },
                };
                Ok((format!("gen/d{:05}/f{k:09}", k / per_dir), node))
            })
            .collect::<anyhow::Result<_>>()?;
        // One transaction per directory.
        let mut at = 0;
        while at < nodes.len() {
            let dir = nodes[at]
                .0
                .rsplit_once('/')
                .expect("has a parent")
                .0
                .to_string();
            let len = nodes[at..]
                .iter()
                .take_while(|(p, _)| p.starts_with(&dir))
                .count();
            repo.stage_add(&dir, nodes[at..at + len].to_vec())?;
            at += len;
        }
        i = upto;
        eprintln!(
            "scale_gen: {} objects in {:.0} s",
            i - first,
            start.elapsed().as_secs_f64()
        );
    }
    repo.publish(None, false)?;
    eprintln!(
        "scale_gen: published in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
