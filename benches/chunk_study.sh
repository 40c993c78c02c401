#!/usr/bin/env bash
# #18 chunk-size study on SIF-like images (docs/format.md "Files and chunking"). By hand, as root
# (chroot, FUSE); about 40 minutes on a busy 2-core machine, most of it mksquashfs:
#
#   [JOBS=2] bash benches/chunk_study.sh [WORK]     # WORK defaults to /var/tmp/chunks (~3 GB)
#
# 1. Downloads cp311 manylinux wheels of a few scientific/bioinformatics packages from PyPI
#    (several versions each) and unpacks each once, byte-compiled (conda ships .pyc too).
# 2. Builds one root filesystem per tool version the way a BioContainer looks: a base layer
#    identical in every image (busybox-static, the host's libc/libstdc++/... and this python3.11
#    with its stdlib and libpython, like the conda base) plus the tool's wheel and its
#    dependencies in /usr/local/lib/python3.11/site-packages (some dependency versions change
#    between images, some do not), and packs it the way `singularity build` does:
#    `mksquashfs ROOT IMG -noappend` with the defaults (gzip, 128 KiB blocks).
# 3. Records a container start per image: squashfuse mounts the image under
#    `strace -e trace=pread64`, `chroot MNT /bin/sh -c 'python3 -c "import TOOL"'` runs on it, and
#    every pread squashfuse made of the image becomes one line of a trace in the
#    `depotfs mount --record` format (PATH<TAB>OFFSET<TAB>LENGTH).
# 4. Runs `catalog/examples/chunk_sizes.rs` over the images and traces (needs
#    `cargo build --release -p depotfs-catalog --example chunk_sizes` first; CARGO_TARGET_DIR is
#    honoured) and prints the table recorded in docs/format.md and benches/RESULTS.md.
#
# Needs squashfs-tools, squashfuse, fuse3, strace, busybox-static, python3.11 with pip (the same
# minor version runs inside the images; set PYTHON=...), network to PyPI for the first run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/var/tmp/chunks}"
py="${PYTHON:-python3}"
example="${CARGO_TARGET_DIR:-$repo/target}/release/examples/chunk_sizes"
mkdir -p "$work"/{wheels,pkgs,roots,img,traces,mnt}

# tool version import-statement  requirement...   (the tool's own wheel is implied; lib:NAME is a
# host library the tool's wheel needs beyond the base, copied into the image's /usr/lib)
specs='
numpy     1.24.4 import-numpy
numpy     1.26.4 import-numpy
numpy     2.0.2  import-numpy
pandas    2.0.3  import-pandas        numpy==1.24.4 python-dateutil==2.8.2 pytz==2023.3 six==1.16.0 tzdata==2023.3
pandas    2.1.4  import-pandas        numpy==1.26.4 python-dateutil==2.8.2 pytz==2023.3.post1 six==1.16.0 tzdata==2023.4
pandas    2.2.2  import-pandas        numpy==1.26.4 python-dateutil==2.9.0.post0 pytz==2024.1 six==1.16.0 tzdata==2024.1
biopython 1.83   from-Bio-import-SeqIO numpy==1.26.4
biopython 1.84   from-Bio-import-SeqIO numpy==1.26.4
pysam     0.22.1 import-pysam         lib:libdl.so.2 lib:librt.so.1
pysam     0.23.0 import-pysam         lib:libdl.so.2 lib:librt.so.1
scipy     1.10.1 import-scipy.stats   numpy==1.24.4
scipy     1.11.4 import-scipy.stats   numpy==1.26.4
scipy     1.13.1 import-scipy.stats   numpy==1.26.4
pyarrow   14.0.2 import-pyarrow       numpy==1.26.4 lib:libdl.so.2 lib:librt.so.1
pyarrow   16.1.0 import-pyarrow       numpy==1.26.4 lib:libdl.so.2 lib:librt.so.1
'
step() { echo "== $(date -u +%T) $*" >&2; }

# 1. Wheels, each unpacked once into pkgs/NAME==VERSION and byte-compiled as it will sit in the image.
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
site="/usr/local/lib/python$pyver/site-packages"
unpack() { # NAME==VERSION
    local dir="$work/pkgs/$1"
    [ -e "$dir/.done" ] && return 0
    local name="${1%%==*}" ver="${1##*==}"
    local norm="${name//-/_}"
    local whl
    whl="$(ls "$work/wheels/" | grep -i "^${norm}-${ver}-" | head -1 || true)"
    if [ -z "$whl" ]; then
        nice "$py" -m pip download -q --no-deps --only-binary=:all: -d "$work/wheels" "$1" >&2
        whl="$(ls "$work/wheels/" | grep -i "^${norm}-${ver}-" | head -1)"
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    nice "$py" -m zipfile -e "$work/wheels/$whl" "$dir"
    nice "$py" -m compileall -q -j 1 -s "$dir" -p "$site" "$dir" >/dev/null || true
    touch "$dir/.done"
}
step "wheels"
echo "$specs" | while read -r tool ver _ deps; do
    [ -n "$tool" ] || continue
    unpack "$tool==$ver"
    for d in $deps; do [ "${d#lib:}" != "$d" ] || unpack "$d"; done
done

