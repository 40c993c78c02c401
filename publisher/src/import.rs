//! `depotfs import`: OCI images from a registry, an OCI layout or a `docker save` archive,
//! published as unpacked root filesystems (`--format dir`) or SIF files (`--format sif`).
//!
//! The flow for one image, one way:
//!
//! ```text
//! Source::resolve (registry.rs | layout.rs)  manifest/index → platform → config + layers
//!   for each layer, bottom first:
//!     already imported (the catalog's layer record, every object present)? replay it
//!     else Source::open → image::Hashing (blob digest) → layers::read_layer
//!          (decompress, tar, hostile-entry rules, diff_id) → each file's content through
//!          ingest::store_reader → digests checked → layer record kept
//!     layers::Tree::apply (whiteouts, opaque dirs, hard links)
//!   --format dir: Repo::stage_replace(DIR/<repo>:<tag>, tree)
//!   --format sif: sif::build (squashfs of the tree via sqfstar, SIF around it) → one file
//!                 through ingest::store_reader → Repo::stage_add
//! ```
//!
//! A source only yields bytes; objects are written only by `ingest::store_reader` and the
//! catalog only by [`Repo`]. Objects written for a layer that then fails its digest check
//! are referenced by nothing and `gc` removes them; nothing is staged before every digest
//! of the image holds.
//!
//! **Layers already imported** are not downloaded again: after a layer's digests check out,
//! its [`layers::Changes`] (paths, nodes with their object ids, whiteouts) are kept in the
//! catalog keyed by the blob digest (`Repo::record_layer`; `docker-archive` layers by their
//! diff_id). A later image with that layer replays the record instead of fetching the blob,
//! provided every object the record names is still in the store (`gc` may have removed
//! objects no revision needed); otherwise the layer is fetched again.

pub mod image;
pub mod layers;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod sif;

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use depotfs_catalog::chunking::SMALL_FILE_MAX;
use depotfs_catalog::object::ObjectKind;
use depotfs_catalog::{ChunkList, FileContent};

use crate::db::{self, NodeKind};
use crate::error::{Error, Result};
use crate::ingest::{self, StreamError};
use crate::progress::Progress;
use crate::reader::CHUNK_LIST_MAX;
use crate::repo::Repo;
use crate::store::Objects;
use reference::{ImageName, Reference};

