#!/usr/bin/env bash
# `depotfs import` against the pipeline an operator would script (skopeo copy docker://… oci:
# + umoci unpack + depotfs add), on BioContainer-like images in a local docker-registry: one
# base layer shared by all, one tool layer each. By hand, release build:
#
#   cargo build --release && bash benches/import.sh [TOOLS] [BASE_MIB] [TOOL_MIB]
#
# Defaults (4 tools, 200 MiB base, 220 MiB per tool) make ~1.1 GiB of layers. Needs
# docker-registry, skopeo, umoci, busybox-static (.ci/run installs them) and bc. Prints one line per
# step, the speed-up, and for the images after the first the bytes fetched and stored against
# their own layers' compressed (gzip) size; record the output in benches/RESULTS.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${DEPOTFS:-$repo/target/release/depotfs}"
tools="${1:-4}" base_mib="${2:-200}" tool_mib="${3:-220}"
work="$(mktemp -d /var/tmp/depotfs-import-bench.XXXXXX)"
trap 'kill "${reg_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
host="127.0.0.1:$port"

cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $host}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$work/policy.json"
skopeo=(skopeo --policy "$work/policy.json")

# Files that compress like binaries (about 2.5:1): random bytes, each repeated once
# with small edits, written by one Python process per directory.
gen() { # DIR MIB SEED
    python3 - "$1" "$2" "$3" <<'EOF'
import os, random, sys
d, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
os.makedirs(d, exist_ok=True)
left, i = mib << 20, 0
while left > 0:
    n = min(left, rng.choice([4 << 10, 64 << 10, 1 << 20, 8 << 20]))
    half = rng.randbytes(n // 3)
    data = (half + bytes(n // 3) + half)[:n]
    sub = os.path.join(d, f"d{i % 50}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}"), "wb") as f:
        f.write(data)
    left -= n
    i += 1
EOF
}

t0=$(date +%s.%N)
mkdir -p "$work/base/bin"
cp /bin/busybox "$work/base/bin/busybox"
ln -s busybox "$work/base/bin/sh"
gen "$work/base/usr/lib" "$base_mib" 1
umoci init --layout "$work/oci"
tar --numeric-owner -C "$work/base" -cf "$work/base.tar" .
refs=()
for t in $(seq 1 "$tools"); do
    gen "$work/tool$t/usr/local/tool$t" "$tool_mib" $((t + 100))
    tar --numeric-owner -C "$work/tool$t" -cf "$work/tool$t.tar" .
    umoci new --image "$work/oci:tool$t"
    umoci raw add-layer --image "$work/oci:tool$t" "$work/base.tar"
    umoci raw add-layer --image "$work/oci:tool$t" "$work/tool$t.tar"
    "${skopeo[@]}" copy --quiet --dest-tls-verify=false "oci:$work/oci:tool$t" "docker://$host/bio/tool$t:1.0--0"
    refs+=("docker://$host/bio/tool$t:1.0--0")
done
layers=$(du -sb "$work/registry" | cut -f1)
echo "setup: $tools images, $((layers >> 20)) MiB in the registry, $(echo "$(date +%s.%N) - $t0" | bc) s"

"$bin" init "$work/s1" --name bench >/dev/null 2>&1
"$bin" init "$work/s2" --name bench >/dev/null 2>&1

t0=$(date +%s.%N)
for t in $(seq 1 "$tools"); do
    "${skopeo[@]}" copy --quiet --src-tls-verify=false "docker://$host/bio/tool$t:1.0--0" "oci:$work/pull:tool$t"
    umoci unpack --image "$work/pull:tool$t" "$work/bundle/tool$t:1.0--0" >/dev/null
    mv "$work/bundle/tool$t:1.0--0/rootfs" "$work/bundle/tool$t:1.0--0.rootfs"
done
mkdir -p "$work/trees/bio"
for t in $(seq 1 "$tools"); do mv "$work/bundle/tool$t:1.0--0.rootfs" "$work/trees/bio/tool$t:1.0--0"; done
"$bin" add "$work/s1" --to images/ "$work/trees/bio" >/dev/null 2>&1
t_pipe=$(echo "$(date +%s.%N) - $t0" | bc)
echo "pipeline (skopeo copy + umoci unpack + depotfs add): $t_pipe s, store $(( $(du -sb "$work/s1/public" | cut -f1) >> 20 )) MiB"

echo "load average before the timed steps: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
"$bin" import "$work/s2" "${refs[0]}" --to images/ --insecure-registry "$host" >"$work/first.log" 2>&1
t_first=$(echo "$(date +%s.%N) - $t0" | bc)
s_first=$(du -sb "$work/s2/public" | cut -f1)
"$bin" import "$work/s2" "${refs[@]:1}" --to images/ --jobs 2 --insecure-registry "$host" \
    --metrics-file "$work/rest.prom" >"$work/rest.log" 2>&1
t_import=$(echo "$(date +%s.%N) - $t0" | bc)
s_all=$(du -sb "$work/s2/public" | cut -f1)
echo "depotfs import: first image $t_first s; all $tools images $t_import s, store $((s_all >> 20)) MiB"
tool_blob=$(du -sb "$work/tool2.tar" | cut -f1)
# The later images' own (tool) layers as the registry holds them: gzip, from the manifests.
tool_gz=$(python3 - "$work/oci" "$tools" <<'EOF'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
blob = lambda dg: json.load(open(f"{d}/blobs/sha256/{dg[7:]}"))
idx = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in json.load(open(f"{d}/index.json"))["manifests"]}
print(sum(blob(idx[f"tool{t}"])["layers"][1]["size"] for t in range(2, n + 1)))
EOF
)
fetched=$(sed -n 's/^depotfs_batch_downloaded_bytes{command="import"} //p' "$work/rest.prom")
grown=$((s_all - s_first))
echo "second and later images ($((tools - 1))): their own layers $((tool_gz >> 20)) MiB gzip in all ($((tool_blob >> 20)) MiB uncompressed each);" \
    "fetched $((fetched >> 20)) MiB = $(echo "scale=3; $fetched / $tool_gz" | bc)x," \
    "store grew $((grown >> 20)) MiB = $(echo "scale=3; $grown / $tool_gz" | bc)x (target <= 1.05x each)"
echo "speed-up: $(echo "scale=2; $t_pipe / $t_import" | bc)x"
tail -1 "$work/rest.log"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
