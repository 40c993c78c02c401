//! The README's first quick-start command: `depotfs demo` publishes, serves, mounts (real FUSE),
//! lists, resolves and unmounts, and says so.

use std::process::Command;

#[test]
fn demo_runs_the_whole_job() {
    let out = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run depotfs demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "$ depotfs init",
        "$ depotfs add",
        "$ depotfs serve",
        "$ depotfs mount",
        "$ depotfs resolve",
        "$ depotfs umount",
    ] {
        assert!(
            stdout.contains(step),
            "demo output lacks {step:?}:\n{stdout}"
        );
    }
    assert!(stdout.contains("samtools:1.9--h91753b0_9\n"), "{stdout}");
    assert!(
        stdout.contains("identical to the published image"),
        "{stdout}"
    );
    assert!(stdout.contains("demo finished"), "{stdout}");
    // It says when it stops the server, and the server is gone.
    let stopped = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped the server on "))
        .unwrap_or_else(|| panic!("demo does not say it stopped the server:\n{stdout}"));
    assert!(
        std::net::TcpStream::connect(stopped.trim()).is_err(),
        "the server on {stopped} still answers"
    );
}
