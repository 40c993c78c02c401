#!/usr/bin/env python3
"""Client read benchmarks (issue 3; targets P3-P7 of issue 6), side by side in one run.

- 1 GiB image, sequential read: depotfs cold over loopback HTTP (nginx), warm from its local
  cache (page cache dropped), hot (page cache); casync mount over HTTP from the same nginx;
  squashfuse on a local squashfs; a plain local file cold and hot.
- `ls -f` / `ls -l` of a 118,594-entry all/ (names of the real listing): depotfs fresh mount
  over HTTP and warm; ext4 cold and warm; squashfuse_ll and squashfuse.
- Container start: squashfuse of a BioContainer-like image lying on the depotfs mount (cold over
  HTTP) + chroot + busybox reading what a tool start reads, against the same on a local image;
  bytes fetched against bytes touched.

Needs root (drop_caches, mounts), nginx, casync, squashfs-tools, squashfuse, busybox-static.
usage: benches/read.py [--reps 3] [--work /tmp/depotfs-read]   (prints Markdown)
"""
import argparse
import datetime
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("DEPOTFS_BIN") or os.path.join(REPO, "target", "release", "depotfs")
ENV = dict(os.environ, RUST_LOG="warn")


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def read_all(path):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return n
            n += len(b)


def umount(m):
    sh("umount", m, check=False)
    sh("fusermount3", "-u", m, check=False)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stat3(xs):
    return statistics.median(xs), min(xs), max(xs)


