#!/usr/bin/env bash
# Download (on a machine with the registries) what the flashinfer / sglang / vllm backends import
# on the GPU machine (Python 3.12, torch 2.11 + CUDA 13, triton 3.6, no network), strip what they
# do not import, and split it into parts that each fit one device call (the working tree and the
# carried paths: 64 MiB a call). Output, git-ignored: .whl/fastpath.partN (N = 1, 2, ...) and
# .whl/fastpath.sha256; scripts/device_fastpaths.sh puts them back together on the device.
#
# What is carried, and why (import trace: scripts/fastpath_import_trace.py, run here on CPU):
# - flashinfer-python 0.7.2.post1 without flashinfer/data/ (332 MB of C++ sources for its JIT
#   kernels; the SM90 GDN kernels are CuTe DSL Python, gdn_kernels/delta_rule_dsl/);
# - the wheels its import chain needs and the GPU image lacks: apache-tvm-ffi, nvidia-cutlass-dsl
#   (+ -libs-base, -libs-core, -libs-cu13: the CuTe DSL compiler; torch there is a cu130 build);
#   numpy, cuda-bindings, pynvml, requests, jinja2, tqdm, einops are in the image;
# - SGLang 0.5.23's Python sources (its Rust extensions are CPython 3.11 builds and are not
#   imported by the GDN kernels; multimodal_gen / test / benchmark dropped) and the wheels its
#   import chain (sglang.srt.utils) needs: orjson, msgspec, pybase64, pyzmq, starlette, ipython,
#   traitlets, pydantic (+ pydantic-core, annotated-types, typing-inspection);
# - vLLM 0.33.0's sources and pure-Python deps as scripts/vllm_validate.sh carries them
#   (.vllm_pack/vllm_src.tgz, .whl_vllm/ - reused when present, else built the same way).
#   usage: scripts/fetch_fastpath_packages.sh        (PART_MB=45 WORK=/tmp/gdn_fastpath_build)
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-45}
WORK=${WORK:-/tmp/gdn_fastpath_build}
PY=${PYTHON:-python3}
mkdir -p "$WORK/dl" "$WORK/stage/wheels" .whl
rm -rf "$WORK/stage"/* && mkdir -p "$WORK/stage/wheels"

PLATFORMS=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
         manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do PLATFORMS+=(--platform "${p}_x86_64"); done
cp312() {  # wheels for the GPU machine's CPython 3.12 into $1
  local dest=$1; shift
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d "$dest" "$@"
}
any_py() {  # a package whose Python sources we unpack (any build)
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$WORK/dl" "$1"
}

echo "fetch: flashinfer (without data/)"
any_py flashinfer-python==0.7.2.post1
rm -rf "$WORK/fi" && mkdir -p "$WORK/fi"
unzip -q -o "$WORK"/dl/flashinfer_python-0.7.2.post1-*.whl -d "$WORK/fi" -x 'flashinfer/data/*'
tar -czf "$WORK/stage/flashinfer.tgz" -C "$WORK/fi" flashinfer flashinfer_python-0.7.2.post1.dist-info

echo "fetch: wheels for FlashInfer's CuTe DSL kernels and SGLang's import chain"
cp312 "$WORK/stage/wheels" apache-tvm-ffi==0.1.11 nvidia-cutlass-dsl==4.7.1 nvidia-cutlass-dsl-libs-base==4.7.1 \
    nvidia-cutlass-dsl-libs-core==4.7.1 nvidia-cutlass-dsl-libs-cu13==4.7.1 \
    orjson==3.13.0 msgspec==0.23.0 pybase64==1.5.1 pyzmq==27.3.0 starlette==1.10.0 ipython==9.18.1 \
    traitlets==5.16.1 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.7.0 typing-inspection==0.4.5

echo "fetch: sglang sources"
any_py sglang==0.5.23
rm -rf "$WORK/sg" && mkdir -p "$WORK/sg"
unzip -q -o "$WORK"/dl/sglang-0.5.23-*.whl -d "$WORK/sg" -x '*.so' 'sglang/multimodal_gen/*' 'sglang/test/*' \
    'sglang/benchmark/*'
tar -czf "$WORK/stage/sglang_src.tgz" -C "$WORK/sg" sglang sglang-0.5.23.dist-info

echo "fetch: vllm sources (.vllm_pack) and pure-Python deps (.whl_vllm)"
if [ -f .vllm_pack/vllm_src.tgz ]; then
  cp .vllm_pack/vllm_src.tgz "$WORK/stage/vllm_src.tgz"
else  # as docs/findings.md: .py / .json + METADATA, and the _C_stable_libtorch shim
  any_py vllm==0.33.0
  rm -rf "$WORK/vl" && mkdir -p "$WORK/vl"
  unzip -q -o "$WORK"/dl/vllm-0.33.0-*.whl '*.py' '*.json' 'vllm-0.33.0.dist-info/METADATA' -d "$WORK/vl"
  : > "$WORK/vl/vllm/_C_stable_libtorch.py"
  tar -czf "$WORK/stage/vllm_src.tgz" -C "$WORK/vl" vllm vllm-0.33.0.dist-info
fi
mkdir -p "$WORK/stage/wheels_vllm"
if ls .whl_vllm/*.whl >/dev/null 2>&1; then
  cp .whl_vllm/*.whl "$WORK/stage/wheels_vllm/"
else   # the list of docs/findings.md (versions of the GPU-validated set where the registry has them)
  cp312 "$WORK/stage/wheels_vllm" pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.7.0 \
      typing-inspection==0.4.5 httpx2 httpcore2 cachetools cbor2 fastapi starlette==1.10.0 \
      apache-tvm-ffi==0.1.11 xgrammar llguidance msgspec==0.23.0 openai openai-harmony \
      partial-json-parser pybase64==1.5.1 pyzmq==27.3.0 sniffio truststore \
      opentelemetry-api importlib-metadata zipp compressed-tensors loguru   # fastapi >= 0.16x imports opentelemetry
fi

for f in "$WORK"/stage/wheels_vllm/*.whl; do   # one version of each distribution (ours win)
  dist=$(basename "$f"); dist=${dist%%-*}
  if ls "$WORK/stage/wheels/${dist}"-*.whl >/dev/null 2>&1; then rm "$f"; fi
done

echo "fetch: split into ${PART_MB} MB parts"
rm -f .whl/fastpath.part* .whl/fastpath.sha256
tar -cf "$WORK/fastpath.tar" -C "$WORK/stage" .
(cd .whl && split -b "${PART_MB}M" -d -a 1 --numeric-suffixes=1 "$WORK/fastpath.tar" fastpath.part)
sha256sum "$WORK/fastpath.tar" | cut -d' ' -f1 > .whl/fastpath.sha256
ls -l .whl/fastpath.* | awk '{print $5, $9}'
echo "fetch: $(ls .whl/fastpath.part* | wc -l) parts; carry each with its own device call (scripts/device_fastpaths.sh put N)"
