//! The depot view's socket copy measured in isolation (issue #14, warm download vs nginx):
//! one published file of a store, read object by object into memory, each object's plaintext
//! hashed (blake3) against its name, then sent over loopback TCP to `curl -o /dev/null`, in
//! several ways, taking turns. Prints, per way, the server's CPU seconds per GiB (this
//! process: user + system of all its threads, `getrusage`), curl's, and curl's throughput.
//!
//! Ways (`--ways`, comma-separated):
//! - `write`: the depot view's path today — each object `pread` into a fresh heap buffer,
//!   verified there, and the buffer written to the socket (`write`: a copy into socket
//!   buffers).
//! - `vmsplice`: each group's objects `pread` into a fresh private anonymous mapping, verified
//!   there, the verified plaintext's pages given to a pipe with `vmsplice` and the pipe
//!   `splice`d to the socket (no copy into the socket: its buffers hold the pages), then the
//!   mapping unmapped. The mapping is never written after its pages went to the pipe (it is
//!   unmapped instead), so the socket can only ever send the bytes that were verified. Costs a
//!   fresh, zeroed page for every 4 KiB sent (a page fault each, or one `MAP_POPULATE`).
//! - `vmsplice-populate`: `vmsplice` with the mapping made by `MAP_POPULATE` (one call faults
//!   all its pages in).
//! - `vmsplice-huge`: `vmsplice` with a 2 MiB-aligned mapping advised `MADV_HUGEPAGE` (one
//!   fault and one zeroing of a 2 MiB page instead of 512 faults; THP is `madvise` here).
//! - `sendfile`: `--plain FILE` (the same bytes as a plain file) sent with `sendfile`, nothing
//!   verified: nginx's path, for reference.
//!
//! Groups of about `--group` bytes of objects are read and verified on `--threads` threads,
//! `--ahead` groups in flight, and sent in order by the main thread, like the depot view.
//!
//! `cargo run --release -p depotfs-publisher --example depot_send -- --store STORE
//!  --path all/big:1.0--0 --plain FILE [--ways write,vmsplice,sendfile] [--reps 5]
//!  [--group 1048576] [--ahead 3] [--threads 2] [--sndbuf BYTES] [--pipe 1048576]`

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use depotfs_catalog::object::{self, Codec, HEADER_LEN, ObjectKind};
use depotfs_catalog::{ChunkRef, EntryKind, ObjectId};
use depotfs_publisher::reader::LocalTree;
use depotfs_publisher::store::{Layout, Objects};

const GIB: f64 = (1u64 << 30) as f64;
const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Write,
    Vmsplice,
    VmsplicePopulate,
    VmspliceHuge,
    Sendfile,
}

impl Way {
    fn parse(s: &str) -> anyhow::Result<Way> {
        Ok(match s {
            "write" => Way::Write,
            "vmsplice" => Way::Vmsplice,
            "vmsplice-populate" => Way::VmsplicePopulate,
            "vmsplice-huge" => Way::VmspliceHuge,
            "sendfile" => Way::Sendfile,
            _ => bail!("--ways: unknown way {s:?}"),
        })
    }
    fn name(self) -> &'static str {
        match self {
            Way::Write => "write",
            Way::Vmsplice => "vmsplice",
            Way::VmsplicePopulate => "vmsplice-populate",
            Way::VmspliceHuge => "vmsplice-huge",
            Way::Sendfile => "sendfile",
        }
    }
}

/// A private anonymous mapping, owned: unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Bytes skipped at the start (to a 2 MiB boundary for `vmsplice-huge`; `< len`).
    skip: usize,
}

