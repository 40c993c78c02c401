#!/usr/bin/env bash
# Create (idempotently) the Python venv holding Galaxy's real resolver code for the Galaxy
# agreement tests (tests/galaxy.rs, tests/galaxy/agreement.py) and benches/resolve.sh.
#
#   bash tests/galaxy/setup-venv.sh            # venv at $GALAXY_VENV or <repo>/target/galaxy-venv
#
# Versions are pinned in tests/galaxy/requirements.txt (galaxy-tool-util and the `packaging`
# release it sorts versions with). The venv is rebuilt only when that file changes: a stamp
# holding its hash is written last, so an interrupted install is redone on the next run.
# Needs python3 with the venv module (Debian: python3-venv) and access to PyPI.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${GALAXY_VENV:-$repo/target/galaxy-venv}"
req="$repo/tests/galaxy/requirements.txt"
stamp="$venv/.depotfs-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "galaxy venv up to date: $venv"
    exit 0
fi

python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
# Fail here, not in the test, if the resolver code cannot be imported.
"$venv/bin/python" -c 'from galaxy.tool_util.deps.containers import ContainerRegistry; from galaxy.tool_util.deps.mulled.util import v2_image_name'
echo "$want" >"$stamp"
echo "galaxy venv ready: $venv ($("$venv/bin/python" -m pip show galaxy-tool-util | grep '^Version'))"
