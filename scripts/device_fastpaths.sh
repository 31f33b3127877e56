#!/usr/bin/env bash
# On the GPU machine (device tool run, repo root): judge the production fast paths - the
# `flashinfer`, `sglang` and `vllm` (FlashInfer prefill on SM90) backends - with the packages
# that scripts/fetch_fastpath_packages.sh split into .whl/fastpath.partN. Parts persist in /tmp
# while the machine stays warm, so they travel one call each:
#   put N            copy part N into /tmp/fastpath_parts (carry .whl/fastpath.partN, .whl/fastpath.sha256);
#                    after the last part the tree is put together, checked and installed
#   check            versions, each backend's availability / declarations, one op case each
#   suite TAG        the suites $SUITES (default "fastpath ci") against $BACKENDS (default "flashinfer
#                    sglang vllm"), the backends concurrently on the one GPU, each suite LIMIT_S (default
#                    270 s); TAG names the run: cold (first, JIT compiles) and warm (again, caches filled)
#   extra            the variants (flashinfer@pool / @mtp-buffer / @kmajor, sglang@flashinfer, vllm@triton)
#                    and the kill run of harness/faults/fastpath_mutants.py, on the slices each touches
# Reports: $OUT/<phase>[-TAG].tgz (summary.md, results.json, logs).
# The device calls, back to back (a warm machine keeps /tmp for 30 s after a call; about 22 min):
#   put 1..4 : command "bash scripts/device_fastpaths.sh put N", carry [".whl/fastpath.partN", ".whl/fastpath.sha256"]
#   then     : "LIMIT_S=200 bash scripts/device_fastpaths.sh suite cold"   (no carry; timeout_s 600)
#              "LIMIT_S=150 bash scripts/device_fastpaths.sh suite warm"
#              "LIMIT_S=240 bash scripts/device_fastpaths.sh extra"
# ("check" is a quicker first look: versions, declarations, one prefill and one decode case each.)
set -o pipefail
PHASE=${1:?usage: scripts/device_fastpaths.sh put N | check | suite TAG | extra}
OUT=${OUT:-/tmp/fastpath_out}; mkdir -p "$OUT"
FP=/tmp/fastpath; PARTS=/tmp/fastpath_parts; R=/tmp/fastpath_r/$PHASE${2:+-$2}
LIMIT_S=${LIMIT_S:-270}
mkdir -p "$PARTS" "$R"

assemble() {  # all parts here: put them together, check, install into $FP (once)
  [ -f "$FP/.done" ] && return 0
  local want; want=$(cat .whl/fastpath.sha256 2>/dev/null || cat "$PARTS/sha256")
  local got; got=$(cat "$PARTS"/fastpath.part* | sha256sum | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then echo "parts so far: $(ls "$PARTS")  (sha256 $got, want $want)"; return 1; fi
  rm -rf "$FP" && mkdir -p "$FP/stage" "$FP/site" "$FP/vsrc"
  cat "$PARTS"/fastpath.part* | tar -xf - -C "$FP/stage" || return 3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$FP/site" ${PIP_ARGS:-} \
      "$FP"/stage/wheels/*.whl "$FP"/stage/wheels_vllm/*.whl || return 3
  tar -xzf "$FP/stage/flashinfer.tgz" -C "$FP/site" && tar -xzf "$FP/stage/sglang_src.tgz" -C "$FP/site" &&
      tar -xzf "$FP/stage/vllm_src.tgz" -C "$FP/vsrc" || return 3
  rm -rf "$FP/stage" "$PARTS" && touch "$FP/.done" && echo "installed into $FP"
}

case $PHASE in
  put)
    cp ".whl/fastpath.part$2" "$PARTS/" && cp .whl/fastpath.sha256 "$PARTS/sha256" || exit 3
    assemble; exit 0 ;;
