#!/usr/bin/env python3
"""Deterministic BioContainer-like corpus for depotfs benchmarks and tests.

Images are named from the real Galaxy listing (shared/data, or tests/data in the repo) and
built like BioContainers: a squashfs image (mksquashfs, zstd) of a conda-style root
filesystem. Images of the same tool share most package files byte for byte (as successive
builds of one tool do), so dedup across images is realistic. Each package mixes
incompressible data (already-compressed payloads) and compressible text/ELF-like data.

usage: gen_corpus.py images --out DIR --total-mib N [--seed S] [--busybox PATH]
       gen_corpus.py names  --out DIR [--limit N]      (118,594 small files named as in all/)
"""
import argparse
import gzip
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LISTINGS = [
    os.path.join(HERE, "..", "tests", "data", "cvmfs_singularity_all_2026-01-28.tsv.gz"),
    os.path.join(HERE, "..", "..", "shared", "data", "cvmfs_singularity_all_2026-01-28.tsv.gz"),
]


def listing():
    for p in LISTINGS:
        if os.path.exists(p):
            with gzip.open(p, "rt") as f:
                next(f)
                return [line.rstrip("\n").split("\t") for line in f]
    sys.exit("gen_corpus: no listing found in " + " or ".join(LISTINGS))


WORDS = ("lib bin share conda pkgs site-packages python3 samtools htslib bwa zlib libgcc "
         "openssl ncurses readline perl import def return class self None True False int "
         "char void struct static const include define ifdef endif GLIBC_2.17 .text .data").split()


_TEXT = None


def text_block():
    """8 MiB of ELF/source-like text, made once; text files are slices of it."""
    global _TEXT
    if _TEXT is None:
        r = random.Random(0)
        _TEXT = " ".join(r.choices(WORDS, k=(8 << 20) // 5)).encode()
    return _TEXT


def package(rng, size):
    """One package: a list of (relative path, bytes)."""
    files = []
    left = size
    i = 0
    while left > 0:
        n = min(left, rng.choice([4096, 30000, 120000, 400000, 1500000]))
        if rng.random() < 0.45:
            data = rng.randbytes(n)  # compressed payloads, images, .gz inside packages
        else:
            block = text_block()
            off = rng.randrange(len(block) - n)
            data = block[off:off + n - n // 16] + rng.randbytes(n // 16)
        files.append((f"lib/pkg{rng.randrange(1 << 30):x}/file{i}", data))
        left -= n
        i += 1
    return files


def build_images(out, total_mib, seed, busybox):
    rng = random.Random(seed)
    rows = listing()
    # Group real names by tool, keep tools with several versions.
    by_tool = {}
    for name, size, _mtime in rows:
        if ":" in name and "--" in name and not name.startswith("mulled"):
            by_tool.setdefault(name.split(":")[0], []).append((name, int(size)))
    tools = sorted(t for t, v in by_tool.items() if len(v) >= 3)
    rng.shuffle(tools)
    os.makedirs(out, exist_ok=True)
    budget = total_mib << 20
    made = 0
    for tool in tools:
        if made >= budget:
            break
        versions = sorted(by_tool[tool])[:4]
        # Real images: median 244 MB; scale sizes down 16x, cap at 64 MiB.
        base = max(2 << 20, min(64 << 20, versions[0][1] // 16))
        tool_rng = random.Random(f"{seed}-{tool}")
        shared = [package(tool_rng, base // 6) for _ in range(5)]
        for name, _size in versions:
            if made >= budget:
                break
            vr = random.Random(f"{seed}-{name}")
            pkgs = shared[:4] + [package(vr, base // 6), package(vr, base // 12)]
            with tempfile.TemporaryDirectory() as root:
                for d in ("bin", "etc", "usr/local/bin", "tmp", "proc", "dev"):
                    os.makedirs(os.path.join(root, d), exist_ok=True)
                if busybox:
                    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
                    for applet in ("sh", "ls", "cat", "echo", "true", "wc"):
                        os.symlink("busybox", os.path.join(root, "bin", applet))
                for p in pkgs:
                    for rel, data in p:
                        path = os.path.join(root, "usr/local", rel)
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        with open(path, "wb") as f:
                            f.write(data)
                with open(os.path.join(root, "etc", "tool"), "w") as f:
                    f.write(name + "\n")
                dest = os.path.join(out, name)
                subprocess.run(
                    ["mksquashfs", root, dest, "-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-quiet",
                     "-no-progress", "-mkfs-time", "0", "-all-time", "0", "-all-root"],
                    check=True, stdout=subprocess.DEVNULL)
                made += os.path.getsize(dest)
    print(f"{out}: {len(os.listdir(out))} images, {made >> 20} MiB")


def build_names(out, limit):
    rows = listing()
    if limit:
        rows = rows[:limit]
    os.makedirs(out, exist_ok=True)
    for name, size, mtime in rows:
        p = os.path.join(out, name)
        if name == "bin":
            os.makedirs(p, exist_ok=True)
            continue
        with open(p, "w") as f:
            f.write(f"{name} {size}\n")
        os.utime(p, (int(mtime), int(mtime)))
    print(f"{out}: {len(rows)} names")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["images", "names"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--total-mib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--busybox", default=shutil.which("busybox"))
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    if a.what == "images":
        build_images(a.out, a.total_mib, a.seed, a.busybox)
    else:
        build_names(a.out, a.limit)


if __name__ == "__main__":
    main()
