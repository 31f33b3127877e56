"""Where one suite case's seconds go on a GPU, as a worker runs it: the case run twice in one
process (the first pays imports and compiles), the second's phases and, with --profile, the CUDA
runtime calls behind it (launches, graph launches, host syncs, copies), with --cprofile its Python
functions. --procs N runs N processes side by side, process i on the i-th matching case (cycling),
as N workers sharing a GPU.

  python scripts/profile_case.py --suite ci -k "drift_256 and bfloat16-float32" [--profile] [--procs 6]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

RUNTIME_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                 "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize",
                 "aten::_local_scalar_dense", "aten::copy_", "aten::to")


def add_case_args(ap: argparse.ArgumentParser, k_help: str) -> None:
    """The cases a profiling script runs: --suite, --backend, --device, -k (scripts/profile_import.py too)."""
    ap.add_argument("--suite", default="ci")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("-k", required=True, help=k_help)


def case_argv(args) -> list:
    """`add_case_args`' arguments as given, for a child process."""
    return ["--suite", args.suite, "--backend", args.backend, "--device", args.device, "-k", args.k]


def matching_cases(args) -> list:
    """The suite's cases on the backend whose ids match -k (the run's grammar); none is an error."""
    from harness.cases.filters import parse_k
    from harness.cases.suite import expand, load_suite
    match = parse_k(args.k)
    cases = [c for c in expand(load_suite(args.suite), [args.backend], device=args.device) if match(c.id)]
    if not cases:
        raise SystemExit(f"no {args.suite} case on {args.backend} matches -k {args.k!r}")
    return cases


def one(args) -> None:
    import torch

    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache, run_case

    cases = matching_cases(args)
    case = cases[args.index % len(cases)]
    backends, policy = BackendCache(), Policy()
    t = time.perf_counter()
    first = run_case(case, policy, args.suite, backends, diagnose=False)
    print(json.dumps(dict(run="first", id=case.id, wall=round(time.perf_counter() - t, 3), status=first["status"],
                          phases=first["phases"])), flush=True)
    prof = cprof = None
    if args.cprofile:
        import cProfile
        cprof = cProfile.Profile()
        cprof.enable()
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    t = time.perf_counter()
    second = run_case(case, policy, args.suite, backends, diagnose=False)
    wall = time.perf_counter() - t
    if prof is not None:
        prof.__exit__(None, None, None)
    if cprof is not None:
        cprof.disable()
    print(json.dumps(dict(run="second", id=case.id, wall=round(wall, 3), status=second["status"],
                          phases=second["phases"], dynamo_imported="torch._dynamo" in sys.modules)), flush=True)
    if prof is not None:
        for e in prof.key_averages():
            if e.key in RUNTIME_CALLS:
                print(f"  {e.key}: {e.count} calls, self CPU {e.self_cpu_time_total / 1e3:.1f} ms, "
                      f"total CPU {e.cpu_time_total / 1e3:.1f} ms", flush=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)
    if cprof is not None:
        import pstats
        stats = pstats.Stats(cprof, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(r"harness|fla|torch/(nn|_tensor)", 40)
        stats.sort_stats("tottime").print_stats(25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_args(ap, "pick the case(s) by words of their ids (the run's -k grammar)")
    ap.add_argument("--index", type=int, default=0, help="which of the matching cases (cycling)")
    ap.add_argument("--profile", action="store_true", help="the CUDA runtime calls of the second run")
    ap.add_argument("--cprofile", action="store_true", help="the Python functions of the second run")
    ap.add_argument("--procs", type=int, default=1, help="run this many side by side, each on its own case")
    args = ap.parse_args()
    if args.procs == 1:
        one(args)
        return 0
    base = [sys.executable, __file__] + case_argv(args) + [f"--{flag}" for flag in ("profile", "cprofile")
                                                           if getattr(args, flag)]
    return side_by_side([base + ["--index", str(i)] for i in range(args.procs)])


def side_by_side(cmds) -> int:
    """Run the commands at once; the worst exit code (scripts/profile_oracle.py uses it too)."""
    t = time.perf_counter()
    procs = [subprocess.Popen(c) for c in cmds]
    rc = max(p.wait() for p in procs)
    print(f"{len(cmds)} side by side: {time.perf_counter() - t:.1f} s wall (imports included)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