// SAFETY: a `Mapping` is plain memory owned by one value; moving it to another thread moves
// the only handle to it.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize, way: Way) -> anyhow::Result<Mapping> {
        let (len, flags) = match way {
            Way::VmsplicePopulate => (
                len.next_multiple_of(PAGE),
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            ),
            // Over-allocate by one huge page to align the start to 2 MiB below.
            Way::VmspliceHuge => (
                len.next_multiple_of(HUGE) + HUGE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            ),
            _ => (
                len.next_multiple_of(PAGE),
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            ),
        };
        // SAFETY: a new anonymous mapping at an address the kernel chooses aliases no memory
        // of this program; the result is checked before use.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        let ptr: *mut u8 = ptr.cast();
        let skip = if way == Way::VmspliceHuge {
            // The mapping is one huge page longer than needed: the boundary is inside it.
            ptr.align_offset(HUGE)
        } else {
            0
        };
        let m = Mapping { ptr, len, skip };
        if way == Way::VmspliceHuge {
            // SAFETY: advice on a range of our own mapping; it changes no content.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(m.ptr.cast(), len, libc::MADV_HUGEPAGE);
            }
        }
        Ok(m)
    }

    /// The usable memory (2 MiB-aligned for `vmsplice-huge`).
    fn bytes(&mut self) -> &mut [u8] {
        let skip = self.skip;
        // SAFETY: `ptr..ptr+len` is our mapping, readable and writable, and `&mut self`
        // makes this the only reference to it; `skip < len`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(skip), self.len - skip)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, to which no reference outlives `self`. Pages the
        // kernel took from it (vmsplice) keep their own references and are freed when the
        // socket is done with them; they are never mapped again by us.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A group's verified bytes, in order.
enum Group {
    /// One heap buffer per object; each `(buffer, plaintext range)`.
    Heap(Vec<(Vec<u8>, std::ops::Range<usize>)>),
    /// One mapping; the plaintext ranges in it.
    Mapped(Mapping, Vec<std::ops::Range<usize>>),
}

/// Verify one raw chunk object in `buf[..n]` as `piece`: its plaintext's range in `buf`.
fn verify(piece: &ChunkRef, buf: &[u8]) -> anyhow::Result<std::ops::Range<usize>> {
    let (kind, codec, len) = object::peek_header(piece.id, buf)?;
    if kind != ObjectKind::Chunk || codec != Codec::Raw || len != u64::from(piece.len) {
        bail!(
            "object {}: not a raw chunk of {} bytes",
            piece.id,
            piece.len
        );
    }
    let data = &buf[HEADER_LEN..];
    if data.len() != piece.len as usize || ObjectId::of_kind(ObjectKind::Chunk, data) != piece.id {
        bail!("object {}: does not hash to its name", piece.id);
    }
    Ok(HEADER_LEN..buf.len())
}

/// `pread` a whole object into `buf`, which has room for it and one byte more; its length.
fn read_object(path: &std::path::Path, buf: &mut [u8]) -> anyhow::Result<usize> {
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut n = 0;
    loop {
        let got = rustix::io::pread(&f, &mut buf[n..], n as u64)?;
        n += got;
        if got == 0 || n == buf.len() {
            break;
        }
    }
    if n == buf.len() {
        bail!("{}: longer than its chunk", path.display());
    }
    Ok(n)
}

fn read_group(layout: &Layout, pieces: &[ChunkRef], way: Way) -> anyhow::Result<Group> {
    if way == Way::Write {
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            // Not zeroed: read into spare capacity, as the depot view does.
            let path = layout.object(&p.id);
            let f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
            let mut buf = Vec::with_capacity(HEADER_LEN + p.len as usize + 1);
            while buf.len() < buf.capacity() {
                let (at, want) = (buf.len(), buf.capacity() - buf.len());
                let n = rustix::io::pread(&f, rustix::buffer::spare_capacity(&mut buf), at as u64)?;
                if n < want {
                    break;
                }
            }
            let r = verify(p, &buf)?;
            out.push((buf, r));
        }
        return Ok(Group::Heap(out));
    }
    let total: usize = pieces.iter().map(|p| HEADER_LEN + p.len as usize).sum();
    let mut m = Mapping::new(total + 1, way)?;
    let mut ranges = Vec::with_capacity(pieces.len());
    let mut at = 0;
    {
        let mem = m.bytes();
        for p in pieces {
            let room = HEADER_LEN + p.len as usize + 1;
            if at + room > mem.len() {
                bail!("group of {total} bytes: {at} + {room} past {}", mem.len());
            }
            let n = read_object(&layout.object(&p.id), &mut mem[at..at + room])?;
            let r = verify(p, &mem[at..at + n])?;
            ranges.push(at + r.start..at + r.end);
            at += n;
        }
    }
    Ok(Group::Mapped(m, ranges))
}

