#!/usr/bin/env python3
"""Publish benchmarks (issue 2, targets P1 and P2), side by side in one run.

P1: add ~2 GiB of BioContainer-like squashfs images (benches/gen_corpus.py) to a fresh store,
    input MB/s, against `casync make` (zstd) and `mksquashfs -comp zstd` on the same input,
    input warm in the page cache for every tool. REPS repetitions; median, min, max. Then the
    two measurements that say what bounds it (issue 21):
    - the disk: the object files the depotfs store holds (same sizes, same directories),
      written the way `depotfs add` writes them (catalog/src/object_file.rs: O_TMPFILE, direct
      I/O from 64 KiB, the last partial block buffered, linked under the name; as many
      threads as its object writers; one syncfs at the end), timed: the disk's rate for that
      pattern, and the most input MB/s it allows depotfs (input bytes / that time);
    - the code: depotfs add and casync make again, both writing to tmpfs (--tmpfs, default
      /dev/shm: a fresh directory per run, deleted after it; the two alternated), with the CPU
      seconds each used.
P2: a store whose all/ holds the 118,594 names of the real Galaxy listing (small generated
    contents): publish from scratch; then add one more image and publish: time and new
    metadata bytes (directory nodes and chunk lists, compressed).

usage: benches/publish.py [--size-mib 2048] [--reps 3] [--peer-reps 1] [--names-limit 0]
                          [--tmpfs /dev/shm] [--work /tmp/depotfs-bench] [--json OUT]
Writes the measurements as JSON to OUT (read by benches/report.py) and prints a Markdown table.
`mksquashfs` (not a target's peer, ~1 min per run) runs --peer-reps times.
"""
import argparse
import ctypes
import fcntl
import glob
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


