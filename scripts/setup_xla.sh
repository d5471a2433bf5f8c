#!/usr/bin/env bash
# Creates the torch-xla environment (torch 2.9.0 + torch-xla 2.9.0, about 7 GB) once,
# outside the checkout, keyed by constraints/xla.txt: later calls reuse it until the pins
# change. Prints the environment's directory. The package itself is used from the
# checkout (PYTHONPATH), so one environment serves every clone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
key="$(sha256sum constraints/xla.txt | cut -c1-12)"
cache="${LIGHTNING_ACCEL_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightning-accel}"
env_dir="$cache/xla-env-$key"

if [[ ! -f "$env_dir/.installed" ]]; then
    echo "setup: building the torch-xla environment in $env_dir (about 7 GB, once) ..." >&2
    staging="$env_dir.$$.tmp"
    rm -rf "$staging"
    mkdir -p "$cache"
    "$PYTHON" -m venv "$staging"
    "$staging/bin/python" -m pip install --progress-bar off --disable-pip-version-check \
        -r constraints/xla.txt 2>&1 | grep -v "^WARNING: Location 'file:" >&2 || true
    PJRT_DEVICE=CPU "$staging/bin/python" -c "import torch_xla, lightning, hydra" \
        || { echo "setup: the torch-xla install failed" >&2; rm -rf "$staging"; exit 1; }
    touch "$staging/.installed"
    rm -rf "$env_dir"
    # moved into place whole, so a half-built environment is never used; run its tools as
    # `python -m ...` (the entry scripts' first lines name the build path)
    mv "$staging" "$env_dir"
fi
echo "$env_dir"
