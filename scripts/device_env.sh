# Sourced by the device-tool scripts: NCCL / NVLS off, the carried wheels (.whl/*.whl or
# .whl/test/*.whl: fla-core and the test deps) on PYTHONPATH, the GPU and versions into $OUT/log.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
# the image's site-packages keep no .pyc: without a writable prefix every process recompiled
# torch's sources (6.5 s of a 27 s profiled run, 2026-12-05); a CI machine has them cached
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    $(ls .whl/*.whl .whl/test/*.whl 2>/dev/null) || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/log
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a $OUT/log
