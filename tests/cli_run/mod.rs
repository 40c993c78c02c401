//! Running the built `depotfs` binary from tests, and the real parts around it (`depotfs
//! serve`, mounts, extended attributes): shared by the test files that `mod cli_run;` (with
//! `mod http_suite;`, whose `free_port` it uses).

#![allow(dead_code)] // each test binary uses a different part

use std::ffi::OsStr;
use std::process::{Command, Output};

use super::http_suite::free_port;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_depotfs");

/// Run `depotfs ARGS...` to completion.
pub fn depotfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running depotfs")
}

/// Run `depotfs ARGS...` with arguments of mixed types (`&str`, paths).
pub fn run(args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut c = Command::new(BIN);
    for a in args {
        c.arg(a);
    }
    c.output().expect("running depotfs")
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

/// `depotfs init STORE --name NAME`: a new store, which must succeed.
pub fn init_store(store: &std::path::Path, name: &str) {
    ok(depotfs(&[
        OsStr::new("init"),
        store.as_os_str(),
        OsStr::new("--name"),
        OsStr::new(name),
    ]));
}

/// `depotfs add STORE SRC`: publish the image directory `src` (named after it), which must
/// succeed.
pub fn add(store: &std::path::Path, src: &std::path::Path) {
    ok(depotfs(&[
        OsStr::new("add"),
        store.as_os_str(),
        src.as_os_str(),
    ]));
}

/// A store `DIR/store` named `name`, publishing one image: `img/app.sif` with `data`
/// (written under `DIR/src`). Returns the store's path.
pub fn one_image_store(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let src = dir.join("src/img");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.sif"), data).unwrap();
    let store = dir.join("store");
    init_store(&store, name);
    add(&store, &src);
    store
}

#[allow(unused_imports)] // not every test binary polls through this module
pub use super::http_suite::poll;

/// A server process listening on 127.0.0.1:`port` (`depotfs serve`, nginx, a test's own),
/// continued if stopped, killed and reaped when dropped.
pub struct Served {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl Served {
    /// `depotfs serve STORE` on a free port; returns once it accepts connections.
    pub fn start(store: &std::path::Path) -> Served {
        Served::start_on(store, free_port())
    }

    /// Start serving `store` on `port` (e.g. again, after a `Served` on it was dropped).
    pub fn start_on(store: &std::path::Path, port: u16) -> Served {
        let child = Command::new(BIN)
            .arg("serve")
            .arg(store)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting depotfs serve");
        Served::listening(child, port)
    }

    /// `child`, a server that is to listen on 127.0.0.1:`port`, once it does (a child that
    /// exits first fails the test).
    pub fn listening(child: std::process::Child, port: u16) -> Served {
        Served::listening_logged(child, port, None)
    }

    /// [`Served::listening`], naming the server's `log` file if it exits first.
    pub fn listening_logged(
        child: std::process::Child,
        port: u16,
        log: Option<&std::path::Path>,
    ) -> Served {
        let mut s = Served { child, port };
        let child = &mut s.child;
        super::http_suite::wait_listening(([127, 0, 0, 1], port).into(), || {
            match child.try_wait() {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{other:?}: {}",
                    log.and_then(|l| std::fs::read_to_string(l).ok())
                        .unwrap_or_default()
                )),
            }
        });
        s
    }

    /// nginx as one process (`master_process off`: a signal reaches all of it) serving
    /// `site` (a `server { … }` listening on 127.0.0.1:`port`), its files in `work`.
    pub fn nginx(work: &std::path::Path, port: u16, site: &str) -> Served {
        use super::http_suite::{nginx_required, spawn_nginx};
        std::fs::create_dir_all(work).expect("making the nginx directory");
        std::fs::write(work.join("site.conf"), site).expect("writing site.conf");
        let main = "daemon off;\nmaster_process off;\nuser root root;";
        Served::listening(spawn_nginx(&nginx_required(), work, main, ""), port)
    }

    /// The URL of the served `public/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send signal `sig` (`STOP`, `TERM`, …) to the server process.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.pid())])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill -{sig}");
    }

    /// Its exit status, once it exits within `within`; `None` if it is still running.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the server") {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kill and reap the server now (continued first, if it was stopped).
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -CONT {} 2>/dev/null", self.pid())])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A background `depotfs mount BEFORE… MP AFTER… --metrics-listen 127.0.0.1:PORT`,
/// unmounted when dropped: what the test files' own mount wrappers share (each adds the
/// methods only its file needs).
pub struct Mount {
    /// The mountpoint.
    pub mp: std::path::PathBuf,
    /// The port of the mount's `/metrics`.
    pub metrics: u16,
    _unmount: Mounted,
}

impl Mount {
    /// Mount at `mp` (made if missing) with `before` (the source, or nothing when `after`
    /// names `--server`s) and `after` (options); the command must succeed.
    pub fn start<B: AsRef<OsStr>, A: AsRef<OsStr>>(
        before: &[B],
        mp: &std::path::Path,
        after: &[A],
    ) -> Mount {
        std::fs::create_dir_all(mp).expect("making the mountpoint");
        let metrics = free_port();
        let out = Command::new(BIN)
            .arg("mount")
            .args(before)
            .arg(mp)
            .args(after)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics}"))
            .output()
            .expect("running depotfs mount");
        let m = Mount {
            mp: mp.to_path_buf(),
            metrics,
            _unmount: Mounted(mp.to_path_buf()),
        };
        ok(out);
        m
    }

    /// `rel` under the mountpoint.
    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.mp.join(rel)
    }

    /// The mount's status attribute `user.depotfs.NAME` (of the mountpoint).
    pub fn xattr(&self, name: &str) -> String {
        xattr(&self.mp, &format!("user.depotfs.{name}"))
    }

    /// `depotfs status MP`.
    pub fn status(&self) -> String {
        ok_stdout(run(&[&"status", &self.mp]))
    }

    /// The log file of a background mount whose cache directory is `cache`.
    pub fn log_file(&self, cache: &std::path::Path) -> std::path::PathBuf {
        let tag: String = self
            .mp
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        cache.join("logs").join(format!("mount{tag}.log"))
    }
}

/// A mountpoint unmounted (`depotfs umount`, else `umount -l`) when dropped.
pub struct Mounted(pub std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if !depotfs(&[OsStr::new("umount"), self.0.as_os_str()])
            .status
            .success()
        {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Extended attribute `name` of `path`, through Python's `os.getxattr` (no xattr crate
/// here); `Err` holds Python's error text (with the errno).
pub fn try_xattr(path: &std::path::Path, name: &str) -> Result<String, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2]))",
        ])
        .arg(path)
        .arg(name)
        .output()
        .expect("running python3");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("UTF-8 attribute"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Extended attribute `name` of `path`, which must exist.
pub fn xattr(path: &std::path::Path, name: &str) -> String {
    try_xattr(path, name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()))
}

/// `GET PATH` from 127.0.0.1:PORT over a plain socket: the whole response, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("sending a request");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("reading the response");
    out
}

/// The value of `series` (a metric name with its labels as the Prometheus text format
/// writes them, e.g. `depotfs_batch_items{command="sync",outcome="fetched"}`) in `text`.
pub fn prom_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `%XX` escapes of a URL path or query value decoded (a `+` stays a `+`); a `%` not
/// followed by two hex digits is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && s.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