esac
assemble || { echo "the fast-path packages are not all here yet (put every part first)"; exit 3; }
# wheels found missing after the parts were built (carry .whl/fastpath_extra with the call)
if ls .whl/fastpath_extra/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$FP/site" --upgrade \
      .whl/fastpath_extra/*.whl || exit 3
fi
# nvidia_cutlass_dsl's .pth (not read from PYTHONPATH) puts its dsl_packages first on sys.path
export PYTHONPATH=$FP/vsrc:$FP/site/nvidia_cutlass_dsl/dsl_packages:$FP/site:$PWD PYTHONUNBUFFERED=1
export GDN_DIAGNOSE_BUDGET_S=${GDN_DIAGNOSE_BUDGET_S:-20}

run() {  # name limit args...: one harness run, its report under $R/name
  local name=$1 lim=$2; shift 2
  timeout -s INT "$lim" python3 -m harness.cli run --device cuda --report-dir "$R/$name" -q "$@" \
      > "$R/$name.log" 2>&1; echo "$name rc=$?" | tee -a "$R/rc.txt"
}
pack() { (cd "$R" && tar czf "$OUT/$(basename "$R").tgz" $(ls -d */summary.md */results.json *.log *.txt 2>/dev/null)); }

case $PHASE in
  check)
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 - <<'PY' 2>&1 | tee "$R/check.txt"
import json
from harness.optimized.registry import load_backend
for name in ["flashinfer", "sglang", "vllm", "vllm@flashinfer", "flashinfer@kmajor"]:
    try:
        b = load_backend(name)
        print(name, "unavailable:", b.unavailable("cuda"))
        print(json.dumps(b.describe(), default=str)[:600])
    except Exception as e:
        print(name, "LOAD FAILED", type(e).__name__, e)
PY
    for b in flashinfer sglang vllm; do   # one prefill and one decode case each (the JIT compiles)
      run "one-$b" "$LIMIT_S" --suite fastpath --backend $b -k 'op.chunk_gated_delta_rule[' \
          -k 'op.fused_sigmoid_gating' --dtype bfloat16 &
    done; wait
    pack ;;
  suite)
    TAG=${2:?tag: cold / warm}
    for B in ${BACKENDS:-flashinfer sglang vllm}; do
      (for S in ${SUITES:-fastpath ci}; do run "$S-$B-$TAG" "$LIMIT_S" --suite "$S" --backend "$B" --jobs "${JOBS:-1}"; done) &
    done; wait
    pack ;;
  extra)
    K="-k op.chunk_gated_delta_rule[ -k op.fused_sigmoid_gating -k layer.mixed -k layer.spec_only"
    for B in flashinfer@pool flashinfer@mtp-buffer flashinfer@kmajor sglang@flashinfer vllm@triton; do
      run "$B" "$LIMIT_S" --suite fastpath --backend "$B" --dtype bfloat16 $K &
    done
    M=harness.faults.fastpath_mutants
    declare -A F=(
      [FiGateLogAsLinear]="-k op.chunk_gated_delta_rule[ -k layer.prefill_only"
      [FiNullRowUnshifted]="-k op.fused_sigmoid_gating -k layer.decode_only --isolate --timeout 120"
      [FiChunkZeroInitialState]="-k op.chunk_gated_delta_rule[ -k layer.multi_step"
      [SglangVerifyReadsColumn0]="-k op.fused_sigmoid_gating_delta_rule_update[ -k layer.spec_only"
      [VllmFiWrapperGateNotExp]="-k op.chunk_gated_delta_rule[ -k layer.prefill_only"
    )
    for m in "${!F[@]}"; do
      GDN_DIAGNOSE_BUDGET_S=${MUT_DIAG_S:-30} run "$m" "$LIMIT_S" --suite fastpath --backend "$M:$m" \
          --dtype bfloat16 --tp 1 ${F[$m]} &
    done; wait
    pack ;;
  *) echo "unknown phase $PHASE"; exit 2 ;;
esac
cat "$R/rc.txt"; tail -n 3 "$R"/*.log
