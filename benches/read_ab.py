#!/usr/bin/env python3
"""Interleaved A/B of depotfs binaries on the P4/P5 workload (benches/read.py's read section,
cut down, issue 21): per round and per binary, in alternating order (A B, then B A, ...):
  fresh mount (empty cache) -> drop caches -> cold read of the 1 GiB file over HTTP (nginx) ->
  umount (the daemon exits: its cache queue written out) -> mount on that cache ->
  drop caches -> warm read [x --warm] -> umount
then squashfuse of the same file, cold (the P5 peer), once per round. One JSON line per read
(MiB/s, load, daemon CPU seconds, `cache_dropped`, cache files, stage counters when the
binary has them), then medians. Each binary reads a store made by itself (the store format
changed between versions, so an old binary needs its own).

--cache-root puts the caches elsewhere (e.g. on a slow file system), --cgroup runs the mount
daemons in a cgroup (e.g. one whose blkio/io controller throttles that file system's writes:
a disk slower than the network).

usage: read_ab.py --work DIR --bin NAME=PATH [--bin NAME=PATH ...] [--rounds 3] [--warm 1]
                  [--mib 1024] [--cache-root DIR] [--cgroup DIR] [--skip-cold] [--no-sqfs]
                  [--json OUT]   (root: drops caches, mounts)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from read import HERE, cpu_seconds, drop, read_all, stages, start_nginx, umount, wait_for  # benches/read.py


def sh(*cmd, check=True, **kw):
    """Run `cmd`; its failure (when `check`) raises with its stderr."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def timed_read(path):
    t = time.perf_counter()
    n = read_all(path)
    return time.perf_counter() - t, n


def load():
    return float(open("/proc/loadavg").read().split()[0])


def wait_exit(pid, secs=120):
    """Wait for daemon `pid` to exit (it writes out its cache queue first)."""
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             f"depotfs daemon {pid} to exit", secs=secs)


def xattr(mnt, name):
    try:
        return os.getxattr(mnt, "user.depotfs." + name).decode()
    except OSError:
        return None


