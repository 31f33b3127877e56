"""The fp64 oracle's repeated steps replayed as CUDA graphs.

A decode lane runs one step shape hundreds to thousands of times; eagerly each step is ~170
small torch ops from Python (~5 ms a step on an H100; a drift_256 case's oracle 2.4 s alone and
8 s beside 7 other workers on one H200). A step whose plan repeats (same entries, slots and token
ranges, same input shapes) is captured once and replayed: the same kernels on the same
arguments, so the result is bit-identical to the eager step; only the inputs are copied into
the captured buffers. On the CPU, for a plan seen once, and after any failed capture (a host
read of a GPU value, say), steps run eagerly. On by default since its GPU tests
(tests/test_oracle_replay.py: bit-identical to eager on four mixes) passed on an H200 on
2026-12-07, where a drift step fell from 4.9 to 1.4 ms alone; GDN_ORACLE_GRAPHS=0 turns it off.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch


DEFAULT = "1"
replayed = 0        # steps replayed in this process (a record's phases.oracle_replays: the difference)


class StepReplay:
    """Runs ``fn(*inputs) -> {name: tensor}`` per step; steps under one key share a graph.

    The first step of a key runs eagerly on a side stream (warming cuBLAS and the allocator
    for the capture), the second is captured and replayed, later ones replay. `fn` may change
    tensors it closes over in place (the oracle's pools): the capture runs no kernel, the
    replay runs them once, as an eager step would.
    """

    def __init__(self, device, enabled: Optional[bool] = None):
        wanted = os.environ.get("GDN_ORACLE_GRAPHS", DEFAULT) != "0" if enabled is None else enabled
        self.on = wanted and torch.device(device).type == "cuda"
        self.seen: set = set()
        self.graphs: Dict[Hashable, Tuple[torch.cuda.CUDAGraph, tuple, dict]] = {}
        self.replays = 0
        self.stream = torch.cuda.Stream(device=device) if self.on else None

    def __call__(self, key: Hashable, fn: Callable[..., dict], inputs: tuple) -> dict:
        global replayed
        if not self.on:
            return fn(*inputs)
        key = (key, tuple((t.shape, t.dtype, t.stride()) for t in inputs))
        if key not in self.seen:
            self.seen.add(key)
            return self._on_side_stream(fn, inputs)
        if key not in self.graphs and not self._capture(key, fn, inputs):
            return fn(*inputs)
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        self.replays += 1
        replayed += 1
        # the next replay writes the same buffers
        return {k: v.clone() for k, v in static_out.items()}

    def _on_side_stream(self, fn, inputs) -> dict:
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            out = fn(*inputs)
        main.wait_stream(self.stream)
        return out

    def _capture(self, key, fn, inputs) -> bool:
        static_in = tuple(t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = fn(*static_in)
        except Exception:  # noqa: BLE001 - a step that cannot be captured runs eagerly, as before
            # off for the rest of this run: a failed capture leaves nothing to reuse
            self.on = False
            torch.cuda.synchronize()
            return False
        self.graphs[key] = (graph, static_in, static_out)
        return True
