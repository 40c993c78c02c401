//! Command-line entry points of the publisher side. Flags are an interface: scripts call them.
use std::path::PathBuf;
use std::process::ExitCode;

/// `depotfs init STORE --name NAME`
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create (must not exist, or be empty).
    pub store: PathBuf,
    /// Repository name, e.g. singularity.example.org.
    #[arg(long)]
    pub name: String,
}

/// `depotfs add STORE [--to DIR] [--from-list FILE] [--no-publish] PATH...`
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The repository.
    pub store: PathBuf,
    /// Files (added as DIR/basename) or directory trees (as DIR/basename/...).
    pub paths: Vec<PathBuf>,
    /// Directory inside the repository to add into (default: the root).
    #[arg(long, default_value = "")]
    pub to: String,
    /// Read more paths from FILE, one per line.
    #[arg(long)]
    pub from_list: Option<PathBuf>,
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

/// `depotfs publish STORE [--tag NAME]`
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The repository.
    pub store: PathBuf,
    /// Tag the new revision (tagged revisions are never garbage-collected).
    #[arg(long)]
    pub tag: Option<String>,
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

/// `depotfs verify STORE`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The repository.
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

/// `depotfs serve STORE --listen ADDR`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The repository (its `public/` is served), or a `public/`-like directory itself.
    pub store: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

fn todo() -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
/// init
pub fn init(_a: InitArgs) -> anyhow::Result<ExitCode> { todo() }
/// add
pub fn add(_a: AddArgs) -> anyhow::Result<ExitCode> { todo() }
/// rm
pub fn rm(_a: RmArgs) -> anyhow::Result<ExitCode> { todo() }
/// publish
pub fn publish(_a: PublishArgs) -> anyhow::Result<ExitCode> { todo() }
/// log
pub fn log(_a: LogArgs) -> anyhow::Result<ExitCode> { todo() }
/// ls
pub fn ls(_a: LsArgs) -> anyhow::Result<ExitCode> { todo() }
/// cat
pub fn cat(_a: CatArgs) -> anyhow::Result<ExitCode> { todo() }
/// rollback
pub fn rollback(_a: RollbackArgs) -> anyhow::Result<ExitCode> { todo() }
/// verify
pub fn verify(_a: VerifyArgs) -> anyhow::Result<ExitCode> { todo() }
/// gc
pub fn gc(_a: GcArgs) -> anyhow::Result<ExitCode> { todo() }
/// serve
pub fn serve(_a: ServeArgs) -> anyhow::Result<ExitCode> { todo() }