fn write_all(fd: RawFd, mut b: &[u8]) -> anyhow::Result<()> {
    while !b.is_empty() {
        // SAFETY: `b` is a live slice; `write` only reads it.
        #[allow(unsafe_code)]
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// Send a mapped group's plaintext ranges through `pipe` to `sock`, then drop the mapping.
fn splice_group(
    m: Mapping,
    ranges: &[std::ops::Range<usize>],
    pipe: (RawFd, RawFd),
    sock: RawFd,
) -> anyhow::Result<()> {
    let mut m = m;
    let start = m.bytes().as_ptr();
    for r in ranges {
        let mut off = r.start;
        while off < r.end {
            let iov = libc::iovec {
                iov_base: start.wrapping_add(off) as *mut libc::c_void,
                iov_len: r.end - off,
            };
            // SAFETY: the iovec lies inside our mapping, which stays mapped until the pipe
            // is drained below; without SPLICE_F_GIFT the pipe references the pages, and
            // nothing writes to the mapping after this call (it is only unmapped), so the
            // bytes the socket sends are the ones verified.
            #[allow(unsafe_code)]
            let n = unsafe { libc::vmsplice(pipe.1, &iov, 1, 0) };
            if n < 0 {
                bail!("vmsplice: {}", std::io::Error::last_os_error());
            }
            let mut left = n as usize;
            off += left;
            while left > 0 {
                // SAFETY: splice between two descriptors we own; no memory is passed.
                #[allow(unsafe_code)]
                let s = unsafe {
                    libc::splice(
                        pipe.0,
                        std::ptr::null_mut(),
                        sock,
                        std::ptr::null_mut(),
                        left,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                    )
                };
                if s <= 0 {
                    bail!("splice: {}", std::io::Error::last_os_error());
                }
                left -= s as usize;
            }
        }
    }
    drop(m);
    Ok(())
}

struct Pool {
    jobs: Sender<Box<dyn FnOnce() + Send>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::spawn(move || {
                loop {
                    let job = rx.lock().expect("not poisoned").recv();
                    match job {
                        Ok(j) => j(),
                        Err(_) => return,
                    }
                }
            });
        }
        Pool { jobs: tx }
    }
}

#[derive(Clone)]
struct Opts {
    label: String,
    way: Way,
    group: u64,
    ahead: usize,
    sndbuf: Option<usize>,
    pipe: usize,
}

fn cpu_self() -> f64 {
    let u = rusage(libc::RUSAGE_SELF);
    tv(u.ru_utime) + tv(u.ru_stime)
}
fn cpu_children() -> f64 {
    let u = rusage(libc::RUSAGE_CHILDREN);
    tv(u.ru_utime) + tv(u.ru_stime)
}
fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}
fn rusage(who: libc::c_int) -> libc::rusage {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrusage(who, u.as_mut_ptr());
        u.assume_init()
    }
}

fn serve_one(
    mut sock: TcpStream,
    way: Way,
    layout: &Arc<Layout>,
    pieces: &Arc<Vec<ChunkRef>>,
    plain: &std::path::Path,
    pool: &Pool,
    o: &Opts,
) -> anyhow::Result<()> {
    let mut req = Vec::new();
    let mut b = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut b)?;
        if n == 0 {
            bail!("client left");
        }
        req.extend_from_slice(&b[..n]);
    }
    let total: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
    if let Some(s) = o.sndbuf {
        let v = s as libc::c_int;
        // SAFETY: setsockopt reads one int we pass by reference.
        #[allow(unsafe_code)]
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    sock.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let fd = sock.as_raw_fd();
    if way == Way::Sendfile {
        let f = std::fs::File::open(plain)?;
        let mut left = total as usize;
        while left > 0 {
            let n = rustix::fs::sendfile(&sock, &f, None, left.min(1 << 30))?;
            if n == 0 {
                bail!("{}: shorter than the file", plain.display());
            }
            left -= n;
        }
        return Ok(());
    }
    let pipe = if way == Way::Write {
        None
    } else {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        #[allow(unsafe_code)]
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        if r != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fcntl on the pipe we just made.
        #[allow(unsafe_code)]
        unsafe {
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, o.pipe as libc::c_int);
        }
        Some((fds[0], fds[1]))
    };
    // Groups of about `group` bytes, `ahead` in flight, sent in order.
    let mut plan: VecDeque<ChunkRef> = pieces.iter().copied().collect();
    let mut inflight: VecDeque<Receiver<anyhow::Result<Group>>> = VecDeque::new();
    let result = (|| -> anyhow::Result<()> {
        loop {
            while inflight.len() < o.ahead && !plan.is_empty() {
                let mut take = Vec::new();
                let mut bytes = 0u64;
                while let Some(p) = plan.front() {
                    if !take.is_empty() && bytes >= o.group {
                        break;
                    }
                    bytes += u64::from(p.len);
                    take.push(plan.pop_front().expect("front"));
                }
                let (tx, rx): (SyncSender<_>, _) = sync_channel(1);
                let layout = Arc::clone(layout);
                pool.jobs
                    .send(Box::new(move || {
                        let _ = tx.send(read_group(&layout, &take, way));
                    }))
                    .expect("pool runs");
                inflight.push_back(rx);
            }
            let Some(next) = inflight.pop_front() else {
                return Ok(());
            };
            match next.recv()?? {
                Group::Heap(bufs) => {
                    for (buf, r) in bufs {
                        write_all(fd, &buf[r])?;
                    }
                }
                Group::Mapped(m, ranges) => {
                    splice_group(m, &ranges, pipe.expect("a pipe"), fd)?;
                }
            }
        }
    })();
    if let Some((r, w)) = pipe {
        // SAFETY: closing the pipe's two descriptors, which nothing else holds.
        #[allow(unsafe_code)]
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
    // Let the groups still in flight finish before the next download starts.
    for rx in inflight {
        let _ = rx.recv();
    }
    result
}

