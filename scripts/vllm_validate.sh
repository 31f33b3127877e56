#!/usr/bin/env bash
# Validate the `vllm` backend on vLLM 0.33.0's own sources on a GPU (device tool run).
# Needs (git-excluded, carried): .vllm_pack/vllm_src.tgz (vLLM's .py / .json files plus
# the documented _C_stable_libtorch shim) and .whl_vllm/ (vLLM's pure-Python deps the
# GPU image lacks). Runs the ci suite on `vllm` and, concurrently, on each mutant of
# harness/faults/vllm_mutants.py (a targeted ci slice each); reports under $OUT.
#   usage: scripts/vllm_validate.sh [base_limit_s] [mutant_limit_s]
set -o pipefail
BASE_S=${1:-420}; MUT_S=${2:-420}; shift 2 2>/dev/null
OUT=${OUT:-/tmp/vllm_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_vllm/*.whl || exit 3
mkdir -p /tmp/vsrc && tar xzf .vllm_pack/vllm_src.tgz -C /tmp/vsrc || exit 3
export PYTHONPATH=/tmp/vsrc:/tmp/site:$PWD PYTHONUNBUFFERED=1 GDN_DIAGNOSE_BUDGET_S=${GDN_DIAGNOSE_BUDGET_S:-6}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 -c "
from harness.optimized.vllm_backend import VllmBackend
b = VllmBackend(); print('unavailable:', b.unavailable('cuda')); print(b.describe())" 2>&1 | tail -5
python3 scripts/vllm_h0_bos_repro.py > "$OUT/h0_bos_repro.txt" 2>&1; tail -n 5 "$OUT/h0_bos_repro.txt"
run() {  # name limit args...
  local name=$1 lim=$2; shift 2
  timeout -s INT "$lim" python3 -m harness.cli run --suite ci --device cuda --report-dir "$OUT/$name" -q "$@" \
    > "$OUT/$name.log" 2>&1; echo "$name rc=$?" >> "$OUT/rc.txt"
}
run vllm "$BASE_S" --backend vllm &
# Mutants: the ci cases of the op each mutates plus the layer mixes that use it (bf16,
# TP 1); isolated where a mutant can fault the GPU. Longer diagnosis budget.
L="--dtype bfloat16 --tp 1"
declare -A F=(
  [VllmInterleavedUnpackOnFlat]="-k op.unpack_qkvz_ba -k layer.decode_only"
  [VllmStateStoredTransposed]="-k op.fused_recurrent_gated_delta_rule[ -k layer.decode_only --isolate --timeout 90"
  [VllmQkHeadModH]="-k op.fused_recurrent_gated_delta_rule[ -k layer.decode_only"
  [VllmSpecConvOffsetOffByOne]="-k op.causal_conv1d_update -k layer.spec_only_3"
  [VllmSpecStateOffsetOffByOne]="-k op.fused_recurrent_gated_delta_rule[ -k layer.spec_only_3 --isolate --timeout 90"
  [VllmDtBiasAfterSoftplus]="-k op.fused_gdn_gating -k layer.prefill_only"
  [VllmSoftplusThresholdInverted]="-k op.fused_recurrent_gated_delta_rule_packed -k packed"
)
for m in "${!F[@]}"; do
  GDN_DIAGNOSE_BUDGET_S=${MUT_DIAG_S:-25} run "$m" "$MUT_S" --backend "harness.faults.vllm_mutants:$m" $L ${F[$m]} &
done
wait
cat "$OUT/rc.txt"; tail -n 4 "$OUT"/*.log
