//! `depotfs reload`: a new daemon takes over a live mount, and the old one exits.
//!
//! Every daemon listens on a control socket (abstract unix socket `depotfs/mount/PID`; only
//! its own user or root may use it, checked with `SO_PEERCRED`). `depotfs reload` sends
//! [`Msg::Reload`]; the daemon starts the new binary with its own original arguments
//! ([`Launch`]) plus `--takeover PID`. The new daemon opens its source (key, cache, backend),
//! connects and sends [`Msg::Takeover`]. The old daemon then stops its FUSE loop between two
//! reads (the patched fuser's `StopHandle`), waits until every request it read is answered,
//! and sends the `/dev/fuse` descriptor (SCM_RIGHTS) and [`Msg::State`]: the negotiated
//! protocol version and the file system's state ([`crate::fs::FsState`]). The new daemon
//! verifies the manifests again, rebuilds its inode table and open files, tells systemd its
//! pid (`MAINPID=`), answers [`Msg::Serving`] and serves; the old one answers the client
//! [`Msg::Reloaded`] and exits without unmounting. Whatever fails before `Serving` (the binary
//! does not start, exits, refuses the state, says nothing within [`HANDOVER_LIMIT`]) leaves
//! the old daemon serving on, and the client gets the reason. Requests that arrive meanwhile
//! wait in the kernel's queue: none is lost or answered twice.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a new daemon may take to connect, and then to serve once it has the state.
pub const HANDOVER_LIMIT: Duration = Duration::from_secs(60);

/// The largest control message accepted (a state of millions of inodes fits).
const MAX_MSG: u32 = 1 << 30;

/// A message on a control connection: a little-endian u32 length, then postcard.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// `depotfs reload` → daemon: start `binary` (default: the daemon's own) with the
    /// daemon's arguments and hand the mount over to it.
    Reload {
        /// The new daemon's executable.
        binary: Option<PathBuf>,
    },
    /// New daemon → old: ready to take over.
    Takeover,
    /// Old daemon → new, with the FUSE descriptor: the protocol version negotiated at
    /// FUSE_INIT and the encoded [`crate::fs::FsState`].
    State {
        /// Major and minor FUSE protocol version.
        version: (u32, u32),
        /// The file system's state.
        state: Vec<u8>,
    },
    /// New daemon → old: serving now.
    Serving,
    /// Daemon → `depotfs reload`: done.
    Reloaded {
        /// The pid that served before.
        old: u32,
        /// The pid serving now.
        new: u32,
    },
    /// Either way: it failed, and why.
    Failed(String),
}

fn write_msg(s: &mut UnixStream, m: &Msg) -> io::Result<()> {
    let body = postcard::to_stdvec(m).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    s.write_all(&len.to_le_bytes())?;
    s.write_all(&body)?;
    s.flush()
}

