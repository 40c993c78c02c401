#!/usr/bin/env python3
"""Client read benchmarks (issue 6, targets P3-P7, P9, P10), side by side in one run.

Sections (--sections, comma separated; all by default):
- read: a 1 GiB image (gen_corpus.py big), sequential read: depotfs cold over loopback HTTP
  (nginx), warm from its local cache (page cache dropped), hot (page cache); casync mount over
  HTTP from the same nginx; squashfuse on a local squashfs; a plain local file cold and hot.
- ls: `ls -f` / `ls -l` of a 118,594-entry all/ (names of the real listing): depotfs fresh mount
  over HTTP and warm; ext4 cold and warm; squashfuse_ll and squashfuse.
- container: a ~41 MB BioContainer-like image (gen_corpus.py container) on the depotfs mount
  (cold over HTTP) opened with squashfuse, chroot, busybox reads the files a tool start reads
  (/etc/start-files); against the same on a local image; bytes fetched against bytes read
  (touched) through depotfs. Then, when `depotfs add --help` shows `--trace` and `depotfs mount
  --help` shows `--record`: record one start with `mount --record`, publish the trace with
  `add --trace`, and measure the start again with prefetch from the access list.
- rss: P9, VmHWM/VmRSS of the `depotfs mount` process (/proc/PID/status) after `ls -f` of the
  118,594-name all/ and reading the big image 5 times (cold, hot, warm, hot, warm).
- parallel: P10, 16 different images (gen_corpus.py images --versions 1 --count 16) read cold
  over HTTP by 16 parallel readers against one reader reading them one after another.

--keep-cpus-awake: for the whole run, one SCHED_IDLE busy loop per CPU, so an idle CPU spins
instead of halting. Any runnable task preempts a SCHED_IDLE one at once, so the loops take
(almost) no time from the work; what they remove is the wake-up of a halted virtual CPU (a VM
exit and the host's rescheduling of the vCPU, tens of microseconds) from every hand-off between
processes: FUSE request -> daemon -> HTTP server -> daemon -> reply. It tells how much of a
FUSE figure is this VM's idle wake-up latency (issue 21: squashfuse_ll `ls -l` 2 s with one core
busy, 12.6 s idle); bare-metal nodes wake from shallow C-states in microseconds. Measured
2026-12-07 (benches/RESULTS.md, session 11): the loops slowed both P7 sides by ~25 % and left
the ratio as it was, so the option answers the question but does not flatter a figure.

Needs root (drop_caches, mounts), nginx, casync, squashfs-tools, squashfuse, busybox-static, fuse3.
usage: benches/read.py [--reps 3] [--big-mib 1024] [--ct-mib 41] [--par-scale 16]
                       [--work /tmp/depotfs-read] [--sections ...] [--json OUT] [--keep-cpus-awake]
Writes the measurements as JSON to OUT (read by benches/report.py) and prints a Markdown table.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("DEPOTFS_BIN") or os.path.join(REPO, "target", "release", "depotfs")
ENV = dict(os.environ, RUST_LOG="warn")
SECTIONS = ["read", "ls", "container", "rss", "parallel"]


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def sh_loud(*cmd, **kw):
    """Run a command whose failure must be explained: its stderr goes into the exception."""
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


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


# The largest chunk `depotfs add` cuts (catalog/src/chunking.rs CHUNK_MAX).
CHUNK_MAX = 1 << 20


def jumps(reads, near=CHUNK_MAX):
    """How many of `reads` ((offset, length) in the order the daemon got them) start farther
    than `near` from every byte read before: reads of a chunk no earlier read touched (a chunk
    is at most `near` long), which without an access list nothing could have fetched sooner."""
    seen = []  # (start, end) of the reads so far
    n = 0
    for off, length in reads:
        if all(off + near <= s or off >= e + near for s, e in seen):
            n += 1
        seen.append((off, off + length))
    return n


def cold_latencies(url_base, store_public, cache_dir, k=16):
    """(seconds per cold object from the server, seconds per cold cache-file load), medians of
    `k` each, with the page cache dropped before each side. Both of 64 KiB or more (chunks):
    `k` of the store's objects fetched one at a time over one keep-alive connection, and `k`
    of a mount's cache files read whole (the daemon loads those with direct I/O: the same disk
    reads)."""
    import http.client
    from urllib.parse import urlsplit

    def spread(paths):
        paths = sorted(paths)
        step = max(1, len(paths) // k)
        return paths[::step][:k]

    objects = spread(os.path.relpath(os.path.join(d, f), store_public)
                     for d, _, fs in os.walk(os.path.join(store_public, "objects")) for f in fs
                     if os.path.getsize(os.path.join(d, f)) >= 64 << 10)
    cached = spread(os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs
                    if os.path.getsize(os.path.join(d, f)) >= 64 << 10)
    u = urlsplit(url_base)
    drop()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    http_s = []
    for rel in objects:
        t = time.perf_counter()
        conn.request("GET", u.path.rstrip("/") + "/" + rel)
        r = conn.getresponse()
        body = r.read()
        http_s.append(time.perf_counter() - t)
        if r.status != 200 or not body:
            raise RuntimeError(f"GET {rel}: {r.status}")
    conn.close()
    drop()
    load_s = [timed(lambda: read_all(p)) for p in cached]
    if not http_s or not load_s:
        raise RuntimeError(f"no objects in {store_public} or no cache files in {cache_dir}")
    return statistics.median(http_s), statistics.median(load_s)


def folio_pages(path, limit=256 << 20):
    """Mean size, in 4 KiB pages, of the page-cache folios holding the first `limit` bytes of
    `path` (which must be cached already): its pages are mapped, their frames looked up in
    /proc/self/pagemap and their flags in /proc/kpageflags (root). Explains P6: the kernel's
    FUSE page cache is kept in 4 KiB folios where ext4 uses large ones."""
    import ctypes
    import mmap
    import struct
    page = mmap.PAGESIZE
    with open(path, "rb") as f:
        n = min(os.fstat(f.fileno()).st_size, limit) // page
        # A private mapping is writable for ctypes, and reading it maps the cached pages.
        m = mmap.mmap(f.fileno(), n * page, access=mmap.ACCESS_COPY)
    arr = (ctypes.c_char * (n * page)).from_buffer(m)
    base = ctypes.addressof(arr) // page
    folios = 0
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pm, open("/proc/kpageflags", "rb", buffering=0) as kf:
            for i in range(n):
                arr[i * page]  # fault the page in (it is in the page cache)
                pm.seek((base + i) * 8)
                e = struct.unpack("<Q", pm.read(8))[0]
                if not e >> 63:
                    raise RuntimeError(f"{path}: page {i} not mapped")
                kf.seek((e & ((1 << 55) - 1)) * 8)
                flags = struct.unpack("<Q", kf.read(8))[0]
                tail = flags >> 16 & 1  # KPF_COMPOUND_TAIL: part of a folio counted at its head
                folios += not tail
    finally:
        del arr
        m.close()
    return n / max(folios, 1)


class CpuShare:
    """Share of all CPUs' time spent busy (not idle, not waiting for I/O) between start() and
    stop(), from /proc/stat. Explains P10: how much of the machine one reader leaves."""

    @staticmethod
    def _now():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3], v[4]  # all, idle, iowait

    def __enter__(self):
        self.t0, self.idle0, self.wait0 = self._now()
        return self

    def __exit__(self, *exc):
        t1, idle1, wait1 = self._now()
        t = max(t1 - self.t0, 1)
        self.iowait = 100.0 * (wait1 - self.wait0) / t
        self.busy = 100.0 - 100.0 * (idle1 - self.idle0) / t - self.iowait


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process `pid` and its threads (/proc)."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def children_of(ppid):
    """The process ids whose parent is `ppid` (nginx's workers)."""
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        yield int(p)
            except (OSError, ValueError):
                pass


def children_cpu(ppid):
    """CPU seconds of the processes whose parent is `ppid`."""
    total = 0.0
    for p in children_of(ppid):
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError):
            pass
    return total


