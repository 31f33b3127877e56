#!/usr/bin/env bash
# One H200, three calls back to back after the fast-path parts (scripts/fetch_fastpath_packages.sh,
# 3 parts of 48 MiB): each call puts one part and does one piece of the verification.
#   call 1  carry .whl/fastpath.part1 .whl/fastpath.sha256 .whl/test: the harness's own tests,
#           `pytest tests -n 8` (GPU tests included) -> $OUT/pytest.log, junit; beside them the
#           CUDA-graph check and its fault zoo at Qwen3-Next dims, ci's drift_256 lane + its plot
#   call 2  carry .whl/fastpath.part2 .whl/fastpath.sha256 .whl/test: the part only
#   call 3  carry .whl/fastpath.part3 .whl/fastpath.sha256 .whl/test: put together, install; vllm (its
#           FlashInfer prefill on SM90, its own weight loaders) on ci and on fastpath's layer mixes
set -o pipefail
CALL=${1:?usage: scripts/device_h200_final.sh 1 | 2 | 3}
bash scripts/device_fastpaths.sh put "$CALL" > "$OUT/put.log" 2>&1 || { cat "$OUT/put.log"; exit 3; }
source scripts/device_env.sh
case $CALL in
  1)
    (timeout -s INT ${GRAPH_LIMIT:-100} python3 -m harness.tools.cudagraph --backend triton --device cuda \
        --dims qwen3-next-80b-a3b > "$OUT/graph.log" 2>&1; echo "graph rc $?" >> "$OUT/graph.log"
     timeout -s INT ${GRAPH_LIMIT:-100} python3 -m harness.tools.cudagraph --backend triton --device cuda \
        --dims qwen3-next-80b-a3b --zoo >> "$OUT/graph.log" 2>&1; echo "graph zoo rc $?" >> "$OUT/graph.log") &
    (mkdir -p "$OUT/drift"
     timeout -s INT ${DRIFT_LIMIT:-100} python3 -m harness.cli run --suite ci --backend triton --device cuda \
        --mix drift_256 --jobs 3 --report-dir /tmp/drift -q > "$OUT/drift.log" 2>&1; echo "drift rc $?" >> "$OUT/drift.log"
     python3 -m harness.report.drift /tmp/drift >> "$OUT/drift.log" 2>&1
     cd /tmp/drift && cp summary.md results.json drift.* "$OUT/drift/" 2>/dev/null) &
    timeout -s INT ${TEST_LIMIT:-150} python3 -m pytest tests -n 8 -q -rs --junitxml "$OUT/junit.xml" \
        > "$OUT/pytest.log" 2>&1; echo "pytest rc $?" >> "$OUT/pytest.log"
    wait; tail -n 12 "$OUT/pytest.log" "$OUT/graph.log" "$OUT/drift.log" ;;
  2) cat "$OUT/put.log" ;;
  3)
    mkdir -p "$OUT/fp"
    (OUT=$OUT/fp SUITES=ci BACKENDS=vllm JOBS=6 LIMIT_S=${FP_LIMIT:-100} \
        bash scripts/device_fastpaths.sh suite final > "$OUT/fp-ci.log" 2>&1) &
    (export PYTHONPATH=/tmp/fastpath/vsrc:/tmp/fastpath/site/nvidia_cutlass_dsl/dsl_packages:/tmp/fastpath/site:$PWD
     timeout -s INT ${FP_LIMIT:-100} python3 -m harness.cli run --suite fastpath --backend vllm --device cuda \
        -k layer. --jobs 6 --report-dir /tmp/fp_layer -q > "$OUT/fp-layer.log" 2>&1; echo "rc $?" >> "$OUT/fp-layer.log"
     cd /tmp/fp_layer && tar czf "$OUT/fp-layer.tgz" summary.md results.json) &
    wait; tail -n 8 "$OUT"/fp-*.log ;;
esac
