#!/usr/bin/env bash
# Sets everything up (once) and runs `lightning-accel train` with any overrides given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lightning-accel train "$@"
