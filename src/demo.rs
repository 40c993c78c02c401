//! `depotfs demo`: the whole job on an embedded default, with nothing to set up.
//!
//! Generates a few sample images named like Galaxy's BioContainers, publishes them into `all/`
//! of a new repository, serves it with `depotfs serve` on 127.0.0.1, mounts it over HTTP with
//! `depotfs mount`, lists `all/`, resolves requirements the way Galaxy's
//! `cached_mulled_singularity` resolver would, reads the chosen image back through the mount and
//! checks it against the original, shows `depotfs status`, and unmounts. Every step runs the
//! real subcommand (this binary) and prints the command line first, so the output doubles as a
//! tutorial. Needs FUSE: root, or `fusermount3` (Debian `fuse3`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Arguments of `depotfs demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Work directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    pub keep: bool,
}

/// Deterministic sample bytes: a compressible header and incompressible body, so chunking,
/// compression and dedup all show.
fn sample(seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("depotfs sample image {seed}\n")
        .repeat(4096)
        .into_bytes();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `println!` that never panics: a closed output pipe (`depotfs demo | head`) must not stop
/// the demo before it has unmounted and stopped its server (SIGPIPE stays ignored here, since
/// the demo runs servers and mounts); the rest of the narration is dropped.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` of a command's output, never panicking (see [`say!`]).
fn say_raw(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

struct Step<'a> {
    exe: &'a Path,
}

impl Step<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        say!("\n$ depotfs {}", args.join(" "));
        let mut c = Command::new(self.exe);
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cmd(args).stderr(Stdio::inherit()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        say_raw(&text);
        if !out.status.success() {
            bail!("depotfs {} failed ({})", args.join(" "), out.status);
        }
        Ok(text)
    }
}

struct Cleanup {
    server: Option<Child>,
    mountpoint: Option<PathBuf>,
    exe: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(m) = self.mountpoint.take() {
            let _ = Command::new(&self.exe).arg("umount").arg(&m).status();
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        drop(self.dir.take());
    }
}

/// Run the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the depotfs binary")?;
    let tmp = match &a.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("depotfs-demo.").tempdir()?),
    };
    let work: PathBuf = match (&a.dir, &tmp) {
        (Some(d), _) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        (None, Some(t)) => t.path().to_path_buf(),
        _ => unreachable!("one of the two is set"),
    };
    let mut cleanup = Cleanup {
        server: None,
        mountpoint: None,
        exe: exe.clone(),
        dir: None,
    };
    if !a.keep {
        cleanup.dir = tmp;
    } else if let Some(t) = tmp {
        let _ = t.keep();
    }
    say!("depotfs demo in {}", work.display());
    let step = Step { exe: &exe };

    // 1. Sample images, named as in Galaxy's all/ directory.
    let images = work.join("images");
    std::fs::create_dir_all(&images)?;
    let mulled = crate::resolve::image_name_for(&["bwa=0.7.17", "samtools=1.9"])?;
    let names = [
        ("samtools:1.9--h91753b0_8".to_string(), 3_000_000),
        ("samtools:1.9--h91753b0_9".to_string(), 3_100_000),
        ("samtools:1.10--h2e538c0_3".to_string(), 3_200_000),
        ("bwa:0.7.17--h5bf99c6_8".to_string(), 1_500_000),
        (format!("{mulled}-0"), 4_000_000),
    ];
    say!(
        "\nGenerating {} sample images in {}",
        names.len(),
        images.display()
    );
    let mut paths = Vec::new();
    for (i, (name, len)) in names.iter().enumerate() {
        let p = images.join(name);
        std::fs::write(&p, sample(i as u64 % 3, *len))?;
        paths.push(p.to_string_lossy().into_owned());
    }

    // 2. Publish.
    let store = work.join("store");
    let s = store.to_string_lossy().into_owned();
    step.run(&["init", &s, "--name", "singularity.demo.depotfs"])?;
    let mut add = vec!["add", &s, "--to", "all/"];
    add.extend(paths.iter().map(String::as_str));
    step.run(&add)?;
    step.run(&["log", &s])?;

    // 3. Serve.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = step
        .cmd(&["serve", &s, "--listen", &listen])
        .stdout(Stdio::null())
        .spawn()?;
    cleanup.server = Some(server);
    let url = format!("http://{listen}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!("depotfs serve did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // 4. Mount over HTTP.
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let m = mnt.to_string_lossy().into_owned();
    let key = store.join("public/repo.pub").to_string_lossy().into_owned();
    let cache = work.join("cache").to_string_lossy().into_owned();
    step.run(&["mount", &url, &m, "--key", &key, "--cache-dir", &cache])?;
    cleanup.mountpoint = Some(mnt.clone());

    // 5. List, as Galaxy does (os.listdir).
    let all = mnt.join("all");
    say!("\n$ ls {}", all.display());
    let mut listed: Vec<String> = std::fs::read_dir(&all)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    listed.sort();
    for n in &listed {
        say!("{n}");
    }

    // 6. Resolve like Galaxy, then read the image through the mount and check it.
    let all_s = all.to_string_lossy().into_owned();
    let one = step.run(&["resolve", "--dir", &all_s, "samtools=1.9"])?;
    let want = all.join("samtools:1.9--h91753b0_9");
    if Path::new(one.trim()) != want {
        bail!(
            "resolve picked {} instead of {}",
            one.trim(),
            want.display()
        );
    }
    let two = step.run(&["resolve", "--dir", &all_s, "samtools=1.9", "bwa=0.7.17"])?;
    if !two.trim().ends_with(&format!("{mulled}-0")) {
        bail!("multi-package resolve picked {}", two.trim());
    }
    let got = std::fs::read(one.trim())?;
    let orig = std::fs::read(images.join("samtools:1.9--h91753b0_9"))?;
    if got != orig {
        bail!("the image read through the mount differs from the published one");
    }
    say!(
        "\nread {} bytes of {} through the mount: identical to the published image (blake3 {})",
        got.len(),
        one.trim(),
        &blake3::hash(&got).to_hex()[..16]
    );
    step.run(&["status", &m])?;

    // 7. Unmount and stop the server.
    step.run(&["umount", &m])?;
    cleanup.mountpoint = None;
    if let Some(mut server) = cleanup.server.take() {
        say!("\n$ kill {}    # stop depotfs serve", server.id());
        let _ = server.kill();
        let _ = server.wait();
        say!("stopped the server on {listen}");
    }
    drop(cleanup);
    say!(
        "\ndemo finished: published, served, mounted, listed, resolved, verified, unmounted, \
         stopped the server"
    );
    Ok(ExitCode::SUCCESS)
}