class Depotfs:
    def __init__(self, url, key, mnt, cache):
        self.url, self.key, self.mnt, self.cache = url, key, mnt, cache

    def mount(self, fresh):
        umount(self.mnt)
        if fresh:
            shutil.rmtree(self.cache, ignore_errors=True)
        os.makedirs(self.mnt, exist_ok=True)
        subprocess.run([BIN, "mount", self.url, self.mnt, "--key", self.key, "--cache-dir", self.cache,
                        "--cache-size", "8G"], check=True, env=ENV)

    def counter(self, name):
        """A status counter in bytes: name is "fetched" or "read"."""
        out = subprocess.run([BIN, "status", self.mnt], capture_output=True, text=True, env=ENV).stdout
        m = re.search(name + r":\s+([\d.]+) (B|KiB|MiB|GiB)", out)
        unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]
        return float(m.group(1)) * unit

    def umount(self):
        umount(self.mnt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/depotfs-read")
    ap.add_argument("--sections", default="read,ls,container", help="comma list of read, ls, container")
    a = ap.parse_args()
    w = a.work
    sections = a.sections.split(",")
    os.makedirs(w, exist_ok=True)
    if "DEPOTFS_BIN" not in os.environ:
        sh("cargo", "build", "--release", "--bin", "depotfs", cwd=REPO)

    # --- data -------------------------------------------------------------------------------
    big_dir = os.path.join(w, "bigdir")
    big = os.path.join(big_dir, "big:1.0--0")
    if not os.path.exists(big):
        os.makedirs(big_dir, exist_ok=True)
        rng = random.Random(5)
        text = (b"lib/python3.11/site-packages import def return class " * 20000)
        with open(big, "wb") as f:
            for i in range(1024):
                f.write(rng.randbytes(600_000) + text[: (1 << 20) - 600_000])
    names = os.path.join(w, "names", "all")
    if not os.path.isdir(names):
        sh("python3", os.path.join(HERE, "gen_corpus.py"), "names", "--out", names)
    ct_dir = os.path.join(w, "ct")
    if not os.path.isdir(ct_dir):
        sh("python3", os.path.join(HERE, "gen_corpus.py"), "images", "--out", ct_dir, "--total-mib", "40",
           "--seed", "3")
    ct_name = sorted(os.listdir(ct_dir))[0]
    ct_image = os.path.join(ct_dir, ct_name)
    store = os.path.join(w, "store")
    if not os.path.isdir(store):
        sh(BIN, "init", store, "--name", "bench.read", env=ENV)
        sh(BIN, "add", store, "--to", "all", big, ct_image, env=ENV)
        sh(BIN, "add", store, "--to", "names", names, env=ENV)
    big_sqfs = os.path.join(w, "big.sqfs")
    if not os.path.exists(big_sqfs):
        sh("mksquashfs", big_dir, big_sqfs, "-comp", "zstd", "-noappend", "-quiet", "-no-progress")
    names_sqfs = os.path.join(w, "names.sqfs")
    if not os.path.exists(names_sqfs):
        sh("mksquashfs", os.path.dirname(names), names_sqfs, "-comp", "zstd", "-noappend", "-quiet", "-no-progress")
    castr = os.path.join(w, "www", "castr")
    caidx = os.path.join(w, "www", "big.caidx")
    if not os.path.exists(caidx):
        os.makedirs(os.path.join(w, "www"), exist_ok=True)
        sh("casync", "make", "--compression=zstd", "--store=" + castr, caidx, big_dir)
    www_public = os.path.join(w, "www", "public")
    if not os.path.exists(www_public):
        os.symlink(os.path.join(store, "public"), www_public)

    # --- nginx ------------------------------------------------------------------------------
    port = free_port()
    conf = os.path.join(w, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; error_log {w}/nginx.err; pid {w}/nginx.pid;
events {{}}
http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {w}/www; }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", w, "-g", "daemon off;"])
    time.sleep(0.5)
    url = f"http://127.0.0.1:{port}/public/"
    key = os.path.join(store, "public", "repo.pub")
    d = Depotfs(url, key, os.path.join(w, "mnt"), os.path.join(w, "cache"))
    sq = os.path.join(w, "sqmnt")
    os.makedirs(sq, exist_ok=True)
    rows = {}

    def record(name, xs, unit):
        rows[name] = (stat3(xs), unit)

    rec = record

    GiB = os.path.getsize(big)
    try:
        # --- 1 GiB sequential read ----------------------------------------------------------
        r = {k: [] for k in ["dc", "dw", "dh", "plain_c", "plain_h", "sqf", "casync"]}
        for _ in range(a.reps if "read" in sections else 0):
            d.mount(fresh=True)
            drop()
            r["dc"].append(timed(lambda: read_all(os.path.join(d.mnt, "all", "big:1.0--0"))))
            r["dh"].append(timed(lambda: read_all(os.path.join(d.mnt, "all", "big:1.0--0"))))
            d.mount(fresh=False)
            drop()
            r["dw"].append(timed(lambda: read_all(os.path.join(d.mnt, "all", "big:1.0--0"))))
            d.umount()
            drop()
            r["plain_c"].append(timed(lambda: read_all(big)))
            r["plain_h"].append(timed(lambda: read_all(big)))
            umount(sq)
            drop()
            sh("squashfuse", big_sqfs, sq)
            r["sqf"].append(timed(lambda: read_all(os.path.join(sq, "big:1.0--0"))))
            umount(sq)
            if a.reps and len(r["casync"]) < 1:  # ~10 s per run: once
                cam = os.path.join(w, "camnt")
                os.makedirs(cam, exist_ok=True)
                p = subprocess.Popen(["casync", "mount", f"--store=http://127.0.0.1:{port}/castr/", caidx, cam],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(100):
                    if os.path.exists(os.path.join(cam, "big:1.0--0")):
                        break
                    time.sleep(0.1)
                drop()
                r["casync"].append(timed(lambda: read_all(os.path.join(cam, "big:1.0--0"))))
                umount(cam)
                p.wait()
        mibps = lambda xs: [GiB / (1 << 20) / x for x in xs]
        rec = record if "read" in sections else (lambda *_: None)
        rec("read 1 GiB: depotfs cold over HTTP (nginx)", mibps(r["dc"]), "MiB/s")
        rec("read 1 GiB: depotfs warm (local cache, page cache dropped)", mibps(r["dw"]), "MiB/s")
        rec("read 1 GiB: depotfs hot (page cache)", mibps(r["dh"]), "MiB/s")
        rec("read 1 GiB: casync mount cold over HTTP (nginx)", mibps(r["casync"]), "MiB/s")
        rec("read 1 GiB: squashfuse, local image, cold", mibps(r["sqf"]), "MiB/s")
        rec("read 1 GiB: plain local file, cold", mibps(r["plain_c"]), "MiB/s")
        rec("read 1 GiB: plain local file, hot", mibps(r["plain_h"]), "MiB/s")

        # --- directory listing --------------------------------------------------------------
        def ls(args, path):
            return timed(lambda: subprocess.run(["ls", *args, path], check=True, stdout=subprocess.DEVNULL))

        l = {k: [] for k in ["d_f_fresh", "d_f_warm", "d_l_warm", "e_f_cold", "e_f_warm", "e_l_warm",
                             "sqll_f", "sqll_l", "sq_l"]}
        rec = record if "ls" in sections else (lambda *_: None)
        for _ in range(a.reps if "ls" in sections else 0):
            d.mount(fresh=True)
            l["d_f_fresh"].append(ls(["-f"], os.path.join(d.mnt, "names", "all")))
            l["d_f_warm"].append(ls(["-f"], os.path.join(d.mnt, "names", "all")))
            ls(["-l"], os.path.join(d.mnt, "names", "all"))
            l["d_l_warm"].append(ls(["-l"], os.path.join(d.mnt, "names", "all")))
            d.umount()
            drop()
            l["e_f_cold"].append(ls(["-f"], names))
            l["e_f_warm"].append(ls(["-f"], names))
            ls(["-l"], names)
            l["e_l_warm"].append(ls(["-l"], names))
            for tool, fk, lk in (("squashfuse_ll", "sqll_f", "sqll_l"), ("squashfuse", None, "sq_l")):
                umount(sq)
                sh(tool, names_sqfs, sq)
                ls(["-f"], os.path.join(sq, "all"))
                if fk:
                    l[fk].append(ls(["-f"], os.path.join(sq, "all")))
                ls(["-l"], os.path.join(sq, "all"))
                l[lk].append(ls(["-l"], os.path.join(sq, "all")))
                umount(sq)
        rec("ls -f all/ (118,594): depotfs fresh mount over HTTP", l["d_f_fresh"], "s")
        rec("ls -f all/: depotfs warm", l["d_f_warm"], "s")
        rec("ls -f all/: squashfuse_ll warm", l["sqll_f"], "s")
        rec("ls -f all/: ext4 cold", l["e_f_cold"], "s")
        rec("ls -f all/: ext4 warm", l["e_f_warm"], "s")
        rec("ls -l all/: depotfs warm", l["d_l_warm"], "s")
        rec("ls -l all/: ext4 warm", l["e_l_warm"], "s")
        rec("ls -l all/: squashfuse_ll warm", l["sqll_l"], "s")
        rec("ls -l all/: squashfuse warm", l["sq_l"], "s")

        # --- container start ----------------------------------------------------------------
        # The image has no /dev: pipe into wc instead of redirecting to /dev/null.
        script = ("cat /etc/tool | wc -c; ls -R /usr/local | wc -l; "
                  "for f in $(ls /usr/local/lib/*/file0 | head -20); do cat $f | wc -c; done")
        root = os.path.join(w, "ctroot")
        os.makedirs(root, exist_ok=True)

        def start(image):
            umount(root)
            sh("squashfuse", image, root)
            sh("chroot", root, "/bin/busybox", "sh", "-c", script)
            umount(root)

        c_d, c_l, fetched, read = [], [], [], []
        rec = record if "container" in sections else (lambda *_: None)
        for _ in range(a.reps if "container" in sections else 0):
            d.mount(fresh=True)
            drop()
            c_d.append(timed(lambda: start(os.path.join(d.mnt, "all", ct_name))))
            fetched.append(d.counter("fetched"))
            read.append(d.counter("read"))
            d.umount()
            drop()
            c_l.append(timed(lambda: start(ct_image)))
        rec(f"container start, image on depotfs, cold over HTTP ({os.path.getsize(ct_image) >> 20} MiB image)", c_d, "s")
        rec("container start, local image, cold", c_l, "s")
        rec("container start: bytes fetched by depotfs", [x / (1 << 20) for x in fetched], "MiB")
        rec("container start: bytes read from the image (through depotfs)", [x / (1 << 20) for x in read], "MiB")
    finally:
        d.umount()
        umount(sq)
        umount(root if 'root' in dir() else sq)
        nginx.terminate()
        nginx.wait()

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Client reads — {date}\n")
    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}. "
          f"Command: `python3 benches/read.py {' '.join(sys.argv[1:])}` (release build). "
          "Cold = page cache dropped (and, for depotfs, an empty cache directory).\n")
    print("| measurement | median | min | max | unit |")
    print("|---|---|---|---|---|")
    for name, ((med, lo, hi), unit) in rows.items():
        print(f"| {name} | {med:.3g} | {lo:.3g} | {hi:.3g} | {unit} |")
    ratios = [
        ("depotfs cold / casync mount cold", "read 1 GiB: depotfs cold over HTTP (nginx)",
         "read 1 GiB: casync mount cold over HTTP (nginx)", "target ≥ 5x"),
        ("depotfs warm / squashfuse local cold", "read 1 GiB: depotfs warm (local cache, page cache dropped)",
         "read 1 GiB: squashfuse, local image, cold", "target ≥ 1.0x"),
        ("depotfs hot / plain file hot", "read 1 GiB: depotfs hot (page cache)",
         "read 1 GiB: plain local file, hot", "target ≥ 0.9x"),
        ("ls -f warm, depotfs / squashfuse_ll", "ls -f all/: depotfs warm", "ls -f all/: squashfuse_ll warm",
         "target ≤ 1.2x"),
        ("ls -l warm, depotfs / ext4", "ls -l all/: depotfs warm", "ls -l all/: ext4 warm", "target ≤ 1.5x"),
        ("container start, depotfs cold / local", next((k for k in rows if k.startswith("container start, image")), ""),
         "container start, local image, cold", "target ≤ 1.5x"),
        ("container start, bytes fetched / bytes read", "container start: bytes fetched by depotfs",
         "container start: bytes read from the image (through depotfs)", "target ≤ 3x"),
    ]
    print("\nRatios (medians):\n")
    for label, num, den, target in ratios:
        if num in rows and den in rows:
            print(f"- {label}: {rows[num][0][0] / rows[den][0][0]:.2f}x ({target})")

if __name__ == "__main__":
    main()
