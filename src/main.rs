//! `depotfs`: one binary, one subcommand per job. Each subcommand's arguments and
//! implementation live in the crate that owns the job; this file only dispatches.
//!
//! - publisher side (`depotfs-publisher::cli`): init, add, rm, publish, abort, log, ls, cat,
//!   rollback, verify, gc, rebuild-catalog, serve, replicate, sync, import, status STORE
//! - client side (`depotfs-fusefs::cli`): mount, umount, remount, status; doctor
//! - Galaxy (`resolve.rs` here): resolve
//! - `demo.rs`: the whole job on sample images

use clap::{Parser, Subcommand};

mod demo;
mod logging;
mod resolve;

#[derive(Debug, Parser)]
#[command(
    name = "depotfs",
    version,
    about = "Publish container images as a signed, content-addressed store and mount it lazily on every node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new repository in STORE.
    Init(depotfs_publisher::cli::InitArgs),
    /// Add files or directory trees and (unless --no-publish) publish.
    Add(depotfs_publisher::cli::AddArgs),
    /// Remove paths and (unless --no-publish) publish.
    Rm(depotfs_publisher::cli::RmArgs),
    /// Publish what is staged as a new signed revision.
    Publish(depotfs_publisher::cli::PublishArgs),
    /// Discard what is staged and not published.
    Abort(depotfs_publisher::cli::AbortArgs),
    /// One line per revision.
    Log(depotfs_publisher::cli::LogArgs),
    /// List a directory of the published revision.
    Ls(depotfs_publisher::cli::LsArgs),
    /// Print a file of the published revision.
    Cat(depotfs_publisher::cli::CatArgs),
    /// Publish a new revision whose tree is an earlier revision's.
    Rollback(depotfs_publisher::cli::RollbackArgs),
    /// Check every object of every retained revision, and the manifest signature.
    Verify(depotfs_publisher::cli::VerifyArgs),
    /// Delete objects no retained revision needs.
    Gc(depotfs_publisher::cli::GcArgs),
    /// Make a new catalog.redb from the published store (when the catalog is damaged).
    RebuildCatalog(depotfs_publisher::cli::RebuildCatalogArgs),
    /// Serve STORE/public over HTTP.
    Serve(depotfs_publisher::cli::ServeArgs),
    /// Make or update a mirror of a served repository (stratum 1).
    Replicate(depotfs_publisher::cli::ReplicateArgs),
    /// Stream an HTTP image depot (a directory listing) into the store.
    Sync(depotfs_publisher::cli::SyncArgs),
    /// Import OCI images (registry, OCI layout, docker archive) as trees or SIF files.
    Import(depotfs_publisher::import::ImportArgs),
    /// Mount a repository (HTTP URL or local STORE).
    Mount(depotfs_fusefs::cli::MountArgs),
    /// Unmount a depotfs mount.
    Umount(depotfs_fusefs::cli::UmountArgs),
    /// Ask a mount to check for a new revision now.
    Remount(depotfs_fusefs::cli::RemountArgs),
    /// Replace a mount's daemon under running jobs (the new one takes the live mount over).
    Reload(depotfs_fusefs::cli::ReloadArgs),
    /// Show a mount's revision, source and cache; or, given a STORE, what is staged there.
    Status(depotfs_fusefs::cli::StatusArgs),
    /// Check a node (FUSE, key, servers and proxies, manifest, cache, autofs, the mount).
    Doctor(depotfs_fusefs::doctor::DoctorArgs),
    /// Find the container image Galaxy would pick for requirements.
    Resolve(resolve::ResolveArgs),
    /// Publish sample images, serve, mount, list, resolve and unmount: the whole job.
    Demo(demo::DemoArgs),
}

/// Restore the default action of SIGPIPE (Rust ignores it), so that a command whose
/// output pipe closes (`depotfs status MNT | head -3`) ends quietly as `ls | head` does,
/// instead of panicking in `println!` on EPIPE.
fn quiet_on_closed_pipe() {
    // SAFETY: `signal` with `SIG_DFL` installs no handler code, only the kernel's default
    // action; it is called first thing in `main`, before any other thread exists, and
    // nothing else in this process changes SIGPIPE's disposition.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Long-running network processes keep SIGPIPE ignored: a peer closing a socket (hyper
    // and reqwest write with `writev`) must be an EPIPE error, not the end of the server
    // or of the mount's daemon.
    if !matches!(
        cli.cmd,
        Cmd::Serve(_) | Cmd::Mount(_) | Cmd::Replicate(_) | Cmd::Demo(_)
    ) {
        quiet_on_closed_pipe();
    }
    match &cli.cmd {
        Cmd::Mount(a) if a.foreground && a.log_file.is_some() => {
            logging::init(a.log_file.as_deref().map(|p| (p, a.log_size)))
        }
        _ => logging::init(None),
    }
    let result = match cli.cmd {
        Cmd::Init(a) => depotfs_publisher::cli::init(a),
        Cmd::Add(a) => depotfs_publisher::cli::add(a),
        Cmd::Rm(a) => depotfs_publisher::cli::rm(a),
        Cmd::Publish(a) => depotfs_publisher::cli::publish(a),
        Cmd::Abort(a) => depotfs_publisher::cli::abort(a),
        Cmd::Log(a) => depotfs_publisher::cli::log(a),
        Cmd::Ls(a) => depotfs_publisher::cli::ls(a),
        Cmd::Cat(a) => depotfs_publisher::cli::cat(a),
        Cmd::Rollback(a) => depotfs_publisher::cli::rollback(a),
        Cmd::Verify(a) => depotfs_publisher::cli::verify(a),
        Cmd::Gc(a) => depotfs_publisher::cli::gc(a),
        Cmd::RebuildCatalog(a) => depotfs_publisher::cli::rebuild_catalog(a),
        Cmd::Serve(a) => depotfs_publisher::cli::serve(a),
        Cmd::Replicate(a) => depotfs_publisher::cli::replicate(a),
        Cmd::Sync(a) => depotfs_publisher::cli::sync(a),
        Cmd::Import(a) => depotfs_publisher::import::run(a),
        Cmd::Mount(a) => depotfs_fusefs::cli::mount(a),
        Cmd::Umount(a) => depotfs_fusefs::cli::umount(a),
        Cmd::Remount(a) => depotfs_fusefs::cli::remount(a),
        Cmd::Reload(a) => depotfs_fusefs::cli::reload(a),
        Cmd::Status(a) if depotfs_publisher::cli::is_store(&a.mountpoint) => {
            depotfs_publisher::cli::status(&a.mountpoint)
        }
        Cmd::Status(a) => depotfs_fusefs::cli::status(a),
        Cmd::Doctor(a) => depotfs_fusefs::doctor::run(a),
        Cmd::Resolve(a) => resolve::run(a),
        Cmd::Demo(a) => demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("depotfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
