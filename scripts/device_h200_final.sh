#!/usr/bin/env bash
# One H100 / H200, calls back to back after the fast-path parts (scripts/fetch_fastpath_packages.sh,
# re-split into 3 parts of 48 MiB): the first three each put one part and do one piece of the GPU
# verification; 4 and 5 need all parts in place (a warm machine keeps /tmp ~30 s after a call).
# Reports are written under $OUT, so a call cut by its limit still brings back what finished.
# .whl/test, carried by every call: scripts/fetch_device_wheels.sh builds it (15 MB).
#   call 1  carry .whl/fastpath.part1 .whl/fastpath.sha256 .whl/test: the harness's own tests alone,
#           `pytest tests -n 8` (GPU tests included) -> $OUT/pytest.log, junit; then the CUDA-graph
#           check and its fault zoo at Qwen3-Next dims
#   call 2  carry .whl/fastpath.part2 .whl/fastpath.sha256 .whl/test: `bench --suite-cost ci` with the
#           committed pins (cold / warm, 1 / 4 jobs) -> $OUT/bench/
#   call 3  carry .whl/fastpath.part3 .whl/fastpath.sha256 .whl/test: put together, install; vllm (its
#           FlashInfer prefill on SM90, its own weight loaders) on ci and on fastpath's layer mixes
#           and, beside them, the fast-path variants and the mutant kill run (device_fastpaths.sh extra)
#   call 4  carry .whl/fastpath.sha256 .whl/test: the extra phase alone (when call 3 ran without it)
#   call 5  carry .whl/test: nightly's drift_10000 lane on $DRIFT_K alone + its plot -> $OUT/drift/
#   call 6  carry .whl/test (+ part PUT=N): nightly's full-dims serving group (padding, zero-draft) on
#           triton -> $OUT/serving/
#   call 7  carry .whl/test (+ part PUT=N): ci's cases changed on 2026-12-06 on triton - the checkpoint
#           op (now block by block over fla's chunk), the nan_neighbour variant, drift_256 -> $OUT/ci-new/
#   call 8  carry .whl/fastpath.sha256 .whl/test (parts in place): scripts/fi_prefill_tail_repro.py and the
#           nan_neighbour chunk cases on flashinfer, vllm, vllm@triton, sglang, side by side -> $OUT/nan-neighbour/
#   call 9  carry .whl/fastpath.sha256 .whl/test (+ PUT=4: the last part): one CuTe-DSL compile at a time
#           (side by side, call 8's four runs finished 0 of 8): nan_neighbour on sglang and vllm@triton
#           (Triton compiles) beside the fast-path mutant kill run on narrow slices, the FlashInfer ones
#           one after another on one JIT cache -> $OUT/nn9/, $OUT/mut/
#   call 10 carry .whl/test: a short session's call - the GPU tests of the files changed last (TESTS), then
#           ci at --jobs $JOBS (8) cold, longest first, and warm on its cache in suite order then longest
#           first (GDN_JOB_ORDER) -> $OUT/pytest.log, $OUT/ci-{cold,warm-suite,warm-longest}/
#   call 11 carry .whl/test: the oracle's drift step eager vs CUDA-graph replay, 1 and 8 processes
#           (scripts/profile_oracle.py) -> $OUT/oracle-prof.log; a worker's imports, 1 and 8 at once
#           -> $OUT/worker-start.log
#   call 12 carry .whl/test: the first call once a machine starts again - call 10's tests (NO_CI), call 11,
#           then call 5 (the H200 drift plot of issue 19) -> $OUT/{pytest.log,junit.xml,oracle-prof.log,
#           worker-start.log,drift.log,drift.tgz}
#   call 13 carry .whl/test: ci at --jobs $JOBS (8) cold, then warm with the oracle replay off / on, twice each
#           interleaved, the process's wall beside the run's -> $OUT/ci13.log, $OUT/ci13.tgz (report folders)
#           (RUNS: the runs, default "cold:1 warm:0 warm:1 warm:0 warm:1", run:replay)
#   call 15 carry .whl/test (+ .whl/old.tgz, `git archive <commit> harness suites`): ci cold, then warm this
#           checkout / the old one / this, one drift_256 case profiled alone and the six side by side as
#           workers, this / old (scripts/profile_case.py) -> $OUT/ci13.log, $OUT/ci13.tgz, $OUT/prof15.log
#   call 16 carry .whl/test .whl/old.tgz: call 15 (cold, warm this / old / this, the profile alone), then
#           `pytest ${TESTS:-tests} -n 8` in what is left of $BUDGET (540 s)
#   call 17 carry .whl/test (+ .whl/old.tgz for RUNS with old): a worker's first seconds step by step and
#           its imports after the preload (scripts/profile_import.py) -> $OUT/import.log; then call 15's ci
#           runs (RUNS, default cold, warm, warm) without the profile -> $OUT/ci13.log, $OUT/ci13.tgz
#   call 18 carry .whl/test: call 17, then three warm cases' Python functions (profile_case.py --cprofile)
#           -> $OUT/cprof.log
#   call 19 carry .whl/test: ci --jobs 8 warm with and without a private CUDA MPS daemon, and whether one
#           process's illegal memory access reaches the others under it (scripts/mps_probe.py) -> $OUT/mps.log
#   call 14 carry .whl/fastpath.sha256 .whl/test (+ PUT=4): call 9 and, beside it, ci on sglang (CuTe-DSL
#           compiles side by side starve each other: CI_BACKENDS adds vllm / flashinfer) at --jobs $FP_JOBS (4),
#           cut at $CI_LIMIT (480 s) -> $OUT/ci14.tgz (ci14/, nn9/, mut/). On 2026-12-07 the two FlashInfer-chunk
#           mutants starved beside it (0 of 2 each); one at a time they take < 50 s
# Knobs: TEST_LIMIT (call 1's pytest), PROFILE=1 (call 1: cProfile a drift_256 and a full-dims mixed
# case beside the tests), DRIFT=1 (call 1: call 5's drift run after the tests), NO_GRAPH=1 (call 1:
# skip the CUDA-graph check), QUICK_CI=1 (call 2: one cold ci run at --jobs $JOBS instead of bench),
# NO_FP_CI=1 / FP_LAYER_JOBS / FP_LIMIT / NO_EXTRA (call 3's vllm ci run, layer run, extra phase), NO_PUT=1
# (calls 1 / 2 without their part, when calls 3 / 4 will not follow), PUT=N (put part N, any call), NO_CI=1
# (call 10: the tests alone).
set -o pipefail
CALL=${1:?usage: scripts/device_h200_final.sh 1 | 2 | ... | 16}
PUT=${PUT:-$([ "$CALL" -le 3 ] && [ -z "$NO_PUT" ] && echo "$CALL")}
if [ -n "$PUT" ]; then
  bash scripts/device_fastpaths.sh put "$PUT" > "$OUT/put.log" 2>&1 || { cat "$OUT/put.log"; exit 3; }
