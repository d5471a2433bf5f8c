#!/usr/bin/env bash
# Runs and records every CUDA path of the pack on this machine's GPUs in a few minutes
# (`lightning-accel verify`): the figures go to DIR/<gpu-name>.json and .md.
#   bash scripts/device_check.sh [--dry-run] [--out DIR] [--wheels DIR] [--work DIR]
#                                [--cell-timeout S] [--deadline S]
# --dry-run runs the same cells on their CPU twins, in .venv (set up first, as
# scripts/train.sh does). Without it the script uses the python3 that has torch with CUDA
# (or $PYTHON) and imports the pack from this checkout (PYTHONPATH); it installs nothing
# from the network. --wheels DIR installs the wheels in DIR into a temporary folder first,
# offline: the way to bring a package that machine lacks (docs/device_check.md).
# Exit code 0: every cell passed; 1: one or more failed; 2: no CUDA GPU without --dry-run,
# or a package missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

dry_run=0
wheels=""
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; args+=("$1") ;;
        --wheels)
            [[ $# -ge 2 ]] || { echo "device_check: --wheels takes a directory." >&2; exit 2; }
            wheels="$2"; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done

if [[ $dry_run -eq 1 ]]; then
    bash scripts/setup.sh >&2
    python=.venv/bin/python
else
    python="${PYTHON:-}"
    if [[ -z "$python" ]]; then
        # the python3 on the PATH when it has torch (a GPU machine's image), else .venv's
        python=python3
        if ! python3 -c "import torch" 2>/dev/null && [[ -x .venv/bin/python ]]; then
            python=.venv/bin/python
        fi
    fi
    if [[ -n "$wheels" ]]; then
        site="$(mktemp -d)"
        "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
            "$wheels"/*.whl >&2
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    # one sentence for a missing package, before anything runs (found, not imported)
    missing="$("$python" -c '
import importlib.util
for module, package in (("torch", "torch"), ("lightning", "lightning"), ("hydra", "hydra-core"),
        ("omegaconf", "omegaconf"), ("torchmetrics", "torchmetrics"), ("rich", "rich"),
        ("antlr4", "antlr4-python3-runtime"), ("matplotlib", "matplotlib"),
        ("sklearn", "scikit-learn")):
    if importlib.util.find_spec(module) is None:
        print(module, package)
        break
')"
    if [[ -n "$missing" ]]; then
        echo "device_check: $python cannot import ${missing%% *}: install the package" \
            "${missing##* }, or bring its wheel with --wheels DIR (docs/device_check.md)." >&2
        exit 2
    fi
fi
exec "$python" -m lightning_accel verify "${args[@]}"
