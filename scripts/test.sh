#!/usr/bin/env bash
# Sets everything up (once), checks style, and runs the whole test suite: the main
# environment's tests, then the XLA tests in the cached torch-xla environment
# (PJRT on the CPU). Options go to pytest; with options (e.g. -k NAME) only the main
# environment's tests run. SKIP_XLA=1 leaves the XLA tests out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest --durations=15 "$@"
if [[ $# -gt 0 || "${SKIP_XLA:-0}" == "1" ]]; then
    exit 0
fi
xla_env="$(bash scripts/setup_xla.sh)"
PJRT_DEVICE=CPU PYTHONPATH="$PWD" "$xla_env/bin/python" -m pytest --durations=10 tests/xla
