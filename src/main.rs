//! `depotfs`: one binary, one subcommand per job. Each subcommand's arguments and
//! implementation live in the crate that owns the job; this file only dispatches.
//!
//! - publisher side (`depotfs-publisher::cli`): init, add, rm, publish, log, ls, cat,
//!   rollback, verify, gc, serve, replicate, import
//! - client side (`depotfs-fusefs::cli`): mount, umount, remount, status
//! - Galaxy (`resolve.rs` here): resolve
//! - `demo.rs`: the whole job on sample images

use clap::{Parser, Subcommand};

mod demo;
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
    /// Serve STORE/public over HTTP.
    Serve(depotfs_publisher::cli::ServeArgs),
    /// Make or update a mirror of a served repository (stratum 1).
    Replicate(depotfs_publisher::cli::ReplicateArgs),
    /// Import OCI images (registry, OCI layout, docker archive) as trees or SIF files.
    Import(depotfs_publisher::import::ImportArgs),
    /// Mount a repository (HTTP URL or local STORE).
    Mount(depotfs_fusefs::cli::MountArgs),
    /// Unmount a depotfs mount.
    Umount(depotfs_fusefs::cli::UmountArgs),
    /// Ask a mount to check for a new revision now.
    Remount(depotfs_fusefs::cli::RemountArgs),
    /// Show a mount's revision, source and cache.
    Status(depotfs_fusefs::cli::StatusArgs),
    /// Find the container image Galaxy would pick for requirements.
    Resolve(resolve::ResolveArgs),
    /// Publish sample images, serve, mount, list, resolve and unmount: the whole job.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Init(a) => depotfs_publisher::cli::init(a),
        Cmd::Add(a) => depotfs_publisher::cli::add(a),
        Cmd::Rm(a) => depotfs_publisher::cli::rm(a),
        Cmd::Publish(a) => depotfs_publisher::cli::publish(a),
        Cmd::Log(a) => depotfs_publisher::cli::log(a),
        Cmd::Ls(a) => depotfs_publisher::cli::ls(a),
        Cmd::Cat(a) => depotfs_publisher::cli::cat(a),
        Cmd::Rollback(a) => depotfs_publisher::cli::rollback(a),
        Cmd::Verify(a) => depotfs_publisher::cli::verify(a),
        Cmd::Gc(a) => depotfs_publisher::cli::gc(a),
        Cmd::Serve(a) => depotfs_publisher::cli::serve(a),
        Cmd::Replicate(a) => depotfs_publisher::cli::replicate(a),
        Cmd::Import(a) => depotfs_publisher::import::run(a),
        Cmd::Mount(a) => depotfs_fusefs::cli::mount(a),
        Cmd::Umount(a) => depotfs_fusefs::cli::umount(a),
        Cmd::Remount(a) => depotfs_fusefs::cli::remount(a),
        Cmd::Status(a) => depotfs_fusefs::cli::status(a),
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
