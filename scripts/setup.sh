#!/usr/bin/env bash
# Creates .venv with lightning-accel (editable) and its test tools, once; later calls
# reinstall only when pyproject.toml, the pins or the console script (copied by the install)
# change. The install runs through uv (pinned below), which resolves and unpacks the same
# versions as pip in a fraction of the time; it reads pip's configuration of this machine
# (wheel folders, indexes, constraints), so both find the same files.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
UV_VERSION=0.13.9
want="$(cat pyproject.toml constraints/cpu.txt lightning_accel_entry.py | sha256sum | cut -d' ' -f1)"

# pip's settings (`pip config list`: files and PIP_* variables) as uv's options; pip
# considers every index's versions, uv only the first index's unless told otherwise
uv_options() {
    local line key value flag item
    echo --index-strategy
    echo unsafe-best-match
    while IFS= read -r line; do
        key="${line%%=*}"
        key="${key#*.}"
        value="${line#*=}"
        value="${value//\'/}"
        case "$key" in
            find-links) flag=--find-links ;;
            index-url) flag=--index-url ;;
            extra-index-url) flag=--extra-index-url ;;
            constraint) flag=--constraint ;;
            *) continue ;;
        esac
        for item in $value; do
            echo "$flag"
            echo "$item"
        done
    done < <("$VENV/bin/python" -m pip config list 2>/dev/null)
}

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    echo "setup: installing lightning-accel and its dependencies into $VENV ..."
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" 2>&1 \
        | grep -v "^WARNING: Location 'file:" || true
    mapfile -t options < <(uv_options)
    # --compile-bytecode: as pip does; without it every process would compile the packages'
    # modules anew where PYTHONDONTWRITEBYTECODE is set
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --compile-bytecode \
        "${options[@]}" --constraint constraints/cpu.txt --editable ".[dev]"
    "$VENV/bin/python" -c "import lightning_accel, torch, lightning, hydra" \
        || { echo "setup: the install failed" >&2; exit 1; }
    echo "$want" > "$STAMP"
    echo "setup: done ($("$VENV/bin/python" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
fi

# Byte-compile the checkout's own modules on every call (files already compiled are
# skipped): Python run with PYTHONDONTWRITEBYTECODE, as CI machines often are, would
# otherwise compile them again in every process it starts, about 1 s of CPU per command.
"$VENV/bin/python" -m compileall -q -j 0 lightning_accel tests benchmarks >/dev/null
