"""Benchmarks of the harness's own cost (timings live here, never in asserts).

``oracle``: the fp64 reference delta rule on one long prefill at preset dims - the
chunked form (what long-history oracles use) and optionally the per-token recurrence.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

from .config import GDNDims
from .inputs import make_delta_inputs
from .reference.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeat: int) -> List[float]:
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_oracle(dims: GDNDims, tokens: int, device: str, repeat: int = 3,
                 recurrent: bool = False, seed: int = 0) -> List[Dict]:
    dev = torch.device(device)
    d = make_delta_inputs(dims, [tokens], seed)
    d = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    kw = dict(initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"], use_qk_l2norm_in_kernel=True)
    forms = [("chunked", chunk_gated_delta_rule)] + ([("recurrent", recurrent_gated_delta_rule)] if recurrent else [])
    rows = []
    for name, fn in forms:
        times = time_call(lambda: fn(*args, **kw), dev, repeat)   # first call includes warm-up
        rows.append(dict(bench="oracle", form=name, dims=dims.to_dict(), tokens=tokens, dtype="float64",
                         device=str(dev), device_name=(torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"),
                         torch=torch.__version__, times_s=[round(t, 4) for t in times],
                         median_s=round(statistics.median(times), 4), first_s=round(times[0], 4)))
    return rows
