#!/usr/bin/env bash
# Several GPUs (device tool, kind nvidia-h200-x4). Phases, any order:
#   suite  the ci suite's time-to-verdict through `gdn-harness bench`: cold (empty Triton
#          cache) on 4 GPUs, then warm on 4, 2 and 1 GPU (--jobs N: one worker per GPU)
#   nccl   NCCL distributed TP at world 4 and 2: every ci layer case at that TP
# Each run is stopped by SIGINT at its limit, so a cut run still writes its report.
# NCCL_ARGS: extra run filters (e.g. "-k qwen3-next-80b-a3b-" for the full-dims cases,
# which the ci order puts last). Needs .whl/ (fla-core) carried. Reports -> $OUT/multigpu.tgz, log -> $OUT/multigpu.log.
#   usage: scripts/device_multigpu.sh suite nccl
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/multigpu_out}; mkdir -p "$OUT"; LOG=$OUT/multigpu.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/multigpu; mkdir -p $R
{ nvidia-smi --query-gpu=index,name,driver_version --format=csv; nproc; } | tee -a $LOG
for phase in "$@"; do
  case $phase in
    suite)
      timeout -s INT ${SUITE_TOTAL:-560} python3 -m harness.cli bench --device cuda --no-ops --tp 1 \
          --suite-cost ci --suite-backend triton --suite-jobs 4 --suite-jobs 2 --suite-jobs 1 \
          --suite-limit ${SUITE_LIMIT:-170} --suite-cache /tmp/tcache-bench --report-dir $R/bench 2>&1 | tee -a $LOG
      echo "bench rc=$?" | tee -a $LOG ;;
    nccl)
      for w in 4 2; do
        t0=$(date +%s)
        timeout -s INT ${NCCL_LIMIT:-150} python3 -m harness.cli run --suite ci --backend triton --device cuda -q \
            --tp $w --distributed --timeout 90 --report-dir $R/nccl-tp$w $NCCL_ARGS > $R/nccl-tp$w.log 2>&1
        echo "nccl-tp$w rc=$? wall_s=$(( $(date +%s) - t0 )) :: $(tail -1 $R/nccl-tp$w.log)" | tee -a $LOG
      done ;;
  esac
done
(cd $R && tar czf $OUT/multigpu.tgz $(ls -d bench/bench.* bench/suite-*/summary.md bench/suite-*/results.json \
    nccl-*/summary.md nccl-*/results.json *.log 2>/dev/null))
