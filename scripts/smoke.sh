#!/usr/bin/env bash
# README command 1: set up, then the main job - the smoke suite on reference and triton
# (interpreter on CPU); report in reports/latest/. The harness's exit code passes through:
# 0 all passed, 1 a correctness failure or case error, 2 usage / configuration error.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh triton
py="${VIRTUAL_ENV:-$PWD/.venv}/bin"
exec "$py/gdn-harness" run --suite smoke --backend reference --backend triton "$@"
