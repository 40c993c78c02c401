#!/usr/bin/env bash
# depotfs sync vs the operator's script (issue #12), by hand, on loopback:
#   (a) rclone copy (Debian `rclone`, HTTP remote reading nginx's autoindex) to a directory;
#   (b) (a) followed by `depotfs add` of that directory (what an operator scripts today);
#   (c) depotfs sync, straight from the depot into a store.
# Targets: (c) >= 1.5x faster than (b); (c) >= 0.9x the throughput of (a); peak RSS of (c)
# <= 300 MB. The depot: names and the size distribution of the real listing
# (tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz), every STEP-th image, sizes scaled so the
# total is about TOTAL_GIB; contents half random, half repeated blocks (squashfs images are
# mostly compressed already).
#
# Usage: benches/sync.sh [WORK_DIR]   (needs nginx, rclone, GNU time; DEPOTFS_BIN or
# target/release/depotfs). Prints one line per run; writes WORK_DIR/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/var/tmp/depotfs-sync-bench}
BIN=${DEPOTFS_BIN:-$PWD/target/release/depotfs}
TOTAL_GIB=${TOTAL_GIB:-2.2}
STEP=${STEP:-1500}
JOBS=${JOBS:-4}
mkdir -p "$WORK"
DEPOT=$WORK/depot
cp "$BIN" "$WORK/depotfs"; BIN=$WORK/depotfs

if [ ! -e "$DEPOT/.complete" ]; then
    rm -rf "$DEPOT"; mkdir -p "$DEPOT"
    python3 - "$DEPOT" "$TOTAL_GIB" "$STEP" <<'EOF'
import gzip, os, random, sys
depot, total_gib, step = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in gzip.open("tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz", "rt")][1:]
rows = [r for r in rows if ":" in r[0]][::step]
scale = total_gib * 2**30 / sum(int(r[1]) for r in rows)
rnd = random.Random(12)
pool = [rnd.randbytes(65536) for _ in range(64)]
for name, size, mtime in rows:
    n = max(1, int(int(size) * scale))
    with open(os.path.join(depot, name), "wb") as f:
        left = n
        while left > 0:
            block = rnd.randbytes(65536) if rnd.random() < 0.5 else rnd.choice(pool)
            f.write(block[:left]); left -= len(block)
    os.utime(os.path.join(depot, name), (int(mtime), int(mtime)))
print(f"{len(rows)} images, {sum(os.path.getsize(os.path.join(depot, r[0])) for r in rows)} bytes")
EOF
    touch "$DEPOT/.complete"
fi
BYTES=$(find "$DEPOT" -type f ! -name .complete -printf '%s\n' | awk '{s+=$1} END {print s}')
COUNT=$(find "$DEPOT" -type f ! -name .complete | wc -l)

PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
NG=$WORK/nginx; rm -rf "$NG"; mkdir -p "$NG/tmp"
cat > "$NG/nginx.conf" <<EOF
daemon on; pid $NG/nginx.pid; worker_processes 2; error_log $NG/error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; client_body_temp_path $NG/tmp;
  server { listen 127.0.0.1:$PORT; location / { root $DEPOT; autoindex on; } } }
EOF
nginx -p "$NG" -c "$NG/nginx.conf"
trap 'kill $(cat "$NG/nginx.pid") 2>/dev/null || true' EXIT
URL=http://127.0.0.1:$PORT/
cat "$DEPOT"/* > /dev/null   # the depot from the page cache, for every run alike

# run NAME CMD...: wall seconds and peak RSS (KiB) from GNU time.
run() {
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o "$WORK/time.$name" "$@" > "$WORK/out.$name" 2> "$WORK/err.$name"
    read -r secs rss < "$WORK/time.$name"
    echo "$name $secs $rss"
}

rm -rf "$WORK/rclone" "$WORK/store-b" "$WORK/store-c"
"$BIN" init "$WORK/store-b" --name bench.b > /dev/null 2>&1
"$BIN" init "$WORK/store-c" --name bench.c > /dev/null 2>&1
sync_fs() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$DEPOT"/* > /dev/null; }
{
    echo "images $COUNT bytes $BYTES jobs $JOBS"
    sync_fs
    run a_rclone rclone copy --http-url "$URL" :http: "$WORK/rclone" --transfers "$JOBS"
    run b_add sh -c "\"$BIN\" add \"$WORK/store-b\" --to all/ \"$WORK/rclone\"/*"
    sync_fs
    run c_sync "$BIN" sync "$WORK/store-c" "$URL" --to all/ --jobs "$JOBS"
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/results.txt"
awk -v bytes="$BYTES" '
    $1=="a_rclone" {a=$2; arss=$3} $1=="b_add" {b=$2; brss=$3} $1=="c_sync" {c=$2; crss=$3}
    END {
        printf "(a) rclone copy: %.1f s, %.0f MiB/s, peak RSS %.0f MB\n", a, bytes/a/2^20, arss/1024
        printf "(b) rclone + depotfs add: %.1f s (add %.1f s, peak RSS %.0f MB)\n", a+b, b, brss/1024
        printf "(c) depotfs sync: %.1f s, %.0f MiB/s, peak RSS %.0f MB\n", c, bytes/c/2^20, crss/1024
        printf "(b)/(c) = %.2fx (target >= 1.5x); (c)/(a) throughput = %.2fx (target >= 0.9x)\n", (a+b)/c, a/c
    }' "$WORK/results.txt" | tee -a "$WORK/results.txt"
