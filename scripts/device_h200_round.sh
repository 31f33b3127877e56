#!/usr/bin/env bash
# One H200, after `scripts/device_fastpaths.sh put 1..3` (issue 18, 19, 20 GPU work in two calls):
#   round a  carry .whl/fastpath.part4 .whl/fastpath.sha256 .whl/fastpath_extra .whl/test:
#            put part 4; concurrently: the three fast-path backends' cold suites (vllm: FlashInfer prefill on SM90),
#            fla's autotuner recording pins (MODE=record), the nightly drift_10000 lane + its plot
#   round b  carry .whl/fastpath_extra .whl/test: warm suites of the three fast-path backends + the
#            variants / fastpath-mutant kill run
# Everything lands under $OUT/<part>/ (the scripts' own tgz files).
set -o pipefail
ROUND=${1:?usage: scripts/device_h200_round.sh a | b}
case $ROUND in
  a)
    bash scripts/device_fastpaths.sh put 4 || exit 3
    mkdir -p "$OUT/fp" "$OUT/rec" "$OUT/drift"
    (OUT=$OUT/fp LIMIT_S=${FP_LIMIT:-240} bash scripts/device_fastpaths.sh suite cold > "$OUT/fp.log" 2>&1) &
    (OUT=$OUT/rec MODE=record JOBS=4 BENCH_LIMIT=${REC_LIMIT:-520} SUITE_LIMIT=${REC_SUITE:-420} \
        bash scripts/device_suite_cost.sh > "$OUT/rec.log" 2>&1) &
    (sleep 30; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1   # the wheels device_suite_cost.sh installed
     timeout -s INT ${DRIFT_LIMIT:-480} python3 -m harness.cli run --suite nightly --backend triton --device cuda \
         --mix drift_10000 --report-dir /tmp/drift -q > "$OUT/drift.log" 2>&1; echo "drift rc $?" >> "$OUT/drift.log"
     python3 -m harness.report.drift /tmp/drift >> "$OUT/drift.log" 2>&1
     (cd /tmp/drift && tar czf "$OUT/drift/drift.tgz" summary.md results.json drift.* 2>/dev/null)) &
    wait ;;
  b)
    mkdir -p "$OUT/warm" "$OUT/extra"
    (OUT=$OUT/warm LIMIT_S=${WARM_LIMIT:-200} bash scripts/device_fastpaths.sh suite warm > "$OUT/warm.log" 2>&1) &
    (OUT=$OUT/extra LIMIT_S=${EXTRA_LIMIT:-240} bash scripts/device_fastpaths.sh extra > "$OUT/extra.log" 2>&1) &
    wait ;;
esac
tail -n 5 "$OUT"/*.log
