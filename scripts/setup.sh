#!/usr/bin/env bash
# Set up gdn-harness in the active virtualenv, or in .venv (created if missing).
#   scripts/setup.sh [EXTRAS]     e.g. scripts/setup.sh dev,fla,triton
# torch: an installed torch (CUDA / ROCm / CPU build) is left alone. With none, a
# machine without a GPU gets the CPU build torch==2.13.0 (plain `torch` would pull GBs
# of CUDA wheels); a machine with an NVIDIA or AMD GPU gets the registry's default
# build. GDN_TORCH_SPEC overrides what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
pip=("$py" -m pip install --quiet --disable-pip-version-check)

if "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping installed torch $("$py" -c 'import torch; print(torch.__version__)')"
else
  if [ -n "${GDN_TORCH_SPEC:-}" ]; then spec="$GDN_TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/kfd ]; then spec="torch"
  else spec="torch==2.13.0"; fi
  echo "setup: installing $spec"
  "${pip[@]}" "$spec"
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
echo "setup: installing gdn-harness $target into $("$py" -c 'import sys; print(sys.prefix)')"
"${pip[@]}" -e "$target"
