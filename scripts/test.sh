#!/usr/bin/env bash
# Sets everything up (once), checks style, and runs the whole test suite: the main
# environment's tests and, beside them, the XLA tests in the cached torch-xla environment
# (PJRT on the CPU). Their output is printed after the main tests'. Options go to pytest;
# with options (e.g. -k NAME) only the main environment's tests run. SKIP_XLA=1 leaves the
# XLA tests out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
xla_pid=""
if [[ $# -eq 0 && "${SKIP_XLA:-0}" != "1" ]]; then
    xla_env="$(bash scripts/setup_xla.sh)"
    xla_out="$(mktemp -d)"
    # beside the main tests: the two share the cores, the suite takes less wall time
    PJRT_DEVICE=CPU PYTHONPATH="$PWD" "$xla_env/bin/python" -m pytest --durations=10 \
        --basetemp="$xla_out/tmp" tests/xla >"$xla_out/log" 2>&1 &
    xla_pid=$!
fi
main_status=0
.venv/bin/python -m pytest --durations=15 "$@" || main_status=$?
if [[ -n "$xla_pid" ]]; then
    xla_status=0
    wait "$xla_pid" || xla_status=$?
    echo "==================== XLA tests (torch-xla environment) ===================="
    cat "$xla_out/log"
    rm -rf "$xla_out"
    if [[ $xla_status -ne 0 ]]; then
        echo "test: the XLA tests failed (exit code $xla_status)" >&2
        [[ $main_status -ne 0 ]] || main_status=$xla_status
    fi
fi
exit "$main_status"
