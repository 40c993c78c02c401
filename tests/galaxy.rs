//! `depotfs resolve` against Galaxy's own `cached_mulled_singularity` resolver.
//!
//! Runs `tests/galaxy/agreement.py` with the Python of the venv made by
//! `tests/galaxy/setup-venv.sh` (`$GALAXY_VENV`, else `<repo>/target/galaxy-venv`): it fills a
//! temporary directory with one empty file per name of the real 118,594-entry Galaxy `all/`
//! listing (`tests/data/`), plus planted mulled-v2 names and synthetic noise, then compares
//! Galaxy's answers (its real `ContainerRegistry`) with depotfs's for thousands of requirement
//! sets, every name and (name, version) pair of the listing, and random version strings.
//!
//! A missing venv fails the test: CI creates it (`.ci/run`), and a silent skip would hide a
//! broken Galaxy contract.

mod cli_run;
mod http_suite;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_run::{Mounted, Served};

const LISTING: &str = "cvmfs_singularity_all_2026-01-28.tsv.gz";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn galaxy_python() -> PathBuf {
    let venv = std::env::var_os("GALAXY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/galaxy-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "Galaxy venv missing: {} does not exist. Create it with `bash tests/galaxy/setup-venv.sh` \
         (needs python3-venv and PyPI; .ci/run does this), or point $GALAXY_VENV at one.",
        py.display()
    );
    py
}

fn listing() -> PathBuf {
    let candidates = [
        repo().join("tests/data").join(LISTING),
        repo().join("../shared/data").join(LISTING),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("listing {LISTING} not found in {candidates:?}"))
        .clone()
}

fn tier<'a>(report: &'a serde_json::Value, name: &str) -> (u64, u64, &'a serde_json::Value) {
    let t = &report[name];
    let n = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("report has no {name}.{k}: {report:#}"))
    };
    (n("cases"), n("agree"), t)
}

/// Run `agreement.py ARGS... --depotfs BIN --report R`, print its output, fail on any
/// disagreement, and return the report.
fn agreement(args: &[&std::ffi::OsStr], report_path: &Path) -> serde_json::Value {
    let out = Command::new(galaxy_python())
        .arg(repo().join("tests/galaxy/agreement.py"))
        .args(args)
        .arg("--depotfs")
        .arg(env!("CARGO_BIN_EXE_depotfs"))
        .arg("--report")
        .arg(report_path)
        .output()
        .expect("run tests/galaxy/agreement.py");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report_path.exists(),
        "agreement.py wrote no report ({})",
        out.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    assert_eq!(
        report["mismatch_count"], 0,
        "depotfs and Galaxy disagree; first mismatches: {:#}",
        report["mismatches"]
    );
    assert!(out.status.success(), "agreement.py failed: {}", out.status);
    report
}

/// Entries of the populated directory: the listing, planted mulled-v2 names, synthetic noise.
const POPULATED_ENTRIES: u64 = 118_594 + 2_159 + 13;

#[test]
fn resolve_agrees_with_galaxy_on_real_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("all");
    let listing = listing();
    let report = agreement(
        &[
            "--populate".as_ref(),
            listing.as_os_str(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--cases".as_ref(),
            "4000".as_ref(),
            "--fuzz".as_ref(),
            "2000".as_ref(),
            "--cli-cases".as_ref(),
            "40".as_ref(),
        ],
        &tmp.path().join("report.json"),
    );
    let (cases, agree, reg) = tier(&report, "registry");
    assert_eq!((cases, agree), (4000, 4000));
    // Both sides of the contract are exercised: found images, misses and rejected input.
    assert!(reg["hits"].as_u64().unwrap() > 2000, "{reg}");
    assert!(reg["misses"].as_u64().unwrap() > 800, "{reg}");
    assert!(reg["errors"].as_u64().unwrap() > 0, "{reg}");
    let (cases, agree, _) = tier(&report, "exhaustive");
    assert!(cases > 80_000 && agree == cases, "{report:#}");
    let (cases, agree, _) = tier(&report, "fuzz");
    assert!(cases > 5_000 && agree == cases, "{report:#}");
    let (cases, agree, _) = tier(&report, "cli");
    assert!(cases == 40 && agree == cases, "{report:#}");
    assert_eq!(report["entries"].as_u64(), Some(POPULATED_ENTRIES));
}

fn depotfs(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_depotfs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "depotfs {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same contract on a real depotfs FUSE mount of the published listing: Galaxy and depotfs
/// list the mount, and writes (Galaxy's mkdir of a missing cache directory) fail with EROFS.
/// A small real squashfs image holding a marker file.
fn squashfs(dest: &Path, marker: &str) {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("marker"), marker).unwrap();
    let ok = Command::new("mksquashfs")
        .arg(t.path())
        .arg(dest)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", "zstd"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mksquashfs (squashfs-tools; .ci/run installs it)");
    assert!(ok.success());
}

