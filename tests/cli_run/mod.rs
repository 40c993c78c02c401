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

pub use super::http_suite::poll;

/// `depotfs serve STORE --listen 127.0.0.1:PORT`, killed when dropped.
pub struct Served {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl Served {
    /// Start serving `store` on a free port; returns once it accepts connections.
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
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting depotfs serve");
        poll(
            std::time::Duration::from_secs(10),
            "depotfs serve listening",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Served { child, port }
    }

    /// The URL of the served `public/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
