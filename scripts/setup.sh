#!/usr/bin/env bash
# Set up gdn-harness in the active virtualenv, or in .venv (created if missing).
#   scripts/setup.sh [EXTRAS]     e.g. scripts/setup.sh dev,fla,triton
# Versions: constraints.txt pins what the README commands were green with. GDN_LATEST=1
# (the drift lane, scripts/drift.py) instead takes the newest versions pyproject.toml allows.
# torch: an installed torch (CUDA / ROCm / CPU build) is left alone, and so are the lines
# of constraints.txt that a torch build pins itself (`# torch build`: torch, its triton).
# With none, a machine without a GPU gets the CPU build of the pinned torch (plain `torch`
# would pull GBs of CUDA wheels); a machine with an NVIDIA or AMD GPU gets the registry's
# build of that version. GDN_TORCH_SPEC overrides what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
lock=constraints.txt

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
pip=("$py" -m pip install --quiet --disable-pip-version-check)

# Done before from these very pyproject.toml and lock, with these extras: nothing to install
# (pip's resolve alone took ~10 s of every scripts/smoke.sh). GDN_SETUP_FORCE=1 re-runs it.
stamp="$(dirname "$py")/../.gdn-setup"
key=$(cat pyproject.toml "$lock" | sha256sum | cut -c1-16)
wanted="base ${extras//,/ }"
if [ "${GDN_LATEST:-0}" != 1 ] && [ "${GDN_SETUP_FORCE:-0}" != 1 ] && [ -e "$stamp" ]; then
  missing=0
  for e in $wanted; do grep -qx "$key $e" "$stamp" || missing=1; done
  if [ "$missing" = 0 ]; then echo "setup: up to date ($stamp)"; exit 0; fi
fi
pinned_torch=$(grep -E '^torch==' "$lock" | cut -d' ' -f1)

keep_torch_build=1   # apply the `# torch build` pins: only where setup installs the CPU torch
if "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping installed torch $("$py" -c 'import torch; print(torch.__version__)')"
  keep_torch_build=0
else
  if [ -n "${GDN_TORCH_SPEC:-}" ]; then spec="$GDN_TORCH_SPEC"; keep_torch_build=0
  elif command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/kfd ]; then spec="$pinned_torch"; keep_torch_build=0
  else spec="$pinned_torch"; fi
  echo "setup: installing $spec"
  "${pip[@]}" "$spec"
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if [ "${GDN_LATEST:-0}" = 1 ]; then
  # newest allowed versions of everything but torch (which would otherwise become a CUDA build)
  "$py" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$constraints"
  upgrade=(--upgrade --upgrade-strategy eager)
  echo "setup: newest versions pyproject.toml allows (drift lane), torch held"
else
  if [ "$keep_torch_build" = 1 ]; then cp "$lock" "$constraints"; else grep -v '# torch build' "$lock" > "$constraints"; fi
  upgrade=()
  echo "setup: versions pinned by $lock"
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
echo "setup: installing gdn-harness $target into $("$py" -c 'import sys; print(sys.prefix)')"
"${pip[@]}" "${upgrade[@]}" -c "$constraints" -e "$target"
if [ "${GDN_LATEST:-0}" != 1 ]; then
  { grep "^$key " "$stamp" 2>/dev/null || true; for e in $wanted; do echo "$key $e"; done; } | sort -u > "$stamp.new"
  mv "$stamp.new" "$stamp"
else
  rm -f "$stamp"      # newest versions, not the lock's
fi
