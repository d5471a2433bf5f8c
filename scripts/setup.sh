#!/usr/bin/env bash
# Creates .venv with lightning-accel (editable) and its test tools, once; later calls
# reinstall only when pyproject.toml, the pins or the console script (copied by the install)
# change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
want="$(cat pyproject.toml constraints/cpu.txt lightning_accel_entry.py | sha256sum | cut -d' ' -f1)"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    echo "setup: installing lightning-accel and its dependencies into $VENV ..."
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --constraint constraints/cpu.txt --editable ".[dev]" 2>&1 \
        | grep -v "^WARNING: Location 'file:" || true
    "$VENV/bin/python" -c "import lightning_accel, torch, lightning, hydra" \
        || { echo "setup: the install failed" >&2; exit 1; }
    echo "$want" > "$STAMP"
    echo "setup: done ($("$VENV/bin/python" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
fi

# Byte-compile the checkout's own modules on every call (files already compiled are
# skipped): Python run with PYTHONDONTWRITEBYTECODE, as CI machines often are, would
# otherwise compile them again in every process it starts, about 1 s of CPU per command.
"$VENV/bin/python" -m compileall -q -j 0 lightning_accel tests benchmarks >/dev/null
