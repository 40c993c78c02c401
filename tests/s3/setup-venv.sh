#!/usr/bin/env bash
# Create (idempotently) the Python venv holding moto's S3 server, the S3-compatible server
# tests/s3.rs and benches/s3.sh run on 127.0.0.1 (why moto: see tests/s3.rs).
#
#   bash tests/s3/setup-venv.sh            # venv at $S3_VENV or <repo>/target/s3-venv
#
# The version is pinned in tests/s3/requirements.txt. The venv is rebuilt only when that file
# changes: a stamp holding its hash is written last, so an interrupted install is redone.
# Needs python3 with the venv module (Debian: python3-venv) and access to PyPI.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${S3_VENV:-$repo/target/s3-venv}"
req="$repo/tests/s3/requirements.txt"
stamp="$venv/.depotfs-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "s3 venv up to date: $venv"
    exit 0
fi

python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
"$venv/bin/moto_server" --help >/dev/null
echo "$want" >"$stamp"
echo "s3 venv ready: $venv ($("$venv/bin/python" -m pip show moto | grep '^Version'))"
