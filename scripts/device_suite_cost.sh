#!/usr/bin/env bash
# One GPU (device tool, kind nvidia-h200), issue 20: where the ci suite's seconds go.
#   MODE=record: run ci with fla's own autotuner (--jobs 4, a per-kernel lock) and write the
#                configs it chose as $OUT/autotune_pins.json (commit it as harness/run/autotune_pins.json).
#   MODE=bench (default): ci with --autotune pinned, cold (each run its own empty
#                TRITON_CACHE_DIR) and warm, --jobs 1 and --jobs $JOBS; rows + per-phase
#                breakdown in $OUT/bench.{json,md}, each run's results.json in $OUT/bench.tgz.
#                SUITE_JOBS="8 4" times other worker counts (cold each, then warm each).
# Carry: .whl (the fla-core wheel). Each mode fits one device call (<= 9 min): a suite run past
# SUITE_LIMIT gets SIGINT and still writes the cases it finished (record: pins of those).
set -o pipefail
source "$(dirname "$0")/device_env.sh"
rm -rf /tmp/bench /tmp/tcache*
JOBS=${JOBS:-4}
if [ "${MODE:-bench}" = record ]; then
    timeout -s INT ${BENCH_LIMIT:-520} python3 -m harness.cli bench --device cuda --no-ops --repeat 1 \
        --suite-backend triton --suite-jobs $JOBS --suite-limit ${SUITE_LIMIT:-400} \
        --record-autotune $OUT/autotune_pins.json --report-dir /tmp/bench 2>&1 | tee -a $OUT/log
else
    timeout -s INT ${BENCH_LIMIT:-520} python3 -m harness.cli bench --device cuda --no-ops --repeat 1 \
        --suite-cost ci --suite-backend triton $(for j in ${SUITE_JOBS:-1 $JOBS}; do echo --suite-jobs $j; done) --suite-cold-each \
        --autotune pinned --suite-limit ${SUITE_LIMIT:-115} --suite-cache /tmp/tcache --report-dir /tmp/bench \
        2>&1 | tee -a $OUT/log
fi
echo "bench rc $?" | tee -a $OUT/log
cp /tmp/bench/bench.json /tmp/bench/bench.md $OUT/ 2>/dev/null
(cd /tmp/bench && tar czf $OUT/bench.tgz */summary.md */results.json)
ls -la $OUT | tee -a $OUT/log
