#!/usr/bin/env bash
# Sets everything up (once), checks style, and runs the whole test suite: the XLA tests (in
# the cached torch-xla environment, PJRT on the CPU) in one process, beside the main
# environment's tests in TEST_WORKERS (default 2) worker processes (pytest-xdist; each test
# file runs whole in one worker, the longest files first): three processes on two cores,
# because the tests spend part of their time waiting for the processes they start (four
# saturated the cores and pushed an XLA test past its time limit; three main workers took
# 20:54 from a fresh clone where two took 19:43 on the same machine). The
# sessions share the parallel runs (each trains once, in whichever session first needs it);
# the XLA tests' output is printed after the main tests'. Options go to pytest; with options
# (e.g. -k NAME) only the main environment's tests run, in one process. SKIP_XLA=1 leaves
# the XLA tests out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
if [[ $# -gt 0 ]]; then
    exec .venv/bin/python -m pytest --durations=15 "$@"
fi

# the files that take longest, handed to the workers first (two each to start with, so the
# two longest are paired with shorter ones) so that none is left to start last; the other
# files follow by name (tests/xla runs in its own environment)
LONGEST_FILES=(
    tests/test_tensor_parallel.py tests/test_launchers.py tests/test_ray_launcher.py
    tests/test_parallel.py tests/test_device_check.py tests/test_cli.py
    tests/test_async_save.py tests/test_faults.py tests/test_preemption.py
)
files=("${LONGEST_FILES[@]}")
for file in tests/test_*.py; do
    [[ " ${LONGEST_FILES[*]} " == *" $file "* ]] || files+=("$file")
done
# one thread per process: several processes share two cores, and a process on more threads
# would wait for cores its threads spin on
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
session="$(mktemp -d)"
export LIGHTNING_ACCEL_TEST_RUNS="$session/runs"
mkdir "$LIGHTNING_ACCEL_TEST_RUNS"
xla_env=""
[[ "${SKIP_XLA:-0}" == "1" ]] || xla_env="$(bash scripts/setup_xla.sh)"
xla=""
if [[ -n "$xla_env" ]]; then
    (
        echo "==================== XLA tests (torch-xla environment) ===================="
        status=0
        PJRT_DEVICE=CPU PYTHONPATH="$PWD" "$xla_env/bin/python" -m pytest --durations=10 \
            --basetemp="$session/xla" tests/xla || status=$?
        echo "$status" >"$session/xla.status"
    ) >"$session/xla.log" 2>&1 &
    xla=$!
fi
main_status=0
.venv/bin/python -m pytest --durations=25 --numprocesses="${TEST_WORKERS:-2}" \
    --dist=loadfile --no-loadscope-reorder "${files[@]}" || main_status=$?
if [[ -n "$xla" ]]; then
    wait "$xla" || true
    cat "$session/xla.log"
    status="$(cat "$session/xla.status" 2>/dev/null || echo "none, the tests did not finish")"
    if [[ "$status" != 0 ]]; then
        echo "test: the XLA tests failed (exit code: $status)" >&2
        [[ $main_status -ne 0 ]] || main_status=1
    fi
fi
rm -rf "$session"
exit "$main_status"
