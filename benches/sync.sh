#!/usr/bin/env bash
# depotfs sync vs the operator's script (issue #12), by hand, on loopback:
#   (a) rclone copy (Debian `rclone`, HTTP remote reading nginx's autoindex) to a directory;
#   (b) (a) followed by `depotfs add` of that directory (what an operator scripts today);
#   (c) depotfs sync, straight from the depot into a store.
#   (a') (a) followed by `sync`: rclone's copy ends when its bytes are in the page cache, while
#        the store's writes are durable when (c) ends; (a') is the fair reference for that.
# Targets: (c) >= 1.5x faster than (b); (c) >= 0.9x the throughput of (a); peak RSS of (c)
# <= 300 MB. Each step's CPU seconds (user + system, GNU time; nginx's own from /proc) per GiB
# are printed too: cores / (sync + nginx CPU seconds per GiB) is the most (c) can give on this
# machine (its CPU ceiling), likewise for (a), and the ratio of the two ceilings is the best
# (c)/(a) a CPU-bound run can reach here, whatever the load; `depotfs add`'s CPU per GiB is
# the ingest's own (chunk, blake3, zstd, write). The depot: names and the size distribution of the real listing
# (tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz), every STEP-th image, sizes scaled so the
# total is about TOTAL_GIB; contents half random, half repeated blocks (squashfs images are
# mostly compressed already).
#
# Mode `incremental` measures the other target: a sync against the full 118,594-name index
# with 100 new images spends <= 3 s on listing and planning. Its depot holds every name of the
# real listing with its date and its size scaled down 2^20 times (1 byte per MiB: a store of
# 32 TB is not possible here, and the plan compares sizes whatever they are); the store is
# made once with `depotfs add` of that directory, then each run adds NEW (100) images of
# NEW_MIB to the depot and syncs: the time until the plan is the sync's own log line
# ("planned in"), the rest is downloading, staging and publishing the 100 images into the
# directory of 118,694 names. The page cache is dropped before each run; then (unless
# DEPOT_WARM=0) the page is fetched twice with curl, timing nginx's cold and warm answer apart,
# so the sync's "planned in" has a depot server with its inodes cached (as a real one serving
# the page all day has) and a cold store.
#
# Usage: benches/sync.sh [compare|incremental] [WORK_DIR]
#   (needs nginx, rclone, GNU time; DEPOTFS_BIN or target/release/depotfs; root to drop the
#   page cache). RUNS (default 3) runs, each printing its load average before and after.
#   DEPOT_DIR puts the depot elsewhere (e.g. /dev/shm/… on a machine short of disk); with
#   KEEP=0 (default) (a)'s copy and (b)'s store are deleted before (c), so the disk holds at
#   most the depot and two copies. Writes WORK_DIR/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=compare
case ${1:-} in compare | incremental) MODE=$1; shift ;; esac
WORK=${1:-/var/tmp/depotfs-sync-bench}
BIN=${DEPOTFS_BIN:-$PWD/target/release/depotfs}
TOTAL_GIB=${TOTAL_GIB:-2.2}
STEP=${STEP:-1500}
JOBS=${JOBS:-4}
RUNS=${RUNS:-3}
KEEP=${KEEP:-0}
NEW=${NEW:-100}
NEW_MIB=${NEW_MIB:-2}
LISTING=tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz
mkdir -p "$WORK"
cp "$BIN" "$WORK/depotfs"; BIN=$WORK/depotfs

load() { cut -d' ' -f1-3 /proc/loadavg; }

# run NAME CMD...: wall seconds, peak RSS (KiB) and CPU seconds (user + system) from GNU
# time, and the CPU seconds nginx spent meanwhile.
run() {
    local name=$1; shift
    local ng0 ng1
    ng0=$(nginx_cpu)
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.$name" "$@" > "$WORK/out.$name" 2> "$WORK/err.$name"
    ng1=$(nginx_cpu)
    read -r secs rss user sys < "$WORK/time.$name"
    echo "$name $secs $rss $(awk -v u="$user" -v s="$sys" -v a="$ng0" -v b="$ng1" 'BEGIN {printf "%.2f %.2f", u + s, b - a}')"
}

# CPU seconds (user + system) of nginx's master and workers so far (0 when none runs).
nginx_cpu() {
    local pids ticks
    [ -n "${NG:-}" ] && [ -e "$NG/nginx.pid" ] || { echo 0; return; }
    pids="$(cat "$NG/nginx.pid") $(ps -o pid= --ppid "$(cat "$NG/nginx.pid")")"
    ticks=$(getconf CLK_TCK)
    # shellcheck disable=SC2086
    for p in $pids; do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f12,13; done |
        awk -v t="$ticks" '{s+=$1+$2} END {printf "%.2f", s/t}'
}

