//! The disk cache on a disk slower than the network, with real parts: the cache lies on an
//! ext4 file system on a loop device, mounted `sync`, whose writes the kernel's blkio
//! controller throttles (cgroup v1 `blkio.throttle.write_bps_device`, or v2 `io.max`) for
//! the cgroup the `depotfs mount` daemon runs in; the store is served by `depotfs serve` over
//! loopback. A cold sequential read of an image larger than the cache writer's queue
//! (`QUEUE_MAX`, 32 MiB) must leave every chunk in the cache (the downloads wait for the
//! writer, issue 21 P5): a second mount, with the server gone, reads the whole image from
//! it. Needs root, /dev/fuse, loop devices, mkfs.ext4 and a blkio/io cgroup controller.

mod cli_run;
mod http_suite;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_run::{BIN, Mounted, Served, ok, one_image_store, xattr};
use http_suite::random_bytes;

const MIB: usize = 1 << 20;
/// The cache disk's write rate: far below what loopback HTTP delivers (hundreds of MiB/s).
const WRITE_BPS: u64 = 16 << 20;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 file system on a loop device, mounted `sync` at `mnt` (so a write reaches the
/// device before it returns, where the throttle applies); unmounted and detached when dropped.
struct SlowDisk {
    mnt: PathBuf,
    loopdev: String,
    cgroup: PathBuf,
}

impl SlowDisk {
    fn new(dir: &Path) -> SlowDisk {
        let img = dir.join("disk.img");
        let mnt = dir.join("disk");
        fs::create_dir_all(&mnt).unwrap();
        sh(&format!(
            "truncate -s 256M {0} && mkfs.ext4 -q -F {0}",
            img.display()
        ));
        let loopdev = sh(&format!("losetup -f --show {}", img.display()));
        sh(&format!("mount -o sync {loopdev} {}", mnt.display()));
        let rdev = sh(&format!("stat -c '%t %T' {loopdev}"));
        let (major, minor) = rdev.split_once(' ').unwrap();
        let dev = format!(
            "{}:{}",
            u32::from_str_radix(major, 16).unwrap(),
            u32::from_str_radix(minor, 16).unwrap()
        );
        let name = format!("depotfs-slow-cache-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        let v2 = Path::new("/sys/fs/cgroup");
        let cgroup = if v1.join("blkio.throttle.write_bps_device").exists() {
            let cg = v1.join(&name);
            fs::create_dir_all(&cg).unwrap();
            fs::write(
                cg.join("blkio.throttle.write_bps_device"),
                format!("{dev} {WRITE_BPS}"),
            )
            .unwrap();
            cg
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"))
        {
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+io");
            let cg = v2.join(&name);
            fs::create_dir_all(&cg).unwrap();
            fs::write(cg.join("io.max"), format!("{dev} wbps={WRITE_BPS}")).unwrap();
            cg
        } else {
            panic!("this test needs the blkio (cgroup v1) or io (cgroup v2) controller");
        };
        SlowDisk {
            mnt,
            loopdev,
            cgroup,
        }
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
        // The daemon has exited by now; its cgroup is empty.
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `depotfs mount URL MP --key KEY --cache-dir CACHE`, the daemon in `cgroup` if given.
fn mount(url: &str, mp: &Path, key: &Path, cache: &Path, cgroup: Option<&Path>) -> Mounted {
    fs::create_dir_all(mp).unwrap();
    let mut c = Command::new("sh");
    c.arg("-c");
    match cgroup {
        // The shell joins the cgroup, then becomes depotfs: the daemon it starts is its child.
        Some(cg) => c.arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cg.display()
        )),
        None => c.arg("exec \"$@\""),
    };
    c.arg("sh").arg(BIN).arg("mount").arg(url).arg(mp);
    c.arg("--key").arg(key).arg("--cache-dir").arg(cache);
    ok(c.output().unwrap());
    Mounted(mp.to_path_buf())
}

fn read_whole(path: &Path) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A cold sequential read on a disk slower than the network leaves a complete cache: the
/// reads go at the disk's pace rather than serving objects uncached (before: 16 of the
/// 48 MiB were dropped, `cache_dropped` > 0, and the second mount could not read them).
#[test]
fn a_cold_read_on_a_slow_disk_leaves_every_chunk_cached() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(48 * MIB, 21);
    let store = one_image_store(dir.path(), "slow-cache.test.org", &data);
    let key = store.join("public/repo.pub");
    let mut server = Served::start(&store);
    let disk = SlowDisk::new(dir.path());
    let cache = disk.mnt.join("cache");

    let mp = dir.path().join("mnt");
    let m = mount(&server.url(), &mp, &key, &cache, Some(&disk.cgroup));
    let t = Instant::now();
    assert!(read_whole(&mp.join("img/app.sif")) == data, "wrong bytes");
    let took = t.elapsed();
    assert_eq!(
        xattr(&mp, "user.depotfs.cache_dropped"),
        "0",
        "objects served uncached"
    );
    // The writes were really throttled: more than the queue's worth had to wait for them.
    let least = Duration::from_secs_f64((16 * MIB) as f64 / WRITE_BPS as f64 * 0.8);
    assert!(
        took >= least,
        "the read took {took:?}: the cache disk was not slower than the network"
    );
    drop(m); // `depotfs umount` waits for the daemon, which writes out its queue first

    server.stop();
    let mp2 = dir.path().join("mnt2");
    let _m2 = mount(&server.url(), &mp2, &key, &cache, None);
    assert!(
        read_whole(&mp2.join("img/app.sif")) == data,
        "wrong bytes from the cache"
    );
    assert_eq!(xattr(&mp2, "user.depotfs.bytes_fetched"), "0");
}
