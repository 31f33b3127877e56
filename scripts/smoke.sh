#!/usr/bin/env bash
# README command 1: set up, then the main job - the smoke suite on reference and triton
# (interpreter on CPU); report in reports/latest/. The harness's exit code passes through:
# 0 all passed, 1 a correctness failure or case error, 2 usage / configuration error.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh triton
py="${VIRTUAL_ENV:-$PWD/.venv}/bin"
# one worker per core (at most 8; each gets cores / jobs torch threads); --jobs N overrides
jobs=$(nproc 2>/dev/null || echo 1); [ "$jobs" -gt 8 ] && jobs=8
case " $* " in *" --no-isolate "*|*" --distributed "*) jobs=1 ;; esac
exec "$py/gdn-harness" run --suite smoke --backend reference --backend triton --jobs "$jobs" "$@"
