# Sourced by tests/*/setup-venv.sh: one way to keep a Python venv of pinned test tools.
#
#   pinned_venv LABEL VENV REQUIREMENTS PACKAGE PROBE...
#
# Creates (idempotently) VENV from REQUIREMENTS (a pinned pip requirements file), then runs
# PROBE (a command, with $venv set) so a broken install fails here rather than in a test, and
# prints PACKAGE's version. The venv is rebuilt only when REQUIREMENTS changes: a stamp holding
# its hash is written last, so an interrupted install is redone on the next run.
# Needs python3 with the venv module (Debian: python3-venv) and access to PyPI.
pinned_venv() {
    local label=$1 venv=$2 req=$3 package=$4
    shift 4
    local stamp="$venv/.depotfs-requirements.sha256"
    local want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "$label venv up to date: $venv"
        return 0
    fi
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
    "$@" >/dev/null
    echo "$want" >"$stamp"
    echo "$label venv ready: $venv ($("$venv/bin/python" -m pip show "$package" | grep '^Version'))"
}
