"""Where a worker's seconds go before its first case computes: one fresh process, timed step by
step as a forked worker meets them (the server's preload, then triton, the CUDA context, Triton's
driver, the backend, the first case, a second case), and with --modules the modules imported
after the preload, by cumulative import time (python -X importtime).

  python scripts/profile_import.py --suite ci -k "drift_256 and bfloat16-float32" [--modules 25]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from profile_case import add_case_args, case_argv, matching_cases      # beside this script

MARK = "profile_import: preload done"


def steps(args) -> None:
    t = time.perf_counter()
    out = {}

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = round(now - t, 3)
        t = now

    from harness.run import forkstart
    for m in forkstart.PRELOAD:
        __import__(m)
    lap("preload")
    print(MARK, file=sys.stderr, flush=True)
    import torch
    import triton
    lap("import triton")
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)
        torch.cuda.synchronize()
        lap("cuda context")
        triton.runtime.driver.active.get_current_target()
        lap("triton driver")
    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache, run_case
    cases = matching_cases(args)
    if len(cases) < 2:
        raise SystemExit(f"-k {args.k!r}: {len(cases)} {args.suite} case(s) on {args.backend}; two are needed")
    lap("plan")
    backends, policy = BackendCache(), Policy()
    backends.get(args.backend)
    lap("load backend")
    recs = [run_case(c, policy, args.suite, backends, diagnose=False) for c in cases[:1]]
    lap("first case")
    recs += [run_case(c, policy, args.suite, backends, diagnose=False) for c in cases[1:2]]
    lap("second case")
    print(json.dumps(dict(steps_s=out, first=dict(id=recs[0]["id"], phases=recs[0]["phases"]),
                          second=dict(id=recs[1]["id"], phases=recs[1]["phases"]),
                          imported={m: m in sys.modules for m in ("fla", "torch._dynamo", "transformers")})),
          flush=True)


def modules(args) -> None:
    """The modules imported after the preload, by cumulative import time (top `args.modules`)."""
    cmd = [sys.executable, "-X", "importtime", __file__, "--steps"] + case_argv(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    print(proc.stdout, end="")
    lines = proc.stderr.splitlines()
    after = lines[lines.index(MARK) + 1:] if MARK in lines else lines
    rows = []
    for ln in after:
        if ln.startswith("import time:") and "|" in ln:
            parts = ln.split("|")
            try:
                rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
            except ValueError:
                continue
    print(f"imported after the preload: {len(rows)} modules, {sum(r[1] for r in rows) / 1e6:.2f} s self time")
    for cum, self_us, name in sorted(rows, reverse=True)[:args.modules]:
        print(f"  {cum / 1e6:7.3f} s cumulative {self_us / 1e6:7.3f} s self  {name}")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_args(ap, "the cases (the run's -k grammar); the first two are run")
    ap.add_argument("--modules", type=int, default=0, help="also list this many modules by import time")
    ap.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.modules and not args.steps:
        modules(args)
    else:
        steps(args)


if __name__ == "__main__":
    main()
