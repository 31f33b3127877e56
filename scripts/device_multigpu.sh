#!/usr/bin/env bash
# Four GPUs (device tool, kind nvidia-h200-x4): NCCL distributed TP at world 2 and 4, then
# the ci suite with --jobs 4 / 2 / 1 (one worker per GPU), each stopped by SIGINT at its
# limit so the report of its finished cases is still written. Triton cache from
# device_bench.sh (.gpucache/tcache.tgz.part-*) when carried. Reports -> $OUT/reports.tgz.
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if ls .gpucache/tcache.tgz.part-* >/dev/null 2>&1; then cat .gpucache/tcache.tgz.part-* | tar xzf - -C /tmp; fi
export TRITON_CACHE_DIR=/tmp/tcache TRITON_CACHE_AUTOTUNING=1
echo "cached files: $(find /tmp/tcache -type f 2>/dev/null | wc -l)" | tee $OUT/log
nvidia-smi --query-gpu=index,name --format=csv | tee -a $OUT/log
nvidia-smi topo -m 2>&1 | head -8 | tee -a $OUT/log
R=/tmp/r; mkdir -p $R
run() {   # name limit args...
  local name=$1 lim=$2; shift 2
  local t0=$(date +%s%N)
  timeout -s INT $lim python3 -m harness.cli run --suite ci --backend triton --device cuda -q --report-dir $R/$name "$@" \
      > $R/$name.log 2>&1
  local rc=$?
  echo "$name rc=$rc wall_ms=$(( ($(date +%s%N) - t0) / 1000000 )) :: $(tail -1 $R/$name.log)" | tee -a $OUT/log
}
MIX="--mix mixed --mix spec_only_2 --mix chunked_prefill --mix decode_only"
run nccl-tp2 ${DIST_LIMIT:-45} --tp 2 --distributed $MIX --timeout 40
run nccl-tp4 ${DIST_LIMIT:-45} --tp 4 --distributed $MIX --timeout 40
run ci-jobs4 ${J4_LIMIT:-70} --jobs 4
run ci-jobs2 ${J2_LIMIT:-90} --jobs 2
run ci-jobs1 ${J1_LIMIT:-120}
(cd $R && tar czf $OUT/reports.tgz */summary.md */results.json *.log)
