#!/usr/bin/env bash
# .whl/test/: the wheels the GPU machine's image lacks for the harness's tests and bench, at
# constraints.txt's pins, for its Python 3.12 on x86_64 (the device tool's KINDS.md lists what the
# image holds: torch, triton, transformers, pytest, pytest-xdist, hypothesis, einops, rich, click, attrs...).
# Carry it with each call (`carry: [".whl/test"]`); scripts/device_env.sh installs it to /tmp/site.
#   fla-core                          the chunk op's kernels (fla backend, triton's chunk path)
#   jsonschema and its own deps       results.json's schema test
#   import-linter, grimp              the import-direction test
#   ruff                              the lint test
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="fla-core jsonschema jsonschema-specifications referencing rpds-py import-linter grimp ruff"
pin() { grep -i -E "^$1==" constraints.txt | sed 's/ .*//' || { echo "fetch_device_wheels: $1 is not pinned in constraints.txt" >&2; exit 1; }; }
mkdir -p .whl/test
rm -f .whl/test/*.whl
wanted=()
for p in $PKGS; do wanted+=("$(pin "$p")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl/test "${wanted[@]}"
ls .whl/test
du -sh .whl/test
