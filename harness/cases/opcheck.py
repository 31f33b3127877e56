"""Op-level cases, declared once per op (in the spirit of PyTorch's OpInfo).

Each `OpInfo` names the op, its sample variants and which arguments it updates in
place. A sample builder is deterministic in its seed: it builds the backend's arguments
(tensors in the case dtypes, non-contiguous where the variant says so); the oracle gets
fp64 copies of those very tensors, taken before the backend runs. Every
return value and every in-place state is compared; slots no index touches are
compared exactly against their stale contents.

A builder's optional `sample` (a shrunk case's ``Case.scenario``) keeps a subset of the
variant's sequences (``seqs``: their indices) with other token counts (``lens``); an
empty dict passed in is filled with the variant's own. ``slots`` (one per kept sequence)
replaces the state slots of a decode / prefill variant, the pool grown to hold them:
`bench_sample` scales a variant so to the bench shapes named in `OpInfo.bench`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from harness import reference as ref
from harness.config import GDNDims
from harness.errors import ConfigError
from harness.cases.comparison import Comparison
from harness.cases.inputs import dtype_of, make_delta_inputs, make_small_params
from harness.layouts.projection import unpack_qkvz_ba
from harness.optimized.poison import uninitialized_memory_poisoned

F64 = torch.float64


# an in-place argument is reported as the output it is after the call: the pool of
# recurrent states the op updated is no "initial_state" any more
STATE_OUTPUTS = {"initial_state": "ssm_pool"}


def state_output(arg: str) -> str:
    """The output name under which the in-place argument `arg` is compared and reported."""
    return STATE_OUTPUTS.get(arg, arg)


@dataclass
class Sample:
    kwargs: Dict[str, object]
    outputs: Tuple[Optional[str], ...]     # names of return values (None: not compared)
    states: Tuple[str, ...] = ()           # kwargs updated in place
    touched: Dict[str, List[int]] = None   # state kwarg -> slots the op may write
    # output -> (dim, indices) left out on both sides: the rows of a sequence given non-finite
    # inputs on purpose (its neighbours are what is judged)
    skip: Dict[str, Tuple[int, List[int]]] = None


@dataclass
class OpInfo:
    name: str
    reference: Callable
    variants: Tuple[str, ...]
    build: Callable[..., Sample]            # (variant, dims, dt, st, layout, seed, device, sample) -> Sample
    exact_outputs: Tuple[str, ...] = ()
    caches: Dict[str, str] = field(default_factory=dict)   # state argument -> the cache it is ("conv" | "ssm")
    # bench shape ("decode": many 1-token sequences, "prefill": a few long ones) -> the variant
    # `gdn-harness bench` scales to it (`bench_sample`); an op without one is not timed
    bench: Dict[str, str] = field(default_factory=dict)


def state_policy_key(op: str, cache: Optional[str]) -> str:
    """The tolerance entry of an argument `op` updates in place, from the cache it is declared
    as: conv states share one exact entry, a recurrent state the op's state entry, an in-place
    output buffer (no cache) the op's own entry."""
    if cache == "conv":
        return "op.conv_state"
    return f"op.{op}.state" if cache == "ssm" else f"op.{op}"


def state_cache(op: str, arg: str) -> str:
    """The cache `op`'s in-place argument `arg` is declared as (an undeclared one is an error, never a guess)."""
    info = OP_INFOS[op]
    if arg not in info.caches:
        raise ConfigError(f"op.{op}.caches", f"the cache ('conv' | 'ssm') of its in-place argument {arg!r}")
    return info.caches[arg]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0):
    return torch.randn(*shape, dtype=F64, generator=gen) * scale


def _strided(t: torch.Tensor, pad: int = 3) -> torch.Tensor:
    """The same values as a non-contiguous view (a column slice of a wider buffer)."""
    buf = torch.zeros(*t.shape[:-1], t.shape[-1] + pad, dtype=t.dtype, device=t.device)
    buf[..., :t.shape[-1]] = t
    return buf[..., :t.shape[-1]]


def _to(t, dtype, device):
    return t.to(device=device, dtype=dtype)


