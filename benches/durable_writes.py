#!/usr/bin/env python3
"""How should a publisher make its new objects durable before a publish? Writes TOTAL bytes as
objects of SIZE bytes into 256 fan-out directories with THREADS writers, then syncfs, three ways:
direct (O_DIRECT, what depotfs does for objects >= 64 KiB), buffered (page cache, syncfs at
the end), buffered + sync_file_range(WRITE) after each object (writeback started at once).
Prints wall seconds to durable (syncfs returned) and MB/s. Root (drops the page cache).

Usage: benches/durable_writes.py DIR GIB SIZE THREADS [direct|buffered|buffered+sfr]...
(issue #12: should `sync` keep its direct writes? Results in benches/RESULTS.md.)"""
import ctypes, mmap, os, shutil, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
work, total, size, threads = sys.argv[1], int(float(sys.argv[2]) * 2**30), int(sys.argv[3]), int(sys.argv[4])
n = total // size
buf = mmap.mmap(-1, size)
buf.write(os.urandom(size))
SYNC_FILE_RANGE_WRITE = 2
def run(mode):
    d = os.path.join(work, mode)
    shutil.rmtree(d, ignore_errors=True)
    for i in range(256):
        os.makedirs(os.path.join(d, "%02x" % i))
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    t0 = time.time()
    def worker(k):
        for j in range(k, n, threads):
            p = os.path.join(d, "%02x" % (j % 256), "%d" % j)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if mode == "direct" else 0)
            fd = os.open(p, flags, 0o644)
            os.write(fd, buf)
            if mode == "buffered+sfr":
                libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), SYNC_FILE_RANGE_WRITE)
            os.close(fd)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    t1 = time.time()
    fd = os.open(d, os.O_RDONLY)
    libc.syncfs(fd)
    os.close(fd)
    t2 = time.time()
    print(f"{mode:14s} {n} objects of {size} B, {threads} writers: written {t1-t0:.2f} s + syncfs {t2-t1:.2f} s = {t2-t0:.2f} s durable, {total/(t2-t0)/1e6:.0f} MB/s; load {os.getloadavg()[0]:.1f}", flush=True)
    shutil.rmtree(d)
for mode in sys.argv[5:] or ["direct", "buffered", "buffered+sfr"]:
    run(mode)
