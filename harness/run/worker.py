"""Case worker for isolated runs: ``python -m harness.run.worker``.

A persistent worker: it prints ``{"ready": true}`` once its imports are done, then reads
one JSON job per line on stdin - ``{"case", "suite", "policy", "oracle_device"}``, or
the batch form ``{"cases": [...], "suite", ...}`` - and prints one JSON record per
finished case, one per line, so the parent keeps every record a crash or hang did not
reach. It exits at the end of its input, or when its parent is gone.

The protocol has its own copy of stdout: anything a backend prints (Python or native
code) goes to stderr, which the parent keeps a tail of for crash reports.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from harness.cases.case import Case
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case

# A CUDA error that leaves the context unusable: every later case in this process would
# fail with it, so the worker hands its remaining cases to a fresh one (`EXIT_RESTART`).
STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address", "illegal instruction")
EXIT_RESTART = 75


def sticky_cuda_error(rec: dict) -> bool:
    return rec.get("status") == "error" and any(s in (rec.get("error") or "") for s in STICKY_CUDA_ERRORS)


def _exit_with_parent() -> None:
    """A worker outlives a hard-killed parent only until it notices (its stdin may never close)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                        # stray prints (Python or native) go to stderr
    sys.stdout = sys.stderr
    _exit_with_parent()
    policies: dict = {}
    backends = BackendCache()
    proto.write(json.dumps({"ready": True}) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        key = job.get("policy")
        if key not in policies:
            policies[key] = Policy(key) if key else Policy()
        for d in job["cases"] if "cases" in job else [job["case"]]:
            rec = run_case(Case.from_dict(d), policies[key], job["suite"], backends, job.get("oracle_device"))
            proto.write(json.dumps(rec, default=str) + "\n")
            proto.flush()
            if sticky_cuda_error(rec):
                # skip interpreter teardown: freeing a broken CUDA context can hang, which the parent
                # would pin on the next case (seen on an H200: "timed out" on a case never started)
                os._exit(EXIT_RESTART)
    return 0


if __name__ == "__main__":
    sys.exit(main())
