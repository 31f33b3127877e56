#!/usr/bin/env bash
# One H200, the fast-path parts (scripts/fetch_fastpath_packages.sh, 3 parts of 48 MiB) put one per
# call, each call also doing one piece of issue 18 / 20 GPU work. Calls back to back (a warm
# machine keeps /tmp for ~30 s after a call):
#   round 1  carry .whl/fastpath.part1 .whl/fastpath.sha256 .whl/test: put 1; fla's autotuner runs the
#            ci suite and records its configs (MODE=record) -> $OUT/rec/autotune_pins.json (+ /tmp/pins.json)
#   round 2  carry .whl/fastpath.part2 .whl/fastpath.sha256 .whl/test: put 2; `bench --suite-cost ci`
#            with those pins (cold / warm, 1 / $JOBS jobs) -> $OUT/bench/
#   round 3  carry .whl/fastpath.part3 .whl/fastpath.sha256 .whl/test: put 3 (assembles, installs);
#            the ci suite against vllm (FlashInfer prefill on SM90), flashinfer, sglang: cold, then warm
# Everything lands under $OUT/<part>/.
set -o pipefail
ROUND=${1:?usage: scripts/device_h200_round.sh 1 | 2 | 3}
bash scripts/device_fastpaths.sh put "$ROUND" > "$OUT/put.log" 2>&1 || { cat "$OUT/put.log"; exit 3; }
case $ROUND in
  1)
    mkdir -p "$OUT/rec"
    OUT=$OUT/rec MODE=record JOBS=${JOBS:-4} BENCH_LIMIT=${REC_LIMIT:-260} SUITE_LIMIT=${REC_SUITE:-220} \
        bash scripts/device_suite_cost.sh > "$OUT/rec.log" 2>&1
    cp "$OUT/rec/autotune_pins.json" /tmp/pins.json ;;
  2)
    mkdir -p "$OUT/bench"
    GDN_AUTOTUNE_PINS=${GDN_AUTOTUNE_PINS:-/tmp/pins.json} OUT=$OUT/bench JOBS=${JOBS:-4} \
        BENCH_LIMIT=${BENCH_LIMIT:-400} SUITE_LIMIT=${SUITE_LIMIT:-75} \
        bash scripts/device_suite_cost.sh > "$OUT/bench.log" 2>&1 ;;
  3)
    mkdir -p "$OUT/fp"
    for tag in cold warm; do   # vllm first in each: it is the one without a committed ci report
      OUT=$OUT/fp SUITES=ci BACKENDS="vllm flashinfer sglang" LIMIT_S=${FP_LIMIT:-200} \
          bash scripts/device_fastpaths.sh suite $tag > "$OUT/fp-$tag.log" 2>&1
    done ;;
esac
tail -n 5 "$OUT"/*.log
