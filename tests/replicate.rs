//! `depotfs replicate` against a real `depotfs serve` source: a mirror holds exactly the
//! objects of the revisions it replicated, byte for byte; a second run fetches only what is
//! new (counted by the report and by the source's own `/metrics`); nginx with the shipped
//! `deploy/nginx/depotfs.conf` serves the mirror to a real FUSE mount made by the shipped
//! mount(8) helper `deploy/autofs/mount.depotfs`; corrupt, missing,
//! wrongly signed and replayed sources are refused with the mirror unchanged; `kill -9`
//! mid-run leaves the previous revision served and every present object complete below.
//!
//! Also checks the shipped systemd units with `systemd-analyze verify` where it is installed.
//!
//! Needs nginx, /dev/fuse and root (as tests/fuse_mount.rs).

mod cli_run;
mod http_suite;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli_run::{BIN, Served, add, depotfs, fails, init_store, ok_stdout as ok};
use depotfs_catalog::dir::{DirNode, NODE_MAX_BYTES};
use depotfs_catalog::object::{self, ObjectKind};
use depotfs_catalog::{ChunkList, EntryKind, FileContent, Manifest, ObjectId, PublicKey};
use http_suite::{free_port, random_bytes};

/// Send `sig` to one process (the shell builtin, so procps is not needed).
fn signal(sig: &str, pid: u32) {
    let st = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// nginx, one process, with the shipped site config serving `root`.
fn nginx(root: &Path, work: &Path) -> Served {
    let port = free_port();
    Served::nginx(work, port, &http_suite::shipped_site(port, root))
}

/// Successful object GETs a `depotfs serve` source has answered, from its `/metrics`.
fn object_gets(source: &Served) -> u64 {
    let text = reqwest::blocking::get(format!("{}metrics", source.url()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("depotfs_serve_requests_total{")
                && l.contains("kind=\"object\"")
                && l.contains("method=\"GET\"")
                && l.contains("status=\"200\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A source store with a published tree, a mirror directory, and the sources of the tree.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let s = Setup {
            dir: tempfile::tempdir().unwrap(),
        };
        init_store(&s.store(), "mirror.test.org");
        s
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn public(&self) -> PathBuf {
        self.store().join("public")
    }
    fn key(&self) -> PathBuf {
        self.public().join("repo.pub")
    }
    fn mirror(&self) -> PathBuf {
        self.path().join("mirror")
    }

    /// Write image `name` (a tree of `files` small files, more than one directory node's
    /// worth, a multi-chunk file and a copy of a shared one) and publish it.
    fn add_image(&self, name: &str, files: usize, seed: u64) -> PathBuf {
        let src = self.path().join("src").join(name);
        fs::create_dir_all(src.join("bin")).unwrap();
        for i in 0..files {
            fs::write(
                src.join(format!("bin/tool-{i:04}")),
                format!("{name} tool {i}\n"),
            )
            .unwrap();
        }
        fs::write(src.join("rootfs.img"), random_bytes(3 << 20, seed)).unwrap();
        fs::write(src.join("shared.img"), random_bytes(2 << 20, 99)).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("bin/tool-0000", src.join("link")).unwrap();
        add(&self.store(), &src);
        src
    }

    fn replicate(&self, url: &str, extra: &[&str]) -> Output {
        let (mirror, key) = (self.mirror(), self.key());
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("replicate"),
            OsStr::new(url),
            mirror.as_os_str(),
            OsStr::new("--key"),
            key.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        depotfs(&args)
    }

    /// The mirror's object files are exactly `want`, each byte-identical to the source's.
    fn assert_mirror_holds_exactly(&self, want: &BTreeSet<ObjectId>) {
        assert_eq!(&object_files(&self.mirror()), want);
        for id in want {
            let rel = id.store_path();
            assert!(
                fs::read(self.public().join(&rel)).unwrap()
                    == fs::read(self.mirror().join(&rel)).unwrap(),
                "{rel} differs"
            );
        }
    }

    fn source_manifest(&self) -> Manifest {
        manifest(&self.public().join("manifest"), &self.key())
    }
}

fn manifest(path: &Path, key: &Path) -> Manifest {
    let key = PublicKey::from_text(&fs::read_to_string(key).unwrap()).unwrap();
    Manifest::parse_verified(&fs::read(path).unwrap(), &key, None).unwrap()
}

/// `fetched K objects` from a report line, checking its revision.
fn fetched(report: &str, revision: u64) -> u64 {
    let rest = report
        .strip_prefix(&format!("revision {revision}: fetched "))
        .unwrap_or_else(|| panic!("unexpected report {report:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// Every object reachable from `id` (of `kind`) in the `public/`-like directory `dir`, each
/// read and verified; panics naming an object that is missing or bad.
fn reachable(dir: &Path, id: ObjectId, kind: ObjectKind, out: &mut BTreeSet<ObjectId>) {
    if !out.insert(id) {
        return;
    }
    let path = dir.join(id.store_path());
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v = object::decode(id, kind, &bytes, NODE_MAX_BYTES)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match kind {
        ObjectKind::Chunk => {}
        ObjectKind::ChunkList => {
            for c in ChunkList::from_verified(&v).unwrap().chunks {
                reachable(dir, c.id, ObjectKind::Chunk, out);
            }
        }
        ObjectKind::DirNode => match DirNode::from_verified(&v).unwrap() {
            DirNode::Index(cs) => {
                for c in cs {
                    reachable(dir, c.id, ObjectKind::DirNode, out);
                }
            }
            DirNode::Leaf(es) => {
                for e in es {
                    match e.kind {
                        EntryKind::Dir { tree, .. } => {
                            reachable(dir, tree, ObjectKind::DirNode, out)
                        }
                        EntryKind::File {
                            content: FileContent::Single(c),
                            ..
                        } => reachable(dir, c, ObjectKind::Chunk, out),
                        EntryKind::File {
                            content: FileContent::Chunked(l),
                            ..
                        } => reachable(dir, l, ObjectKind::ChunkList, out),
                        _ => {}
                    }
                }
            }
        },
    }
}

fn tree_of(dir: &Path, root: ObjectId) -> BTreeSet<ObjectId> {
    let mut out = BTreeSet::new();
    reachable(dir, root, ObjectKind::DirNode, &mut out);
    out
}

/// The object files of a `public/`-like directory.
fn object_files(dir: &Path) -> BTreeSet<ObjectId> {
    let mut out = BTreeSet::new();
    for sub in fs::read_dir(dir.join("objects")).unwrap() {
        let sub = sub.unwrap();
        let prefix = sub.file_name().into_string().unwrap();
        for f in fs::read_dir(sub.path()).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            out.insert(format!("{prefix}{name}").parse().unwrap());
        }
    }
    out
}

/// Every file below `src` reads the same below `mnt`; returns how many were compared.
fn compare(src: &Path, mnt: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (s, m) = (e.path(), mnt.join(e.file_name()));
        let t = e.file_type().unwrap();
        if t.is_dir() {
            n += compare(&s, &m);
        } else if t.is_symlink() {
            assert_eq!(fs::read_link(&s).unwrap(), fs::read_link(&m).unwrap());
        } else {
            assert!(
                fs::read(&s).unwrap() == fs::read(&m).unwrap(),
                "{} differs",
                m.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn mirror_is_exact_incremental_and_mountable() {
    let s = Setup::new();
    let img1 = s.add_image("img1", 400, 1);
    let source = Served::start(&s.store());
    let m1 = s.source_manifest();
    assert_eq!(m1.revision, 1);

    let report = ok(s.replicate(&source.url(), &[]));
    let want1 = tree_of(&s.public(), m1.root);
    assert_eq!(fetched(&report, 1), want1.len() as u64, "{report}");
    s.assert_mirror_holds_exactly(&want1);
    for f in ["manifest", "repo.pub"] {
        assert_eq!(
            fs::read(s.public().join(f)).unwrap(),
            fs::read(s.mirror().join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(object_gets(&source), want1.len() as u64);

    // Nothing new: nothing fetched, no object requested.
    let report = ok(s.replicate(&source.url(), &[]));
    assert_eq!(fetched(&report, 1), 0, "{report}");
    assert!(report.contains(", 1 already present"), "{report}");
    assert_eq!(object_gets(&source), want1.len() as u64);

    // A second image: only its new objects travel (its shared.img chunks do not).
    let img2 = s.add_image("img2", 300, 2);
    let m2 = s.source_manifest();
    let want2 = tree_of(&s.public(), m2.root);
    let new: BTreeSet<_> = want2.difference(&want1).copied().collect();
    assert!(new.len() < want2.len() && new.len() > 300);
    let before = object_gets(&source);
    let report = ok(s.replicate(&source.url(), &["--jobs", "3"]));
    assert_eq!(fetched(&report, 2), new.len() as u64, "{report}");
    assert_eq!(object_gets(&source) - before, new.len() as u64);
    assert_eq!(
        object_files(&s.mirror()),
        want1.union(&want2).copied().collect()
    );
    assert_eq!(
        fs::read(s.public().join("manifest")).unwrap(),
        fs::read(s.mirror().join("manifest")).unwrap()
    );
    // --full descends into everything present and verifies it, fetching nothing.
    let report = ok(s.replicate(&source.url(), &["--full"]));
    assert_eq!(fetched(&report, 2), 0, "{report}");
    assert!(
        report.contains(&format!(", {} already present", want2.len())),
        "{report}"
    );

    // nginx with the shipped config serves the mirror; a real mount reads it.
    let web = nginx(&s.mirror(), &s.path().join("nginx"));
    let mnt = s.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let cache = s.path().join("cache");
    // Mounted through the mount(8) helper autofs uses (deploy/autofs/mount.depotfs).
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/autofs/mount.depotfs");
    let opts = format!(
        "key={},cache_dir={},nosuid,nodev",
        s.key().display(),
        cache.display()
    );
    let out = Command::new(helper)
        .env("DEPOTFS", BIN)
        .arg(web.url())
        .arg(&mnt)
        .args(["-n", "-o", &opts])
        .output()
        .unwrap();
    ok(out);
    let compared = std::panic::catch_unwind(|| {
        compare(&img1, &mnt.join("img1")) + compare(&img2, &mnt.join("img2"))
    });
    let _ = depotfs(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert_eq!(
        compared.expect("mounted mirror matches the sources"),
        2 * 3 + 700
    );
}

/// A source behind a rate limit (nginx's `limit_req`, answering 503 past it, as a CDN or an
/// overloaded proxy does) fails some requests transiently: each is retried with backoff, the
/// report counts exactly the 503s nginx logged, and the mirror is complete and exact.
#[test]
fn a_rate_limited_source_is_retried_and_the_mirror_completes() {
    let s = Setup::new();
    s.add_image("img1", 40, 3);
    let m = s.source_manifest();
    let want = tree_of(&s.public(), m.root);
    assert!(want.len() > 40, "{} objects", want.len());

    let port = free_port();
    let limited = format!(
        "limit_req_zone $server_port zone=replicate_test:1m rate=50r/s;\n\
         limit_req zone=replicate_test burst=3 nodelay;\n\
         limit_req_status 503;\n{}",
        http_suite::shipped_site(port, &s.public())
    );
    let work = s.path().join("nginx");
    let web = Served::nginx(&work, port, &limited);

    let report = ok(s.replicate(&web.url(), &[]));
    let refused = fs::read_to_string(work.join("access.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\" 503 "))
        .count();
    assert!(refused > 0, "the rate limit never answered 503: {report}");
    assert!(
        report
            .trim_end()
            .ends_with(&format!("; {refused} requests retried")),
        "nginx answered 503 {refused} times: {report}"
    );
    assert_eq!(fetched(&report, 1), want.len() as u64, "{report}");
    s.assert_mirror_holds_exactly(&want);
    assert_eq!(
        fs::read(s.public().join("manifest")).unwrap(),
        fs::read(s.mirror().join("manifest")).unwrap()
    );
}

#[test]
fn bad_sources_are_refused_and_the_mirror_is_unchanged() {
    let s = Setup::new();
    s.add_image("img1", 50, 1);
    let source = Served::start(&s.store());
    let url = source.url();
    ok(s.replicate(&url, &[]));
    let mirrored1 = fs::read(s.mirror().join("manifest")).unwrap();
    let old_source_manifest = fs::read(s.public().join("manifest")).unwrap();
    let objects1 = object_files(&s.mirror());

    s.add_image("img2", 50, 2);
    let m2 = s.source_manifest();
    // The new multi-chunk file's chunks: leaves of the walk.
    let new: Vec<ObjectId> = tree_of(&s.public(), m2.root)
        .difference(&objects1)
        .copied()
        .filter(|id| {
            let b = fs::read(s.public().join(id.store_path())).unwrap();
            object::peek_header(*id, &b).unwrap().0 == ObjectKind::Chunk && b.len() > 100_000
        })
        .collect();
    assert!(new.len() >= 2);
    let unchanged = |what: &str| {
        assert_eq!(
            fs::read(s.mirror().join("manifest")).unwrap(),
            mirrored1,
            "mirror manifest changed after {what}"
        );
    };

    // A corrupt object: named, refused.
    let victim = s.public().join(new[0].store_path());
    let good = fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&victim, &bad).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(err.contains(&new[0].to_hex()), "{err}");
    assert!(
        !s.mirror().join(new[0].store_path()).exists(),
        "a corrupt object was written"
    );
    unchanged("a corrupt object");
    fs::write(&victim, &good).unwrap();

    // A missing object: the URL and the status are named. The one refused above, which is
    // known not to be in the mirror (the others may have been fetched before that run
    // failed, and are rightly kept).
    let gone = s.public().join(new[0].store_path());
    fs::rename(&gone, s.path().join("gone")).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(
        err.contains(&format!("{url}{}", new[0].store_path())) && err.contains("404"),
        "{err}"
    );
    unchanged("a missing object");
    fs::rename(s.path().join("gone"), &gone).unwrap();

    // The wrong key.
    let other = s.path().join("other");
    init_store(&other, "mirror.test.org");
    let other_key = other.join("public/repo.pub");
    let err = fails(depotfs(&[
        OsStr::new("replicate"),
        OsStr::new(&url),
        s.mirror().as_os_str(),
        OsStr::new("--key"),
        other_key.as_os_str(),
    ]));
    assert!(err.contains("signature"), "{err}");
    unchanged("the wrong key");

    // The wrong repository name.
    let err = fails(s.replicate(&url, &["--name", "other.org"]));
    assert!(err.contains("\"other.org\""), "{err}");
    unchanged("the wrong name");

    // Repaired: the run completes.
    let report = ok(s.replicate(&url, &[]));
    assert!(report.starts_with("revision 2: "), "{report}");
    let mirrored2 = fs::read(s.mirror().join("manifest")).unwrap();

    // A replayed older manifest on the source is refused.
    fs::write(s.public().join("manifest"), &old_source_manifest).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(
        err.contains("revision 1 is older than the mirror's revision 2"),
        "{err}"
    );
    assert_eq!(fs::read(s.mirror().join("manifest")).unwrap(), mirrored2);
}

/// `bytes` (an encoded zstd object) with a zstd skippable frame of `pad` zero bytes ahead of
/// its payload: the same plaintext, so the same hash.
fn padded(bytes: &[u8], pad: usize) -> Vec<u8> {
    let mut b = bytes[..object::HEADER_LEN].to_vec();
    b.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    b.extend_from_slice(&(pad as u32).to_le_bytes());
    b.resize(b.len() + pad, 0);
    b.extend_from_slice(&bytes[object::HEADER_LEN..]);
    b
}

/// A source can pad what it serves without changing what it hashes to: a zstd object with a
/// skippable frame, the manifest with whitespace after its signature. Clients cut both (a
/// body longer than header and plaintext, a manifest over 64 KiB), so a mirror must not keep
/// them: both are refused, the mirror is unchanged, and `--full` replaces a padded copy
/// already in a mirror.
#[test]
fn padded_objects_and_manifests_are_refused_and_full_replaces_a_padded_copy() {
    let s = Setup::new();
    s.add_image("img1", 50, 1);
    let source = Served::start(&s.store());
    let url = source.url();
    let m = s.source_manifest();
    let zstd: Vec<ObjectId> = tree_of(&s.public(), m.root)
        .into_iter()
        .filter(|id| {
            let b = fs::read(s.public().join(id.store_path())).unwrap();
            object::peek_header(*id, &b).unwrap().1 == object::Codec::Zstd
        })
        .collect();
    let victim = *zstd.first().expect("a compressed object in the tree");
    let path = s.public().join(victim.store_path());
    let good = fs::read(&path).unwrap();
    let plain = object::peek_header(victim, &good).unwrap().2 as usize;
    let padding = plain - (good.len() - object::HEADER_LEN);

    // A padded object: named, refused, not written; no manifest on the new mirror.
    fs::write(&path, padded(&good, padding)).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(
        err.contains(&victim.to_hex()) && err.contains("zstd payload of"),
        "{err}"
    );
    assert_eq!(
        err.matches("zstd payload of").count(),
        1,
        "the reason is said once: {err}"
    );
    assert!(!s.mirror().join(victim.store_path()).exists());
    assert!(!s.mirror().join("manifest").exists());
    fs::write(&path, &good).unwrap();

    // A manifest with anything after its signature's newline, or longer than 64 KiB.
    let manifest = s.public().join("manifest");
    let signed = fs::read(&manifest).unwrap();
    let mut extra = signed.clone();
    extra.extend_from_slice(b"\n\n");
    fs::write(&manifest, &extra).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(err.contains("128 hex digits"), "{err}");
    extra.resize(100_000, b' ');
    fs::write(&manifest, &extra).unwrap();
    let err = fails(s.replicate(&url, &[]));
    assert!(err.contains("longer than the 65536 it may have"), "{err}");
    assert!(!s.mirror().join("manifest").exists());
    fs::write(&manifest, &signed).unwrap();

    // Honest again: the mirror completes. A padded copy left in it (by an older depotfs)
    // is found by --full and replaced by the source's.
    ok(s.replicate(&url, &[]));
    let mirrored = s.mirror().join(victim.store_path());
    fs::write(&mirrored, padded(&good, padding + 1000)).unwrap();
    let report = ok(s.replicate(&url, &["--full"]));
    assert!(report.contains("fetched 1 objects"), "{report}");
    assert!(fs::read(&mirrored).unwrap() == good);
    assert_eq!(fs::read(s.mirror().join("manifest")).unwrap(), signed);
}

#[test]
fn kill9_mid_run_keeps_the_old_revision_and_a_rerun_completes() {
    let s = Setup::new();
    s.add_image("img1", 20, 1);
    let source = Served::start(&s.store());
    ok(s.replicate(&source.url(), &[]));
    let m1 = manifest(&s.mirror().join("manifest"), &s.key());
    let mirrored1 = fs::read(s.mirror().join("manifest")).unwrap();
    let have1 = object_files(&s.mirror()).len();

    s.add_image("img2", 3000, 2);
    let m2 = s.source_manifest();
    let want2 = tree_of(&s.public(), m2.root);
    let mut child = Command::new(BIN)
        .arg("replicate")
        .arg(source.url())
        .arg(s.mirror())
        .arg("--key")
        .arg(s.key())
        .args(["--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has written some objects, freeze the source so the run cannot
    // finish, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while object_files(&s.mirror()).len() < have1 + 50 {
        assert!(child.try_wait().unwrap().is_none(), "replicate ended early");
        assert!(Instant::now() < deadline, "replicate wrote nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    source.signal("STOP");
    signal("KILL", child.id());
    let st = child.wait().unwrap();
    source.signal("CONT");
    assert_eq!(st.signal(), Some(9), "killed mid-run: {st:?}");

    // The mirror still serves revision 1, complete; it has part of revision 2, and every
    // object it has is complete below (children are written first).
    assert_eq!(fs::read(s.mirror().join("manifest")).unwrap(), mirrored1);
    assert!(tree_of(&s.mirror(), m1.root).len() <= have1);
    let partial = object_files(&s.mirror());
    assert!(!want2.is_subset(&partial), "the run was not cut short");
    for id in &partial {
        let b = fs::read(s.mirror().join(id.store_path())).unwrap();
        let (kind, _, _) = object::peek_header(*id, &b).unwrap();
        reachable(&s.mirror(), *id, kind, &mut BTreeSet::new());
    }

    // The rerun completes from where the killed one stopped.
    let report = ok(s.replicate(&source.url(), &[]));
    let done: BTreeSet<_> = want2.difference(&partial).copied().collect();
    assert_eq!(fetched(&report, 2), done.len() as u64, "{report}");
    assert_eq!(tree_of(&s.mirror(), m2.root), want2);
    assert_eq!(
        fs::read(s.public().join("manifest")).unwrap(),
        fs::read(s.mirror().join("manifest")).unwrap()
    );
    assert_eq!(
        fs::read_dir(s.mirror().join(".depotfs-replicate/tmp"))
            .unwrap()
            .count(),
        0,
        "temporary files left behind"
    );
}

/// The shipped systemd units pass `systemd-analyze verify` (as instances of the templates);
/// the only complaint allowed is that `/usr/local/bin/depotfs` is not installed here.
#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let mut units = Vec::new();
    for u in [
        "depotfs-replicate@.service",
        "depotfs-replicate@.timer",
        "depotfs-mount@.service",
    ] {
        let inst = dir.path().join(u.replace("@.", "@test."));
        fs::copy(src.join(u), &inst).unwrap();
        units.push(inst);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let missing_binary = "Command /usr/local/bin/depotfs is not executable";
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(missing_binary))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify:\n{text}");
}
