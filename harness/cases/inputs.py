"""Seeded, physical inputs: weights with model-like gates, hidden states, stale cache pools.

Everything is drawn in fp64 from a torch.Generator seeded by the scenario and then
rounded to the scenario's dtypes, so the oracle sees exactly what a backend gets.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, List

import torch

from harness.config import GDNDims
from harness.errors import ConfigError
from harness.layouts.weights import GDNWeights
from harness.reference.gating import fused_gdn_gating
from harness.cases.scenario import Scenario

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError("dtype", f"unknown dtype {name!r}; known: {sorted(DTYPES)}") from None


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# fp64 draws kept per process: cases that differ only in dtype, layout, TP or backend draw the very
# same values, and at full dims the draws (one generator, single-threaded) cost a case more than its
# oracle. Bounded in bytes (one full-dims Qwen3-Next weight set is 256 MiB, Qwen3.5-397B's 0.9 GiB).
# GDN_DRAWS_KEPT_MB is read when drawing (a forked worker's environment is set after its imports).
def kept_bytes() -> int:
    return int(float(os.environ.get("GDN_DRAWS_KEPT_MB", "1024")) * 2**20)


_draws: "OrderedDict[tuple, tuple]" = OrderedDict()      # key -> (draw, bytes)


def _tensors(x) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, GDNWeights):
        yield from x.tensors()
    elif isinstance(x, (dict, list, tuple)):
        for v in (x.values() if isinstance(x, dict) else x):
            yield from _tensors(v)


def drawn(key: tuple, draw: Callable[[], object], copy_out: Callable[[object], object]):
    """`copy_out(draw())`, the draw remembered under `key` (everything it depends on) while the kept
    draws fit `kept_bytes()` (the oldest go first). `copy_out` makes the caller's own tensors
    (a cast with ``copy=True``), so an in-place write by a backend or a fault never reaches the next
    case, and a cast costs one copy, not a clone and a cast."""
    if key in _draws:
        _draws.move_to_end(key)
        return copy_out(_draws[key][0])
    value = draw()
    size = sum(t.numel() * t.element_size() for t in _tensors(value))
    limit = kept_bytes()
    if size <= limit:
        _draws[key] = (value, size)
        while sum(n for _, n in _draws.values()) > limit:
            _draws.popitem(last=False)
    return copy_out(value)


def make_small_params(dims: GDNDims, seed: int = 0, conv_bias: bool = False) -> dict:
    """The layer's small parameters (no projection matrices), cheap at preset dims:
    A = exp(A_log) ~ U(1, 16) and dt ~ logU(1e-3, 0.1) as in Qwen / Mamba init, so
    g = -A softplus(a + dt_bias) spans slow and fast decays."""
    gen = _gen(seed + 7919)
    f64 = dict(dtype=torch.float64)
    dt = torch.exp(torch.empty(dims.HV, **f64).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
    bound = 1.0 / math.sqrt(dims.W)
    return dict(
        conv_weight=torch.empty(dims.conv_dim, dims.W, **f64).uniform_(-bound, bound, generator=gen),
        conv_bias=(torch.empty(dims.conv_dim, **f64).uniform_(-bound, bound, generator=gen) if conv_bias else None),
        A_log=torch.log(torch.empty(dims.HV, **f64).uniform_(1.0, 16.0, generator=gen)),
        dt_bias=dt + torch.log(-torch.expm1(-dt)),          # inverse softplus
        norm_weight=1.0 + 0.1 * torch.randn(dims.V, generator=gen, **f64))


def make_weights(dims: GDNDims, seed: int = 0, conv_bias: bool = False,
                 dtype: torch.dtype = torch.float64) -> GDNWeights:
    """Weights drawn in fp64 (projections ~ N(0, 1/fan_in), the rest from `make_small_params`),
    rounded to `dtype`."""
    return drawn(("weights", dims, int(seed), conv_bias), lambda: _draw_weights(dims, seed, conv_bias),
                 lambda w: w.to(dtype, copy=True))


def _draw_weights(dims: GDNDims, seed: int, conv_bias: bool) -> GDNWeights:
    gen = _gen(seed)
    s = 1.0 / math.sqrt(dims.hidden)

    def mat(rows, cols, scale):
        return torch.randn(rows, cols, dtype=torch.float64, generator=gen) * scale

    return GDNWeights(
        wq=mat(dims.key_dim, dims.hidden, s), wk=mat(dims.key_dim, dims.hidden, s),
        wv=mat(dims.value_dim, dims.hidden, s), wz=mat(dims.value_dim, dims.hidden, s),
        wb=mat(dims.HV, dims.hidden, s), wa=mat(dims.HV, dims.hidden, s),
        out_proj=mat(dims.hidden, dims.value_dim, 1.0 / math.sqrt(dims.value_dim)),
        **make_small_params(dims, seed, conv_bias)).check(dims)


@dataclass
class ScenarioInputs:
    weights: GDNWeights            # in the scenario dtype
    hidden: List[torch.Tensor]     # per step [T, hidden], scenario dtype
    conv_pool: torch.Tensor        # [num_slots, conv_dim, W-1+num_spec] dim-first, activation dtype
    ssm_pool: torch.Tensor         # [num_slots, HV, V, K] (vk), state dtype


def make_inputs(sc: Scenario) -> ScenarioInputs:
    sc.validate()
    dims, dt, st = sc.dims, dtype_of(sc.dtype), dtype_of(sc.state_dtype)
    tokens = tuple(entries[-1].eos for entries in sc.plan())
    hidden, conv_pool, ssm_pool = drawn(
        ("scenario", dims, int(sc.seed), tokens, sc.num_slots, sc.conv_state_len),
        lambda: _draw_scenario(dims, sc.seed, tokens, sc.num_slots, sc.conv_state_len),
        lambda d: ([h.to(dt, copy=True) for h in d[0]],
                   d[1].to(dt, copy=True),          # vLLM keeps conv state in the model dtype
                   d[2].to(st, copy=True)))
    return ScenarioInputs(weights=make_weights(dims, sc.seed, sc.conv_bias, dt), hidden=hidden,
                          conv_pool=conv_pool, ssm_pool=ssm_pool)


def _draw_scenario(dims: GDNDims, seed: int, tokens: tuple, num_slots: int, conv_state_len: int) -> tuple:
    """fp64 hidden states per step, then stale pool contents: conv-input-like values and states of a
    plausible size."""
    gen = _gen(seed + 1)
    hidden = [torch.randn(t, dims.hidden, dtype=torch.float64, generator=gen) for t in tokens]
    conv_pool = torch.randn(num_slots, dims.conv_dim, conv_state_len, dtype=torch.float64, generator=gen)
    ssm_pool = 0.3 * torch.randn(num_slots, dims.HV, dims.V, dims.K, dtype=torch.float64, generator=gen)
    return hidden, conv_pool, ssm_pool


def make_delta_inputs(dims: GDNDims, lengths: List[int], seed: int = 0, initial_state: bool = True,
                      dtype: torch.dtype = torch.float64) -> dict:
    """Physical varlen delta-rule inputs for `dims` (q / k raw, normalised in-kernel; g from
    real gating of random a with model-like A_log / dt_bias), sequences back to back."""
    return drawn(("delta", dims, tuple(int(n) for n in lengths), int(seed), initial_state),
                 lambda: _draw_delta(dims, lengths, seed, initial_state),
                 lambda d: {k: v if v is None else v.to(dtype if v.is_floating_point() else v.dtype, copy=True)
                            for k, v in d.items()})


def _draw_delta(dims: GDNDims, lengths: List[int], seed: int, initial_state: bool) -> dict:
    gen = _gen(seed)
    w = make_small_params(dims, seed)
    T = sum(lengths)
    rnd = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen)
    g, beta = fused_gdn_gating(w["A_log"], rnd(1, T, dims.HV), rnd(1, T, dims.HV), w["dt_bias"])
    out = dict(q=rnd(1, T, dims.H, dims.K), k=rnd(1, T, dims.H, dims.K), v=rnd(1, T, dims.HV, dims.V),
               g=g, beta=beta, cu_seqlens=torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist())),
               initial_state=(0.3 * rnd(len(lengths), dims.HV, dims.V, dims.K)) if initial_state else None)
    return out
