"""Case worker for isolated runs: ``python -m harness.worker``.

Reads a JSON object {"cases": [...], "suite", "policy", "oracle_device"} on stdin and
prints one JSON record per finished case, one per line, so the parent keeps every
record a crash or hang did not reach.
"""
from __future__ import annotations

import json
import os
import sys

from .cases import Case
from .policy import Policy
from .runner import BackendCache, run_case

# A CUDA error that leaves the context unusable: every later case in this process would
# fail with it, so the worker hands its remaining cases to a fresh one (`EXIT_RESTART`).
STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address", "illegal instruction")
EXIT_RESTART = 75


def sticky_cuda_error(rec: dict) -> bool:
    return rec.get("status") == "error" and any(s in (rec.get("error") or "") for s in STICKY_CUDA_ERRORS)


def main() -> int:
    job = json.loads(sys.stdin.read())
    policy = Policy(job["policy"]) if job.get("policy") else Policy()
    backends = BackendCache()
    for d in job["cases"]:
        rec = run_case(Case.from_dict(d), policy, job["suite"], backends, job.get("oracle_device"))
        sys.stdout.write(json.dumps(rec, default=str) + "\n")
        sys.stdout.flush()
        if sticky_cuda_error(rec):
            # skip interpreter teardown: freeing a broken CUDA context can hang, which the parent
            # would pin on the next case (seen on an H200: "timed out" on a case never started)
            os._exit(EXIT_RESTART)
    return 0


if __name__ == "__main__":
    sys.exit(main())
