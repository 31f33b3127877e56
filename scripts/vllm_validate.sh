#!/usr/bin/env bash
# Validate the `vllm` backend on vLLM 0.33.0's own sources on a GPU (device tool run).
# Needs (git-excluded, carried): .vllm_pack/vllm_src.tgz (vLLM's .py / .json files plus
# the documented _C_stable_libtorch shim) and .whl_vllm/ (vLLM's pure-Python deps the
# GPU image lacks). Runs the ci suite on `vllm` and, concurrently, on each mutant of
# harness/faults/vllm_mutants.py (a targeted ci slice each, spread over the GPUs);
# reports in $OUT/vllm.tgz (summaries, results, logs). JOBS: workers of the base run (one GPU each, round robin).
#   usage: scripts/vllm_validate.sh [base_limit_s] [mutant_limit_s]
set -o pipefail
BASE_S=${1:-420}; MUT_S=${2:-420}; shift 2 2>/dev/null
OUT=${OUT:-/tmp/vllm_out}; mkdir -p "$OUT"; R=/tmp/vllm_r; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_vllm \
    .whl_vllm/*.whl $(ls .whl/fla_core-*.whl 2>/dev/null) || exit 3    # fla: the triton backend, for comparison
mkdir -p /tmp/vsrc && tar xzf .vllm_pack/vllm_src.tgz -C /tmp/vsrc || exit 3
export PYTHONPATH=/tmp/vsrc:/tmp/site_vllm:$PWD PYTHONUNBUFFERED=1 GDN_DIAGNOSE_BUDGET_S=${GDN_DIAGNOSE_BUDGET_S:-20}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 -c "
from harness.optimized.vllm_backend import VllmBackend
b = VllmBackend(); print('unavailable:', b.unavailable('cuda')); print(b.describe())" 2>&1 | tail -5
if [ "${VLLM_REPRO:-1}" != 0 ]; then
  python3 scripts/vllm_h0_bos_repro.py > "$R/h0_bos_repro.txt" 2>&1; tail -n 5 "$R/h0_bos_repro.txt"
fi
run() {  # name limit args...
  local name=$1 lim=$2; shift 2
  timeout -s INT "$lim" python3 -m harness.cli run --suite ci --device cuda --report-dir "$R/$name" -q "$@" \
    > "$R/$name.log" 2>&1; echo "$name rc=$?" >> "$R/rc.txt"
}
GPUS=$(nvidia-smi -L | wc -l)
run vllm "$BASE_S" --backend vllm --jobs ${JOBS:-3} &
# vLLM's chunked prefill beside the triton backend's (fla's kernel) in fp16, fully diagnosed
run chunk-fp16 "$BASE_S" --backend vllm --backend triton -k 'op.chunk_gated_delta_rule[' --dtype float16 \
    --diagnose-budget 150 &
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
i=0
for m in "${!F[@]}"; do
  CUDA_VISIBLE_DEVICES=$(( i++ % GPUS )) GDN_DIAGNOSE_BUDGET_S=${MUT_DIAG_S:-25} \
      run "$m" "$MUT_S" --backend "harness.faults.vllm_mutants:$m" $L ${F[$m]} &
done
wait
cat "$R/rc.txt"; tail -n 2 "$R"/*.log
(cd $R && tar czf "$OUT/vllm.tgz" $(ls -d */summary.md */results.json *.log *.txt 2>/dev/null))
