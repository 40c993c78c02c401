//! A hostile mirror for tests: a real HTTP/1.1 server on 127.0.0.1 that serves a store's
//! `public/` directory (plus crafted files put over it) and alters its answers by rule —
//! bodies too long, too short or endless, drip-fed, connections reset, error statuses per
//! path. Shared by `tests/hostile.rs` and the soak test (`mod hostile_server;`).
//!
//! One thread per connection, one request per connection (`Connection: close`), so a rule
//! changed between two requests applies to the second at once.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers a request whose path matches a rule.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, with an empty body.
    Status(u16),
    /// The right bytes and length, one byte per `every`.
    Drip(Duration),
    /// The right Content-Length, then only the first `n` bytes, then the connection closes.
    Truncate(usize),
    /// The right bytes followed by `n` more (zeros), with a Content-Length that says so.
    Pad(usize),
    /// 200 and zeros without a length, until the client hangs up or `n` bytes went out.
    Endless(u64),
    /// The connection is closed (RST) without an answer.
    Reset,
    /// These bytes instead of the file's.
    Body(Vec<u8>),
    /// These bytes instead of the file's, spread evenly over this long.
    SlowBody(Vec<u8>, Duration),
}

#[derive(Default)]
struct State {
    /// (path prefix relative to `public/`, answer), first match wins.
    rules: Vec<(String, Answer)>,
    /// Files served instead of (or besides) those in `public/`.
    overlay: HashMap<String, Vec<u8>>,
    /// Requests by path.
    requests: HashMap<String, u64>,
}

/// The running server; stops accepting when dropped.
pub struct Hostile {
    /// Its port on 127.0.0.1.
    pub port: u16,
    public: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// Body bytes written by `Endless` and `Pad` answers (what a client let through).
    pub sent_garbage: Arc<AtomicU64>,
}

impl Hostile {
    /// Serve `public` (a store's `public/` directory) on a free port.
    pub fn start(public: &Path) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let h = Hostile {
            port,
            public: public.to_path_buf(),
            state: Arc::default(),
            stop: Arc::default(),
            sent_garbage: Arc::default(),
        };
        let (public, state, stop, garbage) = (
            h.public.clone(),
            h.state.clone(),
            h.stop.clone(),
            h.sent_garbage.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (public, state, stop, garbage) =
                            (public.clone(), state.clone(), stop.clone(), garbage.clone());
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = serve(c, &public, &state, &stop, &garbage);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        h
    }

    /// The URL of the served `public/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Answer requests for paths starting with `prefix` (relative to `public/`, e.g.
    /// `manifest` or `objects/ab/cd…`) with `answer`, before older rules.
    pub fn rule(&self, prefix: &str, answer: Answer) {
        let mut s = self.state.lock().unwrap();
        s.rules.retain(|(p, _)| p != prefix);
        s.rules.insert(0, (prefix.to_string(), answer));
    }

    /// Drop every rule: answer honestly again.
    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Serve `bytes` at `rel` (relative to `public/`), over whatever the store has.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .overlay
            .insert(rel.to_string(), bytes);
    }

    /// Requests made for paths starting with `prefix`.
    pub fn requests(&self, prefix: &str) -> u64 {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    c: TcpStream,
    public: &Path,
    state: &Mutex<State>,
    stop: &AtomicBool,
    garbage: &AtomicU64,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let rel = target.trim_start_matches('/').to_string();
    let (answer, overlay) = {
        let mut s = state.lock().unwrap();
        *s.requests.entry(rel.clone()).or_default() += 1;
        let answer = s
            .rules
            .iter()
            .find(|(p, _)| rel.starts_with(p.as_str()))
            .map(|(_, a)| a.clone());
        (answer, s.overlay.get(&rel).cloned())
    };
    let mut c = c;
    let file = || -> Option<Vec<u8>> {
        if let Some(b) = overlay.clone() {
            return Some(b);
        }
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return None;
        }
        std::fs::read(public.join(&rel)).ok()
    };
    let head = |c: &mut TcpStream, status: u16, len: Option<u64>| -> std::io::Result<()> {
        let reason = if status == 200 { "OK" } else { "Hostile" };
        let mut h = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
        if let Some(l) = len {
            h.push_str(&format!("Content-Length: {l}\r\n"));
        }
        h.push_str("\r\n");
        c.write_all(h.as_bytes())
    };
    let body_too = method != "HEAD";
    match answer {
        Some(Answer::Status(s)) => head(&mut c, s, Some(0))?,
        // Closed without an answer: "connection closed before message completed".
        Some(Answer::Reset) => return c.shutdown(std::net::Shutdown::Both),
        Some(Answer::Body(b)) => {
            head(&mut c, 200, Some(b.len() as u64))?;
            c.write_all(&b)?;
        }
        Some(Answer::SlowBody(b, over)) => {
            head(&mut c, 200, Some(b.len() as u64))?;
            let every = over / b.len().max(1) as u32;
            for byte in b {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                c.write_all(&[byte])?;
                std::thread::sleep(every);
            }
        }
        other => {
            let Some(b) = file() else {
                return head(&mut c, 404, Some(0));
            };
            match other {
                Some(Answer::Drip(every)) => {
                    head(&mut c, 200, Some(b.len() as u64))?;
                    for byte in b {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        c.write_all(&[byte])?;
                        std::thread::sleep(every);
                    }
                }
                Some(Answer::Truncate(n)) => {
                    head(&mut c, 200, Some(b.len() as u64))?;
                    c.write_all(&b[..n.min(b.len())])?;
                }
                Some(Answer::Pad(n)) => {
                    head(&mut c, 200, Some((b.len() + n) as u64))?;
                    c.write_all(&b)?;
                    zeros(&mut c, n as u64, stop, garbage)?;
                }
                Some(Answer::Endless(n)) => {
                    head(&mut c, 200, None)?;
                    zeros(&mut c, n, stop, garbage)?;
                }
                _ => {
                    head(&mut c, 200, Some(b.len() as u64))?;
                    if body_too {
                        c.write_all(&b)?;
                    }
                }
            }
        }
    }
    c.flush()?;
    let _ = c.shutdown(std::net::Shutdown::Write);
    // Let the client read everything before the socket closes.
    let mut sink = [0u8; 1024];
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// Write up to `n` zero bytes, counting them, until the client hangs up.
fn zeros(c: &mut TcpStream, n: u64, stop: &AtomicBool, sent: &AtomicU64) -> std::io::Result<()> {
    let block = vec![0u8; 64 << 10];
    let mut left = n;
    while left > 0 && !stop.load(Ordering::Relaxed) {
        let k = left.min(block.len() as u64) as usize;
        c.write_all(&block[..k])?;
        sent.fetch_add(k as u64, Ordering::Relaxed);
        left -= k as u64;
    }
    Ok(())
}
