//! Galaxy's real resolvers on a real depotfs FUSE mount of a repository whose `all/` holds the
//! 118,594 names of the real Galaxy listing (plus the agreement test's planted names), served
//! over HTTP by `depotfs serve`.
//!
//! - Galaxy's `ContainerRegistry`, built from a `container_resolvers` config, resolves single-
//!   and multi-package requirements to the expected paths, and those paths are readable
//!   squashfs images on the mount (`unsquashfs -l`).
//! - Writes Galaxy may attempt (creating a missing cache directory, building into the cache
//!   directory) fail with EROFS, and Galaxy carries on.
//! - `tests/galaxy/agreement.py` then checks `depotfs resolve` against Galaxy on the mount.
//!
//! Needs the Galaxy venv (tests/galaxy/setup-venv.sh), FUSE, and squashfs-tools: `.ci/run`
//! installs them all, so a missing part fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = std::env::var_os("GALAXY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/galaxy-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "Galaxy venv missing at {}: run `bash tests/galaxy/setup-venv.sh`",
        py.display()
    );
    py
}

fn depotfs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "depotfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/galaxy/on_mount.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "on_mount.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small real squashfs image with a marker file.
fn squashfs(dest: &Path, marker: &str) {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("marker"), marker).unwrap();
    let ok = Command::new("mksquashfs")
        .arg(t.path())
        .arg(dest)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", "zstd"])
        .stdout(Stdio::null())
        .status()
        .expect("mksquashfs (squashfs-tools) is needed");
    assert!(ok.success());
}

struct Guard {
    server: Child,
    mnt: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_depotfs"))
            .arg("umount")
            .arg(&self.mnt)
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn galaxy_resolvers_on_a_depotfs_mount() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src/all");
    // 1. The real listing's names (+ planted mulled-v2 names and noise), via the agreement
    //    driver's --populate, checked once locally with a handful of cases.
    let listing = ["tests/data", "../shared/data"]
        .iter()
        .map(|d| {
            repo()
                .join(d)
                .join("cvmfs_singularity_all_2026-01-28.tsv.gz")
        })
        .find(|p| p.exists())
        .expect("listing");
    let out = Command::new(python())
        .arg(repo().join("tests/galaxy/agreement.py"))
        .args([
            "--populate",
            listing.to_str().unwrap(),
            "--dir",
            src.to_str().unwrap(),
        ])
        .args([
            "--depotfs",
            env!("CARGO_BIN_EXE_depotfs"),
            "--cases",
            "20",
            "--cli-cases",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "populate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 2. Real images where Galaxy will look.
    let mulled = py(&["name", "bwa=0.7.17", "samtools=1.9"])
        .trim()
        .to_string();
    let expect = [
        ("samtools=1.9", "samtools:1.9--h10a08f8_12".to_string()),
        ("bwa=0.7.17", "bwa:0.7.17--he4a0461_11".to_string()),
        ("bwa=0.7.17,samtools=1.9", format!("{mulled}-0")),
    ];
    for (_, name) in &expect {
        squashfs(&src.join(name), name);
    }
    // 3. Publish, serve, mount over HTTP.
    let store = t.path().join("store");
    let s = store.to_str().unwrap();
    depotfs(&["init", s, "--name", "singularity.galaxy.test"]);
    depotfs(&["add", s, src.to_str().unwrap()]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .args(["serve", s, "--listen", &listen])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = Guard {
        server,
        mnt: mnt.clone(),
    };
    let key = store.join("public/repo.pub");
    let cache = t.path().join("cache");
    depotfs(&[
        "mount",
        &format!("http://{listen}/"),
        mnt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let all = mnt.join("all");

    // 4. Galaxy's registry on the mount.
    let reqsets: Vec<&str> = expect.iter().map(|e| e.0).collect();
    let mut args = vec!["resolve", "--dir", all.to_str().unwrap()];
    args.extend(&reqsets);
    let v: serde_json::Value = serde_json::from_str(&py(&args)).unwrap();
    assert_eq!(v["mkdir_missing"], "EROFS", "{v}");
    assert_eq!(v["write_into_dir"], "EROFS", "{v}");
    for (reqs, name) in &expect {
        let path = all.join(name);
        assert_eq!(
            v["resolved"][reqs],
            path.to_str().unwrap(),
            "Galaxy's answer for {reqs}: {v}"
        );
        let listed = Command::new("unsquashfs")
            .arg("-l")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            listed.status.success(),
            "{} is not a readable image",
            path.display()
        );
        assert!(String::from_utf8_lossy(&listed.stdout).contains("marker"));
        let mut cli = vec!["resolve", "--dir", all.to_str().unwrap()];
        cli.extend(reqs.split(','));
        let one = depotfs(&cli);
        assert_eq!(one.trim(), path.to_str().unwrap());
    }

    // 5. The agreement suite on the mount (the listing comes through FUSE this time).
    let report = t.path().join("report.json");
    let out = Command::new(python())
        .arg(repo().join("tests/galaxy/agreement.py"))
        .args([
            "--dir",
            all.to_str().unwrap(),
            "--depotfs",
            env!("CARGO_BIN_EXE_depotfs"),
        ])
        .args([
            "--cases",
            "1500",
            "--cli-cases",
            "10",
            "--report",
            report.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["mismatch_count"], 0, "{:#}", r["mismatches"]);
    assert!(out.status.success());
    assert!(r["entries"].as_u64().unwrap() > 118_594);
    drop(guard);
}