fn on_mount(args: &[&str]) -> String {
    let out = Command::new(galaxy_python())
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

/// Galaxy on a real FUSE mount, over HTTP from `depotfs serve`, of a repository whose `all/`
/// holds every name of the real listing (plus the planted ones) and real squashfs images where
/// Galaxy will look: its registry resolves single- and multi-package requirements to the
/// expected paths, those are readable images on the mount, writes Galaxy may attempt fail with
/// EROFS, and `depotfs resolve` agrees with Galaxy over the whole listing read through FUSE.
#[test]
fn galaxy_resolves_on_a_depotfs_mount() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse missing: this test mounts depotfs (.ci/run installs fuse3)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src/all");
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Command::new(galaxy_python())
        .arg(repo().join("tests/galaxy/agreement.py"))
        .arg("--populate")
        .arg(listing())
        .arg("--populate-only")
        .arg("--dir")
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Real images where Galaxy will look (the newest builds of the real listing's entries).
    let mulled = on_mount(&["name", "bwa=0.7.17", "samtools=1.9"])
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
    depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "galaxy.test".as_ref(),
    ]);
    depotfs(&["add".as_ref(), store.as_os_str(), src.as_os_str()]);
    let server = Served::start(&store);
    let url = server.url();
    depotfs(&[
        "mount".as_ref(),
        url.as_ref(),
        mnt.as_os_str(),
        "--key".as_ref(),
        store.join("public/repo.pub").as_os_str(),
        "--cache-dir".as_ref(),
        tmp.path().join("cache").as_os_str(),
    ]);
    let _mounted = Mounted(mnt.clone());
    let all = mnt.join("all");
    let all_s = all.to_str().unwrap();

    // Galaxy's registry, from a container_resolvers config, on the mount.
    let mut args = vec!["resolve", "--dir", all_s];
    args.extend(expect.iter().map(|e| e.0));
    let v: serde_json::Value = serde_json::from_str(&on_mount(&args)).unwrap();
    // Writes fail at once with EROFS. Galaxy's resolver constructor does not catch the error
    // of its mkdir of a missing cache_directory: the registry then fails to load (recorded here
    // so a change in Galaxy shows; deploy/galaxy/README.md tells admins to point it at all/).
    assert_eq!(v["mkdir_missing"], "EROFS", "{v}");
    assert_eq!(v["write_into_dir"], "EROFS", "{v}");
    assert!(
        v["registry"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{v}"
    );
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
        let one = Command::new(env!("CARGO_BIN_EXE_depotfs"))
            .args(["resolve", "--dir", all_s])
            .args(reqs.split(','))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&one.stdout).trim(),
            path.to_str().unwrap()
        );
    }

    // depotfs resolve and Galaxy agree over the listing read through FUSE.
    let report = agreement(
        &[
            "--dir".as_ref(),
            all.as_os_str(),
            "--cases".as_ref(),
            "1000".as_ref(),
            "--cli-cases".as_ref(),
            "20".as_ref(),
        ],
        &tmp.path().join("report.json"),
    );
    assert_eq!(report["entries"].as_u64(), Some(POPULATED_ENTRIES));
    let (cases, agree, reg) = tier(&report, "registry");
    assert_eq!((cases, agree), (1000, 1000));
    assert!(reg["hits"].as_u64().unwrap() > 500, "{reg}");
    let (cases, agree, _) = tier(&report, "exhaustive");
    assert!(cases > 80_000 && agree == cases, "{report:#}");
}

