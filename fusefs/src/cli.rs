//! Command-line entry points of the client side.
use std::process::ExitCode;

/// `depotfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// HTTP(S) URL of a served `public/`, or a local STORE path.
    pub source: String,
    /// Where to mount.
    pub mountpoint: std::path::PathBuf,
}
/// `depotfs umount`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mountpoint.
    pub mountpoint: std::path::PathBuf,
}
/// `depotfs status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The mountpoint.
    pub mountpoint: std::path::PathBuf,
}
/// Mount.
pub fn mount(_a: MountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
/// Unmount.
pub fn umount(_a: UmountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
/// Status.
pub fn status(_a: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
