#!/usr/bin/env bash
# One GPU (device tool, kind nvidia-h200): op benches vs copy bandwidth, the fp64 oracle,
# the ci suite's time-to-verdict cold and warm; the filled Triton cache comes back
# (tcache.tgz.part-*) for the multi-GPU run. Everything lands in $OUT.
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/log
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a $OUT/log
timeout -s INT ${BENCH_LIMIT:-450} python3 -m harness.cli bench --device cuda --tp 1 --tp 8 \
    --suite-cost ci --suite-backend triton --suite-jobs ${SUITE_JOBS:-4} --suite-limit ${SUITE_LIMIT:-200} \
    --suite-cache /tmp/tcache --report-dir /tmp/bench 2>&1 | tee -a $OUT/log
echo "bench rc $?" | tee -a $OUT/log
# small files only: the suite runs' summaries and results, not their HTML
(cd /tmp/bench && tar czf $OUT/bench.tgz bench.json bench.md bench.png suite-*/summary.md suite-*/results.json)
tar czf /tmp/tcache.tgz -C /tmp tcache && split -b 15M /tmp/tcache.tgz $OUT/tcache.tgz.part-
ls -la $OUT | tee -a $OUT/log
