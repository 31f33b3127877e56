"""Where a drift step of the fp64 layer oracle goes on a GPU: wall per step, and (--profile) the
CUDA runtime calls behind it (launches, host syncs, copies). Run N of these side by side
(`--procs N`) to see what sharing one GPU between worker processes costs the oracle.

  python scripts/profile_oracle.py --device cuda --steps 64 [--profile] [--procs 8]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from harness.cases.inputs import make_inputs
from harness.cases.scenario import mix_scenario
from harness.config import get_preset
from harness.reference.layer import run_oracle


def one(args) -> None:
    sc = mix_scenario(f"drift_{args.steps}", get_preset(args.dims), None, layout="flat", tp=1, seed=0,
                      dtype="bfloat16", state_dtype="float32", conv_state_layout="dim_first", ba="sharded")
    inp = make_inputs(sc)
    plans = sc.plan()
    run = lambda: run_oracle(sc, inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool, device=args.device,
                             plans=plans)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run()                                   # warm: allocator, cuBLAS handles, first launches
    sync()
    t = time.perf_counter()
    run()
    sync()
    wall = time.perf_counter() - t
    print(f"oracle {len(plans)} steps {wall:.3f} s, {1e3 * wall / len(plans):.2f} ms a step", flush=True)
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            run()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        print(table)
        names = ("cudaLaunchKernel", "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaDeviceSynchronize",
                 "aten::_local_scalar_dense", "aten::item", "aten::nonzero")
        for e in prof.key_averages():
            if e.key in names:
                print(f"{e.key}: {e.count} calls, {e.count / len(plans):.1f} a step, "
                      f"self CPU {e.self_cpu_time_total / 1e3:.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dims", default="qwen3-next-80b-a3b")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--procs", type=int, default=1, help="run this many copies side by side")
    args = ap.parse_args()
    if args.procs == 1:
        one(args)
        return 0
    from profile_case import side_by_side      # beside this script
    cmd = [sys.executable, __file__, "--device", args.device, "--dims", args.dims, "--steps", str(args.steps)]
    return side_by_side([cmd] * args.procs)


if __name__ == "__main__":
    sys.exit(main())