/// One layer of a resolved image.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// The key its record is kept under: the blob digest (or the diff_id where the blob has
    /// none).
    pub key: String,
    /// Digest of the blob as stored (compressed), checked when there is one.
    pub blob_digest: Option<String>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`), checked when known.
    pub diff_id: Option<String>,
    /// Blob length (0 if unknown).
    pub size: u64,
    /// Where the source finds it (a digest, a member name).
    pub locator: String,
}

/// An image resolved to its layers.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its name.
    pub name: ImageName,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
}

impl Resolved {
    /// From a manifest's layer descriptors and its config's diff_ids.
    pub fn new(
        name: ImageName,
        layers: Vec<image::Descriptor>,
        diff_ids: Option<Vec<String>>,
        what: &str,
    ) -> Result<Resolved> {
        if let Some(d) = &diff_ids
            && d.len() != layers.len()
        {
            return Err(Error::Input(format!(
                "{what}: config lists {} diff_ids for {} layers",
                d.len(),
                layers.len()
            )));
        }
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, d)| LayerRef {
                key: d.digest.clone(),
                blob_digest: Some(d.digest.clone()),
                diff_id: diff_ids.as_ref().map(|ids| ids[i].clone()),
                size: d.size,
                locator: d.digest,
            })
            .collect();
        Ok(Resolved { name, layers })
    }
}

/// Where images come from: resolve the image, then stream its layers.
pub trait Source: Send + Sync {
    /// The image for `platform` (`os/arch[/variant]`).
    fn resolve(&self, platform: &str) -> Result<Resolved>;
    /// The bytes of `layer` as stored (the caller checks the digests).
    fn open(&self, layer: &LayerRef) -> Result<Box<dyn Read + '_>>;
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The flattened tree at DIR/<repo>:<tag>/.
    Dir,
    /// One SIF file DIR/<repo basename>:<tag>.
    Sif,
}

/// Everything an import needs besides the repository.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repository directory the images go into (normalized).
    pub to: String,
    /// Output form.
    pub format: Format,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Bounds on layers.
    pub limits: layers::Limits,
    /// Registry credentials and http hosts.
    pub registry: registry::Options,
}

/// What importing one image did.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// Repository path it was staged at.
    pub path: String,
    /// Layers downloaded.
    pub fetched: u64,
    /// Layers replayed from their record.
    pub reused: u64,
    /// Blob bytes read from the source.
    pub fetched_bytes: u64,
}

fn source(r: &Reference, opts: &registry::Options) -> Result<Box<dyn Source>> {
    Ok(match r {
        Reference::Registry {
            host,
            repo,
            reference,
        } => Box::new(registry::Registry::new(host, repo, reference, opts)?),
        Reference::Layout { dir, tag } => Box::new(layout::Layout::new(dir, tag.clone())),
        Reference::DockerArchive { file } => Box::new(layout::DockerArchive::open(file)?),
    })
}

/// Stage one file's content of exactly `size` bytes from a reader that need not be `Send`:
/// small files are read whole; larger ones go through a bounded channel to a scoped thread
/// running [`ingest::store_reader`] (which chunks them in parallel).
pub fn stage_content(
    objects: &Objects,
    input: &mut dyn Read,
    size: u64,
    progress: &Progress,
) -> Result<FileContent> {
    let result = if size <= SMALL_FILE_MAX {
        let mut buf = Vec::with_capacity(size as usize);
        input
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Input(format!("read: {e}")))?;
        ingest::store_reader(objects, io::Cursor::new(buf), Some(size), progress)
    } else {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
            let worker = s.spawn(move || {
                let reader = ChannelReader {
                    rx,
                    cur: io::Cursor::new(Vec::new()),
                };
                ingest::store_reader(objects, reader, Some(size), progress)
            });
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            break; // the worker stopped: its error says why
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
            drop(tx);
            worker.join().unwrap_or_else(|_| {
                Err(StreamError::Read(io::Error::other(
                    "staging thread panicked",
                )))
            })
        })
    };
    result.map(|(_, c)| c).map_err(|e| match e {
        StreamError::Read(e) => Error::Input(format!("read: {e}")),
        StreamError::Length { expected, got } => {
            Error::Input(format!("truncated: {got} bytes of {expected}"))
        }
        StreamError::Store(e) => e,
    })
}

/// The reading end of [`stage_content`]'s channel.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: io::Cursor<Vec<u8>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(Ok(v)) => self.cur = io::Cursor::new(v),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
    }
}

/// Is every object `changes` names still in the store?
fn objects_present(objects: &Objects, changes: &layers::Changes) -> bool {
    changes.changes.iter().all(|c| match c {
        layers::Change::Put {
            node:
                db::Node {
                    kind: NodeKind::File { content, .. },
                    ..
                },
            ..
        } => match content {
            FileContent::Empty => true,
            FileContent::Single(id) => objects.has(id),
            FileContent::Chunked(id) => objects
                .get(id, ObjectKind::ChunkList, CHUNK_LIST_MAX)
                .ok()
                .and_then(|v| ChunkList::from_verified(&v).ok())
                .is_some_and(|l| l.chunks.iter().all(|c| objects.has(&c.id))),
        },
        _ => true,
    })
}

/// Counts the bytes read through it as progress.
struct Counted<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

/// Fetch and read one layer, checking its length and digests; nothing of it is used unless
/// they hold. `progress` counts blob bytes.
fn fetch_layer(
    repo: &Repo,
    src: &dyn Source,
    layer: &LayerRef,
    opts: &Options,
    progress: &Progress,
) -> Result<(layers::Changes, u64)> {
    let counted = Counted {
        inner: src.open(layer)?,
        progress,
    };
    let mut blob = image::Hashing::new(image::SizeChecked::new(counted, layer.size));
    let staging = Progress::hidden();
    let mut sink = |r: &mut dyn Read, size: u64| stage_content(&repo.objects, r, size, &staging);
    let read = layers::read_layer(&mut blob, &layer.key, &opts.limits, &mut sink);
    // The digest first: a blob that is not what the manifest names is reported as such,
    // whatever reading it as a layer said.
    let (digest, len) = blob
        .finish()
        .map_err(|e| Error::Input(format!("layer {}: blob: {e}", layer.key)))?;
    if let Some(want) = &layer.blob_digest
        && *want != digest
    {
        return Err(Error::Input(format!(
            "layer {want}: digest mismatch: the blob has {digest}; refused"
        )));
    }
    let changes = read?;
    check_diff_id(layer, &changes)?;
    Ok((changes, len))
}

/// The tar of `layer` (read now, or its record) is the one the image's config names.
fn check_diff_id(layer: &LayerRef, changes: &layers::Changes) -> Result<()> {
    match &layer.diff_id {
        Some(want) if *want != changes.diff_id => Err(Error::Input(format!(
            "layer {}: diff_id mismatch: the config says {want}, the tar has {}; refused",
            layer.key, changes.diff_id
        ))),
        _ => Ok(()),
    }
}

/// An image resolved, with the source its layers come from.
pub struct Planned {
    src: Box<dyn Source>,
    img: Resolved,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned").field("img", &self.img).finish()
    }
}

/// Resolve REF (`text`) to its image for `opts.platform`.
pub fn plan(text: &str, opts: &Options) -> Result<Planned> {
    let r = Reference::parse(text)?;
    let src = source(&r, &opts.registry)?;
    let img = src.resolve(&opts.platform)?;
    Ok(Planned { src, img })
}

/// Where image `img` lands in the repository.
fn target(img: &Resolved, opts: &Options) -> Result<String> {
    let name = match opts.format {
        Format::Dir => img.name.dir_path(),
        Format::Sif => img.name.sif_name(),
    };
    db::normalize(&db::join(&opts.to, &name))
}

/// Import one image into the staged tree (not published). `progress` counts blob bytes
/// and images.
pub fn import_one(
    repo: &Repo,
    text: &str,
    planned: &Planned,
    opts: &Options,
    progress: &Progress,
) -> Result<Imported> {
    let start = Instant::now();
    let (src, img) = (&planned.src, &planned.img);
    let n = img.layers.len();
    let mut tree = layers::Tree::new();
    let mut done = Imported::default();
    for (i, layer) in img.layers.iter().enumerate() {
        let t = Instant::now();
        let recorded = repo
            .layer_record(&layer.key)?
            .and_then(|b| postcard::from_bytes::<layers::Changes>(&b).ok())
            .filter(|c| objects_present(&repo.objects, c));
        let changes = match recorded {
            Some(c) => {
                // A record holds for its blob, not for any config that names the blob.
                check_diff_id(layer, &c)?;
                tracing::info!(
                    "{text}: layer {}/{n} {}: already imported, not fetched",
                    i + 1,
                    layer.key
                );
                done.reused += 1;
                c
            }
            None => {
                let (c, len) = fetch_layer(repo, src.as_ref(), layer, opts, progress)?;
                repo.record_layer(&layer.key, &db::enc(&c))?;
                tracing::info!(
                    "{text}: layer {}/{n} {}: {} MiB fetched, {} entries, {} MiB of files in {:.1} s",
                    i + 1,
                    layer.key,
                    len >> 20,
                    c.changes.len(),
                    c.file_bytes >> 20,
                    t.elapsed().as_secs_f64()
                );
                done.fetched += 1;
                done.fetched_bytes += len;
                c
            }
        };
        tree.apply(&layer.key, &changes, &opts.limits)?;
    }
    let path = target(img, opts)?;
    match opts.format {
        Format::Dir => {
            repo.stage_replace(&path, tree.into_nodes(&path))?;
            done.path = path;
        }
        Format::Sif => {
            let node = sif::stage(
                &repo.objects,
                &repo.layout.tmp(),
                &tree,
                &opts.platform,
                &Progress::hidden(),
            )?;
            repo.stage_replace(&path, vec![(path.clone(), node)])?;
            done.path = path;
        }
    }
    tracing::info!(
        "{text}: staged at /{} ({} layers fetched, {} reused) in {:.1} s",
        done.path,
        done.fetched,
        done.reused,
        start.elapsed().as_secs_f64()
    );
    progress.file_done();
    Ok(done)
}

/// `depotfs import STORE REF... --to DIR/ [--format dir|sif] [--platform linux/amd64]
/// [--from-list FILE] [--jobs N] [--auth-file FILE] [--insecure-registry HOST] [--no-publish]`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The repository.
    pub store: PathBuf,
    /// Images: docker://HOST[:PORT]/REPO:TAG, docker://HOST[:PORT]/REPO@sha256:DIGEST,
    /// oci:DIR[:TAG], docker-archive:FILE.
    pub refs: Vec<String>,
    /// Repository directory to import into.
    #[arg(long)]
    pub to: String,
    /// dir: the flattened tree at DIR/<repo>:<tag>/; sif: a SIF file DIR/<repo basename>:<tag>.
    #[arg(long, value_enum, default_value = "dir")]
    pub format: Format,
    /// Platform to pick from an image index.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Read more REFs from FILE, one per line (blank lines and #comments ignored).
    #[arg(long)]
    pub from_list: Option<PathBuf>,
    /// Images imported in parallel.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Registry credentials: a docker config.json (`auths`).
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// Reach this registry HOST[:PORT] over plain http (repeatable).
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Seconds a registry may send nothing (no answer, no byte of a blob) before the request
    /// fails; a whole manifest, config or token request may take twice as long.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Stage only; publish later with `depotfs publish`.
    #[arg(long)]
    pub no_publish: bool,
    /// Write the run's Prometheus metrics to FILE (node_exporter's textfile collector).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `f(i)` for `i` in `0..n` on `jobs` threads; the results in order.
