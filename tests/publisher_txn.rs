//! Publisher transactions through the real binary: `depotfs status STORE` shows what is
//! staged (beside a running `add`), an `add` killed with SIGKILL after staging leaves changes
//! that `add`, `rm` and `publish` name and refuse until `publish --include-interrupted` or
//! `abort`; `--no-publish` staging on purpose is not interrupted.

mod cli_run;
mod http_suite;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_run::{BIN, fails, ok_stdout, poll, run};

fn status(store: &Path) -> String {
    ok_stdout(run(&[&"status", &store]))
}

/// `n` bytes from /dev/urandom into `path`: incompressible, never deduplicated.
fn random_file(path: &Path, n: u64) {
    let mut src = fs::File::open("/dev/urandom").unwrap().take(n);
    let mut dst = fs::File::create(path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
}

/// A store with revision 1 (`base.img`), and a large tree `src/` (dirs and 256 MiB of
/// random files) whose ingest takes long enough to be killed in the middle.
fn setup(t: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = t.join("store");
    ok_stdout(run(&[&"init", &store, &"--name", &"txn.test"]));
    let base = t.join("base.img");
    fs::write(&base, b"base").unwrap();
    ok_stdout(run(&[&"add", &store, &base]));
    let src = t.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..8 {
        random_file(&src.join("sub").join(format!("big{i}.img")), 32 << 20);
    }
    (store, src)
}

/// Start `depotfs add STORE --to big SRC`, wait until `status STORE` shows it staging
/// (in progress), then SIGKILL it.
fn kill_add_after_staging(store: &Path, src: &Path) {
    let mut child = Command::new(BIN)
        .args([
            "add".as_ref(),
            store.as_os_str(),
            "--to".as_ref(),
            "big".as_ref(),
        ])
        .arg(src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(
        Duration::from_secs(60),
        "status STORE showing the add in progress",
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the add finished before it could be killed"
            );
            status(store).contains("state:       in progress")
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killed_add_is_named_and_refused_until_abort() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = setup(t.path());
    // Staged on purpose first: not interrupted.
    let keep = t.path().join("keep.img");
    fs::write(&keep, b"kept on purpose").unwrap();
    ok_stdout(run(&[&"add", &store, &keep, &"--no-publish"]));
    let st = status(&store);
    assert!(st.contains("staged on purpose"), "{st}");
    assert!(st.contains("A /keep.img  15 bytes"), "{st}");

    kill_add_after_staging(&store, &src);
    let st = status(&store);
    assert!(st.contains("publisher:     none at work"), "{st}");
    assert!(st.contains("INTERRUPTED"), "{st}");
    assert!(st.contains("A /big/src/sub"), "{st}");
    assert!(st.contains("by `depotfs add "), "{st}");

    // add, rm and publish name the interrupted changes and refuse.
    let other = t.path().join("other.img");
    fs::write(&other, b"other").unwrap();
    for args in [
        vec![&"add" as &dyn AsRef<std::ffi::OsStr>, &store, &other],
        vec![&"rm", &store, &"base.img"],
        vec![&"publish", &store],
    ] {
        let err = fails(run(&args));
        assert!(err.contains("interrupted run"), "{err}");
        assert!(err.contains("/big/src/sub"), "{err}");
        assert!(err.contains("--include-interrupted"), "{err}");
        assert!(err.contains("depotfs abort"), "{err}");
    }
    assert!(!ok_stdout(run(&[&"log", &store])).contains("\n     2 "));

    // abort discards everything staged; gc then removes the killed run's objects.
    let out = ok_stdout(run(&[&"abort", &store]));
    assert!(out.contains("discarded by `depotfs add"), "{out}");
    let st = status(&store);
    assert!(st.contains("staged:        nothing"), "{st}");
    let gc = ok_stdout(run(&[&"gc", &store]));
    assert!(!gc.starts_with("removed 0 objects"), "{gc}");
    assert!(ok_stdout(run(&[&"verify", &store])).starts_with("ok:"));
    // The tree is revision 1's: a publish now has nothing to do.
    let out = ok_stdout(run(&[&"publish", &store]));
    assert!(out.contains("nothing staged"), "{out}");
    let ls = ok_stdout(run(&[&"ls", &store]));
    assert!(ls.contains("base.img") && !ls.contains("big") && !ls.contains("keep"));
    // And work goes on.
    ok_stdout(run(&[&"add", &store, &other]));
    assert!(ok_stdout(run(&[&"ls", &store])).contains("other.img"));
}

#[test]
fn killed_add_is_published_as_it_is_on_request() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = setup(t.path());
    kill_add_after_staging(&store, &src);
    let out = ok_stdout(run(&[&"publish", &store, &"--include-interrupted"]));
    assert!(out.contains("published revision 2"), "{out}");
    assert!(status(&store).contains("staged:        nothing"));
    // What the killed run had staged is published: at least its directories.
    assert!(ok_stdout(run(&[&"ls", &store, &"big/src"])).contains("sub"));
    assert!(ok_stdout(run(&[&"verify", &store])).starts_with("ok:"));
    // Running the add again completes it.
    ok_stdout(run(&[&"add", &store, &"--to", &"big", &src]));
    let ls = ok_stdout(run(&[&"ls", &store, &"big/src/sub"]));
    assert_eq!(ls.lines().count(), 8, "{ls}");
}

#[test]
fn status_lists_added_changed_removed_and_no_publish_is_published_by_the_next_add() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    ok_stdout(run(&[&"init", &store, &"--name", &"txn.test"]));
    let d = t.path().join("d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("a.img"), b"aaaa").unwrap();
    fs::write(d.join("b.img"), b"bbbbbb").unwrap();
    ok_stdout(run(&[&"add", &store, &d]));
    assert!(status(&store).contains("staged:        nothing"));

    fs::write(d.join("a.img"), b"changed a").unwrap();
    ok_stdout(run(&[
        &"add",
        &store,
        &d.join("a.img"),
        &"--to",
        &"d",
        &"--no-publish",
    ]));
    ok_stdout(run(&[&"rm", &store, &"d/b.img", &"--no-publish"]));
    let c = t.path().join("c.img");
    fs::write(&c, b"new").unwrap();
    ok_stdout(run(&[&"add", &store, &c, &"--no-publish"]));
    let st = status(&store);
    assert!(st.contains("C /d/a.img  9 bytes"), "{st}");
    assert!(st.contains("R /d/b.img  6 bytes"), "{st}");
    assert!(st.contains("A /c.img  3 bytes"), "{st}");
    assert_eq!(st.matches("staged on purpose").count(), 3, "{st}");
    assert!(!st.contains("INTERRUPTED"), "{st}");
    // Added then removed before publishing: nothing left to publish for it.
    ok_stdout(run(&[&"rm", &store, &"c.img", &"--no-publish"]));
    assert!(!status(&store).contains("/c.img"));

    // A publishing add is not refused by on-purpose staging: it publishes it too.
    let e = t.path().join("e.img");
    fs::write(&e, b"e").unwrap();
    let out = ok_stdout(run(&[&"add", &store, &e]));
    assert!(out.contains("published revision 2"), "{out}");
    assert!(status(&store).contains("staged:        nothing"));
    let ls = ok_stdout(run(&[&"ls", &store, &"d"]));
    assert!(ls.contains("a.img") && !ls.contains("b.img"), "{ls}");
    assert_eq!(ok_stdout(run(&[&"cat", &store, &"d/a.img"])), "changed a");
}
