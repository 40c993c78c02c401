//! Command-line entry points of the publisher side. Flags are an interface: scripts call them.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use depotfs_catalog::EntryKind;

use crate::db;
use crate::ingest;
use crate::progress::Progress;
use crate::reader::LocalTree;
use crate::repo::{CatalogCheck, Repo};
use crate::store::{Layout, Objects};

/// `depotfs init STORE --name NAME [--public s3://BUCKET/PREFIX]`
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create (must not exist, or be empty).
    pub store: PathBuf,
    /// Repository name, e.g. singularity.example.org.
    #[arg(long)]
    pub name: String,
    /// Keep the public side (manifest, repo.pub, objects/) in an S3-compatible bucket
    /// instead of STORE/public/; STORE keeps the catalog, the key and the lock. Configured
    /// by the AWS_* environment (AWS_ENDPOINT_URL, AWS_REGION, credentials): see README.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub public: Option<String>,
}

/// `depotfs add STORE [--to DIR] [--from-list FILE] [--trace FILE] [--no-publish] [PATH...]`
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The repository.
    pub store: PathBuf,
    /// Files (added as DIR/basename) or directory trees (as DIR/basename/...).
    pub paths: Vec<PathBuf>,
    /// Directory inside the repository to add into [default: the root].
    #[arg(
        long,
        value_name = "DIR",
        default_value = "",
        hide_default_value = true
    )]
    pub to: String,
    /// Read more paths from FILE, one per line.
    #[arg(long)]
    pub from_list: Option<PathBuf>,
    /// A recorded access trace (`depotfs mount --record`: lines of PATH<TAB>OFFSET<TAB>LENGTH,
    /// PATH relative to the repository root): after adding PATHs, give every traced chunked
    /// file a prefetch list of the chunks it read, in first-read order.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Stage only; publish later with `depotfs publish`.
    #[arg(long)]
    pub no_publish: bool,
}

/// `depotfs rm STORE [--no-publish] PATH...`
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The repository.
    pub store: PathBuf,
    /// Paths inside the repository.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Stage only.
    #[arg(long)]
    pub no_publish: bool,
}

/// `depotfs publish STORE [--tag NAME] [--include-interrupted]`
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The repository.
    pub store: PathBuf,
    /// Tag the new revision (tagged revisions are never garbage-collected).
    #[arg(long)]
    pub tag: Option<String>,
    /// Also publish, as they are, changes staged by an interrupted run (without it, publish
    /// refuses and names them; `depotfs abort STORE` discards them instead).
    #[arg(long)]
    pub include_interrupted: bool,
}

/// `depotfs abort STORE`
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The repository.
    pub store: PathBuf,
}

/// `depotfs log STORE`
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The repository.
    pub store: PathBuf,
}

/// `depotfs ls STORE [PATH]`
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The repository.
    pub store: PathBuf,
    /// Directory inside the repository (default: the root).
    #[arg(default_value = "")]
    pub path: String,
}

/// `depotfs cat STORE PATH`
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// The repository.
    pub store: PathBuf,
    /// File inside the repository.
    pub path: String,
}

/// `depotfs rollback STORE REV`
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The repository.
    pub store: PathBuf,
    /// The revision whose tree becomes current again.
    pub rev: u64,
}

/// `depotfs verify STORE [--since REV|last]`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The repository.
    pub store: PathBuf,
    /// Check only what the revisions after REV changed (`last`: the revision of the last
    /// full verify that found nothing wrong).
    #[arg(long, value_name = "REV|last")]
    pub since: Option<String>,
}

/// `depotfs rebuild-catalog STORE`
#[derive(Debug, clap::Args)]
pub struct RebuildCatalogArgs {
    /// The repository whose catalog.redb is damaged or lost.
    pub store: PathBuf,
}

