#!/usr/bin/env bash
# Create (idempotently) the Python venv holding moto's S3 server, the S3-compatible server
# tests/s3.rs and benches/s3.sh run on 127.0.0.1 (why moto: see tests/s3.rs).
#
#   bash tests/s3/setup-venv.sh            # venv at $S3_VENV or <repo>/target/s3-venv
#
# The version is pinned in tests/s3/requirements.txt; rebuilt only when that file changes
# (tests/pinned-venv.sh).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
source "$repo/tests/pinned-venv.sh"
venv="${S3_VENV:-$repo/target/s3-venv}"
pinned_venv s3 "$venv" "$repo/tests/s3/requirements.txt" moto \
    "$venv/bin/moto_server" --help
