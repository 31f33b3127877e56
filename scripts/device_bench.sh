#!/usr/bin/env bash
# One GPU (device tool, kind nvidia-h200): op benches vs copy bandwidth, the fp64 oracle,
# the ci suite's time-to-verdict cold and warm; the filled Triton cache comes back
# (tcache.tgz.part-*) for the multi-GPU run. Everything lands in $OUT.
set -o pipefail
source "$(dirname "$0")/device_env.sh"
timeout -s INT ${BENCH_LIMIT:-450} python3 -m harness.cli bench --device cuda --tp 1 --tp 8 \
    --suite-cost ci --suite-backend triton --suite-jobs ${SUITE_JOBS:-4} --suite-limit ${SUITE_LIMIT:-200} \
    --suite-cache /tmp/tcache --report-dir /tmp/bench 2>&1 | tee -a $OUT/log
echo "bench rc $?" | tee -a $OUT/log
# small files only: the suite runs' summaries and results, not their HTML
(cd /tmp/bench && tar czf $OUT/bench.tgz bench.json bench.md bench.png suite-*/summary.md suite-*/results.json)
tar czf /tmp/tcache.tgz -C /tmp tcache && split -b 15M /tmp/tcache.tgz $OUT/tcache.tgz.part-
ls -la $OUT | tee -a $OUT/log
