//! `depotfs import` against real parts: a Debian `docker-registry` run by hand on 127.0.0.1,
//! filled by `skopeo copy` from OCI layouts built with `umoci` out of busybox-static and
//! layers made by GNU tar (whiteouts, opaque directories, hard links); the imported trees
//! mounted with `depotfs mount` and run with `chroot`; SIF files listed by `siftool`,
//! mounted by `squashfuse` and found by Galaxy's resolver.

mod cli_run;
mod http_suite;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cli_run::{Mounted, depotfs, fails, ok, ok_stdout, percent_decode, poll};
use http_suite::free_port;

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (.ci/run installs the Debian packages)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry` process on a free port with its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    root: PathBuf,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        let auth = htpasswd
            .map(|p| {
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    p.display()
                )
            })
            .unwrap_or_default();
        Registry::start_with(dir, &auth)
    }

    /// Started with `auth` (YAML of the `auth:` section, or empty); its storage is
    /// `dir/registry-data` whatever registry ran there before.
    fn start_with(dir: &Path, auth: &str) -> Registry {
        let port = free_port();
        let root = dir.join("registry-data");
        let log = dir.join("registry.log");
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (Debian docker-registry; .ci/run installs it)");
        let mut r = Registry {
            child,
            port,
            root,
            log,
        };
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        http_suite::wait_listening(addr, || match r.child.try_wait() {
            Ok(Some(s)) => Err(format!(
                "{s}: {}",
                fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
            )),
            _ => Ok(()),
        });
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests logged so far (access log lines and the app's own, stdout and stderr).
    fn blob_gets(&self, digest: &str) -> usize {
        let mut text = fs::read_to_string(&self.log).unwrap_or_default();
        text += &fs::read_to_string(self.log.with_file_name("registry.err")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// Push `oci:LAYOUT:TAG` as REPO:TAG.
    fn push(&self, layout: &Path, tag: &str, repo_tag: &str, creds: Option<&str>, all: bool) {
        let policy = layout.with_extension("policy.json");
        fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let mut c = Command::new("skopeo");
        c.arg("--policy")
            .arg(&policy)
            .args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(cr) = creds {
            c.args(["--dest-creds", cr]);
        }
        if all {
            c.arg("--all");
        }
        c.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        sh(&mut c);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout built with umoci: `new` then one `raw add-layer` per directory (a layer is
/// the GNU tar of that directory, so `.wh.` files and hard links go in verbatim).
struct Layout(PathBuf);

impl Layout {
    fn new(dir: &Path) -> Layout {
        let p = dir.join("layout");
        sh(Command::new("umoci").args(["init", "--layout"]).arg(&p));
        Layout(p)
    }

    fn image(&self, tag: &str, arch: &str, layers: &[&Path]) {
        let img = format!("{}:{tag}", self.0.display());
        sh(Command::new("umoci").args(["new", "--image", &img]));
        sh(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            "--os",
            "linux",
            "--architecture",
            arch,
        ]));
        for (i, l) in layers.iter().enumerate() {
            let tar = self.0.with_file_name(format!("{tag}-{i}.tar"));
            sh(Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(l)
                .arg("-cf")
                .arg(&tar)
                .arg("."));
            sh(Command::new("umoci")
                .args(["raw", "add-layer", "--image", &img])
                .arg(&tar));
        }
    }

    /// Image TAG of one layer written by Python's tarfile (GNU format), which writes names
    /// verbatim (GNU tar would refuse to): `script` adds entries with `f(name, data, mode)`
    /// and `l(name, target, kind)`.
    fn crafted(&self, tag: &str, script: &str) {
        let tar = self.0.with_file_name(format!("{tag}.tar"));
        sh(Command::new("python3").arg("-c").arg(format!(
            "import io, tarfile, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT)\n\
             def f(n, data=b'x', mode=0o644):\n    i = tarfile.TarInfo(n); i.size = len(data); i.mode = mode; t.addfile(i, io.BytesIO(data))\n\
             def l(n, target, kind=tarfile.SYMTYPE):\n    i = tarfile.TarInfo(n); i.type = kind; i.linkname = target; t.addfile(i)\n\
             {script}\nt.close()"
        )).arg(&tar));
        let img = format!("{}:{tag}", self.0.display());
        sh(Command::new("umoci").args(["new", "--image", &img]));
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &img])
            .arg(&tar));
    }

    /// The (gzip) digests of TAG's layers, bottom first.
    fn layer_digests(&self, tag: &str) -> Vec<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.0.join("index.json")).unwrap()).unwrap();
        let m = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap();
        let blob = |d: &str| self.0.join("blobs/sha256").join(&d[7..]);
        let man: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(m["digest"].as_str().unwrap())).unwrap())
                .unwrap();
        man["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A busybox root: bin/busybox (static), bin/sh -> busybox, etc/hello.
fn busybox_root(dir: &Path) -> PathBuf {
    let r = dir.join("base");
    fs::create_dir_all(r.join("bin")).unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::copy("/bin/busybox", r.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static; .ci/run installs it)");
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
    fs::write(r.join("etc/hello"), "hello from the base layer\n").unwrap();
    r
}

fn init_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    ok(depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "import.test".as_ref(),
    ]));
    store
}

fn import(store: &Path, args: &[&str]) -> std::process::Output {
    let mut a: Vec<&std::ffi::OsStr> = vec!["import".as_ref(), store.as_os_str()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    depotfs(&a)
}

fn cat(store: &Path, path: &str) -> String {
    ok_stdout(depotfs(&["cat".as_ref(), store.as_os_str(), path.as_ref()]))
}

fn ls(store: &Path, path: &str) -> String {
    ok_stdout(depotfs(&["ls".as_ref(), store.as_os_str(), path.as_ref()]))
}

fn mount(store: &Path, dir: &Path) -> Mounted {
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    ok(depotfs(&[
        "mount".as_ref(),
        store.as_os_str(),
        mnt.as_os_str(),
        "--key".as_ref(),
        store.join("public/repo.pub").as_os_str(),
        "--cache-dir".as_ref(),
        dir.join("cache").as_os_str(),
    ]));
    poll(Duration::from_secs(10), "mount ready", || {
        mnt.join("images").exists()
    });
    Mounted(mnt)
}

fn du(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let md = e.metadata().unwrap();
                        if md.is_dir() {
                            walk(&e.path())
                        } else {
                            md.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

/// A layer with whiteouts, an opaque directory, hard links and a setuid file over the
/// busybox base, pushed to the registry, imported, mounted, and run with chroot; the same
/// image from the OCI layout and from a docker archive gives the same tree.
#[test]
fn multi_layer_image_imports_and_runs_from_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = busybox_root(d);
    for (p, c) in [
        ("a/x", "x"),
        ("a/y", "y"),
        ("keep/k", "k"),
        ("keep/sub/deep", "deep"),
    ] {
        fs::create_dir_all(base.join(p).parent().unwrap()).unwrap();
        fs::write(base.join(p), c).unwrap();
    }
    let top = d.join("top");
    fs::create_dir_all(top.join("a")).unwrap();
    fs::create_dir_all(top.join("keep")).unwrap();
    fs::create_dir_all(top.join("hl")).unwrap();
    fs::write(top.join("a/.wh.x"), "").unwrap();
    fs::write(top.join("keep/.wh..wh..opq"), "").unwrap();
    fs::write(top.join("keep/new"), "new in the top layer\n").unwrap();
    fs::write(top.join("hl/one"), "linked\n").unwrap();
    fs::hard_link(top.join("hl/one"), top.join("hl/two")).unwrap();
    fs::write(top.join("hl/suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(top.join("hl/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    let layout = Layout::new(d);
    layout.image("1", "amd64", &[&base, &top]);

    let reg = Registry::start(d, None);
    reg.push(&layout.0, "1", "test/multi:1", None, false);
    let store = init_store(d);
    let host = reg.host();
    let out = ok_stdout(import(
        &store,
        &[
            &format!("docker://{host}/test/multi:1"),
            "--to",
            "images/",
            "--insecure-registry",
            &host,
        ],
    ));
    assert!(out.contains("1 images imported, 0 failed"), "{out}");
    let root = "images/test/multi:1";
    assert_eq!(
        cat(&store, &format!("{root}/etc/hello")),
        "hello from the base layer\n"
    );
    assert_eq!(cat(&store, &format!("{root}/a/y")), "y");
    assert!(
        !ls(&store, &format!("{root}/a")).contains(" x\n"),
        "whiteout"
    );
    let keep = ls(&store, &format!("{root}/keep"));
    assert!(
        keep.contains(" new\n") && !keep.contains(" k\n") && !keep.contains(" sub\n"),
        "opaque: {keep}"
    );
    assert_eq!(cat(&store, &format!("{root}/hl/two")), "linked\n");
    let hl = ls(&store, &format!("{root}/hl"));
    assert!(
        hl.contains("-0755") && !hl.contains("4755"),
        "setuid stripped: {hl}"
    );
    assert!(ls(&store, &format!("{root}/bin")).contains("sh -> busybox"));

    // The same image from the layout itself and from a docker archive.
    let out = ok_stdout(import(
        &store,
        &[
            &format!("oci:{}:1", layout.0.display()),
            "--to",
            "from-oci/",
        ],
    ));
    assert!(out.contains("-> /from-oci/layout:1"), "{out}");
    assert_eq!(
        cat(&store, "from-oci/layout:1/keep/new"),
        "new in the top layer\n"
    );
    let archive = d.join("multi.tar");
    let policy = layout.0.with_extension("policy.json");
    sh(Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:1", layout.0.display()))
        .arg(format!("docker-archive:{}:test/multi:1", archive.display())));
    let out = ok_stdout(import(
        &store,
        &[
            &format!("docker-archive:{}", archive.display()),
            "--to",
            "from-archive/",
        ],
    ));
    assert!(out.contains("-> /from-archive/test/multi:1"), "{out}");
    assert_eq!(cat(&store, "from-archive/test/multi:1/hl/one"), "linked\n");
    assert!(!ls(&store, "from-archive/test/multi:1/keep").contains(" k\n"));

    // Mounted: chroot into the imported tree runs busybox from it.
    let m = mount(&store, d);
    let out = sh(Command::new("chroot").arg(m.0.join(root)).args([
        "/bin/sh",
        "-c",
        "busybox cat /etc/hello /keep/new; busybox ls /a",
    ]));
    assert_eq!(out, "hello from the base layer\nnew in the top layer\ny\n");
}

/// Two images sharing a base layer: the second import fetches only its own layer (blob GETs
/// in the registry's log) and stores little more than it (bytes in the store).
#[test]
fn shared_base_layer_is_fetched_and_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = busybox_root(d);
    // 4 MiB that does not compress.
    let noise: Vec<u8> = http_suite::random_bytes(4 << 20, 7);
    fs::write(base.join("etc/noise"), &noise).unwrap();
    let tools: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|t| {
            let p = d.join(format!("tool-{t}"));
            fs::create_dir_all(p.join("opt")).unwrap();
            fs::write(
                p.join(format!("opt/{t}")),
                http_suite::random_bytes(200 << 10, t.len() as u64 + 99 + (*t == "b") as u64),
            )
            .unwrap();
            p
        })
        .collect();
    let layout = Layout::new(d);
    layout.image("a", "amd64", &[&base, &tools[0]]);
    layout.image("b", "amd64", &[&base, &tools[1]]);
    let digests = layout.layer_digests("b");
    let reg = Registry::start(d, None);
    reg.push(&layout.0, "a", "bio/a:1", None, false);
    reg.push(&layout.0, "b", "bio/b:1", None, false);
    let store = init_store(d);
    let host = reg.host();
    let args = |r: &str| {
        vec![
            format!("docker://{host}/{r}"),
            "--to".into(),
            "images/".into(),
            "--insecure-registry".into(),
            host.clone(),
        ]
    };
    let a1 = args("bio/a:1");
    ok(import(
        &store,
        &a1.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(reg.blob_gets(&digests[0]), 1, "base fetched once");
    let before = du(&store.join("public/objects"));
    let prom = d.join("import.prom");
    let mut b1 = args("bio/b:1");
    b1.extend(["--metrics-file".into(), prom.display().to_string()]);
    let out = ok_stdout(import(
        &store,
        &b1.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        out.contains("1 layers fetched") && out.contains("1 already imported"),
        "{out}"
    );
    assert_eq!(
        reg.blob_gets(&digests[0]),
        1,
        "the base layer is not fetched again"
    );
    assert_eq!(reg.blob_gets(&digests[1]), 1, "the new layer is fetched");
    let grown = du(&store.join("public/objects")) - before;
    // The new layer's blob as the registry holds it (gzip).
    let new_layer = fs::metadata(layout.0.join("blobs/sha256").join(&digests[1][7..]))
        .unwrap()
        .len();
    // Fetched: the registry sent the new layer's compressed bytes once, the base's not
    // again (the ≤ 1.05x target of benches/import.sh, here exact).
    assert_eq!(logged_blob_bytes(&reg, &digests[1]), vec![new_layer]);
    assert_eq!(logged_blob_bytes(&reg, &digests[0]).len(), 1);
    // The metrics file says the same.
    let text = fs::read_to_string(&prom).unwrap();
    let m = |series: &str| {
        cli_run::prom_value(&text, series).unwrap_or_else(|| panic!("{series}: {text}"))
    };
    assert_eq!(
        m("depotfs_batch_items{command=\"import\",outcome=\"fetched\"}"),
        1.0
    );
    assert_eq!(
        m("depotfs_batch_items{command=\"import\",outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(m("depotfs_batch_layers_reused{command=\"import\"}"), 1.0);
    assert_eq!(
        m("depotfs_batch_downloaded_bytes{command=\"import\"}"),
        new_layer as f64
    );
    let stored = m("depotfs_batch_stored_bytes{command=\"import\"}");
    assert!(
        stored > (200 << 10) as f64 && stored <= grown as f64,
        "stored {stored}, store grew {grown}"
    );
    assert_eq!(m("depotfs_batch_exit_status{command=\"import\"}"), 0.0);
    assert!(m("depotfs_batch_last_success_timestamp_seconds{command=\"import\"}") > 1.7e9);
    // The new layer's file plus a few directory and chunk-list objects.
    assert!(
        grown < new_layer + (64 << 10),
        "store grew {grown} bytes for a {new_layer}-byte layer"
    );
    let bytes = |p: &str| ok(depotfs(&["cat".as_ref(), store.as_os_str(), p.as_ref()])).stdout;
    assert_eq!(
        bytes("images/bio/b:1/opt/b"),
        fs::read(tools[1].join("opt/b")).unwrap()
    );
    assert_eq!(bytes("images/bio/b:1/etc/noise"), noise);
}

/// An index with two platforms: `--platform` picks the image.
#[test]
fn platform_is_picked_from_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let layout = Layout::new(d);
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let l = d.join(arch);
        fs::create_dir_all(&l).unwrap();
        fs::write(l.join("arch"), arch).unwrap();
        layout.image(arch, arch, &[&l]);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.0.join("index.json")).unwrap()).unwrap();
        let mut m = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == arch)
            .unwrap()
            .clone();
        m.as_object_mut().unwrap().remove("annotations");
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        manifests.push(m);
    }
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests
    }))
    .unwrap();
    let digest = sha256_hex(&idx);
    fs::write(layout.0.join("blobs/sha256").join(&digest), &idx).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.0.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{digest}"),
        "size": idx.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }));
    fs::write(
        layout.0.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let reg = Registry::start(d, None);
    reg.push(&layout.0, "multi", "test/multi:2", None, true);
    let store = init_store(d);
    let host = reg.host();
    let r = format!("docker://{host}/test/multi:2");
    ok(import(
        &store,
        &[&r, "--to", "amd/", "--insecure-registry", &host],
    ));
    ok(import(
        &store,
        &[
            &r,
            "--to",
            "arm/",
            "--platform",
            "linux/arm64",
            "--insecure-registry",
            &host,
        ],
    ));
    assert_eq!(cat(&store, "amd/test/multi:2/arch"), "amd64");
    assert_eq!(cat(&store, "arm/test/multi:2/arch"), "arm64");
    let out = import(
        &store,
        &[
            &r,
            "--to",
            "x/",
            "--platform",
            "linux/s390x",
            "--insecure-registry",
            &host,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let e = fails(out);
    assert!(
        stdout.contains("no image for platform linux/s390x") && stdout.contains("linux/arm64"),
        "{stdout}{e}"
    );
}

fn sha256_hex(b: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// htpasswd basic auth: refused without credentials, imported with an --auth-file; a blob
/// altered on the registry's disk is refused by digest and nothing of it is published; a
/// failing image in a --from-list run is reported and skipped while the others publish.
#[test]
fn basic_auth_altered_blob_and_failing_image_in_a_list() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let htpasswd = d.join("htpasswd");
    sh(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["alice", "s3cret"]));
    let base = busybox_root(d);
    let layout = Layout::new(d);
    layout.image("1", "amd64", &[&base]);
    let other = d.join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("f"), "other image\n").unwrap();
    layout.image("2", "amd64", &[&other]);
    let reg = Registry::start(d, Some(&htpasswd));
    reg.push(&layout.0, "1", "priv/bb:1", Some("alice:s3cret"), false);
    reg.push(&layout.0, "2", "priv/other:1", Some("alice:s3cret"), false);
    let store = init_store(d);
    let host = reg.host();
    let r1 = format!("docker://{host}/priv/bb:1");
    let out = import(
        &store,
        &[&r1, "--to", "images/", "--insecure-registry", &host],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("401") && text.contains("--auth-file"),
        "{text}"
    );
    let auth = d.join("config.json");
    fs::write(
        &auth,
        format!(r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let a = auth.to_str().unwrap();
    ok(import(
        &store,
        &[
            &r1,
            "--to",
            "images/",
            "--insecure-registry",
            &host,
            "--auth-file",
            a,
        ],
    ));
    assert_eq!(
        cat(&store, "images/priv/bb:1/etc/hello"),
        "hello from the base layer\n"
    );

    // Alter one byte of priv/other's layer blob on the registry's disk.
    let digest = &layout.layer_digests("2")[0];
    let data = reg
        .root
        .join("docker/registry/v2/blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..])
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let list = d.join("list.txt");
    fs::write(
        &list,
        format!("# images\ndocker://{host}/priv/other:1\n\ndocker://{host}/priv/bb:1\n"),
    )
    .unwrap();
    let out = import(
        &store,
        &[
            "--from-list",
            list.to_str().unwrap(),
            "--jobs",
            "2",
            "--to",
            "again/",
            "--insecure-registry",
            &host,
            "--auth-file",
            a,
            "--metrics-file",
            d.join("list.prom").to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    let prom = fs::read_to_string(d.join("list.prom")).unwrap();
    for (series, v) in [
        (
            "depotfs_batch_items{command=\"import\",outcome=\"fetched\"}",
            1.0,
        ),
        (
            "depotfs_batch_items{command=\"import\",outcome=\"failed\"}",
            1.0,
        ),
        ("depotfs_batch_exit_status{command=\"import\"}", 1.0),
    ] {
        assert_eq!(
            cli_run::prom_value(&prom, series),
            Some(v),
            "{series}: {prom}"
        );
    }
    assert!(!prom.contains("last_success"), "never succeeded: {prom}");
    assert!(text.contains("1 images imported, 1 failed"), "{text}");
    assert!(
        text.contains(&format!("FAILED docker://{host}/priv/other:1")) && text.contains("mismatch"),
        "{text}"
    );
    assert!(text.contains("published revision"), "{text}");
    let again = ls(&store, "again/priv");
    assert!(
        again.contains("bb:1") && !again.contains("other"),
        "{again}"
    );
}

/// `--format sif`: a SIF file per image, listed by siftool on the mount, its squashfs
/// partition mounted by squashfuse runs busybox, and Galaxy's resolver finds it by name.
#[test]
fn sif_image_is_listed_mounted_run_and_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = busybox_root(d);
    let layout = Layout::new(d);
    layout.image("1", "amd64", &[&base]);
    let reg = Registry::start(d, None);
    reg.push(
        &layout.0,
        "1",
        "biocontainers/samtools:1.9--h10a08f8_12",
        None,
        false,
    );
    let store = init_store(d);
    let host = reg.host();
    let out = ok_stdout(import(
        &store,
        &[
            &format!("docker://{host}/biocontainers/samtools:1.9--h10a08f8_12"),
            "--to",
            "images/all/",
            "--format",
            "sif",
            "--insecure-registry",
            &host,
        ],
    ));
    assert!(
        out.contains("-> /images/all/samtools:1.9--h10a08f8_12"),
        "{out}"
    );
    let m = mount(&store, d);
    let sif = m.0.join("images/all/samtools:1.9--h10a08f8_12");
    let list = sh(Command::new("siftool").arg("list").arg(&sif));
    assert!(
        list.contains("FS") && list.contains("Squashfs") && list.contains("amd64"),
        "{list}"
    );
    // The partition's offset from the descriptor table, then squashfuse on it.
    let info = sh(Command::new("siftool").args(["info", "1"]).arg(&sif));
    let offset: u64 = info
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Offset:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{info}"));
    let sq = d.join("sq");
    fs::create_dir_all(&sq).unwrap();
    sh(Command::new("squashfuse")
        .arg("-o")
        .arg(format!("offset={offset}"))
        .arg(&sif)
        .arg(&sq));
    struct Fuse(PathBuf);
    impl Drop for Fuse {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        }
    }
    let _sq = Fuse(sq.clone());
    let out = sh(Command::new("chroot")
        .arg(&sq)
        .args(["/bin/sh", "-c", "busybox cat /etc/hello"]));
    assert_eq!(out, "hello from the base layer\n");
    // Galaxy's resolver (tests/galaxy.rs set-up) finds it in all/.
    let venv = std::env::var_os("GALAXY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/galaxy-venv"));
    let all = m.0.join("images/all");
    let out = sh(Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/galaxy/on_mount.py"))
        .args(["resolve", "--dir", all.to_str().unwrap(), "samtools=1.9"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["resolved"]["samtools=1.9"], sif.to_str().unwrap(), "{v}");
}

/// Hostile layers through a real registry: a path escaping with `..` and an entry written
/// through a symlink to a directory outside are refused naming the layer and the entry, and
/// nothing appears outside; a device node is skipped with a warning and a setuid bit
/// stripped, the rest imported.
#[test]
fn hostile_layers_from_the_registry_are_refused_or_neutralised() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let outside = d.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let layout = Layout::new(d);
    let craft = |name: &str, script: &str| layout.crafted(name, script);
    let out_s = outside.display().to_string();
    craft(
        "dotdot",
        &format!("f('ok'); f('../../../../../..{out_s}/dotdot')"),
    );
    craft(
        "through",
        &format!("l('escape', '{out_s}'); f('escape/through')"),
    );
    craft(
        "neutral",
        "f('bin/suid', b'#!', 0o6755)\ni = tarfile.TarInfo('dev/sda'); i.type = tarfile.BLKTYPE; i.devmajor = 8; t.addfile(i)\nf('etc/ok', b'fine')",
    );
    let reg = Registry::start(d, None);
    for n in ["dotdot", "through", "neutral"] {
        reg.push(&layout.0, n, &format!("evil/{n}:1"), None, false);
    }
    let store = init_store(d);
    let host = reg.host();
    let r = |n: &str| format!("docker://{host}/evil/{n}:1");
    let out = import(
        &store,
        &[
            &r("dotdot"),
            &r("through"),
            &r("neutral"),
            "--to",
            "images/",
            "--insecure-registry",
            &host,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = fails(out);
    let dotdot = layout.layer_digests("dotdot")[0].clone();
    let through = layout.layer_digests("through")[0].clone();
    assert!(
        stdout.contains(&format!(
            "layer {dotdot}: entry \"../../../../../..{out_s}/dotdot\": path contains '..'"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("layer {through}: entry \"escape/through\": written through the symlink escape -> {out_s}")), "{stdout}");
    assert!(stdout.contains("1 images imported, 2 failed"), "{stdout}");
    assert!(stderr.contains("\"dev/sda\": skipped"), "{stderr}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    let listing = ls(&store, "images/evil");
    assert!(
        listing.contains("neutral:1")
            && !listing.contains("dotdot")
            && !listing.contains("through"),
        "{listing}"
    );
    assert!(
        ls(&store, "images/evil/neutral:1/bin").contains("-0755"),
        "setuid/setgid stripped"
    );
    assert!(
        !ls(&store, "images/evil/neutral:1").contains("dev"),
        "device skipped"
    );
    assert_eq!(cat(&store, "images/evil/neutral:1/etc/ok"), "fine");
}

/// Sizes of the responses to blob GETs of `digest` in a registry log (combined log format:
/// `"GET /v2/…/blobs/DIGEST HTTP/1.1" STATUS BYTES …`).
fn logged_blob_bytes(reg: &Registry, digest: &str) -> Vec<u64> {
    let mut text = fs::read_to_string(&reg.log).unwrap_or_default();
    text += &fs::read_to_string(reg.log.with_file_name("registry.err")).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
        .filter_map(|l| {
            let after = l.split(" HTTP/1.1\" ").nth(1)?;
            after.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

/// base64 of `b`, standard or URL-safe without padding (JWT).
fn base64(b: &[u8], url: bool) -> String {
    let abc: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            out.push_str(&"=".repeat(3 - c.len()));
        }
    }
    out
}

/// What the token issuer answers.
#[derive(Clone, Copy, PartialEq)]
enum Issue {
    /// A token for the scope asked, valid five minutes.
    Valid,
    /// A token that expired an hour ago (beyond the registry's 60 s leeway).
    Expired,
    /// 401: no token for you.
    Refuse,
}

/// The stand-in for a registry's authorization server (Docker Hub's auth.docker.io,
/// quay.io's /v2/auth): no token server ships in Debian, so the test runs this one on
/// 127.0.0.1. It answers `GET /token?scope=…&service=…` with `{"token": JWT}`, a JWT signed
/// RS256 with a key made here by `openssl`, whose self-signed certificate travels in the
/// header's `x5c` and is the registry's `rootcertbundle`. The registry stays the real
/// `docker-registry`: it issues the challenge and checks each token itself (signature,
/// certificate chain, issuer, audience, expiry, access), so a token this issuer got wrong
/// would fail the test. Counts the token requests.
struct TokenIssuer {
    port: u16,
    cert: PathBuf,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    mode: std::sync::Arc<std::sync::Mutex<Issue>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const ISSUER: &str = "depotfs-test-issuer";
const SERVICE: &str = "depotfs-test-registry";

impl TokenIssuer {
    fn start(dir: &Path) -> TokenIssuer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let key = dir.join("issuer.key");
        let cert = dir.join("issuer.crt");
        sh(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=depotfs-test-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()));
        // A PEM body is the base64 of the DER certificate: what x5c holds.
        let x5c: String = fs::read_to_string(&cert)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = TokenIssuer {
            port,
            cert,
            requests: Default::default(),
            mode: std::sync::Arc::new(std::sync::Mutex::new(Issue::Valid)),
            stop: Default::default(),
        };
        let (requests, mode, stop) = (t.requests.clone(), t.mode.clone(), t.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
                let target = line.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map(|q| q.1).unwrap_or("");
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        // A form value: `+` is a space.
                        .map(|v| percent_decode(&v.replace('+', " ")))
                        .unwrap_or_default()
                };
                // scope = repository:NAME:ACTIONS
                let scope = param("scope");
                let mut parts = scope.splitn(3, ':');
                let (typ, name, actions) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let m = *mode.lock().unwrap();
                let (status, body) = if m == Issue::Refuse {
                    (
                        "401 Unauthorized",
                        r#"{"details":"access denied"}"#.to_string(),
                    )
                } else {
                    let exp = if m == Issue::Expired {
                        now - 3600
                    } else {
                        now + 300
                    };
                    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                    let claims = serde_json::json!({
                        "iss": ISSUER, "sub": "", "aud": param("service"),
                        "exp": exp, "nbf": exp - 600, "iat": exp - 600, "jti": format!("t{now}"),
                        "access": [{"type": typ, "name": name,
                                    "actions": actions.split(',').collect::<Vec<_>>()}],
                    });
                    let input = format!(
                        "{}.{}",
                        base64(header.to_string().as_bytes(), true),
                        base64(claims.to_string().as_bytes(), true)
                    );
                    let mut c = Command::new("openssl")
                        .args(["dgst", "-sha256", "-sign"])
                        .arg(&key)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                    let sig = c.wait_with_output().unwrap().stdout;
                    let token = format!("{input}.{}", base64(&sig, true));
                    (
                        "200 OK",
                        serde_json::json!({"token": token, "expires_in": 300}).to_string(),
                    )
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        t
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The registry's `auth:` section trusting this issuer.
    fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn issue(&self, m: Issue) {
        *self.mode.lock().unwrap() = m;
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The anonymous bearer-token flow public registries use, against the real registry with
/// `auth: token`: the registry answers 401 with a Bearer challenge, the import gets a token
/// from the realm and pulls with it, once per image (one token request for the manifest,
/// config and both layer blobs); an expired token and a refusal by the issuer fail the
/// image with an error naming the registry's or the issuer's answer.
#[test]
fn bearer_token_flow_against_a_token_auth_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = busybox_root(d);
    let top = d.join("top");
    fs::create_dir_all(top.join("opt")).unwrap();
    fs::write(top.join("opt/tool"), "a tool\n").unwrap();
    let layout = Layout::new(d);
    layout.image("1", "amd64", &[&base, &top]);
    let digests = layout.layer_digests("1");
    // Filled while open, then restarted on the same storage with token auth.
    let reg = Registry::start(d, None);
    reg.push(&layout.0, "1", "pub/tool:1", None, false);
    drop(reg);
    let issuer = TokenIssuer::start(d);
    let reg = Registry::start_with(d, &issuer.registry_auth());
    let host = reg.host();

    // The registry itself demands a token.
    let resp = http_suite::raw(
        format!("127.0.0.1:{}", reg.port).parse().unwrap(),
        "GET",
        "/v2/pub/tool/manifests/1",
        &[],
    );
    assert_eq!(resp.status, 401);
    let challenge = resp.expect_header("www-authenticate");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", issuer.realm()))
            && challenge.contains("scope=\"repository:pub/tool:pull\""),
        "{challenge}"
    );

    let store = init_store(d);
    let r = format!("docker://{host}/pub/tool:1");
    let out = ok_stdout(import(
        &store,
        &[&r, "--to", "images/", "--insecure-registry", &host],
    ));
    assert!(out.contains("1 images imported, 0 failed"), "{out}");
    assert_eq!(cat(&store, "images/pub/tool:1/opt/tool"), "a tool\n");
    assert_eq!(issuer.requests(), 1, "one token for the whole image");
    for l in &digests {
        assert_eq!(
            logged_blob_bytes(&reg, l).len(),
            1,
            "layer {l} fetched once, with the token"
        );
    }

    // A token the registry finds expired: refused, named as such; nothing staged.
    issuer.issue(Issue::Expired);
    let out = import(
        &store,
        &[&r, "--to", "expired/", "--insecure-registry", &host],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = fails(out);
    assert!(
        text.contains(&format!(
            "FAILED {r}: {host}/pub/tool/manifests/1: 401 unauthorized: the registry refused the token from {}",
            issuer.realm()
        )),
        "{text}{err}"
    );
    assert_eq!(issuer.requests(), 2);

    // The issuer refuses: its answer is the error.
    issuer.issue(Issue::Refuse);
    let out = import(
        &store,
        &[&r, "--to", "refused/", "--insecure-registry", &host],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = fails(out);
    assert!(
        text.contains(&format!("token from {}: HTTP 401", issuer.realm())),
        "{text}{err}"
    );
    let top = ls(&store, "");
    assert!(
        !top.contains("expired") && !top.contains("refused"),
        "{top}"
    );
}

/// A blob whose length is not its descriptor's size is refused before it is read: one grown
/// by 256 MiB on the registry's disk fails at once (the registry's log shows it was not sent
/// whole), one cut short too; the manifest's other images import.
#[test]
fn blob_lengths_are_held_to_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let layout = Layout::new(d);
    for n in ["long", "short", "fine"] {
        let l = d.join(n);
        fs::create_dir_all(&l).unwrap();
        fs::write(
            l.join("f"),
            http_suite::random_bytes(100_000, n.as_bytes()[0] as u64),
        )
        .unwrap();
        layout.image(n, "amd64", &[&l]);
    }
    let reg = Registry::start(d, None);
    for n in ["long", "short", "fine"] {
        reg.push(&layout.0, n, &format!("len/{n}:1"), None, false);
    }
    let data = |n: &str| {
        let digest = &layout.layer_digests(n)[0];
        let p = reg
            .root
            .join("docker/registry/v2/blobs/sha256")
            .join(&digest[7..9])
            .join(&digest[7..])
            .join("data");
        (digest.clone(), p)
    };
    let (long, long_data) = data("long");
    let size = fs::metadata(&long_data).unwrap().len();
    // Sparse: 256 MiB more without writing them.
    fs::File::options()
        .write(true)
        .open(&long_data)
        .unwrap()
        .set_len(size + (256 << 20))
        .unwrap();
    let (_, short_data) = data("short");
    let short_size = fs::metadata(&short_data).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&short_data)
        .unwrap()
        .set_len(short_size - 10)
        .unwrap();
    let store = init_store(d);
    let host = reg.host();
    let r = |n: &str| format!("docker://{host}/len/{n}:1");
    let out = import(
        &store,
        &[
            &r("long"),
            &r("short"),
            &r("fine"),
            "--to",
            "images/",
            "--insecure-registry",
            &host,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = fails(out);
    assert!(
        text.contains(&format!(
            "FAILED {}: {host}/len/long/blobs/{long}: the registry sends {} bytes, the manifest's descriptor gives {size}; refused",
            r("long"),
            size + (256 << 20)
        )),
        "{text}{err}"
    );
    assert!(
        text.contains(&format!(
            "the registry sends {} bytes, the manifest's descriptor gives {short_size}; refused",
            short_size - 10
        )),
        "{text}"
    );
    assert!(text.contains("1 images imported, 2 failed"), "{text}");
    let sent: u64 = logged_blob_bytes(&reg, &long).iter().sum();
    assert!(
        sent < 64 << 20,
        "the registry sent {sent} bytes of the long blob"
    );
    let listing = ls(&store, "images/len");
    assert!(
        listing.contains("fine:1") && !listing.contains("long") && !listing.contains("short"),
        "{listing}"
    );
}

/// What a hostile image gets from tar metadata and image names, through the real registry
/// and from OCI layouts: a path deeper than 256 directories and an 8 MiB GNU long name are
/// refused (the long name after its first MiB, not read whole); a layout's `ref.name`
/// annotation that is not a tag is refused, one that is a whole reference gives its tag; two
/// references that land on one path import once; a layer recorded from a good image does not
/// vouch for a config whose diff_id the tar does not have.
#[test]
fn tar_metadata_names_and_recorded_layers_are_held_to_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let layout = Layout::new(d);
    let craft = |name: &str, script: &str| layout.crafted(name, script);
    craft("deep", "f('/'.join(['d'] * 300) + '/f')");
    craft("longname", "f('a' * (8 << 20))");
    craft("fine", "f('etc/fine', b'fine')");
    let reg = Registry::start(d, None);
    for n in ["deep", "longname", "fine"] {
        reg.push(&layout.0, n, &format!("meta/{n}:1"), None, false);
    }
    // The same image under the layout's own name: `oci:LAYOUT:fine` lands there too.
    reg.push(&layout.0, "fine", "layout:fine", None, false);
    let store = init_store(d);
    let host = reg.host();
    let r = |n: &str| format!("docker://{host}/meta/{n}:1");
    let oci_fine = format!("oci:{}:fine", layout.0.display());
    let reg_fine = format!("docker://{host}/layout:fine");
    let out = import(
        &store,
        &[
            &r("deep"),
            &r("longname"),
            &r("fine"),
            &oci_fine,
            &reg_fine,
            &oci_fine, // given twice: imported once
            "--to",
            "images/",
            "--insecure-registry",
            &host,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = fails(out);
    let deep = layout.layer_digests("deep")[0].clone();
    let longname = layout.layer_digests("longname")[0].clone();
    assert!(
        stdout.contains(&format!("layer {deep}: entry \"d/d/d"))
            && stdout.contains("... (601 bytes)\": path of 301 components, more than 256"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "layer {longname}: bad tar entry: more than 1048576 bytes of tar headers (long names, PAX records) for one entry; refused"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "FAILED {reg_fine}: lands at /images/layout:fine, as {oci_fine} does; refused"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 images imported, 3 failed"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(cat(&store, "images/layout:fine/etc/fine"), "fine");
    assert_eq!(cat(&store, "images/meta/fine:1/etc/fine"), "fine");

    // A layout of one image whose name annotation says where to put it.
    let one = |dir: &str, name: &str| {
        let p = d.join(dir);
        sh(Command::new("cp").arg("-a").arg(&layout.0).arg(&p));
        let path = p.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let fine = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "fine")
            .unwrap()
            .clone();
        let mut entry = fine;
        entry["annotations"]["org.opencontainers.image.ref.name"] = name.into();
        index["manifests"] = serde_json::json!([entry]);
        fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
        format!("oci:{}", p.display())
    };
    let graft = one("graft", "fine/etc");
    let whole = one("whole", "docker.io/library/whole:3.19");
    let out = import(&store, &[&graft, &whole, "--to", "images/"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    fails(out);
    assert!(
        stdout.contains(&format!("FAILED {graft}: "))
            && stdout
                .contains("annotation \"fine/etc\" is not a valid tag; name one with oci:DIR:TAG"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("imported {whole} -> /images/whole:3.19")),
        "{stdout}"
    );

    // A config that claims another diff_id for the fine layer's blob.
    let blob = |digest: &str| layout.0.join("blobs/sha256").join(&digest[7..]);
    let index_path = layout.0.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let mut entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "fine")
        .unwrap()
        .clone();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let lie = format!("sha256:{}", "0".repeat(64));
    config["rootfs"]["diff_ids"][0] = lie.clone().into();
    let put = |bytes: Vec<u8>| {
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len())
    };
    let (cd, cl) = put(serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cl.into();
    let (md, ml) = put(serde_json::to_vec(&manifest).unwrap());
    entry["digest"] = md.into();
    entry["size"] = ml.into();
    entry["annotations"]["org.opencontainers.image.ref.name"] = "liar".into();
    index["manifests"].as_array_mut().unwrap().push(entry);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    // The fine layer is recorded already (imported above): the liar is refused all the same.
    let liar = format!("oci:{}:liar", layout.0.display());
    let out = import(&store, &[&liar, "--to", "images/"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    fails(out);
    assert!(
        stdout.contains(&format!(
            "diff_id mismatch: the config says {lie}, the tar has sha256:"
        )),
        "{stdout}"
    );
    assert!(!ls(&store, "images").contains("layout:liar"));
}

/// A registry that answers and then sends nothing more fails the import after `--timeout`
/// seconds of silence, naming what it asked for, instead of hanging.
#[test]
fn a_stalled_registry_fails_the_import_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = init_store(tmp.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        use std::io::{Read, Write};
                        c.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n\r\n{",
                        );
                        held.push(c); // and nothing more
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let reference = format!("docker://{host}/stalled/image:1");
    let t = std::time::Instant::now();
    let out = import(
        &store,
        &[
            &reference,
            "--to",
            "images/",
            "--insecure-registry",
            &host,
            "--timeout",
            "1",
        ],
    );
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    fails(out);
    assert!(
        stdout.contains(&format!(
            "FAILED {reference}: {host}/stalled/image/manifests/1: "
        )),
        "{stdout}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A registry whose first transfer of a layer blob breaks halfway: the import asks for the
/// rest with `Range`, gets it, and the image is whole (the digest is checked over every
/// byte). The registry is a few lines of std::net serving one image.
#[test]
fn a_broken_blob_transfer_is_resumed_with_range() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = d.join("root");
    fs::create_dir_all(root.join("data")).unwrap();
    let content = http_suite::random_bytes(3 << 20, 77);
    fs::write(root.join("data/blob"), &content).unwrap();
    let tar = d.join("layer.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("data"));
    let layer = fs::read(&tar).unwrap();
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let cut = layer.len() / 2;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let ranges = ranges.clone();
        let (layer, layer_digest) = (layer.clone(), layer_digest.clone());
        std::thread::spawn(move || {
            let mut layer_gets = 0;
            for mut c in listener.incoming().flatten() {
                let Some(head) = http_suite::read_request_head(&mut c) else {
                    continue;
                };
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let range = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: ")
                        .map(str::to_string)
                });
                let ok = |c: &mut std::net::TcpStream, body: &[u8], ct: &str| {
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body);
                };
                if path == "/v2/x/y/manifests/1" {
                    ok(
                        &mut c,
                        &manifest,
                        "application/vnd.oci.image.manifest.v1+json",
                    );
                } else if path == format!("/v2/x/y/blobs/{config_digest}") {
                    ok(&mut c, &config, "application/octet-stream");
                } else if path == format!("/v2/x/y/blobs/{layer_digest}") {
                    match range {
                        Some(r) => {
                            ranges.lock().unwrap().push(r.clone());
                            let from: usize = r
                                .trim_start_matches("bytes=")
                                .trim_end_matches('-')
                                .parse()
                                .unwrap();
                            let _ = write!(
                                c,
                                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                layer.len() - 1,
                                layer.len(),
                                layer.len() - from
                            );
                            let _ = c.write_all(&layer[from..]);
                        }
                        None => {
                            layer_gets += 1;
                            let _ = write!(
                                c,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                layer.len()
                            );
                            // The first transfer breaks halfway.
                            let upto = if layer_gets == 1 { cut } else { layer.len() };
                            let _ = c.write_all(&layer[..upto]);
                            let _ = c.flush();
                            let _ = c.shutdown(std::net::Shutdown::Both);
                        }
                    }
                } else {
                    let _ = c.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        });
    }
    let store = init_store(d);
    let reference = format!("docker://{host}/x/y:1");
    let out = import(
        &store,
        &[&reference, "--to", "images/", "--insecure-registry", &host],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert_eq!(*ranges.lock().unwrap(), vec![format!("bytes={cut}-")]);
    assert!(
        stderr.contains(&format!("asking for the rest from byte {cut}")),
        "{stderr}"
    );
    let got = ok(depotfs(&[
        "cat".as_ref(),
        store.as_os_str(),
        "images/x/y:1/data/blob".as_ref(),
    ]))
    .stdout;
    assert!(got == content, "the resumed image differs");
}