fn read_msg(s: &mut UnixStream) -> io::Result<Msg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MSG {
        return Err(io::Error::other(format!("control message of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| io::Error::other(format!("control message: {e}")))
}

/// The control socket of the daemon with pid `pid`.
pub fn control_addr(pid: u32) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("depotfs/mount/{pid}"))
}

/// The peer's pid and uid.
fn peer(s: &UnixStream) -> io::Result<(u32, u32)> {
    let c = rustix::net::sockopt::socket_peercred(s)?;
    Ok((c.pid.as_raw_nonzero().get() as u32, c.uid.as_raw()))
}

/// Connect to the control socket of daemon `pid`, making sure that it is that process.
fn connect(pid: u32) -> io::Result<UnixStream> {
    let s = UnixStream::connect_addr(&control_addr(pid)?)?;
    let (p, _) = peer(&s)?;
    if p != pid {
        return Err(io::Error::other(format!(
            "the control socket of daemon {pid} is held by process {p}"
        )));
    }
    s.set_read_timeout(Some(HANDOVER_LIMIT * 2))?;
    Ok(s)
}

/// `depotfs reload`'s side: ask daemon `pid` to hand its mount over to `binary`. Returns
/// the new daemon's pid.
pub fn request(pid: u32, binary: Option<PathBuf>) -> io::Result<std::result::Result<u32, String>> {
    let mut s = connect(pid)?;
    write_msg(&mut s, &Msg::Reload { binary })?;
    Ok(match read_msg(&mut s)? {
        Msg::Reloaded { new, .. } => Ok(new),
        Msg::Failed(why) => Err(why),
        other => Err(format!("unexpected answer {other:?}")),
    })
}

/// How this daemon was started, to start its successor the same way: the executable, the
/// arguments (without the internal `--notify-stdout` and `--takeover PID`) and the working
/// directory they are relative to.
#[derive(Debug, Clone)]
pub struct Launch {
    exe: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
}

impl Launch {
    /// This process's launch (call it before changing directory).
    pub fn current() -> Launch {
        let mut args = Vec::new();
        let mut it = std::env::args_os().skip(1);
        while let Some(a) = it.next() {
            if a == "--takeover" {
                it.next();
            } else if a != "--notify-stdout" && !a.to_string_lossy().starts_with("--takeover=") {
                args.push(a);
            }
        }
        Launch {
            exe: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            args,
            cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        }
    }

    /// The command that starts a daemon like this one (from `binary`, by default this one's
    /// executable) to take over from daemon `pid`.
    fn successor(&self, binary: Option<&Path>, pid: u32) -> Command {
        let mut cmd = Command::new(binary.unwrap_or(&self.exe));
        cmd.args(&self.args)
            .arg("--takeover")
            .arg(pid.to_string())
            .current_dir(if self.cwd.is_dir() {
                &self.cwd
            } else {
                Path::new("/")
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }
}

/// A reload under way: its client, the new daemon and its connection.
#[derive(Debug)]
pub struct Job {
    client: UnixStream,
    child: Child,
    conn: UnixStream,
}

/// The daemon's control socket, served by its own thread.
#[derive(Debug)]
pub struct Control {
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<()>,
}

impl Control {
    /// Listen on this process's control socket; a reload request starts the new daemon
    /// and, once it asks for the mount, calls `stop` and queues the job ([`Self::job`]).
    pub fn listen(launch: Launch, stop: impl Fn() + Send + 'static) -> Result<Control> {
        let me = std::process::id();
        let listener = control_addr(me)
            .and_then(|a| UnixListener::bind_addr(&a))
            .map_err(|e| Error::io("the control socket (depotfs reload)", e))?;
        let (jobs_tx, jobs) = mpsc::channel();
        let (done, done_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("depotfs-control".into())
            .spawn(move || {
                let uid = rustix::process::geteuid().as_raw();
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    match peer(&conn) {
                        Ok((_, u)) if u == uid || u == 0 => {}
                        _ => continue,
                    }
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    match read_msg(&mut conn) {
                        Ok(Msg::Reload { binary }) => {
                            match start(&launch, binary.as_deref(), &listener) {
                                Ok((child, c)) => {
                                    let job = Job {
                                        client: conn,
                                        child,
                                        conn: c,
                                    };
                                    if jobs_tx.send(job).is_err() {
                                        return;
                                    }
                                    stop();
                                    // The main thread answers the client; on success
                                    // the process ends.
                                    let _ = done_rx.recv();
                                }
                                Err(why) => {
                                    tracing::warn!("reload refused: {why}");
                                    let _ = write_msg(&mut conn, &Msg::Failed(why));
                                }
                            }
                        }
                        Ok(_) => {
                            let _ =
                                write_msg(&mut conn, &Msg::Failed("no reload under way".into()));
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| Error::io("starting the control thread", e))?;
        Ok(Control { jobs, done })
    }

    /// The reload waiting for the FUSE loop to stop, if any.
    pub fn job(&self) -> Option<Job> {
        self.jobs.try_recv().ok()
    }

    /// The job failed and the old daemon serves on: accept the next request.
    pub fn resume(&self) {
        let _ = self.done.send(());
    }
}

/// Start the successor and wait for its [`Msg::Takeover`]: its process and connection.
fn start(
    launch: &Launch,
    binary: Option<&Path>,
    listener: &UnixListener,
) -> std::result::Result<(Child, UnixStream), String> {
    let me = std::process::id();
    let mut cmd = launch.successor(binary, me);
    let shown = Path::new(cmd.get_program()).display().to_string();
    tracing::info!("reload: starting {shown} to take over");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the new daemon {shown}: {e}"))?;
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(why)
    };
    let _ = listener.set_nonblocking(true);
    let start = Instant::now();
    let got = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "the new daemon {shown} exited ({status}) before taking over (its reason is \
                 in this mount's log)"
            ));
        }
        if start.elapsed() > HANDOVER_LIMIT {
            break fail(
                &mut child,
                format!(
                    "the new daemon {shown} did not ask for the mount within {} s",
                    HANDOVER_LIMIT.as_secs()
                ),
            );
        }
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(HANDOVER_LIMIT));
                match peer(&c) {
                    Ok((p, _)) if p == child.id() => match read_msg(&mut c) {
                        Ok(Msg::Takeover) => break Ok(c),
                        Ok(m) => break fail(&mut child, format!("new daemon sent {m:?}")),
                        Err(e) => break fail(&mut child, format!("new daemon: {e}")),
                    },
                    _ => {
                        let _ = write_msg(&mut c, &Msg::Failed("a reload is under way".into()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => break fail(&mut child, format!("control socket: {e}")),
        }
    };
    let _ = listener.set_nonblocking(false);
    got.map(|c| (child, c))
}

impl Job {
    /// Hand the stopped session's descriptor `fd` and the state over. On success the
    /// client has its answer and this process must exit without unmounting; on failure
    /// the new daemon is gone and the client has the reason.
    pub fn hand_over(
        mut self,
        fd: BorrowedFd<'_>,
        version: (u32, u32),
        state: Vec<u8>,
    ) -> std::result::Result<u32, String> {
        let new = self.child.id();
        let sent = send_fd(&self.conn, fd)
            .and_then(|()| write_msg(&mut self.conn, &Msg::State { version, state }));
        let outcome = match sent.and_then(|()| read_msg(&mut self.conn)) {
            Ok(Msg::Serving) => Ok(new),
            Ok(Msg::Failed(why)) => Err(format!("the new daemon refused the mount: {why}")),
            Ok(m) => Err(format!("the new daemon answered {m:?}")),
            Err(e) => Err(format!("the new daemon failed during the handover: {e}")),
        };
        let answer = match &outcome {
            Ok(new) => Msg::Reloaded {
                old: std::process::id(),
                new: *new,
            },
            Err(why) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Msg::Failed(why.clone())
            }
        };
        let _ = write_msg(&mut self.client, &answer);
        outcome
    }
}

fn send_fd(s: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(s, &[IoSlice::new(&[0xFD])], &mut anc, SendFlags::empty())?;
    Ok(())
}

fn recv_fd(s: &UnixStream) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let r = rustix::net::recvmsg(
        s,
        &mut [IoSliceMut::new(&mut byte)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if r.bytes == 0 {
        return Err(io::Error::other("the old daemon closed the connection"));
    }
    let mut got = None;
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                got.get_or_insert(fd);
            }
        }
    }
    got.ok_or_else(|| io::Error::other("no descriptor came with the handover"))
}

/// The new daemon's side of a handover, once it has what the old one sent.
#[derive(Debug)]
pub struct Takeover {
    conn: UnixStream,
    /// The FUSE connection.
    pub fd: OwnedFd,
    /// The protocol version negotiated at FUSE_INIT.
    pub version: fuser::Version,
    /// The encoded [`crate::fs::FsState`].
    pub state: Vec<u8>,
}

impl Takeover {
    /// Ask daemon `old` for its mount; returns once it has stopped and sent it.
    pub fn ask(old: u32) -> Result<Takeover> {
        let named = |e: io::Error| Error::io(format!("taking over from daemon {old}"), e);
        let mut conn = connect(old).map_err(named)?;
        write_msg(&mut conn, &Msg::Takeover).map_err(named)?;
        let fd = recv_fd(&conn).map_err(named)?;
        match read_msg(&mut conn).map_err(named)? {
            Msg::State { version, state } => Ok(Takeover {
                conn,
                fd,
                version: fuser::Version(version.0, version.1),
                state,
            }),
            other => Err(Error::Io(format!(
                "taking over from daemon {old}: it sent {other:?}"
            ))),
        }
    }

    /// Tell the old daemon that this one serves now (it exits).
    pub fn serving(mut self) -> Result<()> {
        write_msg(&mut self.conn, &Msg::Serving)
            .map_err(|e| Error::io("telling the old daemon to exit", e))
    }

    /// Tell the old daemon why this one cannot serve (it serves on).
    pub fn failed(mut self, why: &str) {
        let _ = write_msg(&mut self.conn, &Msg::Failed(why.to_string()));
    }

    /// The descriptor, for the new session (the old daemon gets its answer later).
    pub fn take_fd(&mut self) -> io::Result<OwnedFd> {
        self.fd.as_fd().try_clone_to_owned()
    }
}

/// Tell systemd (`Type=notify`, `NotifyAccess=all`) about this daemon: `READY=1` once
/// mounted, `MAINPID=…` when it took a mount over. Nothing without `$NOTIFY_SOCKET`.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}
