#!/usr/bin/env bash
# Create (idempotently) the Python venv holding Galaxy's real resolver code for the Galaxy
# agreement tests (tests/galaxy.rs, tests/galaxy/agreement.py) and benches/resolve.sh.
#
#   bash tests/galaxy/setup-venv.sh            # venv at $GALAXY_VENV or <repo>/target/galaxy-venv
#
# Versions are pinned in tests/galaxy/requirements.txt (galaxy-tool-util and the `packaging`
# release it sorts versions with); rebuilt only when that file changes (tests/pinned-venv.sh).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
source "$repo/tests/pinned-venv.sh"
venv="${GALAXY_VENV:-$repo/target/galaxy-venv}"
# Fail here, not in the test, if the resolver code cannot be imported.
pinned_venv galaxy "$venv" "$repo/tests/galaxy/requirements.txt" galaxy-tool-util \
    "$venv/bin/python" -c 'from galaxy.tool_util.deps.containers import ContainerRegistry; from galaxy.tool_util.deps.mulled.util import v2_image_name'