# 2. The base layer, identical in every image.
base="$work/base"
if [ ! -e "$base/.done" ]; then
    step "base layer"
    rm -rf "$base" && mkdir -p "$base"/{bin,lib64,usr/lib,usr/local/bin,usr/local/lib,etc,tmp,dev,proc}
    cp /usr/bin/busybox "$base/bin/busybox"
    for a in sh ls cat env ps head; do ln -s busybox "$base/bin/$a"; done
    prefix="$("$py" -c 'import sys; print(sys.base_prefix)')"
    exe="$(readlink -f "$("$py" -c 'import sys; print(sys.executable)')")"
    cp -a "$exe" "$base/usr/local/bin/python$pyver"
    ln -s "python$pyver" "$base/usr/local/bin/python3"
    cp -a "$prefix"/lib/libpython*.so* "$base/usr/lib/"   # on the loader's default path
    # the stdlib without its tests, static library and third-party site-packages (pip stays: the
    # conda base has it too)
    (cd "$prefix/lib" && tar -c --exclude="python$pyver/test" --exclude="python$pyver/config-*" \
        --exclude="python$pyver/site-packages/*" "python$pyver") | tar -x -C "$base/usr/local/lib"
    for p in pip setuptools; do
        cp -a "$prefix/lib/python$pyver/site-packages/$p" "$base$site/" 2>/dev/null || true
    done
    # shared libraries: what python, its extension modules and manylinux wheels expect of the OS
    libs="$( (ldd "$exe"; find "$prefix/lib/python$pyver/lib-dynload" -name '*.so' -exec ldd {} \;; \
        ldd "$(command -v mksquashfs)") 2>/dev/null | awk '$3 ~ /^\// {print $3}')"
    for l in $libs /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        case "$l" in "$prefix"/*) continue ;; esac
        cp -L "$l" "$base/usr/lib/" 2>/dev/null || true
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$base/lib64/"
    echo "root:x:0:0:root:/root:/bin/sh" >"$base/etc/passwd"
    touch "$base/.done"
fi

# 3. One root and one squashfs image per tool version (hard links: the roots cost no disk),
#    JOBS (default 2) at a time.
img_name() { echo "$1@$2"; }
build_image() { # TOOL VERSION DEPS...
    local tool="$1" ver="$2" name img root d
    shift 2
    name="$(img_name "$tool" "$ver")"
    img="$work/img/$name.sqfs"
    root="$work/roots/$name"
    step "image $tool $ver"
    rm -rf "$root" && cp -al "$base" "$root" && rm -f "$root/.done"
    for d in "$tool==$ver" "$@"; do
        if [ "${d#lib:}" != "$d" ]; then cp -L "/lib/x86_64-linux-gnu/${d#lib:}" "$root/usr/lib/"; continue; fi
        (cd "$work/pkgs/$d" && find . -mindepth 1 -maxdepth 1 ! -name .done -exec cp -al {} "$root$site/" \;)
    done
    nice mksquashfs "$root" "$img.part" -noappend -quiet -no-progress >/dev/null
    mv "$img.part" "$img"
    rm -rf "$root"
}
while read -r tool ver _ deps; do
    [ -n "$tool" ] && [ ! -e "$work/img/$(img_name "$tool" "$ver").sqfs" ] || continue
    # shellcheck disable=SC2086 # deps is a list
    build_image "$tool" "$ver" $deps &
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
done <<<"$specs"
wait

# 4. A recorded start per image: which byte ranges of the image squashfuse reads.
mnt="$work/mnt"
echo "$specs" | while read -r tool ver stmt _; do
    [ -n "$tool" ] || continue
    name="$(img_name "$tool" "$ver")"
    trace="$work/traces/$name.trace"
    [ -s "$trace" ] && continue
    step "start $tool $ver: ${stmt//-/ }"
    log="$work/traces/$name.strace"
    strace -f -qq -e trace=pread64 -e signal=none -s 0 -o "$log" \
        squashfuse -f "$work/img/$name.sqfs" "$mnt" &
    fuse_pid=$!
    for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
    mount -t tmpfs tmpfs "$mnt/tmp" # as Singularity binds the host's /tmp (scipy.stats writes there)
    env -i PATH=/usr/local/bin:/bin "$(command -v chroot)" "$mnt" /bin/sh -c "python3 -c '${stmt//-/ }'" ||
        { umount "$mnt/tmp"; fusermount3 -u "$mnt"; echo "start of $name failed" >&2; exit 1; }
    umount "$mnt/tmp"
    fusermount3 -u "$mnt"
    wait "$fuse_pid"
    # pread64(3, ""..., 8192, 123456) = 8192  ->  NAME OFFSET LENGTH (bytes actually read)
    { echo "# depotfs mount --record: PATH<TAB>OFFSET<TAB>LENGTH (squashfuse preads of $name.sqfs)"
      sed -n 's/.*pread64([0-9]*, [^,]*, [0-9]*, \([0-9]*\)) *= *\([0-9]*\)$/\1 \2/p' "$log" |
          awk -v n="$name.sqfs" '$2 > 0 {printf "%s\t%s\t%s\n", n, $1, $2}'
    } >"$trace.part"
    mv "$trace.part" "$trace"
    rm -f "$log"
done

# 5. The measurement.
step "chunk_sizes"
args=()
for img in "$work"/img/*.sqfs; do
    args+=("$img=$work/traces/$(basename "$img" .sqfs).trace")
done
nice "$example" "${args[@]}"
