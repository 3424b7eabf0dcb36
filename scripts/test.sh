#!/usr/bin/env bash
# Quick start 2: set up, then run the test suite (fast tests; --slow runs only the slow ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m slow -q --timeout=1800 "$@"
fi
# Two worker processes (pytest-xdist): a test's time is mostly single-threaded tracing, XLA
# compilation and subprocess start-up, so two run side by side on 2 cores (65 -> 34 min on a
# slow 2-core VM, before the slow marks).
exec .venv/bin/python -m pytest -m "not slow" -q --timeout=600 --durations=25 -n "${TAPELINE_TEST_WORKERS:-2}" "$@"
