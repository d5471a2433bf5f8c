#!/usr/bin/env bash
# Sets everything up (once), checks style, and runs the whole test suite in two streams, one
# per core: the XLA tests (in the cached torch-xla environment, PJRT on the CPU) and then the
# main environment's LATE_FILES in one; the other main tests in the other. The streams share
# the session's parallel runs (each trains once, in whichever stream first needs it); the
# second stream's output is printed after the first's. Options go to pytest; with options
# (e.g. -k NAME) only the main environment's tests run, in one stream. SKIP_XLA=1 leaves the
# XLA tests out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
if [[ $# -gt 0 ]]; then
    exec .venv/bin/python -m pytest --durations=15 "$@"
fi

# main-suite files for the stream that starts with the XLA tests: about as long, together,
# as the XLA tests are short of the other main tests
LATE_FILES=(tests/test_tensor_parallel.py tests/test_ray_launcher.py tests/test_device_check.py)
ignored=()
for file in "${LATE_FILES[@]}"; do ignored+=("--ignore=$file"); done
# one thread per process: two streams on two cores, a process on more threads would wait for
# cores its threads spin on
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
session="$(mktemp -d)"
export LIGHTNING_ACCEL_TEST_RUNS="$session/runs"
mkdir "$LIGHTNING_ACCEL_TEST_RUNS"
xla_env=""
[[ "${SKIP_XLA:-0}" == "1" ]] || xla_env="$(bash scripts/setup_xla.sh)"
(
    if [[ -n "$xla_env" ]]; then
        echo "==================== XLA tests (torch-xla environment) ===================="
        status=0
        PJRT_DEVICE=CPU PYTHONPATH="$PWD" "$xla_env/bin/python" -m pytest --durations=10 \
            --basetemp="$session/xla" tests/xla || status=$?
        echo "$status" >"$session/xla.status"
    fi
    echo "==================== main tests: ${LATE_FILES[*]} ===================="
    status=0
    .venv/bin/python -m pytest --durations=10 --basetemp="$session/late" "${LATE_FILES[@]}" \
        || status=$?
    echo "$status" >"$session/late.status"
) >"$session/log" 2>&1 &
second=$!
main_status=0
.venv/bin/python -m pytest --durations=15 "${ignored[@]}" || main_status=$?
wait "$second" || true
cat "$session/log"
parts=(late)
[[ -z "$xla_env" ]] || parts=(xla late)
for part in "${parts[@]}"; do
    status="$(cat "$session/$part.status" 2>/dev/null || echo "none, the stream did not finish")"
    if [[ "$status" != 0 ]]; then
        echo "test: the $part tests failed (exit code: $status)" >&2
        [[ $main_status -ne 0 ]] || main_status=1
    fi
done
rm -rf "$session"
exit "$main_status"