# serve DIR: nginx with autoindex on a free port; sets URL.
serve() {
    local port
    port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    NG=$WORK/nginx; rm -rf "$NG"; mkdir -p "$NG/tmp"
    cat > "$NG/nginx.conf" <<EOF
daemon on; pid $NG/nginx.pid; worker_processes 2; error_log $NG/error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; client_body_temp_path $NG/tmp;
  server { listen 127.0.0.1:$port; location / { root $1; autoindex on; } } }
EOF
    nginx -p "$NG" -c "$NG/nginx.conf"
    trap 'kill $(cat "$NG/nginx.pid") 2>/dev/null || true' EXIT
    URL=http://127.0.0.1:$port/
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

incremental() {
    local depot=${DEPOT_DIR:-$WORK/inc-depot}/all store=$WORK/inc-store
    if [ ! -e "$depot/../.complete" ] || [ ! -e "$store/.complete" ]; then
        rm -rf "$depot" "$store"; mkdir -p "$depot"
        python3 - "$depot" "$LISTING" <<'EOF'
import gzip, os, sys
depot, listing = sys.argv[1], sys.argv[2]
n = 0
for line in list(gzip.open(listing, "rt"))[1:]:
    name, size, mtime = line.rstrip("\n").split("\t")[:3]
    p = os.path.join(depot, name)
    if size == "4096" and name == "bin":  # the listing's one directory
        os.makedirs(p, exist_ok=True)
        continue
    with open(p, "wb") as f:
        f.write((name.encode() * (1 + (int(size) >> 20) // max(1, len(name))))[: max(1, int(size) >> 20)])
    os.utime(p, (int(mtime), int(mtime)))
    n += 1
print(f"{n} images in the depot")
EOF
        "$BIN" init "$store" --name bench.inc > /dev/null 2>&1
        echo "setup: depotfs add of the $(ls -f "$depot" | wc -l) names (once)"
        run inc_setup_add "$BIN" add "$store" "$depot"
        touch "$depot/../.complete" "$store/.complete"
    fi
    serve "$(dirname "$depot")"
    local url=${URL}all/
    {
        echo "incremental: $(ls -f "$depot" | grep -vc '^\.\.\?$') names listed before the run; $NEW new images of $NEW_MIB MiB per run; jobs $JOBS"
        for r in $(seq 1 "$RUNS"); do
            local tag
            tag=$(date +%s)-$r
            for i in $(seq 1 "$NEW"); do
                head -c $((NEW_MIB << 20)) /dev/urandom > "$depot/zz-bench-$tag-$i:1.0--0"
            done
            drop_caches
            echo "run $r load-before $(load)"
            if [ "${DEPOT_WARM:-1}" = 1 ]; then
                # The depot server's own cold directory scan (nginx stats every file), timed
                # apart: a depot that serves this page all day has its inodes cached, and the
                # target is the sync's listing and planning. The store stays cold.
                curl -s -o /dev/null -w "run $r nginx page cold %{time_total} s, %{size_download} bytes\n" "$url"
                curl -s -o /dev/null -w "run $r nginx page warm %{time_total} s\n" "$url"
            fi
            run "inc_$r" "$BIN" sync "$store" "$url" --to all/ --jobs "$JOBS"
            echo "run $r load-after $(load)"
            # The sync's own log: "listing URL: N files, … planned in S s"; the summary.
            grep -o 'listing [^ ]*: [0-9]* files.*planned in [0-9.]* s' "$WORK/err.inc_$r" | sed "s/^/run $r /"
            grep '^sync:' "$WORK/out.inc_$r" | sed "s/^/run $r /"
        done
    } | tee "$WORK/results-incremental.txt"
    awk '
        $1=="run" && $3=="listing" {for (i=1;i<=NF;i++) if ($i=="planned") plan[$2]=$(i+2)}
        $1 ~ /^inc_[0-9]+$/ {n=substr($1,5); wall[n]=$2; rss[n]=$3}
        END {for (n in wall) printf "run %s: listing + plan %.2f s (target <= 3 s); whole sync %.1f s; peak RSS %.0f MB\n", n, plan[n], wall[n], rss[n]/1024}
    ' "$WORK/results-incremental.txt" | sort | tee -a "$WORK/results-incremental.txt"
}

compare() {
    local depot=${DEPOT_DIR:-$WORK/depot}
    if [ ! -e "$depot/.complete" ]; then
        rm -rf "$depot"; mkdir -p "$depot"
        python3 - "$depot" "$TOTAL_GIB" "$STEP" "$LISTING" <<'EOF'
import gzip, os, random, sys
depot, total_gib, step, listing = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [l.rstrip("\n").split("\t") for l in gzip.open(listing, "rt")][1:]
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
        touch "$depot/.complete"
    fi
    local bytes count
    bytes=$(find "$depot" -type f ! -name .complete -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
    count=$(find "$depot" -type f ! -name .complete | wc -l)
    serve "$depot"
    # The depot from the page cache, for every run alike.
    warm() { drop_caches; cat "$depot"/* > /dev/null; }
    {
        echo "images $count bytes $bytes jobs $JOBS depot $depot"
        for r in $(seq 1 "$RUNS"); do
            rm -rf "$WORK/rclone" "$WORK/store-b" "$WORK/store-c"
            "$BIN" init "$WORK/store-b" --name bench.b > /dev/null 2>&1
            "$BIN" init "$WORK/store-c" --name bench.c > /dev/null 2>&1
            warm
            echo "run $r load-before $(load)"
            run "a_rclone_$r" rclone copy --http-url "$URL" :http: "$WORK/rclone" --transfers "$JOBS"
            run "a_flush_$r" sync
            run "b_add_$r" sh -c "\"$BIN\" add \"$WORK/store-b\" --to all/ \"$WORK/rclone\"/*"
            echo "run $r load-mid $(load)"
            [ "$KEEP" = 1 ] || rm -rf "$WORK/rclone" "$WORK/store-b"
            warm
            run "c_sync_$r" "$BIN" sync "$WORK/store-c" "$URL" --to all/ --jobs "$JOBS"
            echo "run $r load-after $(load)"
            # What (c) wrote durably: the disk's direct-write rate (benches/durable_writes.py)
            # over these bytes bounds (c) too.
            echo "c_stored_$r $(du -sb "$WORK/store-c/public/objects" | cut -f1)"
            "$BIN" verify "$WORK/store-c" > /dev/null 2>&1 || echo "run $r: verify of (c)'s store FAILED"
        done
    } | tee "$WORK/results.txt"
    awk -v bytes="$bytes" -v cores="$(nproc)" '
        function cpu(x) { return x / (bytes / 2^30) }
        $1 ~ /^a_rclone_/ {n=substr($1,10); a[n]=$2; arss[n]=$3; acpu[n]=$4; ang[n]=$5}
        $1 ~ /^a_flush_/ {n=substr($1,9); f[n]=$2}
        $1 ~ /^b_add_/ {n=substr($1,7); b[n]=$2; brss[n]=$3; bcpu[n]=$4}
        $1 ~ /^c_sync_/ {n=substr($1,8); c[n]=$2; crss[n]=$3; ccpu[n]=$4; cng[n]=$5}
        $1 ~ /^c_stored_/ {n=substr($1,10); stored[n]=$2}
        END {
            for (n in c) {
                ap = a[n] + f[n]
                ceil = cores / (cpu(ccpu[n]) + cpu(cng[n]))
                printf "run %s: (a) rclone copy %.1f s, %.0f MiB/s, RSS %.0f MB", n, a[n], bytes/a[n]/2^20, arss[n]/1024
                printf " | (a\x27) rclone copy + sync %.1f s, %.0f MiB/s", ap, bytes/ap/2^20
                printf " | (b) rclone + sync + add %.1f s (add %.1f s, RSS %.0f MB)", ap+b[n], b[n], brss[n]/1024
                printf " | (c) sync %.1f s, %.0f MiB/s, RSS %.0f MB", c[n], bytes/c[n]/2^20, crss[n]/1024
                printf " | (b)/(c) %.2fx (>= 1.5x), (c)/(a) %.2fx (>= 0.9x), (c)/(a\x27) %.2fx\n", (ap+b[n])/c[n], a[n]/c[n], ap/c[n]
                printf "run %s: CPU s/GiB: (a) rclone %.2f + nginx %.2f; ingest (depotfs add) %.2f; (c) sync %.2f + nginx %.2f", n, cpu(acpu[n]), cpu(ang[n]), cpu(bcpu[n]), cpu(ccpu[n]), cpu(cng[n])
                aceil = cores / (cpu(acpu[n]) + cpu(ang[n]))
                printf " | CPU ceilings on %d cores: (c) %.0f MiB/s, (a) %.0f MiB/s: (c)/(a) %.2fx at best", cores, ceil*1024, aceil*1024, ceil/aceil
                printf " (this run: (c) at %.0f%% of its ceiling, (a) at %.0f%%); (c) stored %.0f MB durably (%.0f MB/s)\n", 100*bytes/c[n]/2^30/ceil, 100*bytes/a[n]/2^30/aceil, stored[n]/1e6, stored[n]/c[n]/1e6
            }
        }' "$WORK/results.txt" | sort | tee -a "$WORK/results.txt"
}

$MODE
