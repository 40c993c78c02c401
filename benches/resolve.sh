#!/usr/bin/env bash
# Latency of `depotfs resolve` vs Galaxy's own resolve on the real 118,594-entry listing.
#
#   bash benches/resolve.sh [DIR]
#
# DIR: a directory to resolve in (e.g. a depotfs mount of `all/`). Without it, a temporary local
# directory with one empty file per name of tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz is
# made (and removed). Needs hyperfine (Debian: hyperfine) and the Galaxy venv
# (bash tests/galaxy/setup-venv.sh). Env: DEPOTFS=binary (default: target/release/depotfs, built
# here), GALAXY_VENV, RUNS (hyperfine runs, default 30).
# Prints hyperfine tables and Galaxy's own in-process phase timings; paste them, with date,
# machine and command, into benches/RESULTS.md (Galaxy section).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GALAXY_VENV:-$repo/target/galaxy-venv}"
py="$venv/bin/python"
runs="${RUNS:-30}"
command -v hyperfine >/dev/null || { echo "hyperfine missing (apt-get install hyperfine)" >&2; exit 1; }
[[ -x "$py" ]] || { echo "Galaxy venv missing at $venv: bash tests/galaxy/setup-venv.sh" >&2; exit 1; }
if [[ -z "${DEPOTFS:-}" ]]; then
    (cd "$repo" && cargo build --release --quiet --bin depotfs)
    DEPOTFS="$repo/target/release/depotfs"
fi

if [[ $# -ge 1 ]]; then
    dir="$1"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    dir="$tmp/all"
    python3 - "$repo/tests/data/cvmfs_singularity_all_2026-01-28.tsv.gz" "$dir" <<'EOF'
import gzip, os, sys
listing, d = sys.argv[1:]
os.makedirs(d)
with gzip.open(listing, "rt") as f:
    for line in f.read().splitlines()[1:]:
        n = line.split("\t", 1)[0]
        p = os.path.join(d, n)
        os.mkdir(p) if n == "bin" else open(p, "w").close()
EOF
fi

# samtools=1.9 bwa=0.7.17 has a real mulled-v2 image in the listing (a hit); bwa=0.7.99 a miss.
echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cores; dir=$dir ($(ls -f "$dir" | wc -l) entries incl . ..)"
echo "# depotfs=$DEPOTFS ($("$DEPOTFS" --version)); galaxy-tool-util $("$py" -m pip show galaxy-tool-util 2>/dev/null | sed -n 's/^Version: //p')"
echo
hyperfine --warmup 3 --runs "$runs" -N \
    -n "depotfs resolve samtools=1.9 (hit)" "$DEPOTFS resolve --dir $dir samtools=1.9" \
    -n "depotfs resolve bioconductor-dada2 (no version, 30+ entries)" "$DEPOTFS resolve --dir $dir bioconductor-dada2" \
    -n "depotfs resolve samtools=1.9 bwa=0.7.17 (mulled-v2 hit, --json)" "$DEPOTFS resolve --dir $dir --json samtools=1.9 bwa=0.7.17" \
    -n "depotfs resolve samtools=1.9 bwa=0.7.99 (mulled-v2 miss)" "$DEPOTFS resolve --dir $dir samtools=1.9 bwa=0.7.99" \
    -n "depotfs resolve nosuchpackage (miss)" "$DEPOTFS resolve --dir $dir nosuchpackage" \
    -i
echo
hyperfine --warmup 1 --runs 3 -N \
    -n "galaxy: python start + import + first resolve (list + sort)" "$py $repo/benches/resolve_galaxy.py $dir samtools=1.9" \
    -n "galaxy: python start + import only" "$py -c 'import galaxy.tool_util.deps.containers'"
echo
echo "# Galaxy in-process phases (first resolve = listing + version sort; warm = dir_mtime cache hit):"
"$py" "$repo/benches/resolve_galaxy.py" "$dir" --warm 200 samtools=1.9
"$py" "$repo/benches/resolve_galaxy.py" "$dir" --warm 100 samtools=1.9 bwa=0.7.17
echo
echo "# depotfs --batch (one listing, then per-requirement lookups) for 5000 requirement sets:"
"$py" - "$dir" >"${tmp:-/tmp}/resolve-bench-cases.jsonl" <<'EOF'
import json, os, random, sys
names = sorted(os.listdir(sys.argv[1]))
rng = random.Random(1)
for _ in range(5000):
    n = rng.choice(names)
    print(json.dumps([n.rsplit("--", 1)[0].replace(":", "=", 1)]))
EOF
hyperfine --warmup 1 --runs 5 -N \
    -n "depotfs resolve --batch 5000 sets" "$DEPOTFS resolve --dir $dir --batch ${tmp:-/tmp}/resolve-bench-cases.jsonl"