def run_ns(pid):
    """Nanoseconds on a CPU of every live thread of process `pid` (/proc/PID/task/*/schedstat):
    finer than `cpu_seconds`' 10 ms ticks, for operations of a tenth of a second."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def children_run_ns(ppid):
    """`run_ns` of the processes whose parent is `ppid`."""
    total = 0
    for p in children_of(ppid):
        try:
            total += run_ns(p)
        except OSError:
            pass
    return total


SPINNING = []  # the --keep-cpus-awake busy loops, while they run


def keep_cpus_awake():
    """Start one SCHED_IDLE busy loop per CPU (see --keep-cpus-awake); they end with this
    process (each exits when its stdin, a pipe from here, reaches end of file)."""
    loop = ("import os, select, sys\n"
            "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
            "while not select.select([sys.stdin], [], [], 0)[0]:\n"
            "    for _ in range(100000): pass\n")
    for cpu in range(os.cpu_count()):
        p = subprocess.Popen([sys.executable, "-c", loop], stdin=subprocess.PIPE)
        os.sched_setaffinity(p.pid, {cpu})
        SPINNING.append(p)


def conditions():
    """The load and the CPU frequency state now (issue 21: FUSE gets slower when the CPU
    idles, so every row says under what it was measured)."""
    load = open("/proc/loadavg").read().split()[0]
    mhz = []
    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    gov = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
    governor = open(gov).read().strip() if os.path.exists(gov) else "no cpufreq driver (VM)"
    freq = "/".join(f"{m:.0f}" for m in mhz) + " MHz" if mhz else "?"
    awake = f", CPUs kept awake by {len(SPINNING)} SCHED_IDLE busy loops" if SPINNING else ""
    return f"load {load}, CPUs at {freq}, governor: {governor}{awake}"


def stages(d):
    """The mount's stage counters (user.depotfs.stages): {stage: (calls, seconds, bytes)}, or
    {} when this depotfs has none."""
    try:
        text = d.xattr("stages")
    except RuntimeError:
        return {}
    out = {}
    for line in text.splitlines():
        name, calls, ns, nbytes = line.split()
        out[name] = (int(calls), int(ns) / 1e9, int(nbytes))
    return out


def stage_line(s0, s1):
    """The stage counters between two `stages()` readings, one line: NAME CALLS/SECONDS."""
    return ", ".join(f"{k} {v[0] - s0.get(k, (0, 0, 0))[0]} calls / {v[1] - s0.get(k, (0, 0, 0))[1]:.3f} s"
                     for k, v in s1.items() if v[0] - s0.get(k, (0, 0, 0))[0])


def umount(m, secs=30):
    """Unmount `m`, again until it is no mount point (under load, the squashfuse of a
    container start may still hold the image open on the depotfs mount beneath: EBUSY)."""
    deadline = time.monotonic() + secs
    while True:
        sh("umount", m, check=False)
        sh("fusermount3", "-u", m, check=False)
        if not os.path.ismount(m) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def wait_for(pred, what, secs=30):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {secs} s waiting for {what}")


def start_nginx(work, root):
    """nginx serving directory `root` on a free loopback port (2 workers, sendfile on, the
    configuration, pid and error log in `work`), once it accepts connections: (process, port)."""
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{}}
http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"])

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, f"nginx on port {port}")
    return nginx, port


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def gen(*args):
    sh_loud(sys.executable, os.path.join(HERE, "gen_corpus.py"), *args)


def has_flag(sub, flag):
    out = subprocess.run([BIN, sub, "--help"], capture_output=True, text=True, env=ENV).stdout
    return flag in out


class Depotfs:
    """A `depotfs mount` of `url` at `mnt` with its cache in `cache`."""

    def __init__(self, url, key, mnt, cache):
        self.url, self.key, self.mnt, self.cache = url, key, mnt, cache
        # Fresh caches are new directories, named per run; all are deleted at the end (cleanup).
        self.cache_base, self.caches = f"{cache}.{os.getpid()}", [cache]

    def fresh_cache(self):
        """Switch to a new, empty cache directory. The old one is deleted only at the end of the
        run: this VM's ext4 has no journal, and right after a large delete it scans past the
        freed inodes to create a file (`recently_deleted` under `ext4_tmpfile`: ~9 % of the
        daemon's samples in a cold read, on the cache writer, when the previous repetition's
        cache was deleted just before), a cost a node's fresh cache does not pay (benches/
        publish.py writes into new directories for the same reason)."""
        self.cache = f"{self.cache_base}.{len(self.caches)}"
        self.caches.append(self.cache)
        os.makedirs(self.cache, exist_ok=True)

    def cleanup(self):
        for c in self.caches:
            shutil.rmtree(c, ignore_errors=True)

    def args(self, extra=()):
        return [BIN, "mount", self.url, self.mnt, "--key", self.key, "--cache-dir", self.cache,
                "--cache-size", "8G", *extra]

    def mount(self, fresh, extra=()):
        self.umount()
        if fresh:
            self.fresh_cache()
        os.makedirs(self.mnt, exist_ok=True)
        sh_loud(*self.args(extra), env=ENV)
        try:
            self.pid = int(self.xattr("pid"))
        except (RuntimeError, ValueError):
            self.pid = None

    def xattr(self, name):
        try:
            return os.getxattr(self.mnt, "user.depotfs." + name).decode()
        except OSError as e:
            raise RuntimeError(f"{self.mnt}: reading status xattr user.depotfs.{name}: {e}") from e

    def counter(self, name):
        """A byte counter of the mount: bytes_fetched, bytes_read, ..."""
        return int(self.xattr(name))

    def umount(self):
        """Unmount, and wait for the daemon to exit: it writes out its cache's queue first,
        and the next fresh mount must not find those files (or race their writing)."""
        umount(self.mnt)
        pid, self.pid = getattr(self, "pid", None), None
        if pid:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                     open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
                     f"depotfs daemon {pid} to exit", secs=60)


class Results:
    """Measurements by key: values, unit, label; plus the commands and facts of the run."""

    def __init__(self):
        self.m, self.info, self.commands, self.stage_runs = {}, {}, [], []

    def add(self, key, label, unit, values, better):
        if values:
            self.m[key] = {"label": label, "unit": unit, "values": values, "better": better}

    def cmd(self, text):
        if text not in self.commands:
            self.commands.append(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--ct-mib", type=int, default=41)
    ap.add_argument("--par-scale", type=int, default=16, help="real image sizes / this (P10 images)")
    ap.add_argument("--names-limit", type=int, default=0, help="all/ with only the first N names (0: all)")
    ap.add_argument("--work", default="/tmp/depotfs-read")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep-cpus-awake", action="store_true",
                    help="one SCHED_IDLE busy loop per CPU for the run (see the module docs)")
    a = ap.parse_args()
    w = os.path.abspath(a.work)
    sections = a.sections.split(",")
    for s in sections:
        if s not in SECTIONS:
            sys.exit(f"read.py: unknown section {s!r} (known: {', '.join(SECTIONS)})")
    os.makedirs(w, exist_ok=True)
    if "DEPOTFS_BIN" not in os.environ:
        sh("cargo", "build", "--release", "--bin", "depotfs", cwd=REPO)
    R = Results()

    # --- data (made once per work directory and size; only what the sections need) ----------
    # Every section but `container` reads the one shared store, holding only what the sections
    # asked for need: big (read, rss), names (ls, rss), par (parallel).
    need_big = bool({"read", "rss"} & set(sections))
    need_names = bool({"ls", "rss"} & set(sections))
    need_par = "parallel" in sections
    main_store = need_big or need_names or need_par
    big_dir = os.path.join(w, f"big-{a.big_mib}")
    big = os.path.join(big_dir, "big:1.0--0")
    if need_big and not os.path.exists(big):
        gen("big", "--out", big_dir, "--mib", str(a.big_mib), "--seed", "5")
    names = os.path.join(w, f"names-{a.names_limit}", "all")
    if need_names and not os.path.isdir(names):
        gen("names", "--out", names, *(["--limit", str(a.names_limit)] if a.names_limit else []))
    n_names = f"{len(os.listdir(names)):,}" if need_names else "0"
    par_dir = os.path.join(w, f"par-{a.par_scale}")
    if need_par and not os.path.isdir(par_dir):
        gen("images", "--out", par_dir, "--versions", "1", "--count", "16", "--total-mib", "100000",
            "--scale", str(a.par_scale), "--seed", "3")
    par_names = sorted(os.listdir(par_dir)) if need_par else []
    ct_dir = os.path.join(w, f"ct-{a.ct_mib}")
    if not os.path.isdir(ct_dir):
        gen("container", "--out", ct_dir, "--mib", str(a.ct_mib), "--seed", "3")
    ct_name = sorted(os.listdir(ct_dir))[0]
    ct_image = os.path.join(ct_dir, ct_name)
    parts = (f"-big{a.big_mib}" if need_big else "") + (f"-names{a.names_limit}" if need_names else "") + (
        f"-par{a.par_scale}" if need_par else "")
    store = os.path.join(w, f"store{parts}")
    if main_store and not os.path.isdir(store):
        sh_loud(BIN, "init", store + ".tmp", "--name", "bench.read", env=ENV)
        if need_big:
            sh_loud(BIN, "add", store + ".tmp", "--to", "all", big, env=ENV)
        if need_names:
            sh_loud(BIN, "add", store + ".tmp", "--to", "names", names, env=ENV)
        if need_par:
            sh_loud(BIN, "add", store + ".tmp", "--to", "par", *[os.path.join(par_dir, n) for n in par_names],
                    env=ENV)
        os.rename(store + ".tmp", store)
    big_sqfs = os.path.join(w, f"big-{a.big_mib}.sqfs")
    if "read" in sections and not os.path.exists(big_sqfs):
        sh_loud("mksquashfs", big_dir, big_sqfs, "-comp", "zstd", "-noappend", "-quiet", "-no-progress")
    names_sqfs = os.path.join(w, f"names-{a.names_limit}.sqfs")
    if "ls" in sections and not os.path.exists(names_sqfs):
        sh_loud("mksquashfs", os.path.dirname(names), names_sqfs, "-comp", "zstd", "-noappend", "-quiet",
                "-no-progress")
    www = os.path.join(w, "www")
    os.makedirs(www, exist_ok=True)
    castr = os.path.join(www, f"castr-{a.big_mib}")
    caidx = os.path.join(www, f"big-{a.big_mib}.caidx")
    if "read" in sections and not os.path.exists(caidx):
        sh_loud("casync", "make", "--compression=zstd", "--store=" + castr, caidx, big_dir)
    for link, target in (("public", os.path.join(store, "public")),):
        p = os.path.join(www, link)
        if os.path.islink(p):
            os.unlink(p)
        os.symlink(target, p)
    # The container section publishes a trace into its own store: rebuilt every run, so the
    # run without prefetch never sees an access list from an earlier run.
    ct_store = os.path.join(w, "ctstore")
    shutil.rmtree(ct_store, ignore_errors=True)
    sh_loud(BIN, "init", ct_store, "--name", "bench.ct", env=ENV)
    sh_loud(BIN, "add", ct_store, "--to", "all", ct_image, env=ENV)
    p = os.path.join(www, "ct")
    if os.path.islink(p):
        os.unlink(p)
    os.symlink(os.path.join(ct_store, "public"), p)

    if a.reps == 0:  # --reps 0: the data above is all that was asked for
        sections = []

    if a.keep_cpus_awake:
        keep_cpus_awake()

    # --- nginx ------------------------------------------------------------------------------
    nginx, port = start_nginx(w, www)
    url = f"http://127.0.0.1:{port}/public/"
    key = os.path.join(store, "public", "repo.pub")
    d = Depotfs(url, key, os.path.join(w, "mnt"), os.path.join(w, "cache"))
    ct = None
    R.cmd(f"nginx (sendfile on, 2 workers) serving {www} on 127.0.0.1:PORT")
    R.cmd(" ".join(d.args()).replace(f":{port}/", ":PORT/").replace(BIN, "depotfs") + "  (fresh = a new, empty cache dir; "
          "all deleted at the end of the run, not before the next mount: ext4 without a journal)")
    R.cmd("cold = `sync; echo 3 > /proc/sys/vm/drop_caches` before the measured command")
    sq = os.path.join(w, "sqmnt")
    os.makedirs(sq, exist_ok=True)
    root = os.path.join(w, "ctroot")
    os.makedirs(root, exist_ok=True)
    mib = os.path.getsize(big) / (1 << 20) if need_big else 0
    big_on_d = os.path.join(d.mnt, "all", "big:1.0--0")

    try:
        # --- 1 GiB sequential read ----------------------------------------------------------
        if "read" in sections:
            R.info["conditions_read"] = conditions()
            R.cmd("sequential read: 1 MiB read() calls in Python until EOF (like `cat FILE > /dev/null`)")
            R.cmd(f"squashfuse {os.path.basename(big_sqfs)} MNT (mksquashfs -comp zstd of the same file)")
            R.cmd(f"casync make --compression=zstd --store=castr big.caidx DIR; "
                  f"casync mount --store=http://127.0.0.1:PORT/castr/ big.caidx MNT")
            r = {k: [] for k in ["dc", "dw", "dh", "plain_c", "plain_h", "sqf", "casync"]}
            folios = {}
            nginx_pid = int(open(os.path.join(w, "nginx.pid")).read())

            def accounted(kind):
                """Read the big image through the fresh mount d, timed, with the CPU seconds
                of the daemon, nginx and the reader, and the daemon's stage counters."""
                pid = int(d.xattr("pid"))
                cond = conditions()
                s0 = stages(d)
                c0 = (cpu_seconds(pid), children_cpu(nginx_pid), os.times())
                t = timed(lambda: read_all(big_on_d))
                t1 = os.times()
                s1 = {k: tuple(x - y for x, y in zip(v, s0.get(k, (0, 0, 0)))) for k, v in stages(d).items()}
                acc = {"kind": kind, "wall_s": t, "conditions": cond, "stages": s1,
                       "cpu_s": {"depotfs": cpu_seconds(pid) - c0[0], "nginx": children_cpu(nginx_pid) - c0[1],
                                 "reader": (t1.user - c0[2].user) + (t1.system - c0[2].system)},
                       "counters": {k: d.xattr(k) for k in ("bytes_fetched", "readahead", "prefetch_downloaded")}}
                R.stage_runs.append(acc)
                return t

            for rep in range(a.reps):
                d.mount(fresh=True)
                drop()
                r["dc"].append(accounted("cold"))
                r["dh"].append(timed(lambda: read_all(big_on_d)))
                if rep == 0:
                    folios["depotfs"] = folio_pages(big_on_d)
                d.mount(fresh=False)
                drop()
                r["dw"].append(accounted("warm"))
                d.umount()
                drop()
                r["plain_c"].append(timed(lambda: read_all(big)))
                r["plain_h"].append(timed(lambda: read_all(big)))
                if rep == 0:
                    folios["plain"] = folio_pages(big)
                umount(sq)
                drop()
                sh_loud("squashfuse", big_sqfs, sq)
                r["sqf"].append(timed(lambda: read_all(os.path.join(sq, "big:1.0--0"))))
                umount(sq)
                if rep == 0:  # casync mount reads at ~37 MiB/s: once
                    cam = os.path.join(w, "camnt")
                    os.makedirs(cam, exist_ok=True)
                    p = subprocess.Popen(["casync", "mount", f"--store=http://127.0.0.1:{port}/{os.path.basename(castr)}/",
                                          caidx, cam], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    wait_for(lambda: os.path.exists(os.path.join(cam, "big:1.0--0")), "casync mount")
                    drop()
                    r["casync"].append(timed(lambda: read_all(os.path.join(cam, "big:1.0--0"))))
                    umount(cam)
                    p.wait()
            rate = lambda xs: [mib / x for x in xs]
            n = f"{mib:.0f} MiB"
            R.add("read.depotfs_cold", f"read {n}: depotfs cold over HTTP (nginx)", "MiB/s", rate(r["dc"]), "higher")
            R.add("read.depotfs_warm", f"read {n}: depotfs warm (local cache, page cache dropped)", "MiB/s",
                  rate(r["dw"]), "higher")
            R.add("read.depotfs_hot", f"read {n}: depotfs hot (page cache)", "MiB/s", rate(r["dh"]), "higher")
            R.add("read.casync_cold", f"read {n}: casync mount cold over HTTP (nginx)", "MiB/s", rate(r["casync"]),
                  "higher")
            R.add("read.squashfuse_cold", f"read {n}: squashfuse, local image, cold", "MiB/s", rate(r["sqf"]), "higher")
            R.add("read.plain_cold", f"read {n}: plain local file, cold", "MiB/s", rate(r["plain_c"]), "higher")
            R.add("read.plain_hot", f"read {n}: plain local file, hot", "MiB/s", rate(r["plain_h"]), "higher")
            # Issue 21's P4: the cold read's time against the same file's cold read from ext4.
            R.add("read.depotfs_cold_s", f"read {n}: depotfs cold over HTTP, time", "s", r["dc"], "lower")
            R.add("read.plain_cold_s", f"read {n}: plain local file (ext4), cold, time", "s", r["plain_c"], "lower")
            if folios:
                R.info["page_cache_folios"] = (
                    f"after the hot reads, the first 256 MiB of the image sit in page-cache folios of "
                    f"{folios['depotfs']:.1f} pages (4 KiB) on average through the depotfs mount and "
                    f"{folios['plain']:.1f} pages as a plain ext4 file (/proc/self/pagemap + /proc/kpageflags)")

        # --- directory listing --------------------------------------------------------------
        def ls(args, path):
            return timed(lambda: subprocess.run(["ls", *args, path], check=True, stdout=subprocess.DEVNULL))

        if "ls" in sections:
            R.info["conditions_ls"] = conditions()
            R.cmd("`ls -f DIR > /dev/null`, `ls -l DIR > /dev/null` (warm = the same command run once before)")
            R.cmd("squashfuse_ll / squashfuse names.sqfs MNT (mksquashfs -comp zstd of the same all/)")
            l = {k: [] for k in ["d_f_fresh", "d_f_warm", "d_l_warm", "e_f_cold", "e_f_warm", "e_l_warm",
                                 "sqll_f_fresh", "sqll_f", "sqll_l", "sq_l"]}
            d_names = os.path.join(d.mnt, "names", "all")
            nginx_pid = int(open(os.path.join(w, "nginx.pid")).read())
            fresh_cpu = []  # CPU seconds of each fresh listing: the daemon, nginx, ls
            for rep in range(a.reps):
                d.mount(fresh=True)
                s0 = stages(d)
                c0 = (run_ns(d.pid), children_run_ns(nginx_pid), resource.getrusage(resource.RUSAGE_CHILDREN))
                l["d_f_fresh"].append(ls(["-f"], d_names))
                c1 = (run_ns(d.pid), children_run_ns(nginx_pid), resource.getrusage(resource.RUSAGE_CHILDREN))
                fresh_cpu.append(((c1[0] - c0[0]) / 1e9, (c1[1] - c0[1]) / 1e9,
                                  c1[2].ru_utime + c1[2].ru_stime - c0[2].ru_utime - c0[2].ru_stime))
                s1 = stages(d)
                R.info[f"ls_fresh_stages_{rep + 1}"] = stage_line(s0, s1)
                R.info[f"ls_fresh_cpu_{rep + 1}"] = ("CPU seconds during the fresh listing: depotfs {:.3f}, nginx {:.3f}, "
                                                     "ls {:.3f}".format(*fresh_cpu[-1]))
                l["d_f_warm"].append(ls(["-f"], d_names))
                ls(["-l"], d_names)
                l["d_l_warm"].append(ls(["-l"], d_names))
                d.umount()
                drop()
                l["e_f_cold"].append(ls(["-f"], names))
                l["e_f_warm"].append(ls(["-f"], names))
                ls(["-l"], names)
                l["e_l_warm"].append(ls(["-l"], names))
                umount(sq)
                sh_loud("squashfuse_ll", names_sqfs, sq)
                l["sqll_f_fresh"].append(ls(["-f"], os.path.join(sq, "all")))
                l["sqll_f"].append(ls(["-f"], os.path.join(sq, "all")))
                l["sqll_l"].append(ls(["-l"], os.path.join(sq, "all")))  # ls -f warmed the inodes
                umount(sq)
                if rep == 0:  # high-level squashfuse: ~1 min per ls -l, not a target's peer: once
                    sh_loud("squashfuse", names_sqfs, sq)
                    ls(["-f"], os.path.join(sq, "all"))
                    l["sq_l"].append(ls(["-l"], os.path.join(sq, "all")))
                    umount(sq)
            R.add("ls.f.depotfs_fresh", f"ls -f all/ ({n_names} names): depotfs fresh mount over HTTP", "s", l["d_f_fresh"],
                  "lower")
            R.add("ls.f.depotfs_warm", "ls -f all/: depotfs warm", "s", l["d_f_warm"], "lower")
            R.add("ls.f.depotfs_fresh_ceiling_s", "ls -f all/: depotfs fresh, time at its CPU ceiling (the daemon's, "
                  "nginx's and ls's CPU seconds / 2 cores)", "s", [sum(c) / 2 for c in fresh_cpu], "lower")
            R.add("ls.f.squashfuse_ll_fresh", "ls -f all/: squashfuse_ll fresh mount (image file in the page cache)",
                  "s", l["sqll_f_fresh"], "lower")
            R.add("ls.f.squashfuse_ll_warm", "ls -f all/: squashfuse_ll warm", "s", l["sqll_f"], "lower")
            R.add("ls.f.ext4_cold", "ls -f all/: ext4 cold", "s", l["e_f_cold"], "lower")
            R.add("ls.f.ext4_warm", "ls -f all/: ext4 warm", "s", l["e_f_warm"], "lower")
            R.add("ls.l.depotfs_warm", "ls -l all/: depotfs warm", "s", l["d_l_warm"], "lower")
            R.add("ls.l.ext4_warm", "ls -l all/: ext4 warm", "s", l["e_l_warm"], "lower")
            R.add("ls.l.squashfuse_ll_warm", "ls -l all/: squashfuse_ll warm (after ls -f)", "s", l["sqll_l"], "lower")
            R.add("ls.l.squashfuse_warm", "ls -l all/: squashfuse warm (after ls -f)", "s", l["sq_l"], "lower")

        # --- container start ----------------------------------------------------------------
        if "container" in sections:
            R.info["conditions_container"] = conditions()
            # The image has no /dev: pipe into wc instead of redirecting to /dev/null.
            script = "cat /etc/tool | wc -c; for f in $(cat /etc/start-files); do cat $f | wc -c; done"
            R.cmd(f"container start: `squashfuse IMAGE ROOT; chroot ROOT /bin/busybox sh -c '{script}'; umount ROOT`")
            ct = Depotfs(f"http://127.0.0.1:{port}/ct/", os.path.join(ct_store, "public", "repo.pub"),
                         os.path.join(w, "ctmnt"), os.path.join(w, "ctcache"))
            ct_on_d = os.path.join(ct.mnt, "all", ct_name)

            def start(image):
                umount(root)
                sh_loud("squashfuse", image, root)
                try:
                    sh_loud("chroot", root, "/bin/busybox", "sh", "-c", script)
                finally:
                    umount(root)

            def depotfs_start(extra=()):
                ct.mount(fresh=True, extra=extra)
                drop()
                t = timed(lambda: start(ct_on_d))
                # Downloads started by readahead (the first number of prefetch_downloaded).
                ahead = int(ct.xattr("prefetch_downloaded").split()[0]) / 1e6
                # File bytes the access list put into the page cache (0: none, or a depotfs
                # without the push).
                try:
                    pushed = int(ct.xattr("page_cache_pushed")) / 1e6
                except (RuntimeError, ValueError):
                    pushed = 0.0
                out = (t, ct.counter("bytes_fetched") / 1e6, ct.counter("bytes_read") / 1e6, ahead, pushed)
                ct.umount()
                return out

            def depotfs_warm_start():
                """The same start with every chunk it reads already in the mount's disk cache
                (left there by the cold start before it) and the page cache dropped: no network,
                the image read from local disk as the local start reads it. What remains is the
                cost of the extra layer (squashfuse on a file of a FUSE mount, each chunk read
                from its cache file and verified), a floor under the cold start over HTTP."""
                ct.mount(fresh=False)
                drop()
                t = timed(lambda: start(ct_on_d))
                fetched_mb = ct.counter("bytes_fetched") / 1e6
                ct.umount()
                return t, fetched_mb

            c_d, c_l, c_w, w_fetched, fetched, touched, ahead = [], [], [], [], [], [], []
            for _ in range(a.reps):
                t, f_, r_, a_, _ = depotfs_start()
                c_d.append(t), fetched.append(f_), touched.append(r_), ahead.append(a_)
                t, f_ = depotfs_warm_start()
                c_w.append(t), w_fetched.append(f_)
                drop()
                c_l.append(timed(lambda: start(ct_image)))
            size = os.path.getsize(ct_image) / 1e6
            R.info["container_image"] = f"{ct_name}, {size:.1f} MB (gen_corpus.py container --mib {a.ct_mib} --seed 3)"
            R.add("ct.depotfs_s", f"container start, {size:.0f} MB image on depotfs, cold over HTTP", "s", c_d, "lower")
            R.add("ct.local_s", "container start, local image, cold", "s", c_l, "lower")
            R.add("ct.depotfs_warm_s", "container start on depotfs, warm: chunks in its disk cache, page cache "
                  "dropped (no network: the floor under the cold start)", "s", c_w, "lower")
            R.add("ct.warm_fetched_mb", "container start on depotfs, warm: bytes fetched (0 = the floor used "
                  "no network)", "MB", w_fetched, "lower")
            R.add("ct.fetched_mb", "container start: bytes fetched by depotfs", "MB", fetched, "lower")
            R.add("ct.touched_mb", "container start: bytes read (touched) through depotfs", "MB", touched, "lower")
            R.add("ct.readahead_mb", "container start: of the bytes fetched, downloaded by readahead", "MB", ahead,
                  "lower")
            if has_flag("add", "--trace") and has_flag("mount", "--record"):
                trace = os.path.join(w, "ct.trace")
                if os.path.exists(trace):
                    os.unlink(trace)
                # In the foreground, so that --record reaches the serving process whatever the
                # background launcher passes on.
                umount(ct.mnt)
                ct.fresh_cache()
                rec = subprocess.Popen(ct.args(["--record", trace, "--foreground"]), env=ENV,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                wait_for(lambda: os.path.ismount(ct.mnt) or rec.poll() is not None, f"the recording mount {ct.mnt}")
                if rec.poll() is not None:
                    raise RuntimeError(f"depotfs mount --record failed: {rec.stderr.read().strip()[-2000:]}")
                start(ct_on_d)
                ct.umount()
                rec.wait(timeout=60)
                wait_for(lambda: os.path.exists(trace) and os.path.getsize(trace) > 0, f"the trace {trace}")
                with open(trace) as f:
                    lines = [x for x in f if x.strip() and not x.startswith("#")]
                sh_loud(BIN, "add", ct_store, "--trace", trace, env=ENV)
                R.info["container_trace"] = f"{len(lines)} reads recorded with `mount --record`, published with `add --trace`"
                R.cmd("prefetch: `depotfs mount ... --record ct.trace` + one start; `depotfs add STORE --trace ct.trace`; "
                      "then fresh mounts")
                p_d, p_f, p_r, p_p = [], [], [], []
                for _ in range(a.reps):
                    t, f_, r_, _, p_ = depotfs_start()
                    p_d.append(t), p_f.append(f_), p_r.append(r_), p_p.append(p_)
                R.add("ct.prefetch_depotfs_s", "container start with prefetch from the access list, cold over HTTP",
                      "s", p_d, "lower")
                R.add("ct.prefetch_fetched_mb", "container start with prefetch: bytes fetched", "MB", p_f, "lower")
                R.add("ct.prefetch_touched_mb", "container start with prefetch: bytes read through the daemon (the "
                      "rest came from the page cache the list filled)", "MB", p_r, "lower")
                R.add("ct.prefetch_pushed_mb", "container start with prefetch: bytes the list put into the page cache",
                      "MB", p_p, "higher")
                # What a cold start without a list waits for that the warm one does not: its
                # jumps (reads of a chunk no earlier read touched: the start opening its next
                # file or table, which nothing says in advance) each wait for one object from
                # the server where the warm start loads one cache file. Both latencies, cold.
                image_rel = os.path.relpath(ct_on_d, ct.mnt)
                n_jumps = jumps([(int(o), int(n)) for path, o, n in (x.rstrip("\n").split("\t") for x in lines)
                                 if path == image_rel])
                http_s, load_s = cold_latencies(ct.url, os.path.join(ct_store, "public"), ct.caches[-1])
                R.add("ct.jumps", "container start: its reads of a chunk no earlier read came near (jumps)", "n",
                      [n_jumps], "lower")
                R.add("ct.cold_object_ms", "one chunk object from the server, page cache dropped (keep-alive GET)",
                      "ms", [http_s * 1e3], "lower")
                R.add("ct.cold_cache_load_ms", "one chunk's cache file of the mount, page cache dropped", "ms",
                      [load_s * 1e3], "lower")
            else:
                R.info["container_trace"] = ("not available: this depotfs has no `add --trace` / `mount --record` "
                                             "(prefetch from a recorded access list not measured)")

        # --- P9: client memory ------------------------------------------------------------
        if "rss" in sections:
            hwm, rss, nread = [], [], []
            for _ in range(a.reps):
                d.mount(fresh=True)
                pid = int(d.xattr("pid"))
                ls(["-f"], os.path.join(d.mnt, "names", "all"))
                total = 0
                for state in ("cold", "hot", "warm", "hot", "warm"):
                    if state == "warm":
                        drop()
                    total += read_all(big_on_d)
                with open(f"/proc/{pid}/status") as f:
                    st = dict(line.split(":", 1) for line in f)
                hwm.append(int(st["VmHWM"].split()[0]) * 1024 / 1e6)  # /proc reports kB = KiB
                rss.append(int(st["VmRSS"].split()[0]) * 1024 / 1e6)
                nread.append(total)
                d.umount()
            R.info["rss_workload"] = (f"fresh mount, `ls -f names/all` ({n_names} names), then {mib:.0f} MiB read 5 times "
                                      f"(cold over HTTP, hot, warm, hot, warm): {nread[0] / 1e9:.2f} GB")
            R.add("rss.hwm_mb", "depotfs mount VmHWM (peak RSS) after the listing and reads", "MB", hwm, "lower")
            R.add("rss.rss_mb", "depotfs mount VmRSS after the listing and reads", "MB", rss, "lower")

        # --- P10: parallel cold readers -----------------------------------------------------
        if "parallel" in sections:
            R.info["conditions_parallel"] = conditions()
            paths = [os.path.join(d.mnt, "par", n) for n in par_names]
            total = sum(os.path.getsize(os.path.join(par_dir, n)) for n in par_names) / (1 << 20)
            one, many, one_cpu, many_cpu, many_wait = [], [], [], [], []
            for _ in range(a.reps):
                d.mount(fresh=True)
                drop()
                with CpuShare() as c:
                    one.append(total / timed(lambda: [read_all(p) for p in paths]))
                one_cpu.append(c.busy)
                d.mount(fresh=True)
                drop()

                def parallel():
                    errs = []

                    def reader(p):
                        try:
                            read_all(p)
                        except OSError as e:
                            errs.append(f"{p}: {e}")

                    ts = [threading.Thread(target=reader, args=(p,)) for p in paths]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join()
                    if errs:
                        raise RuntimeError("parallel readers failed: " + "; ".join(errs))

                with CpuShare() as c:
                    many.append(total / timed(parallel))
                many_cpu.append(c.busy)
                many_wait.append(c.iowait)
                d.umount()
            R.info["parallel_images"] = (f"{len(paths)} images of different tools, {total:.0f} MiB in all "
                                         f"(gen_corpus.py images --versions 1 --count 16 --scale {a.par_scale} --seed 3)")
            R.add("par.one_mibps", f"{len(paths)} images read cold over HTTP by one reader, one after another",
                  "MiB/s", one, "higher")
            R.add("par.many_mibps", f"the same {len(paths)} images read cold by {len(paths)} parallel readers "
                  "(aggregate)", "MiB/s", many, "higher")
            R.add("par.one_cpu", "CPU busy (all cores, /proc/stat, not idle nor iowait) during the one reader",
                  "%", one_cpu, "lower")
            R.add("par.many_cpu", f"CPU busy during the {len(paths)} parallel readers", "%", many_cpu, "lower")
            busy = statistics.median(one_cpu)
            R.info["parallel_ceiling"] = (
                f"one reader kept {busy:.0f} % of the CPUs busy, so {len(paths)} readers could add at most "
                f"{100 / busy:.2f}x here even with every CPU busy; they kept them {statistics.median(many_cpu):.0f} % "
                f"busy, {statistics.median(many_wait):.0f} % of the time waiting for I/O (iowait)")
    finally:
        d.umount()
        umount(sq)
        umount(root)
        umount(os.path.join(w, "ctmnt"))
        nginx.terminate()
        nginx.wait()
        for mount in (d, ct):
            if mount:
                mount.cleanup()

    # The bounds report.py judges (BOUNDS): each cold read's time had its CPU seconds been spread
    # over both cores with none idle, and the most parallel readers could add.
    ceiling = [sum(r["cpu_s"].values()) / 2 for r in R.stage_runs if r["kind"] == "cold" and r.get("cpu_s")]
    R.add("read.depotfs_cold_ceiling_s", "read 1024 MiB: depotfs cold over HTTP, time at its CPU ceiling "
          "(its CPU seconds / 2 cores)", "s", ceiling, "lower")
    if "par.one_cpu" in R.m:
        R.add("par.ceiling_x", "most aggregate gain of parallel readers: 100 % / one reader's CPU busy", "x",
              [100 / b for b in R.m["par.one_cpu"]["values"] if b > 0], "higher")

    out = {"script": "read", "argv": sys.argv[1:], "measurements": R.m, "info": R.info, "commands": R.commands,
           "stage_runs": R.stage_runs}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print("| measurement | median | min | max | unit |")
    print("|---|---|---|---|---|")
    for v in R.m.values():
        xs = v["values"]
        print(f"| {v['label']} | {statistics.median(xs):.3g} | {min(xs):.3g} | {max(xs):.3g} | {v['unit']} |")
    for k, v in R.info.items():
        print(f"- {k}: {v}")
    sys.path.insert(0, HERE)
    import report
    print("\n".join(report.stage_table(R.stage_runs)))


if __name__ == "__main__":
    main()
