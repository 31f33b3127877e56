#!/usr/bin/env bash
# README command 2: set up with the test extras (versions pinned by constraints.txt), then
# the harness's own tests. pytest's exit code passes through (0 passed, 1 tests failed, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,fla,triton,eval
py="${VIRTUAL_ENV:-$PWD/.venv}/bin"
# one torch / OpenMP thread per xdist worker (-n auto starts one per core), unless set
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# the dev extra (ruff, import-linter) was just installed: its tests must run, not skip
export GDN_REQUIRE_DEV_TOOLS=1
exec "$py/python" -m pytest -n auto "$@"
