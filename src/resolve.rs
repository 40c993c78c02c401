//! `depotfs resolve`: placeholder until the Galaxy work lands.
use std::process::ExitCode;

/// Arguments of `depotfs resolve`.
#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// Requirements: `name` or `name=version`.
    pub requirements: Vec<String>,
}

pub fn run(_a: ResolveArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("resolve is not implemented yet")
}
