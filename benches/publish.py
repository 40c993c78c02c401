#!/usr/bin/env python3
"""Publish benchmarks (issue 2, targets P1 and P2), side by side in one run.

P1: add ~2 GiB of BioContainer-like squashfs images (benches/gen_corpus.py) to a fresh store,
    input MB/s, against `casync make` (zstd) and `mksquashfs -comp zstd` on the same input,
    input warm in the page cache for every tool. REPS repetitions; median, min, max.
P2: a store whose all/ holds the 118,594 names of the real Galaxy listing (small generated
    contents): publish from scratch; then add one more image and publish: time and new
    metadata bytes (directory nodes and chunk lists, compressed).

usage: benches/publish.py [--size-mib 2048] [--reps 3] [--peer-reps 1] [--names-limit 0]
                          [--work /tmp/depotfs-bench] [--json OUT]
Writes the measurements as JSON to OUT (read by benches/report.py) and prints a Markdown table.
`mksquashfs` (not a target's peer, ~1 min per run) runs --peer-reps times.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("DEPOTFS_BIN") or os.path.join(REPO, "target", "release", "depotfs")


def sh(*cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


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
    ap.add_argument("--peer-reps", type=int, default=1, help="repetitions of mksquashfs")
    ap.add_argument("--names-limit", type=int, default=0, help="P2 with only the first N names (0: all)")
    ap.add_argument("--work", default="/tmp/depotfs-bench")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if "DEPOTFS_BIN" not in os.environ:
        sh("cargo", "build", "--release", "--bin", "depotfs", cwd=REPO)
    os.makedirs(a.work, exist_ok=True)
    images = os.path.join(a.work, f"images-{a.size_mib}")
    if not os.path.isdir(images):
        sh(sys.executable, os.path.join(HERE, "gen_corpus.py"), "images", "--out", images + ".tmp",
           "--total-mib", str(a.size_mib), "--seed", "1")
        os.rename(images + ".tmp", images)
    size = du(images)
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    warm(images)
    env = dict(os.environ, RUST_LOG="warn")
    res = {"depotfs add": [], "casync make": [], "mksquashfs zstd": []}
    stored = {}
    outs = os.path.join(a.work, "out")
    shutil.rmtree(outs, ignore_errors=True)
    for rep in range(a.reps):
        for n, tool in enumerate(res):
            if tool == "mksquashfs zstd" and rep >= a.peer_reps:
                continue
            # A new output directory per tool and repetition, all deleted only at the end:
            # ext4 here (no journal) skips inodes freed in the last ~35 s when it allocates,
            # reading inode tables to find them (`recently_deleted`, 21 % of a depotfs add
            # made right after the previous output was deleted, seen with perf), which would
            # charge a tool for whatever ran before it.
            out = os.path.join(outs, f"{rep}-{n}")
            os.makedirs(out)
            if tool == "depotfs add":
                store = os.path.join(out, "store")
                sh(BIN, "init", store, "--name", "bench", env=env)
                fn = lambda: sh(BIN, "add", store, "--to", "all", *files, env=env)
                target = os.path.join(store, "public")
            # Every tool is timed until its output is on disk: depotfs add ends with a
            # syncfs of its store (a publish must survive a crash before it is served); the
            # peers do not sync, so `sync -f OUT` (syncfs) follows them inside the timing.
            elif tool == "casync make":
                fn = lambda: (sh("casync", "make", "--compression=zstd",
                                 "--store=" + os.path.join(out, "castr"),
                                 os.path.join(out, "all.caidx"), images),
                              sh("sync", "-f", out))
                target = out
            else:
                fn = lambda: (sh("mksquashfs", images, os.path.join(out, "all.sqfs"),
                                 "-comp", "zstd", "-noappend", "-quiet", "-no-progress"),
                              sh("sync", "-f", out))
                target = out
            # The previous tool's output must be on disk first: depotfs add ends with a
            # syncfs (its crash safety), which would otherwise pay for another tool's writeback.
            os.sync()
            res[tool].append(timed(fn))
            stored[tool] = du(target)
    shutil.rmtree(outs, ignore_errors=True)
    mb = size / 1e6
    m = {}
    keys = {"depotfs add": "p1.depotfs_mbps", "casync make": "p1.casync_mbps", "mksquashfs zstd": "p1.mksquashfs_mbps"}
    for tool, xs in res.items():
        m[keys[tool]] = {"label": f"publish {len(files)} images ({size / 2**20:.0f} MiB): {tool}", "unit": "MB/s",
                         "values": [mb / x for x in xs], "better": "higher",
                         "extra": f"stored {stored.get(tool, 0) / 2**20:.0f} MiB"}
    commands = [
        f"input: `gen_corpus.py images --total-mib {a.size_mib} --seed 1` ({len(files)} squashfs images, "
        f"{size / 2**20:.0f} MiB), read once before (warm in the page cache)",
        "depotfs init STORE --name bench; depotfs add STORE --to all IMAGE...",
        "casync make --compression=zstd --store=OUT/castr OUT/all.caidx IMAGES_DIR && sync -f OUT",
        "mksquashfs IMAGES_DIR OUT/all.sqfs -comp zstd -noappend -quiet -no-progress && sync -f OUT",
        "every tool is timed until its output is on disk (depotfs add syncs its store itself)",
    ]

    # P2: the 118,594-name all/.
    names = os.path.join(a.work, f"names-{a.names_limit}", "all")
    if not os.path.isdir(names):
        lim = ["--limit", str(a.names_limit)] if a.names_limit else []
        sh(sys.executable, os.path.join(HERE, "gen_corpus.py"), "names", "--out", names, *lim)
    n_names = len(os.listdir(names))
    warm(names)
    scratch, one = [], []
    meta_bytes = []
    for stale in glob.glob(os.path.join(a.work, "names-store*")):
        shutil.rmtree(stale, ignore_errors=True)
    for rep in range(a.reps):
        # A new directory per repetition, the old ones deleted only at the end: ext4 skips
        # inodes freed in the last ~35 s when allocating, reading inode tables to find them
        # (27 % of the time of a run right after deleting the previous 118,594-file store).
        store = os.path.join(a.work, f"names-store-{rep}")
        sh(BIN, "init", store, "--name", "bench", env=env)
        os.sync()
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
        meta_bytes.append(meta / 1024)
    for rep in range(a.reps):
        shutil.rmtree(os.path.join(a.work, f"names-store-{rep}"), ignore_errors=True)
    m["p2.scratch_s"] = {"label": f"publish {n_names:,} names in all/ from scratch", "unit": "s",
                         "values": scratch, "better": "lower"}
    m["p2.one_more_s"] = {"label": "add + publish one more image (3 MiB) to that all/", "unit": "s",
                          "values": one, "better": "lower"}
    m["p2.meta_kib"] = {"label": "new metadata objects of that publish (chunk lists, directory nodes; compressed)",
                        "unit": "KiB", "values": meta_bytes, "better": "lower"}
    commands += [f"P2: `gen_corpus.py names` ({n_names:,} small files), `depotfs add STORE NAMES_DIR`; then "
                 "`depotfs add STORE --to all samtools:99.0--h0000000_0` (3 MiB of random bytes)"]
    m = {k: v for k, v in m.items() if v["values"]}  # --reps 0 only prepares the data
    out = {"script": "publish", "argv": sys.argv[1:], "measurements": m, "commands": commands, "info": {}}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print("| measurement | median | min | max | unit |")
    print("|---|---|---|---|---|")
    for v in m.values():
        xs = v["values"]
        print(f"| {v['label']} | {statistics.median(xs):.3g} | {min(xs):.3g} | {max(xs):.3g} | {v['unit']} |")


if __name__ == "__main__":
    main()
