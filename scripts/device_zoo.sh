#!/usr/bin/env bash
# One GPU (device tool, kind nvidia-h200): the fault zoo on the ci suite against the
# triton base (kill score, first detections and their diagnoses), then the CUDA tests
# of the model integration. Carry .whl (fla-core) and .gpucache (a warm Triton cache).
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -d .gpucache ] && cp -r .gpucache /tmp/tcache
export TRITON_CACHE_DIR=/tmp/tcache TRITON_CACHE_AUTOTUNING=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/log
timeout -s INT ${ZOO_LIMIT:-420} python3 -m harness.cli zoo --suite ci --base triton --device cuda \
    --jobs ${ZOO_JOBS:-4} --report-dir /tmp/zoo 2>&1 | tee -a $OUT/log
echo "zoo rc $?" | tee -a $OUT/log
(cd /tmp/zoo && tar czf $OUT/zoo.tgz $(ls | grep -v -E '\.html$'))
timeout -s INT ${GPU_TEST_LIMIT:-120} python3 -m pytest -p no:xdist tests/test_evals_gpu.py -q -rs 2>&1 | tee -a $OUT/log
echo "gpu tests rc $?" | tee -a $OUT/log