/// `depotfs gc STORE [--keep N]`
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The repository.
    pub store: PathBuf,
    /// Keep the newest N revisions (tagged revisions are always kept).
    #[arg(long, default_value_t = 10)]
    pub keep: u64,
}

/// `depotfs serve STORE --listen ADDR [--depot-prefix /files/]`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The repository (its `public/` is served), or a `public/`-like directory itself.
    pub store: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// URL path under which the published tree is browsable and downloadable file by file
    /// (the depot view: autoindex pages, JSON, whole files); the page at `/` links to it.
    #[arg(long, default_value = "/files/")]
    pub depot_prefix: String,
    /// Seconds a keep-alive connection may wait for its next request (nginx's
    /// `keepalive_timeout`).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,
    /// Seconds a client may take no byte of a response before its connection is closed
    /// (nginx's `send_timeout`).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub send_timeout: u64,
    /// Seconds a depot-view download keeps the chunks it read ahead while its client takes
    /// none of them; then they are dropped (and read again if the client reads on), so
    /// clients that stop reading cannot hold the read-ahead budget.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub read_ahead_timeout: u64,
}

/// `depotfs replicate SOURCE_URL DEST_DIR|s3://BUCKET/PREFIX --key PUBKEY [--jobs N] [--name NAME] [--full]`.
#[derive(Debug, clap::Args)]
pub struct ReplicateArgs {
    /// URL of the source's served `public/` (the origin or another replica).
    pub source_url: String,
    /// The mirror directory to create or update (serve it with any web server), or
    /// `s3://BUCKET/PREFIX` (a bucket, configured by the AWS_* environment: see README).
    pub dest_dir: PathBuf,
    /// The repository's public key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Objects fetched in parallel.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    /// Repository name the source must have (default: the mirror's current one; any on the
    /// first run).
    #[arg(long)]
    pub name: Option<String>,
    /// Also descend into objects already present and verify them, refetching damaged ones
    /// (after a power loss; a normal run trusts that a present object's subtree is complete).
    #[arg(long)]
    pub full: bool,
    /// Seconds before a request fails.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `depotfs replicate`: make or update a mirror; prints one report line.
pub fn replicate(a: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let report = crate::replicate::run(&crate::replicate::Options {
        source_url: a.source_url,
        dest: a.dest_dir,
        key: a.key,
        name: a.name,
        jobs: a.jobs,
        full: a.full,
        timeout: Duration::from_secs(a.timeout),
    })?;
    // SIGPIPE stays ignored for replicate (a network process): a closed output pipe must not
    // turn a finished mirror into a panic.
    let _ = writeln!(std::io::stdout(), "{report}");
    Ok(ExitCode::SUCCESS)
}

/// `depotfs sync STORE URL --to DIR [--jobs N] [--include GLOB]... [--exclude GLOB]...
/// [--from-list FILE] [--delete] [--force] [--publish-every N|DURATION] [--dry-run]`
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The repository.
    pub store: PathBuf,
    /// The depot directory's URL: an nginx autoindex page (HTML or JSON) or an Apache
    /// mod_autoindex page.
    pub url: String,
    /// Directory inside the repository to keep equal to the depot, e.g. all/.
    #[arg(long)]
    pub to: String,
    /// Downloads in parallel.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Only names matching GLOB (`*`, `?`, `[a-z]`); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Not names matching GLOB; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Only the names in FILE, one per line (blank lines and `#` comments ignored).
    #[arg(long, value_name = "FILE")]
    pub from_list: Option<PathBuf>,
    /// Remove files the depot no longer lists (refused past 5 % of the directory).
    #[arg(long)]
    pub delete: bool,
    /// With --delete: remove even when the listing lost more than 5 % of the names.
    #[arg(long)]
    pub force: bool,
    /// Publish after every N staged files or every DURATION (30s, 10m, 1h), and at the end.
    #[arg(long, value_name = "N|DURATION")]
    pub publish_every: Option<crate::sync::PublishEvery>,
    /// Print the plan (counts, bytes, first names of each kind); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds without progress before a request is retried (connect, headers, body).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Write the run's Prometheus metrics to FILE (node_exporter's textfile collector).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `depotfs sync`: prints the plan (`--dry-run`) or one summary line; fails when any file
/// failed.
pub fn sync(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let file = a.metrics_file.clone();
    crate::batch_metrics::run("sync", file.as_deref(), |m| sync_run(a, m))
}

fn sync_run(a: SyncArgs, m: &mut crate::batch_metrics::Counts) -> anyhow::Result<ExitCode> {
    let only = match &a.from_list {
        None => None,
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --from-list {}", f.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
        ),
    };
    let opts = crate::sync::Options {
        url: a.url,
        to: db::normalize(&a.to)?,
        jobs: a.jobs,
        filter: crate::sync::plan::Filter {
            include: a.include,
            exclude: a.exclude,
            only,
        },
        delete: a.delete,
        force: a.force,
        publish_every: a.publish_every,
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let repo = Repo::open(&a.store)?;
    let prepared = crate::sync::prepare(&repo, &opts)?;
    if a.dry_run {
        print!("{}", prepared.describe(&opts));
        return Ok(ExitCode::SUCCESS);
    }
    let s = prepared.apply(&repo, &opts)?;
    println!("{s}");
    m.items = vec![
        ("fetched", s.fetched),
        ("replaced", s.replaced),
        ("unchanged", s.unchanged),
        ("skipped", s.refused),
        ("removed", s.removed),
        ("failed", s.failed.len() as u64),
    ];
    m.downloaded_bytes = s.bytes;
    m.stored_bytes = repo.objects.written();
    if s.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (name, why) in &s.failed {
        println!("failed: {name}: {why}");
    }
    eprintln!(
        "depotfs: sync: {} files failed (listed above)",
        s.failed.len()
    );
    Ok(ExitCode::FAILURE)
}

use crate::staged::time;

/// `depotfs init`
pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let repo = Repo::init_with_public(&a.store, &a.name, a.public.as_deref())?;
    println!(
        "created repository {} in {} (revision 0, empty), public side in {}",
        a.name,
        a.store.display(),
        repo.objects.describe()
    );
    println!(
        "public key: {}",
        Layout::new(&a.store).public_key().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `depotfs add`
pub fn add(a: AddArgs) -> anyhow::Result<ExitCode> {
    let mut paths = a.paths.clone();
    if let Some(list) = &a.from_list {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("reading --from-list {}", list.display()))?;
        paths.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from),
        );
    }
    if paths.is_empty() && a.trace.is_none() {
        anyhow::bail!("nothing to add: give PATHs, --from-list FILE or --trace FILE");
    }
    // A malformed trace stops everything before anything is staged.
    let trace = a.trace.as_deref().map(ingest::parse_trace).transpose()?;
    let to = db::normalize(&a.to)?;
    let repo = Repo::open(&a.store)?;
    repo.refuse_if_interrupted()?;
    let mut files = 0;
    if !paths.is_empty() {
        files = add_paths(&repo, &paths, &to)?;
    }
    if let Some(reads) = &trace {
        let r = repo.stage_trace(reads)?;
        println!(
            "trace: {} reads over {} chunked files, {} prefetch chunks, {} chunk lists changed, {} paths skipped",
            reads.len(),
            r.files,
            r.chunks,
            r.changed,
            r.skipped.len()
        );
    }
    if a.no_publish {
        repo.keep_staged()?;
        println!(
            "staged {files} files; publish with `depotfs publish {}`",
            a.store.display()
        );
    } else {
        report_publish(repo.publish(None, false)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Files stored between two staging commits: what a killed `add` can leave staged for
/// `publish --include-interrupted` instead of storing again.
const STAGE_BATCH_FILES: usize = 1000;
/// Bytes stored between two staging commits.
const STAGE_BATCH_BYTES: u64 = 1 << 30;

/// Store `paths` under `to` and stage them; returns the number of files.
fn add_paths(repo: &Repo, paths: &[PathBuf], to: &str) -> anyhow::Result<u64> {
    let plan = ingest::plan(paths, to)?;
    let (files, bytes) = plan.iter().fold((0u64, 0u64), |(f, b), p| match p {
        ingest::Planned::File { size, .. } => (f + 1, b + size),
        _ => (f, b),
    });
    tracing::info!("adding {files} files ({} MiB) under /{to}", bytes >> 20);
    let progress = Progress::new("adding", files, bytes);
    let start = std::time::Instant::now();
    // Directories and links first, then files in batches, each batch staged once stored.
    let (file_plan, skeleton): (Vec<_>, Vec<_>) = plan
        .into_iter()
        .partition(|p| matches!(p, ingest::Planned::File { .. }));
    let mut staged = skeleton.len();
    repo.stage_add(to, ingest::store_all(&repo.objects, skeleton, &progress)?)?;
    tracing::info!("staged {staged} directories and links under /{to}");
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut rest = file_plan.into_iter().peekable();
    while let Some(p) = rest.next() {
        if let ingest::Planned::File { size, .. } = &p {
            batch_bytes += size;
        }
        batch.push(p);
        if batch.len() >= STAGE_BATCH_FILES
            || batch_bytes >= STAGE_BATCH_BYTES
            || rest.peek().is_none()
        {
            let n = batch.len();
            let nodes = ingest::store_all(&repo.objects, std::mem::take(&mut batch), &progress)?;
            repo.stage_add(to, nodes)?;
            staged += n;
            batch_bytes = 0;
            tracing::debug!("staged {staged} paths under /{to}");
        }
    }
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "stored {files} files, {} MiB in {secs:.2} s ({:.0} MiB/s)",
        bytes >> 20,
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(files)
}

fn report_publish(r: Option<(u64, db::RevisionRecord)>) {
    match r {
        Some((rev, rec)) => println!(
            "published revision {rev}: root {}, {} files, {} bytes",
            rec.root, rec.files, rec.bytes
        ),
        None => println!("nothing staged; the current revision stays"),
    }
}

/// `depotfs rm`
pub fn rm(a: RmArgs) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(&a.store)?;
    repo.refuse_if_interrupted()?;
    let paths = a
        .paths
        .iter()
        .map(|p| db::normalize(p))
        .collect::<Result<Vec<_>, _>>()?;
    repo.stage_rm(&paths)?;
    if a.no_publish {
        repo.keep_staged()?;
        println!("staged removal of {} paths", paths.len());
    } else {
        report_publish(repo.publish(None, false)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `depotfs publish`
pub fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(&a.store)?;
    let r = repo.publish(a.tag.as_deref(), a.include_interrupted)?;
    if r.is_none()
        && let Some(tag) = &a.tag
    {
        println!("nothing staged; tagged the current revision {tag:?}");
        return Ok(ExitCode::SUCCESS);
    }
    report_publish(r);
    Ok(ExitCode::SUCCESS)
}

/// `depotfs abort`
pub fn abort(a: AbortArgs) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(&a.store)?;
    let r = repo.abort()?;
    if r.runs.is_empty() {
        println!("nothing staged; the published revision stays");
    }
    for run in &r.runs {
        println!("discarded {}", run.headline());
    }
    if !r.runs.is_empty() {
        println!(
            "their objects are left for `depotfs gc {}`",
            a.store.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Is `path` a publisher's STORE (rather than a mount point)?
pub fn is_store(path: &std::path::Path) -> bool {
    Layout::new(path).check().is_ok()
}

/// `depotfs status STORE`: the published revision, a publisher at work, and everything
/// staged and not published, by the run that staged it. Takes no lock: it reads beside a
/// running publisher.
pub fn status(store: &std::path::Path) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(store);
    layout.check()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "store:         {}", store.display())?;
    match Objects::open(layout.clone()).and_then(|o| o.load_manifest()) {
        Ok(m) => writeln!(
            out,
            "published:     revision {} of {}, {}",
            m.revision,
            m.name,
            time(m.published_ns)
        )?,
        Err(e) => writeln!(out, "published:     no readable manifest: {e}")?,
    }
    let at_work = crate::store::holder(&layout)?;
    match &at_work {
        Some(pid) => writeln!(out, "publisher:     at work, pid {pid}")?,
        None => writeln!(out, "publisher:     none at work")?,
    }
    let report = match crate::repo::open_read_only(&layout) {
        Ok(db) => {
            use redb::ReadableDatabase;
            crate::staged::Report::read(&db.begin_read()?)?
        }
        // A publisher killed with the catalog open leaves it to be repaired, which only a
        // writer does: with nobody at work, open it as the publisher would.
        Err(e) if at_work.is_none() => {
            tracing::debug!("catalog read-only: {e}; opening it for repair");
            Repo::open(store)?.staged()?
        }
        Err(e) => return Err(e.into()),
    };
    if report.runs.is_empty() {
        writeln!(out, "staged:        nothing")?;
    }
    for r in &report.runs {
        let state = if at_work.as_deref() == Some(r.run.pid.to_string().as_str()) {
            "in progress"
        } else if r.run.on_purpose {
            "staged on purpose (--no-publish), published by the next publish"
        } else {
            "INTERRUPTED: `depotfs publish STORE --include-interrupted` or `depotfs abort STORE`"
        };
        writeln!(out, "staged:        {}", r.headline())?;
        writeln!(out, "  state:       {state}")?;
        for (path, c) in &r.changes {
            writeln!(out, "  {}", crate::staged::line(path, c))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `depotfs log`
pub fn log(a: LogArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&a.store);
    layout.check()?;
    // Beside a publisher at work (a long sync, say), read the catalog as `status` does;
    // otherwise open the store, which also finishes an interrupted publish.
    let revisions = match crate::store::holder(&layout)? {
        Some(_) => {
            use redb::ReadableDatabase;
            let db = crate::repo::open_read_only(&layout)?;
            let txn = db.begin_read()?;
            crate::db::all_revisions(&txn.open_table(crate::db::REVISIONS)?)?
        }
        None => Repo::open(&a.store)?.revisions()?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>6}  {:<20}  {:<12}  {:<16}  {:>9}  {:>14}",
        "rev", "published (UTC)", "root", "tag", "files", "bytes"
    )?;
    for (rev, r) in revisions.iter().rev() {
        writeln!(
            out,
            "{rev:>6}  {:<20}  {:<12}  {:<16}  {:>9}  {:>14}{}",
            time(r.published_ns),
            &r.root.to_hex()[..12],
            r.tag.as_deref().unwrap_or("-"),
            r.files,
            r.bytes,
            if r.pruned {
                "  (garbage-collected)"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Open the published revision of a store for reading (no lock needed).
fn published(store: &std::path::Path) -> anyhow::Result<(depotfs_catalog::Manifest, LocalTree)> {
    let objects = Objects::open(Layout::new(store))?;
    let m = objects.load_manifest()?;
    Ok((m, LocalTree::new(objects)))
}

/// `depotfs ls`
pub fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let (m, tree) = published(&a.store)?;
    let path = db::normalize(&a.path)?;
    let top = match tree.resolve(&m.root, &path)? {
        None => m.root,
        Some(e) => match e.kind {
            EntryKind::Dir { tree, .. } => tree,
            _ => {
                print_entry(&mut std::io::stdout().lock(), &e)?;
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    for e in tree.list(&top)? {
        print_entry(&mut out, &e)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entry(out: &mut impl Write, e: &depotfs_catalog::Entry) -> std::io::Result<()> {
    let (t, size, suffix) = match &e.kind {
        EntryKind::File { size, .. } => ('-', *size, String::new()),
        EntryKind::Dir { entries, .. } => ('d', *entries, String::new()),
        EntryKind::Symlink { target } => ('l', target.len() as u64, format!(" -> {target}")),
    };
    writeln!(
        out,
        "{t}{:04o} {size:>12} {} {}{suffix}",
        e.mode,
        time(e.mtime_ns),
        e.name
    )
}

/// `depotfs cat`
pub fn cat(a: CatArgs) -> anyhow::Result<ExitCode> {
    let (m, tree) = published(&a.store)?;
    let path = db::normalize(&a.path)?;
    let e = tree
        .resolve(&m.root, &path)?
        .with_context(|| "the root is a directory")?;
    let (content, size) = match e.kind {
        EntryKind::File { content, size } => (content, size),
        _ => anyhow::bail!("{path} is not a regular file"),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    tree.copy_file(&content, size, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `depotfs rollback`
pub fn rollback(a: RollbackArgs) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(&a.store)?;
    let (rev, rec) = repo.rollback(a.rev)?;
    println!(
        "published revision {rev} with the tree of revision {}: root {}",
        a.rev, rec.root
    );
    Ok(ExitCode::SUCCESS)
}

/// `depotfs verify`
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Where damage is looked for: every page of the catalog too, also with --since.
    let repo = Repo::open_with(&a.store, CatalogCheck::Full)?;
    let since = match a.since.as_deref() {
        None => None,
        Some("last") => Some(repo.last_full_verify()?.ok_or_else(|| {
            anyhow::anyhow!(
                "--since last: {} has had no clean full verify yet; run `depotfs verify {}` first",
                a.store.display(),
                a.store.display()
            )
        })?),
        Some(rev) => Some(rev.parse::<u64>().map_err(|_| {
            anyhow::anyhow!("--since {rev:?}: expected a revision number or `last`")
        })?),
    };
    let r = repo.verify(since)?;
    if r.problems.is_empty() {
        let scope = since.map_or(String::new(), |s| format!(" changed since revision {s}"));
        println!(
            "ok: {} objects of {} revisions verified{scope}, manifest signature holds",
            r.objects, r.revisions
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &r.problems {
            println!("{p}");
        }
        eprintln!(
            "depotfs: verify found {} problems in {}\n\
             An object named above is damaged or missing: delete its file \
             ({}/ab/cdef… for object abcdef…) if it is there, then `depotfs add` the file it \
             belongs to again (an add writes every object it needs that is missing), or copy \
             the object from a mirror.",
            r.problems.len(),
            a.store.display(),
            Layout::new(&a.store).objects().display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `depotfs gc`
pub fn gc(a: GcArgs) -> anyhow::Result<ExitCode> {
    // Deletes by what the catalog retains, and reads every retained tree anyway: check every
    // page of the catalog first.
    let repo = Repo::open_with(&a.store, CatalogCheck::Full)?;
    let r = repo.gc(a.keep)?;
    println!(
        "removed {} objects ({} bytes), kept {}; {} older revisions are no longer retained",
        r.removed, r.removed_bytes, r.kept, r.pruned_revisions
    );
    Ok(ExitCode::SUCCESS)
}

/// `depotfs rebuild-catalog`
pub fn rebuild_catalog(a: RebuildCatalogArgs) -> anyhow::Result<ExitCode> {
    let r = crate::rebuild::rebuild_catalog(&a.store)?;
    println!(
        "rebuilt {} from revision {}: {} paths in {} directories, {} revisions recorded{}",
        Layout::new(&a.store).catalog().display(),
        r.revision,
        r.paths,
        r.dirs,
        r.revisions,
        if r.salvage_failed.is_some() {
            " (the older revision history could not be read)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `depotfs serve`
pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::serve::run(&a)
}
