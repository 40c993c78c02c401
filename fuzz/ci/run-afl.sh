#!/usr/bin/env bash
# A short AFL++ run of the fuzz targets (called by .ci/run): install cargo-afl if missing,
# build the drivers, fuzz each target for SECONDS (default 15) from its corpus, and fail if
# any input crashed or hung a target. Every target is built (FEATURES defaults to publisher:
# the trace, serve_request, listing and layer targets parse with the publisher's code, whose
# build costs ~13 CPU-minutes more, measured in docs/reliability.md); FEATURES= builds the
# catalog targets only. Every corpus is replayed by `cargo test` either way. Long runs are by
# hand: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-15}
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --version 0.18.2 --locked --quiet
fi
cd afl
FEATURES=${FEATURES-publisher}
cargo afl build --release --quiet ${FEATURES:+--features "$FEATURES"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for bin in src/bin/*.rs; do
    name=$(basename "$bin" .rs)
    if [ ! -x "target/release/$name" ]; then
        echo "fuzz $name: not built (needs FEATURES=publisher); corpus replayed by cargo test"
        continue
    fi
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1 \
        AFL_NO_AFFINITY=1 \
        cargo afl fuzz -i "../corpus/$name" -o "$out/$name" -V "$SECONDS_EACH" \
        "target/release/$name" >"$out/$name.log" 2>&1 || true
    stats="$out/$name/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "fuzz $name: afl-fuzz did not run:"; tail -20 "$out/$name.log"; failed=1; continue
    fi
    execs=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
    crashes=$(find "$out/$name/default/crashes" "$out/$name/default/hangs" -type f ! -name README.txt | wc -l)
    echo "fuzz $name: $execs executions in ${SECONDS_EACH}s, $crashes crashes or hangs"
    if [ "$crashes" -ne 0 ]; then
        for f in $(find "$out/$name/default/crashes" "$out/$name/default/hangs" -type f ! -name README.txt); do
            echo "  $f: $(base64 -w0 "$f" | head -c 400)"
        done
        failed=1
    fi
done
exit $failed
