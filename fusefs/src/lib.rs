//! depotfs client (placeholder until the fusefs work lands).
pub mod cli;
