#!/usr/bin/env bash
# Publishing into an S3-compatible bucket (issue #19), by hand, on loopback, same run:
#   (a) depotfs add into a store on local disk (STORE/public/);
#   (b) depotfs add into a store whose public side is a bucket (init --public s3://…);
#   (c) rclone copy (Debian rclone, S3 remote) of (a)'s STORE/public/ into the bucket: the
#       operator's alternative, publish to disk and then copy the static files up.
# The bucket server is moto (tests/s3/setup-venv.sh; in-memory, single Python process), so
# absolute numbers are the server's as much as the client's: compare (b) with (c), which talk
# to the same server, and (b)'s cost over (a).
# The corpus: FILES files of FILE_MIB MiB, half random and half repeated blocks.
#
# Usage: benches/s3.sh [WORK_DIR]   (DEPOTFS_BIN or target/release/depotfs, else target/debug;
#   RUNS (default 1) runs; writes WORK_DIR/results.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/var/tmp/depotfs-s3-bench}
BIN=${DEPOTFS_BIN:-$PWD/target/release/depotfs}
[[ -x $BIN ]] || BIN=$PWD/target/debug/depotfs
FILES=${FILES:-8}
FILE_MIB=${FILE_MIB:-24}
RUNS=${RUNS:-1}
bash tests/s3/setup-venv.sh >/dev/null
MOTO=${S3_VENV:-$PWD/target/s3-venv}/bin/moto_server
command -v rclone >/dev/null || { echo "needs rclone (apt-get install rclone)" >&2; exit 1; }

rm -rf "$WORK" && mkdir -p "$WORK/corpus"
python3 - "$WORK/corpus" "$FILES" "$FILE_MIB" <<'PY'
import os, random, sys
d, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(19)
for i in range(n):
    half = mib << 19
    block = rnd.randbytes(64 << 10)
    with open(os.path.join(d, f"img{i:02d}.sif"), "wb") as f:
        f.write(rnd.randbytes(half))
        f.write(block * (half // len(block)))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENDPOINT=$AWS_ENDPOINT_URL \
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=bench RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=bench RCLONE_CONFIG_BENCH_REGION=us-east-1
total_mib=$((FILES * FILE_MIB))
out=$WORK/results.txt
{
    echo "benches/s3.sh $(date -u '+%F %T UTC') commit $(git rev-parse --short HEAD) bin $BIN"
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; corpus $FILES x $FILE_MIB MiB = $total_mib MiB"
} | tee "$out"
secs() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>>"$WORK/err.log" || { echo "failed: $*" >&2; tail -3 "$WORK/err.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}
for run in $(seq "$RUNS"); do
    curl -s -X PUT -o /dev/null "http://127.0.0.1:$port/bench$run"
    curl -s -X PUT -o /dev/null "http://127.0.0.1:$port/rclone$run"
    rm -rf "$WORK/local" "$WORK/bucket"
    echo "run $run: load before $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
    "$BIN" init "$WORK/local" --name bench >/dev/null
    a=$(secs "$BIN" add "$WORK/local" "$WORK/corpus")
    "$BIN" init "$WORK/bucket" --name bench --public "s3://bench$run/r" >/dev/null
    b=$(secs "$BIN" add "$WORK/bucket" "$WORK/corpus")
    store_mib=$(du -sm "$WORK/local/public" | cut -f1)
    # (AWS_CA_BUNDLE, if the environment sets one, makes rclone 1.60's S3 client refuse to start.)
    c=$(secs env -u AWS_CA_BUNDLE rclone copy --transfers 32 --checkers 32 "$WORK/local/public" "bench:rclone$run/r")
    env -u AWS_CA_BUNDLE rclone size "bench:rclone$run/r" | tr '\n' ' ' | sed 's/^/  rclone bucket: /' | tee -a "$out"
    echo | tee -a "$out"
    for x in "a local disk:$a" "b bucket:$b" "c rclone copy of a's public/ ($store_mib MiB):$c"; do
        printf '  (%s) %6.2f s  %6.1f MiB/s of input\n' "${x%%:*}" "${x##*:}" "$(echo "$total_mib / ${x##*:}" | bc -l)"
    done | tee -a "$out"
    echo "  load after $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
done