def children_cpu():
    """User + system CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_cpu(fn):
    """(wall seconds, CPU seconds of the child processes) of `fn`."""
    c = children_cpu()
    t = timed(fn)
    return t, children_cpu() - c


def conditions():
    """The load and the CPU clock now: every part of P1 says under what it was measured."""
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    return f"load {load}, CPUs at {'/'.join(f'{m:.0f}' for m in mhz) or '?'} MHz"


def fstype(path):
    """The type of the file system `path` is on (the topmost of stacked mounts)."""
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
    return (r.stdout.split() or [""])[-1]


def store_objects(store):
    """(path relative to public/objects, size) of every object file of a depotfs store."""
    root = os.path.join(store, "public", "objects")
    out = []
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out.append((os.path.relpath(p, root), os.path.getsize(p)))
    return out


LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
DIO_ALIGN = 4096  # object_file.rs DIO_ALIGN
DIO_MIN = 64 * 1024  # object_file.rs DIO_MIN: smaller objects are written buffered


def libc_check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def write_like_depotfs(objs, out, workers):
    """Write files of the sizes and names `objs` under OUT/objects the way `depotfs add`
    writes its objects (catalog/src/object_file.rs `create_anonymous`, `write_direct`): each
    made anonymous in its directory (O_TMPFILE), objects of DIO_MIN bytes or more with direct
    I/O for their whole 4 KiB blocks and the last partial block buffered after clearing
    O_DIRECT (its writeback started at once: fadvise DONTNEED), fchmod 0644, linked under its
    name; `workers` threads (its object writers); then one syncfs of the file system
    (`Objects::flush` before a revision is recorded). The bytes are random (the store's are
    mostly compressed data). Returns the seconds from the first open
    to the end of the syncfs. What depotfs does besides (read, chunk, hash, compress, its
    catalog) is not done: this is what the disk alone allows."""
    root = os.path.join(out, "objects")
    for b in range(256):
        os.makedirs(os.path.join(root, f"{b:02x}"), exist_ok=True)
    pool = 64 << 20
    if max(s for _, s in objs) > pool // 2:
        raise RuntimeError("an object larger than 32 MiB: not a depotfs chunk store")
    buf = mmap.mmap(-1, pool)  # page-aligned, as direct I/O needs
    buf.write(os.urandom(pool))
    mv = memoryview(buf)
    errors = []
    direct_ok = [True]

    def pwrite_all(fd, data, at):
        done = 0
        while done < len(data):
            n = os.pwrite(fd, data[done:], at + done)
            if n == 0:
                raise OSError("short write")
            done += n

    def one(i, rel, size):
        off = (i * 37 * DIO_ALIGN) % (pool - size) // DIO_ALIGN * DIO_ALIGN
        data = mv[off:off + size]
        dest = os.path.join(root, rel)
        direct = size >= DIO_MIN and direct_ok[0]
        flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
        fd = os.open(os.path.dirname(dest), flags | (os.O_DIRECT if direct else 0), 0o644)
        try:
            whole = size // DIO_ALIGN * DIO_ALIGN if direct else 0
            if whole:
                try:
                    pwrite_all(fd, data[:whole], 0)
                except OSError as e:
                    if e.errno != 22:  # EINVAL: direct I/O refused here; depotfs then writes buffered
                        raise
                    direct_ok[0] = False
                    whole = 0
            if whole < size:
                if direct:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                pwrite_all(fd, data[whole:], whole)
                if direct:
                    # object_file.rs write_aligned: the buffered last block's writeback started now.
                    os.posix_fadvise(fd, whole, size - whole, os.POSIX_FADV_DONTNEED)
            os.fchmod(fd, 0o644)
            # os.link(follow_symlinks=True) calls link(2) here, which does not follow /proc's link.
            libc_check(LIBC.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, dest.encode(),
                                   AT_SYMLINK_FOLLOW), f"linkat {dest}")
        finally:
            os.close(fd)

    def worker(k):
        try:
            for i in range(k, len(objs), workers):
                one(i, *objs[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    if errors:
        raise errors[0]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc_check(LIBC.syncfs(fd), f"syncfs {root}")
    finally:
        os.close(fd)
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
    ap.add_argument("--tmpfs", default="/dev/shm",
                    help="P1 again with every output in a new directory here, a tmpfs ('' to skip)")
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
    workers = 8  # publisher/src/store.rs BACKGROUND_WRITERS: the threads that write depotfs add's objects
    res = {"depotfs add": [], "casync make": [], "mksquashfs zstd": []}
    cpu = {"depotfs add": []}
    disk_s, stored_objs = [], []
    stored = {}
    outs = os.path.join(a.work, "out")
    shutil.rmtree(outs, ignore_errors=True)
    info = {"conditions_publish": conditions()}
    for rep in range(a.reps):
        for n, tool in enumerate([*res, "disk"]):
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
            elif tool == "mksquashfs zstd":
                fn = lambda: (sh("mksquashfs", images, os.path.join(out, "all.sqfs"),
                                 "-comp", "zstd", "-noappend", "-quiet", "-no-progress"),
                              sh("sync", "-f", out))
                target = out
            # The previous tool's output must be on disk first: depotfs add ends with a
            # syncfs (its crash safety), which would otherwise pay for another tool's writeback.
            os.sync()
            if tool == "disk":
                # The disk alone: this repetition's depotfs objects written again as depotfs
                # writes them, with nothing else to do.
                objs = store_objects(store)
                disk_s.append(write_like_depotfs(objs, out, workers))
                stored_objs.append(sum(sz for _, sz in objs))
                continue
            wall, used = timed_cpu(fn)
            res[tool].append(wall)
            if tool in cpu:
                cpu[tool].append(used)
            stored[tool] = du(target)
    shutil.rmtree(outs, ignore_errors=True)
    mb = size / 1e6
    m = {}
    keys = {"depotfs add": "p1.depotfs_mbps", "casync make": "p1.casync_mbps", "mksquashfs zstd": "p1.mksquashfs_mbps"}
    for tool, xs in res.items():
        m[keys[tool]] = {"label": f"publish {len(files)} images ({size / 2**20:.0f} MiB): {tool}", "unit": "MB/s",
                         "values": [mb / x for x in xs], "better": "higher",
                         "extra": f"stored {stored.get(tool, 0) / 2**20:.0f} MiB"}
    gib = size / 2**30
    m["p1.depotfs_cpu"] = {"label": "depotfs add: CPU seconds (user + system) per GiB of input", "unit": "CPU s/GiB",
                           "values": [c / gib for c in cpu["depotfs add"]], "better": "lower"}
    if disk_s:
        n_objs = len(objs)
        m["p1.disk_write_mbps"] = {
            "label": f"the disk alone: the depotfs store's {n_objs:,} object files written as depotfs writes them "
                     f"(O_TMPFILE, direct I/O from 64 KiB, {workers} threads) + syncfs",
            "unit": "MB/s", "values": [b / 1e6 / t for b, t in zip(stored_objs, disk_s)], "better": "higher",
            "extra": f"{statistics.median(stored_objs) / 2**20:.0f} MiB"}
        m["p1.disk_ceiling_mbps"] = {
            "label": "the most input this disk allows depotfs add: input bytes / the time to write what it stores",
            "unit": "MB/s", "values": [mb / t for t in disk_s], "better": "higher"}
    commands = [
        f"input: `gen_corpus.py images --total-mib {a.size_mib} --seed 1` ({len(files)} squashfs images, "
        f"{size / 2**20:.0f} MiB), read once before (warm in the page cache)",
        "depotfs init STORE --name bench; depotfs add STORE --to all IMAGE...",
        "casync make --compression=zstd --store=OUT/castr OUT/all.caidx IMAGES_DIR && sync -f OUT",
        "mksquashfs IMAGES_DIR OUT/all.sqfs -comp zstd -noappend -quiet -no-progress && sync -f OUT",
        "every tool is timed until its output is on disk (depotfs add syncs its store itself)",
        "the disk alone: each repetition's depotfs object files (names, sizes) written again with random bytes by "
        f"publish.py's `write_like_depotfs` ({workers} threads: O_TMPFILE, O_DIRECT whole 4 KiB blocks for "
        "objects >= 64 KiB, last partial block buffered, fchmod, linkat) and one syncfs, into a new directory",
    ]

    # P1 with the disk taken out: both tools write to tmpfs (the code's own ratio).
    tm = a.tmpfs
    if tm and a.reps:
        why = None
        if not os.path.isdir(tm):
            why = f"{tm} is not a directory"
        elif fstype(tm) != "tmpfs":
            why = f"{tm} is not on tmpfs ({fstype(tm) or 'unknown'})"
        elif shutil.disk_usage(tm).free < 2 * size:
            why = f"{tm} has {shutil.disk_usage(tm).free / 2**30:.1f} GiB free, needs {2 * size / 2**30:.1f}"
        if why:
            info["p1_tmpfs"] = f"not measured: {why}"
        else:
            info["conditions_publish_tmpfs"] = conditions()
            tres = {"depotfs add": [], "casync make": []}
            tcpu = {"depotfs add": [], "casync make": []}
            for rep in range(a.reps):
                for tool in tres:
                    # A fresh directory per run, deleted right after it: tmpfs has no
                    # inode reuse delay, but outputs kept in memory slowed later runs.
                    out = tempfile.mkdtemp(prefix="depotfs-p1-", dir=tm)
                    try:
                        if tool == "depotfs add":
                            store = os.path.join(out, "store")
                            sh(BIN, "init", store, "--name", "bench", env=env)
                            fn = lambda: sh(BIN, "add", store, "--to", "all", *files, env=env)
                        else:
                            fn = lambda: (sh("casync", "make", "--compression=zstd",
                                             "--store=" + os.path.join(out, "castr"),
                                             os.path.join(out, "all.caidx"), images),
                                          sh("sync", "-f", out))
                        os.sync()
                        wall, used = timed_cpu(fn)
                        tres[tool].append(wall)
                        tcpu[tool].append(used)
                    finally:
                        shutil.rmtree(out, ignore_errors=True)
            for tool, key in (("depotfs add", "depotfs"), ("casync make", "casync")):
                m[f"p1.tmpfs.{key}_mbps"] = {
                    "label": f"the same publish with the output on tmpfs: {tool}", "unit": "MB/s",
                    "values": [mb / x for x in tres[tool]], "better": "higher"}
                m[f"p1.tmpfs.{key}_cpu"] = {
                    "label": f"on tmpfs: {tool}, CPU seconds (user + system) per GiB of input", "unit": "CPU s/GiB",
                    "values": [c / gib for c in tcpu[tool]], "better": "lower"}
            # The rates each tool's CPU cost allows with every core it can use free (depotfs: all
            # cores; casync make is single-threaded: one): the code's ratio whatever the load.
            cores = os.cpu_count() or 1
            for tool, key, n_cores in (("depotfs add", "depotfs", cores), ("casync make", "casync", 1)):
                m[f"p1.tmpfs.{key}_cpu_bound_mbps"] = {
                    "label": f"on tmpfs: what that CPU cost allows {tool} on {n_cores} free core"
                             f"{'s' if n_cores > 1 else ''} (input MB / (CPU s / {n_cores}))",
                    "unit": "MB/s", "values": [mb / (c / n_cores) for c in tcpu[tool]], "better": "higher"}
            commands.append(f"on tmpfs: the same depotfs add and casync make commands, OUT a new directory in {tm} "
                            "per run, deleted after it; depotfs and casync alternated; CPU = the child's "
                            "user + system time (getrusage)")
    med = statistics.median
    if disk_s and res["casync make"] and res["depotfs add"]:
        ceil = med(m["p1.disk_ceiling_mbps"]["values"])
        cas = med(m["p1.casync_mbps"]["values"])
        dep = med(m["p1.depotfs_mbps"]["values"])
        w = m["p1.disk_write_mbps"]["values"]
        info["p1_disk_ceiling"] = (
            f"depotfs add stored {med(stored_objs) / 2**20:.0f} MiB of objects for {size / 2**20:.0f} MiB of input "
            f"({med(stored_objs) / size:.2f} bytes per input byte); this disk wrote those files, as depotfs writes "
            f"them and with nothing else to do, at {med(w):.0f} MB/s ({min(w):.0f}–{max(w):.0f}, n = {len(w)}), "
            f"so it allows depotfs add at most {ceil:.0f} MB/s of input = {ceil / cas:.2f}x casync make's "
            f"{cas:.0f} MB/s in this run; depotfs add reached {dep:.0f} MB/s ({100 * dep / ceil:.0f} % of that "
            f"ceiling) at {med(m['p1.depotfs_cpu']['values']):.2f} CPU s/GiB "
            f"({med(m['p1.depotfs_cpu']['values']) * dep * 1e6 / 2**30:.2f} of {os.cpu_count()} cores busy)")
    if "p1.tmpfs.depotfs_mbps" in m:
        z = med(m["p1.tmpfs.depotfs_mbps"]["values"])
        y = med(m["p1.tmpfs.casync_mbps"]["values"])
        zc = med(m["p1.tmpfs.depotfs_cpu"]["values"])
        yc = med(m["p1.tmpfs.casync_cpu"]["values"])
        cores = os.cpu_count() or 1
        # What the load left each tool shows in its cores busy; the CPU cost per GiB does not
        # depend on it (much): the ratio both tools would reach with every core they can use
        # (casync make is single-threaded) is the code's own ratio on this machine.
        full_d = med(m["p1.tmpfs.depotfs_cpu_bound_mbps"]["values"])
        full_c = med(m["p1.tmpfs.casync_cpu_bound_mbps"]["values"])
        info["p1_tmpfs"] = (
            f"with both outputs on tmpfs (no disk writes): depotfs add {z:.0f} MB/s at {zc:.2f} CPU s/GiB "
            f"({zc * z * 1e6 / 2**30:.2f} of {cores} cores busy), casync make {y:.0f} MB/s at {yc:.2f} CPU s/GiB "
            f"({yc * y * 1e6 / 2**30:.2f} cores; it uses one): {z / y:.2f}x. At these CPU costs, with every core "
            f"each can use free, depotfs would reach {full_d:.0f} MB/s on {cores} cores and casync {full_c:.0f} "
            f"MB/s on one: {full_d / full_c:.2f}x")

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
    out = {"script": "publish", "argv": sys.argv[1:], "measurements": m, "commands": commands, "info": info}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print("| measurement | median | min | max | unit |")
    print("|---|---|---|---|---|")
    for v in m.values():
        xs = v["values"]
        print(f"| {v['label']} | {statistics.median(xs):.3g} | {min(xs):.3g} | {max(xs):.3g} | {v['unit']} |")
    for k, v in info.items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
