"""The layer oracle: a GDN layer over a mixed batch with a state-cache pool, in fp64.

Each entry of a step (prefill / decode / spec / pad) runs on its own through the
reference ops - conv over its tokens, the per-token delta rule - exactly as vLLM's
layer would treat it, on pools carried across the steps of a scenario. TP ranks run
on their own shards and pools; `run_oracle` reduces the partial outputs and gathers the
per-rank states back to the global layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..layouts.transfer import to_device
from ..layouts.projection import qkv_to_mixed, split_mixed_qkv, unpack_qkvz_ba
from ..layouts.tp import (RankParams, all_ranks, gather_conv_channels, gather_heads, local_mixed_ba,
                          reduce_partials)
from harness.batch import EntryPlan
from harness.config import NormConfig
from .conv import causal_conv1d_fn, causal_conv1d_update
from .delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from .gating import fused_gdn_gating
from .norm import rms_norm_gated
from .replay import StepReplay

F64 = torch.float64
# Per-step outputs the oracle records (TP: gathered over ranks; "out" reduced).
STEP_OUTPUTS = ("mixed_qkv", "z", "b", "a", "conv_out", "g", "beta", "core", "normed", "out")
# The reference ops the oracle composes; `ops=` overrides some of them by name (the
# diagnosis re-runs the oracle with hypothesised variants), the default path uses these.
ORACLE_OPS: Dict[str, Callable] = dict(causal_conv1d_fn=causal_conv1d_fn, causal_conv1d_update=causal_conv1d_update,
                                       chunk_gated_delta_rule=chunk_gated_delta_rule,
                                       recurrent_gated_delta_rule=recurrent_gated_delta_rule,
                                       fused_gdn_gating=fused_gdn_gating, rms_norm_gated=rms_norm_gated)


def _ops(ops: Optional[Dict[str, Callable]]) -> Dict[str, Callable]:
    return ORACLE_OPS if not ops else {**ORACLE_OPS, **ops}


def per_token(fn, *xs: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to each token's rows on its own, results stacked.

    Every call sees the same shapes, so a token's result never depends on how many
    tokens share the batch: CPU kernels take vector or scalar paths, and GEMMs block
    rows, differently for different sizes.
    """
    return torch.stack([fn(*(x[t] for x in xs)) for t in range(xs[0].shape[0])])


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` per token as a product-and-sum per feature: bit-invariant to the
    batch and to the order of the weight's rows (the projection layout)."""
    if x.shape[0] == 0:
        return x.new_zeros(0, weight.shape[0])
    return per_token(lambda row: (weight * row).sum(-1), x)


def project(p: RankParams, hidden: torch.Tensor, mixed_qkvz: Optional[torch.Tensor] = None):
    """Hidden states -> contiguous q, k, v, z, b, a on one rank."""
    if mixed_qkvz is None:
        mixed_qkvz = rowwise_linear(hidden, p.w_qkvz)
    mixed_ba = local_mixed_ba(p, rowwise_linear(hidden, p.w_ba))
    # Contiguous copies: CPU elementwise kernels take different (vector vs scalar) paths
    # for different strides, which would make the two layouts differ in the last bit.
    return tuple(t.contiguous() for t in unpack_qkvz_ba(mixed_qkvz, mixed_ba, p.local, p.layout))


def migrate_spec_state(entries: List[EntryPlan], conv_pool: torch.Tensor, ssm_pool: torch.Tensor, W: int) -> None:
    """The engine's state migration before a step (``spec_state="migrate"``): for each entry
    with ``migrate = c > 0`` the ssm state moves from the sequence's column c to column 0 and
    the conv window from columns ``[c, c+W-1)`` to ``[0, W-1)`` (vllm PRs #40738 / #52942).
    conv_pool ``[slots, dim, L]`` (any strides), ssm_pool any layout; both change in place.
    Engine code, shared by the oracle and the backends' layer."""
    for e in entries:
        if e.migrate:
            ssm_pool[e.ssm_slots[0]] = ssm_pool[e.ssm_slots[e.migrate]].clone()
            conv_pool[e.conv_slot, :, :W - 1] = conv_pool[e.conv_slot, :, e.migrate:e.migrate + W - 1].clone()


def _run_entry(p: RankParams, e: EntryPlan, mixed_qkv, qkv_gate, conv_pool, ssm_pool, chunked, ops=None):
    """Conv + delta rule for one entry's tokens; pools updated in place. A spec entry, or a
    zero-draft decode after accepted drafts (`EntryPlan.spec_read`), reads at num_accepted - 1."""
    ops = _ops(ops)
    x = mixed_qkv[e.bos:e.eos]
    g, beta = qkv_gate
    if e.kind == "prefill":
        conv = ops["causal_conv1d_fn"](x.T, p.conv_weight, p.conv_bias, conv_pool,
                                torch.tensor([0, e.tokens]), torch.tensor([e.conv_slot]),
                                torch.tensor([e.has_initial_state]), activation="silu").T
    else:
        spec = e.spec_read
        conv = ops["causal_conv1d_update"](x, conv_pool, p.conv_weight, p.conv_bias, "silu",
                                    conv_state_indices=torch.tensor([e.conv_slot]),
                                    num_accepted_tokens=torch.tensor([e.num_accepted]) if spec else None,
                                    query_start_loc=torch.tensor([0, e.tokens]))
    q, k, v = split_mixed_qkv(conv, p.local)
    args = (q[None], k[None], v[None], g[e.bos:e.eos][None], beta[e.bos:e.eos][None])
    if e.kind == "prefill":
        init = ssm_pool[e.conv_slot] if e.has_initial_state else torch.zeros_like(ssm_pool[0])
        fn = ops["chunk_gated_delta_rule"] if chunked else ops["recurrent_gated_delta_rule"]
        o, final = fn(*args, initial_state=init[None], output_final_state=True,
                      use_qk_l2norm_in_kernel=True)
        ssm_pool[e.conv_slot] = final[0]
    else:
        idx = torch.tensor([e.ssm_slots if e.spec_read else e.ssm_slots[:1]])
        acc = torch.tensor([e.num_accepted]) if e.spec_read else None
        o, _ = ops["recurrent_gated_delta_rule"](*args, initial_state=ssm_pool, ssm_state_indices=idx,
                                          num_accepted_tokens=acc, inplace_final_state=True,
                                          use_qk_l2norm_in_kernel=True)
    return conv, o[0]


def oracle_step(p: RankParams, hidden: torch.Tensor, entries: List[EntryPlan],
                conv_pool: torch.Tensor, ssm_pool: torch.Tensor, norm: NormConfig,
                chunked: bool = False, mixed_qkvz: Optional[torch.Tensor] = None,
                unpacked: Optional[tuple] = None, ops: Optional[Dict[str, Callable]] = None) -> Dict[str, torch.Tensor]:
    """One step of one rank in fp64. Pools (fp64, dim-first conv, vk ssm) change in place.

    `unpacked` (q, k, v, z, b, a) replaces the projection: the oracle then starts from
    exactly the projections a backend computed. Returns the step's tensors
    (`STEP_OUTPUTS`); rows of PAD entries are zero after the projection. `ops` replaces
    reference ops by name (`ORACLE_OPS`).
    """
    fns = _ops(ops)
    p = p.to(F64)
    hidden = hidden.to(F64)
    migrate_spec_state(entries, conv_pool, ssm_pool, p.conv_weight.shape[1])
    if unpacked is not None:
        q, k, v, z, b, a = (t.to(device=hidden.device, dtype=F64).contiguous() for t in unpacked)
    else:
        q, k, v, z, b, a = project(p, hidden, None if mixed_qkvz is None else mixed_qkvz.to(F64))
    mixed_qkv = qkv_to_mixed(q, k, v)
    g, beta = (torch.stack(t) for t in zip(*(fns["fused_gdn_gating"](p.A_log, a[t], b[t], p.dt_bias)
                                              for t in range(a.shape[0]))))
    T, loc, dev = hidden.shape[0], p.local, hidden.device
    conv_out = torch.zeros(T, loc.conv_dim, dtype=F64, device=dev)
    core = torch.zeros(T, loc.HV, loc.V, dtype=F64, device=dev)
    real = torch.zeros(T, dtype=torch.bool, device=dev)
    for e in entries:
        if e.kind == "pad":
            continue
        real[e.bos:e.eos] = True
        conv_out[e.bos:e.eos], core[e.bos:e.eos] = _run_entry(p, e, mixed_qkv, (g, beta),
                                                              conv_pool, ssm_pool, chunked, ops)
    normed = per_token(lambda x, zt: fns["rms_norm_gated"](x, p.norm_weight, zt, eps=norm.eps, group_size=norm.group_size,
                                                    norm_before_gate=norm.norm_before_gate,
                                                    activation=norm.activation), core, z)
    normed = normed.reshape(T, -1) * real[:, None]
    keep = real[:, None]
    return dict(mixed_qkv=mixed_qkv, z=z, b=b, a=a, conv_out=conv_out, g=g * keep, beta=beta * keep,
                core=core, normed=normed, out=rowwise_linear(normed, p.out_proj))


@dataclass
class OracleResult:
    steps: List[Dict[str, torch.Tensor]]   # per step, global layout (TP gathered / reduced)
    conv_pool: torch.Tensor                # [num_slots, conv_dim, L] fp64, dim-first
    ssm_pool: torch.Tensor                 # [num_slots, HV, V, K] fp64


def _local_pools(sc, conv_pool, ssm_pool, p: RankParams):
    """A rank's slice of the global pools: its q|k|v channel sections and its value heads."""
    loc, tp, r = p.local, p.tp, p.rank
    kd, vd = sc.dims.key_dim, sc.dims.value_dim
    q, k, v = torch.split(conv_pool, [kd, kd, vd], dim=1)
    conv = torch.cat([t.chunk(tp, dim=1)[r] for t in (q, k, v)], dim=1).clone()
    ssm = ssm_pool[:, r * loc.HV:(r + 1) * loc.HV].clone()
    return conv, ssm


def run_oracle(sc, weights, hidden: List[torch.Tensor], conv_pool: torch.Tensor,
               ssm_pool: torch.Tensor, tp: Optional[int] = None, chunked: bool = False,
               projections: Optional[List] = None, device=None,
               unpacked: Optional[List[tuple]] = None, ops: Optional[Dict[str, Callable]] = None,
               plans: Optional[List[List[EntryPlan]]] = None) -> OracleResult:
    """Run every step of `sc` in fp64 on `tp` ranks (default sc.tp) and gather the result.

    conv_pool ``[num_slots, conv_dim, L]`` (dim-first) and ssm_pool ``[num_slots, HV, V, K]``
    are the initial (stale) pools; they are not modified. `projections` optionally
    gives, per rank, a callable hidden -> mixed_qkvz replacing the fused in_proj (the
    LoRA arrangement); `unpacked` gives, per step, the global (q, k, v, z, b, a) to start
    from instead (TP=1 only). `device` (default: the pools' device) is where it runs.
    `ops` (reference ops replaced by name) and `plans` (the resolved steps, instead of
    ``sc.plan()``) run the oracle under a hypothesis; the diagnosis uses them.
    """
    device = torch.device(device) if device is not None else conv_pool.device
    hidden = [to_device(h, device) for h in hidden]
    tp = sc.tp if tp is None else tp
    ranks = all_ranks(weights.to(device=device, dtype=F64), sc.dims, sc.layout, tp, sc.ba)
    pools = [_local_pools(sc, conv_pool.to(device, F64), ssm_pool.to(device, F64), p) for p in ranks]
    steps = []
    # repeated steps replay as CUDA graphs (bit-identical); not under the diagnosis's hypotheses
    replay = StepReplay(device, enabled=None if ops is None and projections is None else False)
    for s, entries in enumerate(plans if plans is not None else sc.plan()):
        per_rank = []
        # on the device before the step: a step's graph takes device tensors
        given = () if unpacked is None else tuple(t.to(device=device, dtype=F64).contiguous() for t in unpacked[s])
        plan_key = repr(entries)
        for ri, p in enumerate(ranks):
            mq = projections[ri](hidden[s].to(F64)) if projections else None
            step = lambda h, *u, p=p, ri=ri, mq=mq: oracle_step(p, h, entries, *pools[ri], sc.norm, chunked, mq,
                                                                u or None, ops)
            per_rank.append(replay((ri, plan_key), step, (hidden[s], *given)))
        steps.append(_gather_step(sc, per_rank))
    conv = gather_conv_channels([c for c, _ in pools], sc.dims, dim=1)
    ssm = gather_heads([m for _, m in pools], dim=1)
    return OracleResult(steps=steps, conv_pool=conv, ssm_pool=ssm)


def _gather_step(sc, per_rank: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    if len(per_rank) == 1:
        return per_rank[0]
    get = lambda key: [r[key] for r in per_rank]
    out = {key: gather_heads(get(key), dim=1) for key in ("z", "b", "a", "g", "beta", "core")}
    for key in ("mixed_qkv", "conv_out"):
        out[key] = gather_conv_channels(get(key), sc.dims, dim=1)
    out["normed"] = torch.cat(get("normed"), dim=1)
    out["out"] = reduce_partials(get("out"))
    return out
