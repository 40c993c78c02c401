#!/usr/bin/env python3
"""Publish benchmarks (issue 2, targets P1 and P2), side by side in one run.

P1: add ~2 GiB of BioContainer-like squashfs images (benches/gen_corpus.py) to a fresh store,
    input MB/s, against `casync make` (zstd) and `mksquashfs -comp zstd` on the same input,
    input warm in the page cache for every tool. REPS repetitions; median, min, max.
P2: a store whose all/ holds the 118,594 names of the real Galaxy listing (small generated
    contents): publish from scratch; then add one more image and publish: time and new
    metadata bytes (directory nodes and chunk lists, compressed).

usage: benches/publish.py [--size-mib 2048] [--reps 3] [--work /tmp/depotfs-bench]
Prints a Markdown section for benches/RESULTS.md.
"""
import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("DEPOTFS_BIN") or os.path.join(REPO, "target", "release", "depotfs")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def du(path):
    total = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            total += os.path.getsize(os.path.join(d, f))
    return total


def warm(path):
    for d, _, fs in os.walk(path):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def objects(store):
    out = {}
    root = os.path.join(store, "public", "objects")
    for d, _, fs in os.walk(root):
        for f in fs:
            out[os.path.basename(d) + f] = os.path.join(d, f)
    return out


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/depotfs-bench")
    a = ap.parse_args()
    if "DEPOTFS_BIN" not in os.environ:
        sh("cargo", "build", "--release", "--bin", "depotfs", cwd=REPO)
    os.makedirs(a.work, exist_ok=True)
    images = os.path.join(a.work, f"images-{a.size_mib}")
    if not os.path.isdir(images):
        sh("python3", os.path.join(HERE, "gen_corpus.py"), "images", "--out", images,
           "--total-mib", str(a.size_mib), "--seed", "1")
    size = du(images)
    warm(images)
    env = dict(os.environ, RUST_LOG="warn")
    res = {"depotfs add": [], "casync make": [], "mksquashfs zstd": []}
    stored = {}
    for _ in range(a.reps):
        for tool in res:
            out = os.path.join(a.work, "out")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            if tool == "depotfs add":
                store = os.path.join(out, "store")
                sh(BIN, "init", store, "--name", "bench", env=env)
                fn = lambda: sh(BIN, "add", store, "--to", "all", *sorted(
                    os.path.join(images, f) for f in os.listdir(images)), env=env)
                target = os.path.join(store, "public")
            elif tool == "casync make":
                fn = lambda: sh("casync", "make", "--compression=zstd",
                                "--store=" + os.path.join(out, "castr"),
                                os.path.join(out, "all.caidx"), images)
                target = out
            else:
                fn = lambda: sh("mksquashfs", images, os.path.join(out, "all.sqfs"),
                                "-comp", "zstd", "-noappend", "-quiet", "-no-progress")
                target = out
            res[tool].append(timed(fn))
            stored[tool] = du(target)
    mb = size / 1e6
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Publish throughput (P1) — {date}\n")
    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}. "
          f"Input: `benches/gen_corpus.py images --total-mib {a.size_mib} --seed 1` "
          f"({len(os.listdir(images))} squashfs images, {size / 2**20:.0f} MiB), warm in the page cache. "
          f"Command: `python3 benches/publish.py --size-mib {a.size_mib} --reps {a.reps}`.\n")
    print("| tool | median s | min s | max s | MB/s (median) | stored MiB | ratio vs casync make |")
    print("|---|---|---|---|---|---|---|")
    base = mb / statistics.median(res["casync make"])
    for tool, xs in res.items():
        med, lo, hi = stats(xs)
        print(f"| {tool} | {med:.2f} | {lo:.2f} | {hi:.2f} | {mb / med:.0f} | "
              f"{stored[tool] / 2**20:.0f} | {mb / med / base:.2f}x |")
    print()

    # P2: the 118,594-name all/.
    names = os.path.join(a.work, "names", "all")
    if not os.path.isdir(names):
        sh("python3", os.path.join(HERE, "gen_corpus.py"), "names", "--out", names)
    warm(names)
    scratch, one = [], []
    meta_bytes = []
    for _ in range(a.reps):
        store = os.path.join(a.work, "names-store")
        shutil.rmtree(store, ignore_errors=True)
        sh(BIN, "init", store, "--name", "bench", env=env)
        scratch.append(timed(lambda: sh(BIN, "add", store, names, env=env)))
        extra = os.path.join(a.work, "samtools:99.0--h0000000_0")
        with open(extra, "wb") as f:
            f.write(os.urandom(3 << 20))
        before = objects(store)
        one.append(timed(lambda: sh(BIN, "add", store, "--to", "all", extra, env=env)))
        new = {k: p for k, p in objects(store).items() if k not in before}
        meta = 0
        for p in new.values():
            with open(p, "rb") as f:
                kind = f.read(5)[4]
            if kind in (2, 3):  # chunk list, directory node
                meta += os.path.getsize(p)
        meta_bytes.append(meta)
    print("## Scale (P2): 118,594 names in all/\n")
    print("| measurement | median | min | max | target |")
    print("|---|---|---|---|---|")
    m = stats(scratch)
    print(f"| publish 118,594 names from scratch (s) | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | ≤ 30 s |")
    m = stats(one)
    print(f"| add + publish one more image (s) | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | ≤ 1 s |")
    m = stats(meta_bytes)
    print(f"| new metadata objects for that publish (KiB, compressed) | {m[0] / 1024:.1f} | "
          f"{m[1] / 1024:.1f} | {m[2] / 1024:.1f} | ≤ 64 KiB |")


if __name__ == "__main__":
    main()