def _keep(sample: Optional[dict], lens: List[int], *per_seq: list) -> tuple:
    """(lens, *per_seq) of the sequences `sample` keeps (all of the variant's without it)."""
    if sample is None:
        return (list(lens), *map(list, per_seq))
    sample.setdefault("seqs", list(range(len(lens))))
    idx = sample["seqs"]
    if not idx or any(not isinstance(i, int) or not 0 <= i < len(lens) for i in idx):
        raise ConfigError("case.scenario.seqs", f"indices of the variant's {len(lens)} sequences, got {idx}")
    sample.setdefault("lens", [lens[i] for i in idx])
    new = sample["lens"]
    if len(new) != len(idx) or any(not isinstance(n, int) or n < 1 for n in new):
        raise ConfigError("case.scenario.lens", f"{len(idx)} token counts >= 1, got {new}")
    return (list(new), *([p[i] for i in idx] for p in per_seq))


def _slots(sample: Optional[dict], slots: List[int], pool: int) -> Tuple[List[int], int]:
    """(slots, pool size): the sample's own ``slots`` (the pool grown to hold them) or the variant's."""
    mine = (sample or {}).get("slots")
    if mine is None:
        return slots, pool
    if len(mine) != len(slots) or any(not isinstance(i, int) for i in mine):
        raise ConfigError("case.scenario.slots", f"{len(slots)} slot indices, got {mine}")
    return list(mine), max([pool] + [i + 1 for i in mine])


def bench_sample(info: "OpInfo", variant: str, seqs: int, tokens: int) -> dict:
    """The `sample` that scales `variant` to `seqs` sequences of `tokens` tokens, each in its own
    state slot (a variant of one sequence: one of seqs * tokens tokens)."""
    own: dict = {}            # filled with the variant's own sequences (tiny dims: a probe)
    info.build(variant, GDNDims(hidden=32, H=2, HV=4, K=8, V=12, W=4, name="probe"), torch.float32, torch.float32,
               "vk", 0, "cpu", own)
    if len(own["seqs"]) == 1:
        return dict(seqs=own["seqs"], lens=[seqs * tokens])
    return dict(seqs=[own["seqs"][0]] * seqs, lens=[tokens] * seqs, slots=list(range(seqs)))