fn main() -> anyhow::Result<()> {
    let mut store = None;
    let mut path = String::from("all/big:1.0--0");
    let mut plain = None;
    let mut ways = String::from("write,vmsplice-huge,sendfile");
    let mut reps = 5;
    let mut threads = 2;
    let mut o = Opts {
        label: String::new(),
        way: Way::Write,
        group: 1 << 20,
        ahead: 3,
        sndbuf: None,
        pipe: 1 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--store" => store = Some(PathBuf::from(v()?)),
            "--path" => path = v()?,
            "--plain" => plain = Some(PathBuf::from(v()?)),
            "--ways" => ways = v()?,
            "--reps" => reps = v()?.parse()?,
            "--threads" => threads = v()?.parse()?,
            "--group" => o.group = v()?.parse()?,
            "--ahead" => o.ahead = v()?.parse()?,
            "--sndbuf" => o.sndbuf = Some(v()?.parse()?),
            "--pipe" => o.pipe = v()?.parse()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    let store = store.context("--store STORE")?;
    let plain = plain.context("--plain FILE")?;
    let layout = Arc::new(Layout::of_public(store.join("public")));
    let manifest = layout.load_manifest()?;
    let tree = LocalTree::new(Objects::new((*layout).clone()));
    let entry = tree.resolve(&manifest.root, &path)?.context("a file")?;
    let EntryKind::File { size, content } = entry.kind else {
        bail!("{path}: not a file");
    };
    let pieces = Arc::new(tree.pieces(&content, size)?);
    let pool = Pool::new(threads);
    // A way, optionally with its own settings: `write:ahead=6:group=2097152:sndbuf=4194304`.
    let ways = ways
        .split(',')
        .map(|spec| {
            let mut parts = spec.split(':');
            let mut v = o.clone();
            v.label = spec.to_owned();
            v.way = Way::parse(parts.next().unwrap_or_default())?;
            for kv in parts {
                let (k, x) = kv.split_once('=').context("KEY=VALUE")?;
                match k {
                    "group" => v.group = x.parse()?,
                    "ahead" => v.ahead = x.parse()?,
                    "sndbuf" => v.sndbuf = Some(x.parse()?),
                    "pipe" => v.pipe = x.parse()?,
                    _ => bail!("--ways: unknown setting {k}"),
                }
            }
            Ok(v)
        })
        .collect::<anyhow::Result<Vec<Opts>>>()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/f", listener.local_addr()?);
    println!(
        "{} bytes in {} chunks; threads {threads}, group {}, ahead {}, sndbuf {:?}, pipe {}",
        size,
        pieces.len(),
        o.group,
        o.ahead,
        o.sndbuf,
        o.pipe
    );
    let mut res: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); ways.len()];
    // One download of each way first (warms the page cache and the allocator).
    for rep in 0..=reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..ways.len()).collect()
        } else {
            (0..ways.len()).rev().collect()
        };
        for i in order {
            let way = ways[i].way;
            let c0 = cpu_children();
            let mut curl = Command::new("curl")
                .args(["-sSf", "-o", "/dev/null", "-w", "%{time_total}", &url])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let (sock, _) = listener.accept()?;
            let s0 = cpu_self();
            serve_one(sock, way, &layout, &pieces, &plain, &pool, &ways[i])
                .with_context(|| way.name())?;
            let server = cpu_self() - s0;
            let mut out = String::new();
            curl.stdout
                .take()
                .expect("piped")
                .read_to_string(&mut out)?;
            if !curl.wait()?.success() {
                bail!("curl failed on {}", way.name());
            }
            let client = cpu_children() - c0;
            let secs: f64 = out.trim().parse()?;
            if rep > 0 {
                res[i].push((secs, server, client));
            }
        }
    }
    let gib = size as f64 / GIB;
    println!("\n| way | MiB/s (median) | server CPU s/GiB | curl CPU s/GiB | runs (MiB/s) |");
    println!("|---|---|---|---|---|");
    for (i, way) in ways.iter().enumerate() {
        let way = &way.label;
        let med = |k: usize| {
            let mut v: Vec<f64> = res[i]
                .iter()
                .map(|r| [r.0, r.1, r.2][k])
                .collect::<Vec<_>>();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let runs: Vec<String> = res[i]
            .iter()
            .map(|r| format!("{:.0}", size as f64 / r.0 / 1048576.0))
            .collect();
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} |",
            way,
            size as f64 / med(0) / 1048576.0,
            med(1) / gib,
            med(2) / gib,
            runs.join(" ")
        );
    }
    Ok(())
}
