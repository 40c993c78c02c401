//! Running the built `depotfs` binary from tests: shared by `tests/replicate.rs` and
//! `tests/trace.rs`.

#![allow(dead_code)] // each test binary uses a different part

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_depotfs");

/// Run `depotfs ARGS...` to completion.
pub fn depotfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running depotfs")
}

/// The output of a run that must succeed (panics with its output otherwise).
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "depotfs failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stdout of a run that must succeed.
pub fn ok_stdout(out: Output) -> String {
    String::from_utf8(ok(out).stdout).expect("UTF-8 output")
}

/// The stderr of a run that must fail.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "depotfs succeeded but should not have\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