# ---------------------------------------------------------------- samples
def _unpack(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    lay, mode = variant.split("-")
    (T,), = _keep(sample, [7])
    mq, mb = _to(_rand(g, T, dims.qkvz_dim), dt, device), _to(_rand(g, T, 2 * dims.HV), dt, device)
    if mode == "strided":
        mq, mb = _strided(mq), _strided(mb)
    return Sample(dict(mixed_qkvz=mq, mixed_ba=mb, dims=dims, layout=lay), ("q", "k", "v", "z", "b", "a"))


def _gating(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    w = make_small_params(dims, seed)
    (T,), = _keep(sample, [9])
    a = _rand(g, T, dims.HV, scale=3.0)
    a[0] = 30.0 - w["dt_bias"]            # a + dt_bias above the softplus threshold
    a[1] = 20.0 - w["dt_bias"]            # exactly at it
    a, b = _to(a, dt, device), _to(_rand(g, T, dims.HV, scale=2.0), dt, device)
    if variant == "strided":
        a, b = _strided(a), _strided(b)
    return Sample(dict(A_log=_to(w["A_log"], torch.float32, device), a=a, b=b, dt_bias=_to(w["dt_bias"], dt, device)),
                  ("g", "beta"))


def _conv_pool(g, dims, slots, L, dt, device, layout):
    pool = _rand(g, slots, dims.conv_dim, L)
    if layout == "token_first":
        return _to(pool.transpose(1, 2).contiguous(), dt, device).transpose(1, 2)
    return _to(pool, dt, device)


def _conv_fn(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    w = make_small_params(dims, seed, conv_bias=True)
    conv_layout, bias = variant.split("-")
    lens, slots, init = _keep(sample, [5, 1, 70, 2, 3], [4, 0, 6, -1, 2], [True, False, True, True, False])
    slots, size = _slots(sample, slots, 8)
    total = sum(lens)
    x = _to(_rand(g, total, dims.conv_dim), dt, device).T          # channel-first view, as vLLM passes it
    pool = _conv_pool(g, dims, size, dims.W - 1, dt, device, conv_layout)
    return Sample(dict(x=x, weight=_to(w["conv_weight"], dt, device),
                       bias=_to(w["conv_bias"], dt, device) if bias == "bias" else None, conv_states=pool,
                       query_start_loc=torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32,
                                                    device=device),
                       cache_indices=torch.tensor(slots, dtype=torch.int32, device=device),
                       has_initial_state=torch.tensor(init, device=device),
                       activation="silu"),
                  ("out",), ("conv_states",), {"conv_states": [s for s in slots if s >= 0]})


def _conv_update(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    w = make_small_params(dims, seed, conv_bias=True)
    kind, conv_layout = variant.split("-")
    W = dims.W
    if kind == "spec":
        num_spec = 3
        S = num_spec + 1
        _, slots, acc = _keep(sample, [S] * 4, [5, 1, 3, 7], [1, 2, 3, 4])    # every accepted count
        x = _to(_rand(g, S * len(slots), dims.conv_dim), dt, device)
        pool = _conv_pool(g, dims, 9, W - 1 + num_spec, dt, device, conv_layout)
        kw = dict(x=x, conv_state=pool, num_accepted_tokens=torch.tensor(acc, dtype=torch.int32, device=device),
                  query_start_loc=torch.arange(0, S * len(slots) + 1, S, dtype=torch.int32, device=device))
    else:
        _, slots = _keep(sample, [1 if kind == "decode" else 2] * 4, [3, -1, 0, 5])
        slots, size = _slots(sample, slots, 7)
        shape = (len(slots), dims.conv_dim) if kind == "decode" else (len(slots), dims.conv_dim, 2)
        kw = dict(x=_to(_rand(g, *shape), dt, device),
                  conv_state=_conv_pool(g, dims, size, W - 1, dt, device, conv_layout))
    kw.update(weight=_to(w["conv_weight"], dt, device), bias=_to(w["conv_bias"], dt, device), activation="silu",
              conv_state_indices=torch.tensor(slots, dtype=torch.int32, device=device))
    return Sample(kw, ("out",), ("conv_state",), {"conv_state": [s for s in slots if s >= 0]})


def _state_tensor(t, st, layout, device):
    """A [.., HV, V, K] state in the backend's state layout and dtype."""
    return _to(t if layout == "vk" else t.transpose(-1, -2).contiguous(), st, device)


def _delta_args(dims, lens, dt, seed, device):
    d = make_delta_inputs(dims, lens, seed)
    args = {k: _to(d[k], dt, device) for k in ("q", "k", "v")}
    args.update(g=_to(d["g"], torch.float32, device), beta=_to(d["beta"], dt, device))
    return d, args


# chunk_gated_delta_rule's variants -> (sequence lengths, which sequences get NaN q / k / v).
# nan_neighbour: a 1-token sequence of NaN within 64 rows after the 70-token sequence's last
# chunk start (its tail 64-69, then row 70, then row 71): a kernel that loads a whole 64-row
# tile past a sequence's end and masks it by multiplying turns the neighbours' rows into NaN
# (FlashInfer 0.7.2's SM90 prefill in vLLM's layer, an H100, docs/findings.md).
CHUNK_VARIANTS = {"varlen": ([1, 64, 100, 7], [False] * 4), "long": ([300], [False]),
                  "nan_neighbour": ([70, 1, 1, 5], [False, False, True, False])}


def _chunk(variant, dims, dt, st, layout, seed, device, sample=None):
    lens, poisoned = _keep(sample, *CHUNK_VARIANTS[variant])
    d, kw = _delta_args(dims, lens, dt, seed, device)
    kw.update(initial_state=_state_tensor(d["initial_state"], st, layout, device), output_final_state=True,
              cu_seqlens=_to(d["cu_seqlens"], torch.int32, device), use_qk_l2norm_in_kernel=True,
              state_layout=layout)
    bad = [n for n, p in enumerate(poisoned) if p]
    if not bad:
        return Sample(kw, ("o", "final_state"))
    cu = [int(c) for c in d["cu_seqlens"].tolist()]
    rows = [t for n in bad for t in range(cu[n], cu[n + 1])]
    for name in ("q", "k", "v"):
        kw[name][:, rows] = float("nan")
    return Sample(kw, ("o", "final_state"), skip={"o": (1, rows), "final_state": (0, bad)})


def _chunk_checkpoints(variant, dims, dt, st, layout, seed, device, sample=None):
    """Block sizes a multiple of the 64-token chunk or not (128, 800, 1088), tails 0 / 1 / 63
    (a sequence of two whole blocks, one of a block and a token, one shorter than a block)."""
    B = int(variant[len("block"):])
    lens, = _keep(sample, [2 * B, B + 1, 63])          # tails 0, 1, 63
    d, kw = _delta_args(dims, lens, dt, seed, device)
    n = sum(L // B for L in lens)
    shape = (n, dims.HV, dims.V, dims.K) if layout == "vk" else (n, dims.HV, dims.K, dims.V)
    kw.update(state_checkpoints=torch.full(shape, float("nan"), dtype=st, device=device), checkpoint_every=B,
              initial_state=_state_tensor(d["initial_state"], st, layout, device),
              cu_seqlens=_to(d["cu_seqlens"], torch.int32, device), use_qk_l2norm_in_kernel=True,
              state_layout=layout)
    return Sample(kw, ("o", "final_state"), ("state_checkpoints",), {"state_checkpoints": list(range(n))})


def checkpoint_ends(kwargs) -> Tuple[List[int], List[int]]:
    """(checkpoint index, sequence index) of each checkpoint written at its sequence's end
    (the block divides the length): that checkpoint is the cold run's final state."""
    every, cu = kwargs["checkpoint_every"], [int(x) for x in kwargs["cu_seqlens"].tolist()]
    cks, seqs, at = [], [], 0
    for n, L in enumerate(b - a for a, b in zip(cu, cu[1:])):
        at += L // every
        if L and L % every == 0:
            cks.append(at - 1)
            seqs.append(n)
    return cks, seqs


def _pool_and_indices(g, dims, variant, st, layout, device, keep, sample=None):
    size = 10
    if variant == "spec":
        idx = torch.tensor([[[2, 7, 4], [0, 9, 5], [8, 1, 3]][i] for i in keep], dtype=torch.int32)
        acc = torch.tensor([[1, 2, 3][i] for i in keep], dtype=torch.int32)
    else:
        slots, size = _slots(sample, [[6, -1, 2, 8][i] for i in keep], size)
        idx, acc = torch.tensor(slots, dtype=torch.int32), None
    pool = _rand(g, size, dims.HV, dims.V, dims.K, scale=0.3)
    touched = [int(s) for s in idx.flatten() if s >= 0]
    return (_state_tensor(pool, st, layout, device), idx.to(device),
            None if acc is None else acc.to(device), touched)


def _recurrent(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed + 1)
    if variant == "varlen":
        d, kw = _delta_args(dims, _keep(sample, [1, 9, 3])[0], dt, seed, device)
        kw.update(initial_state=_state_tensor(d["initial_state"], st, layout, device),
                  cu_seqlens=_to(d["cu_seqlens"], torch.int32, device), use_qk_l2norm_in_kernel=True,
                  state_layout=layout, output_final_state=True)
        return Sample(kw, ("o", "final_state"))
    full = [3, 3, 3] if variant == "spec" else [1, 1, 1, 1]
    _, keep = _keep(sample, full, list(range(len(full))))
    lens = [full[0]] * len(keep)         # spec rows hold 1 + num_spec tokens, decode rows one
    d, kw = _delta_args(dims, lens, dt, seed, device)
    pool, idx, acc, touched = _pool_and_indices(g, dims, variant, st, layout, device, keep, sample)
    kw.update(initial_state=pool, inplace_final_state=True, cu_seqlens=_to(d["cu_seqlens"], torch.int32, device),
              ssm_state_indices=idx, num_accepted_tokens=acc, use_qk_l2norm_in_kernel=True, state_layout=layout)
    return Sample(kw, ("o", None), ("initial_state",), {"initial_state": touched})


def _sigmoid(variant, dims, dt, st, layout, seed, device, sample=None):
    s = _recurrent(variant, dims, dt, st, layout, seed, device, sample)
    kw = s.kwargs
    g = _gen(seed + 2)
    w = make_small_params(dims, seed)
    T = kw["q"].shape[1]
    del kw["g"], kw["beta"]
    kw.update(A_log=_to(w["A_log"], torch.float32, device), dt_bias=_to(w["dt_bias"], dt, device),
              a=_to(_rand(g, T, dims.HV, scale=2.0), dt, device), b=_to(_rand(g, T, dims.HV), dt, device))
    return s


def _packed(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    w = make_small_params(dims, seed)
    _, keep = _keep(sample, [1] * 4, list(range(4)))
    B = len(keep)
    pool, idx, _, touched = _pool_and_indices(g, dims, "decode", st, layout, device, keep, sample)
    kw = dict(mixed_qkv=_to(_rand(g, B, dims.conv_dim), dt, device), a=_to(_rand(g, B, dims.HV, scale=2.0), dt, device),
              b=_to(_rand(g, B, dims.HV), dt, device), A_log=_to(w["A_log"], torch.float32, device),
              dt_bias=_to(w["dt_bias"], dt, device), scale=None, initial_state=pool,
              out=torch.zeros(B, 1, dims.HV, dims.V, dtype=dt, device=device), ssm_state_indices=idx,
              use_qk_l2norm_in_kernel=True, state_layout=layout)
    return Sample(kw, ("out",), ("initial_state",), {"initial_state": touched})


def _norm(variant, dims, dt, st, layout, seed, device, sample=None):
    g = _gen(seed)
    gate, act, group = variant.split("-")
    (T,), = _keep(sample, [6])
    w = make_small_params(dims, seed)
    return Sample(dict(x=_to(_rand(g, T * dims.HV, dims.V), dt, device), weight=_to(w["norm_weight"], dt, device),
                       z=_to(_rand(g, T * dims.HV, dims.V, scale=2.0), dt, device), eps=1e-6,
                       group_size=None if group == "whole" else dims.V // 2 if dims.V % 2 == 0 else None,
                       norm_before_gate=gate == "before", activation=act), ("y",))


OP_INFOS: Dict[str, OpInfo] = {o.name: o for o in [
    OpInfo("unpack_qkvz_ba", unpack_qkvz_ba,
           tuple(f"{lay}-{m}" for lay in ("interleaved", "flat") for m in ("contiguous", "strided")),
           _unpack, exact_outputs=("q", "k", "v", "z", "b", "a")),
    OpInfo("fused_gdn_gating", ref.fused_gdn_gating, ("contiguous", "strided"), _gating,
           bench=dict(decode="contiguous", prefill="contiguous")),
    OpInfo("causal_conv1d_fn", ref.causal_conv1d_fn,
           tuple(f"{c}-{b}" for c in ("dim_first", "token_first") for b in ("bias", "nobias")), _conv_fn,
           caches={"conv_states": "conv"}, bench=dict(prefill="dim_first-nobias")),
    OpInfo("causal_conv1d_update", ref.causal_conv1d_update,
           tuple(f"{k}-{c}" for k in ("decode", "multi", "spec") for c in ("dim_first", "token_first")), _conv_update,
           caches={"conv_state": "conv"}, bench=dict(decode="decode-dim_first")),
    OpInfo("chunk_gated_delta_rule", ref.chunk_gated_delta_rule, tuple(CHUNK_VARIANTS), _chunk,
           caches={"initial_state": "ssm"}, bench=dict(prefill="varlen")),
    OpInfo("chunk_gated_delta_rule_checkpoints", ref.chunk_gated_delta_rule_checkpoints,
           ("block128", "block800", "block1088"), _chunk_checkpoints,
           caches={"state_checkpoints": "ssm", "initial_state": "ssm"}),
    OpInfo("fused_recurrent_gated_delta_rule", ref.recurrent_gated_delta_rule, ("decode", "spec", "varlen"),
           _recurrent, caches={"initial_state": "ssm"}, bench=dict(decode="decode")),
    OpInfo("fused_sigmoid_gating_delta_rule_update", ref.fused_sigmoid_gating_delta_rule_update,
           ("decode", "spec"), _sigmoid, caches={"initial_state": "ssm"}, bench=dict(decode="decode")),
    OpInfo("fused_recurrent_gated_delta_rule_packed_decode", ref.fused_recurrent_gated_delta_rule_packed_decode,
           ("decode",), _packed, caches={"initial_state": "ssm"}, bench=dict(decode="decode")),
    OpInfo("rms_norm_gated", ref.rms_norm_gated,
           tuple(f"{g}-{a}-{gr}" for g in ("before", "after") for a in ("silu", "sigmoid") for gr in ("whole", "group")),
           _norm, bench=dict(decode="before-silu-whole", prefill="before-silu-whole")),
]}


def without_skipped(sample: Sample, name: str, t: torch.Tensor) -> torch.Tensor:
    """Output `name` of `sample` without the rows its `skip` leaves out."""
    if not sample.skip or name not in sample.skip:
        return t
    dim, drop = sample.skip[name]
    drop = set(drop)
    keep = [i for i in range(t.shape[dim]) if i not in drop]
    return t.index_select(dim, torch.tensor(keep, device=t.device))


def upcast(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().to(F64)
    return v


def oracle_copy(v, device):
    """A backend argument as the fp64 oracle takes it: a new tensor on `device`, floats in fp64."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(device=device, dtype=F64 if v.is_floating_point() else v.dtype, copy=True)
    return copy.deepcopy(v)


def as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def run_op_case(backend, op: str, variant: str, dims: GDNDims, dtype: str, state_dtype: str, seed: int,
                device: str, oracle_device: Optional[str] = None, sample: Optional[dict] = None):
    """Run one op sample on the backend and the fp64 oracle (on `oracle_device`, default
    `device`; the CPU for devices without fp64); return the pairs to compare:
    one `Comparison` per output, state and untouched-slot check."""
    info = OP_INFOS[op]
    dt, st = dtype_of(dtype), dtype_of(state_dtype)
    layout = backend.ssm_state_layout
    got = info.build(variant, dims, dt, st, layout, seed, device, sample)
    # the oracle's inputs: fp64 copies of exactly what the backend gets, taken before its in-place writes
    # (one build, not two: the fp64 draws on the host were half of an op case's oracle time)
    want_kw = {k: oracle_copy(v, oracle_device or device) for k, v in got.kwargs.items()}
    stale = {name: want_kw[name].to('cpu', copy=True) for name in got.states}
    with uninitialized_memory_poisoned():
        out_b = as_tuple(getattr(backend, op)(**got.kwargs))
    out_r = as_tuple(info.reference(**want_kw))
    pairs = []
    for name, a, b in zip(got.outputs, out_b, out_r):
        if name is None:
            continue
        key = f"op.{op}.exact" if name in info.exact_outputs else f"op.{op}"
        a, b = without_skipped(got, name, a.detach().cpu()), without_skipped(got, name, b.detach().cpu())
        pairs.append(Comparison(name, a, b, None, key))
    for name in got.states:
        a, b = got.kwargs[name].detach().cpu(), want_kw[name].detach().cpu()
        cache = state_cache(op, name)
        pairs.append(Comparison(state_output(name), a, b, None, state_policy_key(op, cache), "state",
                                quantity=name, cache=cache))
        spare = [s for s in range(a.shape[0]) if s not in set((got.touched or {}).get(name, []))]
        if spare:
            pairs.append(Comparison(f"{state_output(name)}.untouched", a[spare], stale[name][spare], None, "op.untouched",
                                    "untouched", quantity=name, cache=cache))
    if op == "chunk_gated_delta_rule_checkpoints":
        pairs += _checkpoint_end(got.kwargs, out_b[1])
    return pairs


def _checkpoint_end(kwargs, final) -> list:
    """The checkpoint written at a sequence's end against the backend's own final state of
    that cold run, exactly in the state dtype: a restore from it must resume bit-for-bit
    where the cold run stopped (a checkpoint stored narrower passes the fp32 tolerance of
    `state_checkpoints` but not this)."""
    cks, seqs = checkpoint_ends(kwargs)
    if not cks or final is None:
        return []
    ck = kwargs["state_checkpoints"].detach().cpu()
    return [Comparison("checkpoint_end", ck[cks], final.detach().cpu()[seqs].to(ck.dtype), None, "op.checkpoint_end",
                       "state", cache="ssm")]