fi
source scripts/device_env.sh
drift_run() {  # nightly's drift_10000 lane on $DRIFT_K ("$@": how it runs), report and plot under $OUT/drift
  timeout -s INT ${DRIFT_LIMIT:-500} python3 -m harness.cli run --suite nightly --backend triton --device cuda \
      --mix drift_10000 ${DRIFT_K:--k qwen3-next-80b-a3b-flat-tp1-bfloat16-float32} "$@" --report-dir "$OUT/drift" \
      -q > "$OUT/drift.log" 2>&1; echo "drift rc $?" >> "$OUT/drift.log"
  python3 -m harness.report.drift "$OUT/drift" >> "$OUT/drift.log" 2>&1
}
fastpath_env() {  # the fast-path packages put together by `put` (all parts) on the path, or stop
  [ -f /tmp/fastpath/.done ] || { echo "the fast-path packages are not in place (PUT every part first)"; exit 3; }
  # nvidia_cutlass_dsl's .pth (not read from PYTHONPATH) puts its dsl_packages first on sys.path
  export PYTHONPATH=/tmp/fastpath/vsrc:/tmp/fastpath/site/nvidia_cutlass_dsl/dsl_packages:/tmp/fastpath/site:$PYTHONPATH
}
case $CALL in
  1)
    # the tests (in the background: PROFILE runs go beside them), then DRIFT, then the graph check
    timeout -s INT ${TEST_LIMIT:-320} python3 -m pytest tests -n 8 -q -rs --junitxml "$OUT/junit.xml" \
        > "$OUT/pytest.log" 2>&1; echo "pytest rc $?" >> "$OUT/pytest.log" &
    # beside the tests, one process: where a drift step's and a full-dims layer case's seconds go
    [ -n "$PROFILE" ] && for k in "drift_256 -k qwen3-next-80b-a3b-flat-tp1-bfloat16-float32" \
        "mixed -k qwen3-next-80b-a3b-interleaved-tp4"; do
      name=${k%% *}
      timeout -s INT 150 python3 -m cProfile -o "$OUT/prof-$name.pstats" -m harness.cli run --suite ci \
          --backend triton --device cuda --mix $k --no-isolate --no-diagnose -q --report-dir "$OUT/prof-$name" \
          > "$OUT/prof-$name.log" 2>&1
      python3 -c "import pstats,sys; p=pstats.Stats(sys.argv[1]); p.sort_stats('tottime').print_stats(30); \
p.sort_stats('cumulative').print_stats(45)" "$OUT/prof-$name.pstats" >> "$OUT/prof-$name.log" 2>&1
    done
    wait
    # DRIFT=1: call 5's drift run after the tests (beside 8 test workers on the H100 it finished 0 of
    # 2 cases in 360 s; alone 92 s a case: its per-step loop needs the host's cores); 200 s by default
    # so tests + drift stay inside one call's 600 s
    [ -n "$DRIFT" ] && { DRIFT_LIMIT=${DRIFT_LIMIT:-200} drift_run --jobs 2; tail -n 20 "$OUT/drift.log"; }
    [ -n "$NO_GRAPH" ] && { tail -n 12 "$OUT/pytest.log"; exit 0; }
    (timeout -s INT ${GRAPH_LIMIT:-100} python3 -m harness.tools.cudagraph --backend triton --device cuda \
        --dims qwen3-next-80b-a3b > "$OUT/graph.log" 2>&1; echo "graph rc $?" >> "$OUT/graph.log"
     timeout -s INT ${GRAPH_LIMIT:-100} python3 -m harness.tools.cudagraph --backend triton --device cuda \
        --dims qwen3-next-80b-a3b --zoo >> "$OUT/graph.log" 2>&1; echo "graph zoo rc $?" >> "$OUT/graph.log")
    tail -n 12 "$OUT/pytest.log" "$OUT/graph.log" ;;
  2)
    if [ -n "$QUICK_CI" ]; then   # one cold ci run, --jobs $JOBS, its report (phases, compiles per case) under $OUT
      rm -rf /tmp/tcache-q; TRITON_CACHE_DIR=/tmp/tcache-q timeout -s INT ${SUITE_LIMIT:-90} python3 -m harness.cli run \
          --suite ci --backend triton --device cuda --jobs ${JOBS:-4} -q --report-dir "$OUT/ci-cold-jobs${JOBS:-4}" \
          > "$OUT/ci-cold.log" 2>&1; echo "rc $?" >> "$OUT/ci-cold.log"; tail -n 8 "$OUT/ci-cold.log"; exit 0
    fi
    mkdir -p "$OUT/bench"
    OUT=$OUT/bench JOBS=${JOBS:-4} BENCH_LIMIT=${BENCH_LIMIT:-400} SUITE_LIMIT=${SUITE_LIMIT:-80} \
        bash scripts/device_suite_cost.sh > "$OUT/bench.log" 2>&1
    tail -n 30 "$OUT/bench.log" ;;
  3)
    mkdir -p "$OUT/fp"
    [ -z "$NO_FP_CI" ] && (OUT=$OUT/fp SUITES=ci BACKENDS=vllm JOBS=4 LIMIT_S=${FP_LIMIT:-120} \
        bash scripts/device_fastpaths.sh suite final > "$OUT/fp-ci.log" 2>&1) &
    (fastpath_env
     python3 -c "import json; from harness.optimized.registry import load_backend as l; \
print(json.dumps(l('vllm').describe(), default=str, indent=1))" > "$OUT/vllm-describe.json" 2>&1
     # the report is written under $OUT: a call cut by its own limit still brings it back
     timeout -s INT ${FP_LIMIT:-120} python3 -m harness.cli run --suite fastpath --backend vllm --device cuda \
        -k layer. --jobs ${FP_LAYER_JOBS:-2} --report-dir "$OUT/fp_layer" -q > "$OUT/fp-layer.log" 2>&1; echo "rc $?" >> "$OUT/fp-layer.log") &
    if [ -z "$NO_EXTRA" ]; then (mkdir -p "$OUT/extra"; OUT=$OUT/extra LIMIT_S=${FP_LIMIT:-120} \
        bash scripts/device_fastpaths.sh extra > "$OUT/extra.log" 2>&1) & fi
    wait; cat "$OUT/vllm-describe.json" | head -40; tail -n 8 "$OUT"/fp-*.log; tail -n 30 "$OUT/extra.log" ;;
  5)
    # nightly's drift_10000 lane alone, report under $OUT (its plot: harness.report.drift)
    DRIFT_K=${DRIFT_K:--k qwen3-next-80b-a3b-flat-tp1-bfloat16 -k qwen3-next-80b-a3b-flat-tp1-float16-float32} \
        drift_run --jobs 3
    tail -n 20 "$OUT/drift.log" ;;
  6)
    timeout -s INT ${SERVING_LIMIT:-300} python3 -m harness.cli run --suite nightly --backend triton --device cuda \
        --jobs ${JOBS:-4} --mix pad_slot0_live --mix pad_null_block --mix spec_zero_draft \
        --mix spec_zero_draft_migrate --report-dir "$OUT/serving" -q > "$OUT/serving.log" 2>&1
    echo "serving rc $?" >> "$OUT/serving.log"; tail -n 12 "$OUT/serving.log" ;;
  7)
    timeout -s INT ${SUITE_LIMIT:-300} python3 -m harness.cli run --suite ci --backend triton --device cuda \
        --jobs ${JOBS:-4} -k checkpoints -k nan_neighbour -k drift_256 --report-dir "$OUT/ci-new" -q \
        > "$OUT/ci-new.log" 2>&1; echo "ci-new rc $?" >> "$OUT/ci-new.log"; tail -n 12 "$OUT/ci-new.log" ;;
  8)
    fastpath_env
    # the repro and the four backends side by side: FlashInfer's CuTe DSL compiles are host-bound
    (timeout -s INT ${FP_LIMIT:-240} python3 scripts/fi_prefill_tail_repro.py > "$OUT/fi-repro.log" 2>&1
     echo "rc $?" >> "$OUT/fi-repro.log") &
    for b in flashinfer vllm vllm@triton sglang; do
      (timeout -s INT ${FP_LIMIT:-240} python3 -m harness.cli run --suite fastpath --backend $b --device cuda \
          -k nan_neighbour --report-dir "$OUT/nan-neighbour/$b" -q > "$OUT/nan-neighbour-$b.log" 2>&1
       echo "$b rc $?" >> "$OUT/nan-neighbour-$b.log") &
    done
    wait
    cat "$OUT/fi-repro.log"; tail -n 4 "$OUT"/nan-neighbour-*.log ;;
  9)
    fastpath_env
    export GDN_DIAGNOSE_BUDGET_S=${MUT_DIAG_S:-30}
    one() {  # dir name limit args...: one fastpath run, report under $OUT/dir/name
      local dir=$1 name=$2 lim=$3; shift 3; mkdir -p "$OUT/$dir"
      timeout -s INT "$lim" python3 -m harness.cli run --suite fastpath --device cuda -q \
          --report-dir "$OUT/$dir/$name" "$@" > "$OUT/$dir/$name.log" 2>&1; echo "$name rc $?" >> "$OUT/$dir/$name.log"
    }
    M=harness.faults.fastpath_mutants
    CHUNK="op.chunk_gated_delta_rule[ and varlen and qwen3-next"
    (one nn9 sglang ${NN_LIMIT:-170} --backend sglang -k nan_neighbour
     one mut SglangVerifyReadsColumn0 60 --backend $M:SglangVerifyReadsColumn0 --dtype bfloat16 \
         -k "fused_sigmoid_gating_delta_rule_update[ and spec and qwen3-next") &
    one nn9 vllm@triton ${NN_LIMIT:-170} --backend vllm@triton -k nan_neighbour &
    (one mut FiGateLogAsLinear 120 --backend $M:FiGateLogAsLinear --dtype bfloat16 -k "$CHUNK"
     one mut FiChunkZeroInitialState 60 --backend $M:FiChunkZeroInitialState --dtype bfloat16 -k "$CHUNK"
     one mut VllmFiWrapperGateNotExp 70 --backend $M:VllmFiWrapperGateNotExp --dtype bfloat16 -k "$CHUNK"
     one mut FiNullRowUnshifted 70 --backend $M:FiNullRowUnshifted --dtype bfloat16 --isolate --timeout 60 \
         -k "fused_sigmoid_gating_delta_rule_update[ and decode and qwen3-next") &
    wait
    tail -n 3 "$OUT"/nn9/*.log "$OUT"/mut/*.log ;;
  10)
    timeout -s INT ${TEST_LIMIT:-150} python3 -m pytest ${TESTS:-tests} -n 8 -q -rs --junitxml "$OUT/junit.xml" \
        > "$OUT/pytest.log" 2>&1; echo "pytest rc $?" >> "$OUT/pytest.log"; tail -n 4 "$OUT/pytest.log"
    [ -n "$NO_CI" ] && exit 0
    rm -rf /tmp/tcache10
    for run in cold:longest warm:suite warm:longest; do
      GDN_JOB_ORDER=${run#*:} TRITON_CACHE_DIR=/tmp/tcache10 TRITON_CACHE_AUTOTUNING=1 timeout -s INT ${SUITE_LIMIT:-130} \
          python3 -m harness.cli run --suite ci --backend triton --device cuda --jobs ${JOBS:-8} --autotune pinned -q \
          --report-dir "$OUT/ci-${run/:/-}" > "$OUT/ci-${run/:/-}.log" 2>&1; echo "$run rc $?" >> "$OUT/ci-${run/:/-}.log"
      tail -n 2 "$OUT/ci-${run/:/-}.log"
    done ;;
  11)
    # the fp64 oracle's drift step eager vs replayed as CUDA graphs, alone and 8 side by side
    for G in 0 1; do
      for procs in 1 8; do
        echo "== GDN_ORACLE_GRAPHS=$G procs=$procs" >> "$OUT/oracle-prof.log"
        GDN_ORACLE_GRAPHS=$G timeout 90 python3 scripts/profile_oracle.py --device cuda --steps 128 --procs $procs \
            $([ "$procs" = 1 ] && echo --profile) >> "$OUT/oracle-prof.log" 2>&1
      done
    done
    # a worker's start (issue 20: ~9 s a worker of a --jobs 8 run): its imports alone, then 8 at once
    imp='import time; t = time.perf_counter(); import harness.run.worker; t1 = time.perf_counter()
from harness.optimized.registry import load_backend; load_backend("triton"); t2 = time.perf_counter()
import torch; torch.zeros(1, device="cuda"); torch.cuda.synchronize()
print(f"worker import {t1 - t:.2f} s, triton backend {t2 - t1:.2f} s, CUDA context {time.perf_counter() - t2:.2f} s")'
    for n in 1 1 8; do
      echo "== $n worker import(s) at once" >> "$OUT/worker-start.log"
      for i in $(seq $n); do python3 -c "$imp" >> "$OUT/worker-start.log" 2>&1 & done; wait
    done
    python3 -X importtime -c "import harness.run.worker; from harness.optimized.registry import load_backend as l; l('triton')" \
        2> "$OUT/importtime.txt"
    sort -t'|' -k2 -n -r "$OUT/importtime.txt" | head -n 25 >> "$OUT/worker-start.log"
    grep -v "^ " "$OUT/oracle-prof.log" | grep -v "^--" | tail -n 40; cat "$OUT/worker-start.log" ;;
  12)
    TESTS=${TESTS:-tests/test_oracle_replay.py tests/test_inputs.py tests/test_comparison.py tests/test_serving_faults.py \
tests/test_drift.py} NO_CI=1 TEST_LIMIT=${TEST_LIMIT:-140} bash "$0" 10
    bash "$0" 11; rm -f "$OUT/importtime.txt"
    DRIFT_LIMIT=${DRIFT_LIMIT:-150} bash "$0" 5
    (cd "$OUT" && tar czf drift.tgz drift && rm -rf drift) ;;
  13)
    # ci --jobs $JOBS: cold once, then warm with the oracle replay off / on, twice each, interleaved; each
    # run's process wall (time) beside its own (results.json) -> $OUT/ci13.log, $OUT/ci13.tgz
    rm -rf /tmp/tcache13; mkdir -p "$OUT/ci13"
    n=0
    for run in ${RUNS:-cold:1 warm:0 warm:1 warm:0 warm:1}; do
      n=$((n + 1)); t=$(date +%s.%N)
      GDN_ORACLE_GRAPHS=${run#*:} TRITON_CACHE_DIR=/tmp/tcache13 TRITON_CACHE_AUTOTUNING=1 timeout -s INT \
          ${SUITE_LIMIT:-110} python3 -m harness.cli run --suite ci --backend triton --device cuda --jobs ${JOBS:-8} \
          -q --report-dir "$OUT/ci13/$n-${run%:*}-graphs${run#*:}" > "$OUT/ci13-run.log" 2>&1; rc=$?
      echo "$run graphs rc $rc process $(python3 -c "import time; print(round(time.time() - $t, 1))") s; $(tail -n 1 \
          "$OUT/ci13-run.log")" >> "$OUT/ci13.log"
    done
    (cd "$OUT" && tar czf ci13.tgz ci13 && rm -rf ci13 ci13-run.log); cat "$OUT/ci13.log" ;;
  15)
    # this checkout against an older one on one lease (carry .whl/old.tgz: `git archive <commit> harness
    # suites`): ci cold (this), then warm on its cache - RUNS, run:code, code new / old / spawn (this with
    # GDN_WORKER_START=spawn) -; then one drift case alone, twice in one process, profiled (runtime calls:
    # launches, graph launches, syncs, copies), and the six drift cases side by side (this checkout)
    # -> $OUT/ci13.log, $OUT/ci13.tgz, $OUT/prof15.log
    export TRITON_CACHE_DIR=/tmp/tcache13 TRITON_CACHE_AUTOTUNING=1
    rm -rf /tmp/tcache13 /tmp/old; mkdir -p "$OUT/ci13" /tmp/old
    [ -f .whl/old.tgz ] && tar xzf .whl/old.tgz -C /tmp/old
    n=0
    for run in ${RUNS:-cold:new warm:new warm:old warm:spawn warm:new warm:old}; do
      # a run: cache:code[:jobs] (jobs default $JOBS, 8)
      n=$((n + 1)); t=$(date +%s.%N); IFS=: read -r cache code jobs <<< "$run"; jobs=${jobs:-${JOBS:-8}}
      [ "$code" = old ] && { [ -d /tmp/old/harness ] || continue; }
      (if [ "$code" = old ]; then cd /tmp/old; export PYTHONPATH=/tmp/site:/tmp/old; fi
       [ "$code" = spawn ] && export GDN_WORKER_START=spawn
       [ "$code" = mps ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
       timeout -s INT ${SUITE_LIMIT:-110} python3 -m harness.cli run --suite ci --backend triton --device cuda \
           --jobs $jobs -q --report-dir "$OUT/ci13/$n-$cache-$code-jobs$jobs") > "$OUT/ci13-run.log" 2>&1; rc=$?
      echo "$run rc $rc process $(python3 -c "import time; print(round(time.time() - $t, 1))") s; $(tail -n 1 \
          "$OUT/ci13-run.log")" >> "$OUT/ci13.log"
    done
    (cd "$OUT" && tar czf ci13.tgz ci13 && rm -rf ci13 ci13-run.log)
    [ -n "$NO_PROF" ] && { cat "$OUT/ci13.log"; exit 0; }
    timeout -s INT 60 python3 scripts/profile_case.py -k "drift_256 and bfloat16-float32" --profile \
        > "$OUT/prof15.log" 2>&1
    [ -z "$NO_SIDE" ] && echo "== six drift_256 side by side" >> "$OUT/prof15.log" && OMP_NUM_THREADS=2 timeout -s INT 90 python3 scripts/profile_case.py -k drift_256 --procs 6 >> "$OUT/prof15.log" 2>&1
    grep -v "^ *aten::\|^---\|Name " "$OUT/prof15.log" | grep -v '"first"' | head -40; cat "$OUT/ci13.log" ;;
  16)
    # the one call of a short budget: call 15's runs (RUNS, default cold, warm this / old / this) and its
    # profile, then the harness's tests (`pytest tests -n 8`, GPU tests included) in what is left of
    # $BUDGET (540 s) -> $OUT/ci13.log, $OUT/ci13.tgz, $OUT/prof15.log, $OUT/pytest.log, $OUT/junit.xml
    t16=$(date +%s)
    RUNS=${RUNS:-cold:new warm:new warm:old warm:new} NO_SIDE=1 bash "$0" 15
    left=$(( ${BUDGET:-540} - ($(date +%s) - t16) ))
    echo "tests: ${left} s left"
    [ "$left" -gt 60 ] && { timeout -s INT $left python3 -m pytest ${TESTS:-tests} -n 8 -q -rs --junitxml "$OUT/junit.xml" \
        > "$OUT/pytest.log" 2>&1; echo "pytest rc $?" >> "$OUT/pytest.log"; tail -n 6 "$OUT/pytest.log"; } ;;
  17)
    # a worker's seconds before and in its first cases, step by step, and the modules it imports after the
    # server's preload (scripts/profile_import.py: two drift_256 cases, two small op cases), then call 15's
    # ci runs (RUNS, default cold, warm this twice) without its profile -> $OUT/import.log, $OUT/ci13.*
    { timeout -s INT 120 python3 scripts/profile_import.py -k "drift_256 and bfloat16" --modules 30
      timeout -s INT 60 python3 scripts/profile_import.py -k "op.rms_norm_gated"; } > "$OUT/import.log" 2>&1
    cat "$OUT/import.log"
    RUNS=${RUNS:-cold:new warm:new warm:new} NO_PROF=1 bash "$0" 15 ;;
  18)
    # call 17 (a worker's first seconds, ci cold then warm twice), then where a warm case's seconds go in
    # Python (scripts/profile_case.py --cprofile: a full-dims mixed layer, the checkpoint op, a drift case)
    # -> $OUT/import.log, $OUT/ci13.*, $OUT/cprof.log
    bash "$0" 17
    for k in "layer.mixed and interleaved-tp4 and qwen3-next" "chunk_gated_delta_rule_checkpoints and bfloat16-float32" \
        "drift_256 and bfloat16-float32"; do
      echo "== $k" >> "$OUT/cprof.log"
      timeout -s INT 60 python3 scripts/profile_case.py -k "$k" --cprofile >> "$OUT/cprof.log" 2>&1
    done
    grep '"run"' "$OUT/cprof.log" ;;
  19)
    # CUDA MPS on one GPU: ci --jobs 8 warm time-sliced ("new") against the same with a private MPS
    # daemon ("mps": call 15's runs), then whether one process's illegal memory access reaches three
    # others, plainly and under MPS (scripts/mps_probe.py) -> $OUT/mps.log, $OUT/ci13.*
    { command -v nvidia-cuda-mps-control; nvidia-smi --query-gpu=compute_mode --format=csv,noheader; } > "$OUT/mps.log" 2>&1
    mkdir -p /tmp/mps-pipe /tmp/mps-log
    CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log nvidia-cuda-mps-control -d >> "$OUT/mps.log" 2>&1
    echo "mps daemon rc $?" >> "$OUT/mps.log"
    RUNS=${RUNS:-cold:new warm:new warm:mps warm:old warm:mps warm:new} NO_PROF=1 bash "$0" 15
    { echo "== probe, time-sliced"; timeout 150 python3 scripts/mps_probe.py
      echo "== probe, MPS"; CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log timeout 150 \
          python3 scripts/mps_probe.py
      echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe nvidia-cuda-mps-control; tail -n 15 /tmp/mps-log/*.log; } \
        >> "$OUT/mps.log" 2>&1
    cat "$OUT/mps.log" ;;
  14)
    # call 9 (nan_neighbour on sglang / vllm@triton, the fast-path mutant kill run) with, beside it, ci on
    # each fast path at --jobs $FP_JOBS (4), longest first, cut at $CI_LIMIT -> $OUT/nn9, $OUT/mut, $OUT/ci14
    fastpath_env; mkdir -p "$OUT/ci14"
    for b in ${CI_BACKENDS:-sglang}; do
      (timeout -s INT ${CI_LIMIT:-480} python3 -m harness.cli run --suite ci --backend $b --device cuda \
           --jobs ${FP_JOBS:-4} -q --report-dir "$OUT/ci14/ci-$b" > "$OUT/ci14/ci-$b.log" 2>&1
       echo "ci-$b rc $?" >> "$OUT/ci14/ci-$b.log") &
    done
    PUT= bash "$0" 9; wait
    tail -n 4 "$OUT"/ci14/*.log
    # one archive: the report folders as files exceed what one call brings back (2026-12-07)
    (cd "$OUT" && tar czf ci14.tgz ci14 nn9 mut && rm -rf ci14 nn9 mut) ;;
  4)
    mkdir -p "$OUT/extra"
    OUT=$OUT/extra LIMIT_S=${EXTRA_LIMIT:-240} bash scripts/device_fastpaths.sh extra > "$OUT/extra.log" 2>&1
    tail -n 40 "$OUT/extra.log" ;;
esac
