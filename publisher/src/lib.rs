//! depotfs publisher (in progress).
pub mod cli;
pub mod serve;