/// A Galaxy registry with the `dir_mtime` cacher stays alive while a new image is published:
/// once the mount shows the new revision (it re-reads the manifest every second here), the
/// directory's mtime has moved and Galaxy resolves the new image without a restart.
#[test]
fn galaxy_sees_a_new_publish_without_restart() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for n in ["samtools:1.9--h91753b0_8", "bwa:0.7.17--h5bf99c6_8"] {
        std::fs::write(src.join(n), n).unwrap();
    }
    let store = tmp.path().join("store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "galaxy.live".as_ref(),
    ]);
    let mut add: Vec<&std::ffi::OsStr> = vec![
        "add".as_ref(),
        store.as_os_str(),
        "--to".as_ref(),
        "all".as_ref(),
    ];
    let files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    add.extend(files.iter().map(|f| f.as_os_str()));
    depotfs(&add);
    depotfs(&[
        "mount".as_ref(),
        store.as_os_str(),
        mnt.as_os_str(),
        "--cache-dir".as_ref(),
        tmp.path().join("cache").as_os_str(),
        "--ttl".as_ref(),
        "1".as_ref(),
    ]);
    let _mounted = Mounted(mnt.clone());
    let all = mnt.join("all");
    let mut galaxy = Command::new(galaxy_python())
        .arg(repo().join("tests/galaxy/on_mount.py"))
        .args(["live", "--dir", all.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_galaxy = galaxy.stdin.take().unwrap();
    let mut from_galaxy = BufReader::new(galaxy.stdout.take().unwrap());
    let mut ask = |reqs: &str| -> serde_json::Value {
        writeln!(to_galaxy, "{reqs}").unwrap();
        let mut line = String::new();
        from_galaxy.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("galaxy said {line:?}: {e}"))
    };
    let before = ask("samtools=1.9");
    assert_eq!(
        before["answer"],
        all.join("samtools:1.9--h91753b0_8").to_str().unwrap()
    );
    assert!(ask("newtool=2.0")["answer"].is_null());

    let new = tmp.path().join("newtool:2.0--h0_0");
    std::fs::write(&new, b"a new image").unwrap();
    depotfs(&[
        "add".as_ref(),
        store.as_os_str(),
        "--to".as_ref(),
        "all".as_ref(),
        new.as_os_str(),
    ]);
    // Wait for the mount to show the new revision (revision 2: 0 init, 1 first add, 2 this).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = Command::new(env!("CARGO_BIN_EXE_depotfs"))
            .arg("status")
            .arg(&mnt)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&st.stdout).into_owned();
        if text
            .lines()
            .filter_map(|l| l.strip_prefix("revision:"))
            .any(|rest| rest.split_whitespace().next() == Some("2"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mount never showed revision 2:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let after = ask("newtool=2.0");
    assert_eq!(
        after["answer"],
        all.join("newtool:2.0--h0_0").to_str().unwrap(),
        "{after}"
    );
    assert!(
        after["dir_mtime_ns"].as_u64().unwrap() >= before["dir_mtime_ns"].as_u64().unwrap() + 1000,
        "all/ mtime must move by at least 1 µs: {before} -> {after}"
    );
    assert_eq!(
        std::fs::read(all.join("newtool:2.0--h0_0")).unwrap(),
        b"a new image"
    );
    drop(to_galaxy);
    galaxy.wait().unwrap();
}

/// The documented CLI: text output, `--json`, exit status 1 on no match and 2 on bad input,
/// `$DEPOTFS_RESOLVE_DIR`. Needs no Python.
#[test]
fn resolve_cli_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("all");
    std::fs::create_dir(&dir).unwrap();
    for n in [
        "samtools:1.9--h91753b0_8",
        "samtools:1.9--h10a08f8_12",
        "samtools:1.10--h2e538c0_3",
        "samtools:latest",
        "bwa:0.7.17--hed695b0_7",
        // v2_image_name([samtools=1.3.1, bwa=0.7.13]), Galaxy's doctest vector.
        "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40:4d0535c94ef45be8459f429561f0894c3fe0ebcf-0",
        "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40:4d0535c94ef45be8459f429561f0894c3fe0ebcf-1",
    ] {
        std::fs::write(dir.join(n), b"").unwrap();
    }
    let run = |args: &[&str], env_dir: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_depotfs"));
        c.arg("resolve")
            .args(args)
            .env_remove("DEPOTFS_RESOLVE_DIR");
        if let Some(d) = env_dir {
            c.env("DEPOTFS_RESOLVE_DIR", d);
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let path = |n: &str| format!("{}\n", dir.join(n).display());

    assert_eq!(
        run(&["--dir", d, "SamTools"], None).1,
        path("samtools:1.10--h2e538c0_3")
    );
    assert_eq!(
        run(&["samtools=1.9"], Some(&dir)).1,
        path("samtools:1.9--h10a08f8_12")
    );
    let (code, out, _) = run(
        &["--dir", d, "--json", "samtools=1.3.1", "bwa=0.7.13"],
        None,
    );
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["name"],
        "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40:4d0535c94ef45be8459f429561f0894c3fe0ebcf-1"
    );
    assert_eq!(v["build"], "1");
    assert_eq!(v["version"], "4d0535c94ef45be8459f429561f0894c3fe0ebcf");
    assert_eq!(
        v["requirements"],
        serde_json::json!(["samtools=1.3.1", "bwa=0.7.13"])
    );

    let (code, out, err) = run(&["--dir", d, "samtools=2.0"], None);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(
        err.contains("samtools=2.0") && err.contains("newest samtools:1.10--h2e538c0_3"),
        "{err}"
    );
    let (code, out, _) = run(&["--dir", d, "--json", "samtools=2.0"], None);
    assert_eq!(code, Some(1));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["path"],
        serde_json::Value::Null
    );

    let (code, _, err) = run(&["--dir", d, "sam tools=1.0"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"sam tools\""), "{err}");
    let (code, _, err) = run(&["--dir", "/nonexistent/depotfs-all", "samtools"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/depotfs-all"), "{err}");
}