class Mount:
    def __init__(self, name, binary, url, key, work, cache_root, cgroup=None):
        self.name, self.bin, self.url, self.key, self.cgroup = name, binary, url, key, cgroup
        self.mnt = os.path.join(work, f"mnt-{name}")
        self.cache = os.path.join(cache_root, f"cache-{name}")
        self.pid = None
        os.makedirs(self.mnt, exist_ok=True)

    def mount(self, fresh):
        self.umount()
        if fresh:
            shutil.rmtree(self.cache, ignore_errors=True)
        args = [self.bin, "mount", self.url, self.mnt, "--key", self.key, "--cache-dir", self.cache,
                "--cache-size", "8G"]
        if self.cgroup:  # the daemon (a child of this shell) runs in the blkio cgroup
            args = ["sh", "-c", f"echo $$ > {self.cgroup}/cgroup.procs && exec \"$@\"", "sh", *args]
        sh(*args)
        self.pid = int(xattr(self.mnt, "pid"))

    def xattr(self, name):
        """`user.depotfs.NAME` of the mount (as read.py's `stages` reads it)."""
        v = xattr(self.mnt, name)
        if v is None:
            raise RuntimeError(f"{self.mnt}: no user.depotfs.{name}")
        return v

    def umount(self):
        if os.path.ismount(self.mnt):
            umount(self.mnt)
        if self.pid:
            wait_exit(self.pid)
        self.pid = None

    def cache_files(self):
        n = b = 0
        for root, _, files in os.walk(os.path.join(self.cache, "objects")):
            for f in files:
                n += 1
                b += os.path.getsize(os.path.join(root, f))
        return n, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=int, default=1, help="warm reads per cold read")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--cache-root", help="where the caches go (default: WORK)")
    ap.add_argument("--skip-cold", action="store_true",
                    help="keep each binary's cache from before (made by a first cold read)")
    ap.add_argument("--no-sqfs", action="store_true")
    ap.add_argument("--json", help="append one JSON line per measurement here")
    ap.add_argument("--cgroup", help="a blkio cgroup directory to run the mounts in")
    a = ap.parse_args()
    w = os.path.abspath(a.work)
    os.makedirs(w, exist_ok=True)
    cache_root = os.path.abspath(a.cache_root or w)
    os.makedirs(cache_root, exist_ok=True)
    bins = [tuple(b.split("=", 1)) for b in a.bin]
    big_dir = os.path.join(w, f"big-{a.mib}")
    big = os.path.join(big_dir, "big:1.0--0")
    if not os.path.exists(big):
        sh(sys.executable, os.path.join(HERE, "gen_corpus.py"), "big", "--out", big_dir,
           "--mib", str(a.mib), "--seed", "5")
    sqfs = os.path.join(w, f"big-{a.mib}.sqfs")
    if not os.path.exists(sqfs):
        sh("mksquashfs", big_dir, sqfs, "-comp", "zstd", "-noappend", "-quiet", "-no-progress")
    www = os.path.join(w, "www")
    os.makedirs(www, exist_ok=True)
    for name, b in bins:
        store = os.path.join(w, f"store-{name}")
        if not os.path.isdir(store):
            sh(b, "init", store + ".tmp", "--name", "bench.read")
            sh(b, "add", store + ".tmp", "--to", "all", big)
            os.rename(store + ".tmp", store)
        link = os.path.join(www, name)
        if not os.path.islink(link):
            os.symlink(os.path.join(store, "public"), link)
    nginx, port = start_nginx(w, www)
    mounts = {name: Mount(name, b, f"http://127.0.0.1:{port}/{name}/",
                          os.path.join(w, f"store-{name}", "public", "repo.pub"), w, cache_root, a.cgroup)
              for name, b in bins}
    sq = os.path.join(w, "sqmnt")
    os.makedirs(sq, exist_ok=True)
    res = {name: {"cold": [], "warm": []} for name, _ in bins}
    res["squashfuse"] = {"cold": []}
    out = open(a.json, "a") if a.json else None

    def note(rec):
        rec["t"] = time.strftime("%H:%M:%S", time.gmtime())
        print(json.dumps(rec), flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    try:
        for rnd in range(a.rounds):
            order = bins if rnd % 2 == 0 else bins[::-1]
            for name, _ in order:
                m = mounts[name]
                rel = os.path.join(m.mnt, "all", "big:1.0--0")
                if not a.skip_cold or not os.path.isdir(m.cache):
                    m.mount(fresh=True)
                    drop()
                    l0 = load()
                    c0 = cpu_seconds(m.pid)
                    t, n = timed_read(rel)
                    assert n == a.mib << 20, n
                    note({"bin": name, "kind": "cold", "round": rnd, "s": t, "mibs": a.mib / t,
                          "load": l0, "cpu": cpu_seconds(m.pid) - c0,
                          "dropped": xattr(m.mnt, "cache_dropped")})
                    res[name]["cold"].append(a.mib / t)
                    m.umount()
                files = m.cache_files()
                for k in range(a.warm):
                    m.mount(fresh=False)
                    drop()
                    l0 = load()
                    s0 = stages(m)
                    c0 = cpu_seconds(m.pid)
                    t, n = timed_read(rel)
                    assert n == a.mib << 20, n
                    s1 = stages(m)
                    st = {k2: [v[0] - s0.get(k2, (0, 0, 0))[0], round(v[1] - s0.get(k2, (0, 0, 0))[1], 3),
                               v[2] - s0.get(k2, (0, 0, 0))[2]] for k2, v in s1.items()}
                    note({"bin": name, "kind": "warm", "round": rnd, "k": k, "s": t, "mibs": a.mib / t,
                          "load": l0, "cpu": cpu_seconds(m.pid) - c0, "cache_files": files,
                          "fetched": xattr(m.mnt, "bytes_fetched"), "stages": st})
                    res[name]["warm"].append(a.mib / t)
                    m.umount()
            if not a.no_sqfs:
                umount(sq) if os.path.ismount(sq) else None
                drop()
                sh("squashfuse", sqfs, sq)
                l0 = load()
                t, n = timed_read(os.path.join(sq, "big:1.0--0"))
                note({"bin": "squashfuse", "kind": "cold", "round": rnd, "s": t, "mibs": a.mib / t,
                      "load": l0})
                res["squashfuse"]["cold"].append(a.mib / t)
                umount(sq)
    finally:
        for m in mounts.values():
            try:
                m.umount()
            except Exception as e:  # noqa: BLE001
                print(e, file=sys.stderr)
        nginx.terminate()
        nginx.wait()
    print("| binary | kind | median MiB/s | min | max | n |")
    print("|---|---|---|---|---|---|")
    for name, kinds in res.items():
        for kind, xs in kinds.items():
            if xs:
                print(f"| {name} | {kind} | {statistics.median(xs):.0f} | {min(xs):.0f} | {max(xs):.0f} | {len(xs)} |")


if __name__ == "__main__":
    main()