fn parallel<T: Send>(n: usize, jobs: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(i);
                    results.lock().expect("not poisoned").push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("not poisoned");
    results.sort_by_key(|r| r.0);
    results.into_iter().map(|r| r.1).collect()
}

/// `depotfs import`: every image staged or reported; the successes published together.
pub fn run(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let file = a.metrics_file.clone();
    crate::batch_metrics::run("import", file.as_deref(), |m| run_import(a, m))
}

fn run_import(a: ImportArgs, m: &mut crate::batch_metrics::Counts) -> anyhow::Result<ExitCode> {
    let mut refs = a.refs.clone();
    if let Some(list) = &a.from_list {
        let text = std::fs::read_to_string(list)
            .map_err(|e| anyhow::anyhow!("--from-list {}: {e}", list.display()))?;
        refs.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if refs.is_empty() {
        anyhow::bail!("nothing to import: give REFs or --from-list FILE");
    }
    // A reference given twice is imported once.
    let mut seen = std::collections::HashSet::new();
    refs.retain(|r| seen.insert(r.clone()));
    let opts = Options {
        to: db::normalize(&a.to)?,
        format: a.format,
        platform: a.platform.clone(),
        limits: layers::Limits::default(),
        registry: registry::Options {
            auths: a
                .auth_file
                .as_deref()
                .map(registry::Auths::load)
                .transpose()?
                .unwrap_or_default(),
            insecure: a.insecure_registry.clone(),
            stall: std::time::Duration::from_secs(a.timeout.max(1)),
        },
    };
    let repo = Repo::open(&a.store)?;
    // Changes an interrupted run left staged wait for the operator's choice, as for `add`.
    repo.refuse_if_interrupted()?;
    // Resolve every image first: the bar's byte total is the blobs still to fetch.
    let mut planned = parallel(refs.len(), a.jobs, |i| plan(&refs[i], &opts));
    // Two references that land on one path (the same image from two registries, say) would
    // race for it: the first keeps it, the others are refused.
    let mut landing: std::collections::HashMap<String, usize> = Default::default();
    for (i, p) in planned.iter_mut().enumerate() {
        let Ok(img) = p.as_ref().map(|p| &p.img) else {
            continue;
        };
        match target(img, &opts) {
            Ok(path) => match landing.get(&path) {
                Some(&first) => {
                    *p = Err(Error::Input(format!(
                        "lands at /{path}, as {} does; refused (import it with another --to)",
                        refs[first]
                    )))
                }
                None => {
                    landing.insert(path, i);
                }
            },
            Err(e) => *p = Err(e),
        }
    }
    let mut to_fetch = std::collections::HashMap::new();
    for p in planned.iter().flatten() {
        for l in &p.img.layers {
            if !to_fetch.contains_key(&l.key) && repo.layer_record(&l.key)?.is_none() {
                to_fetch.insert(l.key.clone(), l.size);
            }
        }
    }
    let total = to_fetch.values().sum();
    tracing::info!(
        "{} of {} images resolved; {} layers ({} MiB) to fetch",
        planned.iter().flatten().count(),
        refs.len(),
        to_fetch.len(),
        total >> 20
    );
    let progress = Progress::new("importing", refs.len() as u64, total);
    let results: Vec<(usize, Result<Imported>)> = parallel(refs.len(), a.jobs, |i| {
        let r = &refs[i];
        let res = match &planned[i] {
            Ok(p) => import_one(&repo, r, p, &opts, &progress),
            Err(e) => Err(Error::Input(e.to_string())),
        };
        if let Err(e) = &res {
            tracing::error!("{r}: {e}; skipped");
        }
        (i, res)
    });
    progress.finish();
    let (mut ok, mut failed, mut fetched, mut reused, mut bytes) = (0, 0, 0, 0, 0);
    for (i, r) in &results {
        match r {
            Ok(d) => {
                ok += 1;
                fetched += d.fetched;
                reused += d.reused;
                bytes += d.fetched_bytes;
                println!("imported {} -> /{}", refs[*i], d.path);
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {}: {e}", refs[*i]);
            }
        }
    }
    println!(
        "{ok} images imported, {failed} failed; {fetched} layers fetched ({bytes} bytes), {reused} already imported"
    );
    m.items = vec![("fetched", ok), ("failed", failed)];
    m.downloaded_bytes = bytes;
    m.layers_reused = Some(reused);
    if ok > 0 {
        if a.no_publish {
            repo.keep_staged()?;
            println!(
                "staged; publish with `depotfs publish {}`",
                a.store.display()
            );
        } else if let Some((rev, rec)) = repo.publish(None, false)? {
            println!(
                "published revision {rev}: root {}, {} files, {} bytes",
                rec.root, rec.files, rec.bytes
            );
        }
    }
    m.stored_bytes = repo.objects.written();
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
