#!/usr/bin/env python3
"""Deterministic BioContainer-like corpus for depotfs benchmarks and tests.

Images are named from the real Galaxy listing (shared/data, or tests/data in the repo) and
built like BioContainers: a squashfs image (mksquashfs, zstd) of a conda-style root
filesystem. Images of the same tool share most package files byte for byte (as successive
builds of one tool do), so dedup across images is realistic. Each package mixes
incompressible data (already-compressed payloads) and compressible text/ELF-like data.

Every image carries /etc/start-files: the files a start of the tool reads (busybox, the
tool's own package, the first file of each shared package), so a container-start benchmark
can read exactly those (about an eighth of the image, like the issue's 41 MB image of which a
start touches 5.5 MB).

usage: gen_corpus.py images --out DIR --total-mib N [--seed S] [--scale K] [--versions V]
                            [--count C] [--busybox PATH]
           images named from the real listing, sizes = real sizes / K (default 16, clamped to
           2..64 MiB), at most V versions of each tool (default 4), at most C images
       gen_corpus.py container --out DIR --mib M [--seed S]   one M MiB image (P7's 41 MB case)
       gen_corpus.py big --out DIR [--mib 1024] [--seed 5]    one M MiB file `big:1.0--0`
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


def build_image(dest, name, base, seed, busybox, shared):
    """One squashfs image at `dest`: busybox, the shared packages, two of its own."""
    vr = random.Random(f"{seed}-{name}")
    rest, own = package(vr, base // 6), package(vr, base // 12)
    with tempfile.TemporaryDirectory() as root:
        for d in ("bin", "etc", "usr/local/bin", "tmp", "proc", "dev"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        start = ["/etc/tool"]
        if busybox:
            shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
            for applet in ("sh", "ls", "cat", "echo", "true", "wc"):
                os.symlink("busybox", os.path.join(root, "bin", applet))
            start.append("/bin/busybox")
        for p in shared:
            start.append("/usr/local/" + p[0][0])
        start += ["/usr/local/" + rel for rel, _ in own]
        for p in shared + [rest, own]:
            for rel, data in p:
                path = os.path.join(root, "usr/local", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        with open(os.path.join(root, "etc", "tool"), "w") as f:
            f.write(name + "\n")
        with open(os.path.join(root, "etc", "start-files"), "w") as f:
            f.write("".join(p + "\n" for p in start))
        subprocess.run(
            ["mksquashfs", root, dest, "-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-quiet",
             "-no-progress", "-mkfs-time", "0", "-all-time", "0", "-all-root"],
            check=True, stdout=subprocess.DEVNULL)
    return os.path.getsize(dest)


def tools_by_name(seed):
    """Real tool names with at least 3 versions, shuffled by `seed`: {tool: [(name, size)]}."""
    by_tool = {}
    for name, size, _mtime in listing():
        if ":" in name and "--" in name and not name.startswith("mulled"):
            by_tool.setdefault(name.split(":")[0], []).append((name, int(size)))
    tools = sorted(t for t, v in by_tool.items() if len(v) >= 3)
    random.Random(seed).shuffle(tools)
    return tools, by_tool


def build_images(out, total_mib, seed, busybox, scale=16, versions=4, count=0):
    tools, by_tool = tools_by_name(seed)
    os.makedirs(out, exist_ok=True)
    budget = total_mib << 20
    made = n = 0
    for tool in tools:
        if made >= budget or (count and n >= count):
            break
        chosen = sorted(by_tool[tool])[:versions]
        # Real images: median 244 MB; scale sizes down (16x by default), clamp to 2..64 MiB.
        base = max(2 << 20, min(64 << 20, chosen[0][1] // scale))
        tool_rng = random.Random(f"{seed}-{tool}")
        shared = [package(tool_rng, base // 6) for _ in range(4)]
        for name, _size in chosen:
            if made >= budget or (count and n >= count):
                break
            made += build_image(os.path.join(out, name), name, base, seed, busybox, shared)
            n += 1
    print(f"{out}: {len(os.listdir(out))} images, {made >> 20} MiB")


def build_container(out, mib, seed, busybox):
    """One image of about `mib` MiB, named after the first tool the seed picks."""
    tools, by_tool = tools_by_name(seed)
    name = sorted(by_tool[tools[0]])[0][0]
    os.makedirs(out, exist_ok=True)
    want = mib << 20
    base = int(want / (4 / 6 + 1 / 6 + 1 / 12))
    for _ in range(3):  # compression shrinks the image: correct the input size twice at most
        tool_rng = random.Random(f"{seed}-{tools[0]}")
        shared = [package(tool_rng, base // 6) for _ in range(4)]
        size = build_image(os.path.join(out, name), name, base, seed, busybox, shared)
        if abs(size - want) < want // 20:
            break
        base = int(base * want / size)
    print(f"{out}/{name}: {size / 1e6:.1f} MB")


def build_big(out, mib, seed):
    """`big:1.0--0`: `mib` MiB, each MiB 600,000 random bytes then text (compresses ~1.7x)."""
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    text = (b"lib/python3.11/site-packages import def return class " * 20000)
    path = os.path.join(out, "big:1.0--0")
    with open(path + ".tmp", "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(600_000) + text[: (1 << 20) - 600_000])
    os.rename(path + ".tmp", path)
    print(f"{path}: {mib} MiB")


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
    ap.add_argument("what", choices=["images", "container", "big", "names"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--total-mib", type=int, default=256)
    ap.add_argument("--scale", type=int, default=16)
    ap.add_argument("--versions", type=int, default=4)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=None, help="default 1 (images, container), 5 (big)")
    ap.add_argument("--busybox", default=shutil.which("busybox"))
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    if a.what == "images":
        build_images(a.out, a.total_mib, 1 if a.seed is None else a.seed, a.busybox, a.scale, a.versions,
                     a.count)
    elif a.what == "container":
        build_container(a.out, a.mib, 1 if a.seed is None else a.seed, a.busybox)
    elif a.what == "big":
        build_big(a.out, a.mib, 5 if a.seed is None else a.seed)
    else:
        build_names(a.out, a.limit)


if __name__ == "__main__":
    main()
