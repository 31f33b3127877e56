"""The worker process of the pool (`harness.run.isolate`): ``python -m harness.run.worker``.

A persistent worker: it prints ``{"ready": true}`` once its imports are done, then reads
one JSON job per line on stdin and answers on stdout, one JSON line at a time, so the
parent keeps everything a crash or hang did not reach. Two kinds of job:

- a case job, ``{"case", "suite", "policy", "oracle_device"}`` or the batch form
  ``{"cases": [...], "suite", ...}``: one record per finished case;
- a call, ``{"call": "package.module:function", "args": ...}`` (the zoo's tasks): the
  function runs as ``function(args, emit)``; each ``emit(x)`` prints ``{"event": x}`` (the
  parent's per-step timeout restarts there) and its return value ``{"result": value}``.
  A function that leaves the process unusable (a sticky CUDA error) calls
  `request_restart()`: the worker exits after its result.

It exits at the end of its input, or when its parent is gone.

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


_RESTART: list = []


def request_restart() -> None:
    """The running call left this process unusable: the worker exits after its result."""
    _RESTART.append(True)


def _load(spec: str):
    import importlib
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


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
        if "call" in job:
            _call(job, proto)
            continue
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


def _call(job: dict, proto) -> None:
    def emit(event) -> None:
        proto.write(json.dumps({"event": event}, default=str) + "\n")
        proto.flush()
    result = _load(job["call"])(job.get("args"), emit)
    proto.write(json.dumps({"result": result}, default=str) + "\n")
    proto.flush()
    # the flag of the importable module: this one runs as __main__, a copy the call never sees
    from harness.run import worker as imported
    if imported._RESTART:
        os._exit(EXIT_RESTART)          # as after a case's sticky CUDA error (main)


if __name__ == "__main__":
    sys.exit(main())
