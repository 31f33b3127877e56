"""Layer- and TP-level cases: a backend's layer (per TP rank, reduced) vs the fp64 oracle.

The harness computes the in_proj GEMMs in the case dtype; the backend gets those
projections and the caches, the oracle starts from exactly the same projections
(unpacked by the reference, gathered over ranks, upcast to fp64) and the same caches.
"""
from __future__ import annotations

from dataclasses import replace
from typing import List

import torch

from harness.optimized.compose import backend_step
from harness.config import GDNDims
from harness.cases.inputs import make_inputs
from harness.layouts.projection import unpack_qkvz_ba
from harness.optimized.poison import uninitialized_memory_poisoned
from harness.layouts.state import conv_dim_first_view, ssm_convert
from harness.layouts.transfer import to_device, to_host
from harness.layouts.tp import all_ranks, gather_conv_channels, gather_heads, local_mixed_ba
from harness.reference.layer import run_oracle
from harness.batch import NULL_BLOCK_ID
from harness.cases.comparison import Comparison
from harness.cases.scenario import Scenario, accepted_as_decodes, mix_scenario



def rank_pools(sc: Scenario, conv_pool, ssm_pool, p, conv_layout: str, ssm_layout: str, device):
    loc, tp, r = p.local, p.tp, p.rank
    kd, vd = sc.dims.key_dim, sc.dims.value_dim
    q, k, v = torch.split(conv_pool, [kd, kd, vd], dim=1)
    conv = torch.cat([t.chunk(tp, dim=1)[r] for t in (q, k, v)], dim=1)
    storage = (conv if conv_layout == "dim_first" else conv.transpose(1, 2)).contiguous().to(device)
    # clone: the backend updates its pools in place, the oracle starts from the originals
    ssm = ssm_convert(ssm_pool[:, r * loc.HV:(r + 1) * loc.HV], "vk", ssm_layout).to(device).clone()
    return storage, ssm


def run_layer_case(backend, ops, dims: GDNDims, mix: str, layout: str, tp: int, dtype: str, state_dtype: str,
                   seed: int, device: str, decode_path: str = "recurrent", conv_layout: str = "dim_first",
                   ba: str = "sharded", oracle_device: str = None, scenario: dict = None) -> List[Comparison]:
    sc = mix_scenario(mix, dims, scenario, layout=layout, tp=tp, seed=seed, dtype=dtype, state_dtype=state_dtype,
                      conv_state_layout=conv_layout, ba=ba)
    inp = make_inputs(sc)
    sharder = getattr(backend, "shard_params", None)
    # packed once, where the case runs (on the host it took 0.4 of a 1.2 s full-dims TP4 case on an
    # H100): the ranks and the full-weight check share it; a backend's own loaders get the weights as they come
    weights = inp.weights.to(device)
    packed = weights.packed_in_proj(dims, layout)
    ranks = ([p.to(device) for p in (sharder(inp.weights, dims, layout, tp, r, ba) for r in range(tp))] if sharder
             else all_ranks(weights, dims, layout, tp, ba, packed))
    steps_out, unpacked, pools = _backend_run(backend, ops, sc, inp, ranks, conv_layout, decode_path, device)
    pairs = oracle_pairs(sc, inp, steps_out, unpacked, pools, conv_layout, backend.ssm_state_layout,
                         oracle_device or device, tf32_dots(backend, sc, device))
    if sharder is not None or tp > 1:
        # the oracle starts from the ranks' own projections: a rank on a wrong shard shows only here
        pairs += full_weight_projection_pairs(sc, inp, unpacked, device, packed)
    if mix in SPEC_INVARIANCE_MIXES:
        pairs += spec_invariance_pairs(backend, ops, sc, inp, steps_out, ranks, conv_layout, decode_path, device)
    return pairs


def full_weight_projection_pairs(sc: Scenario, inp, unpacked, device, packed=None) -> List[Comparison]:
    """The ranks' projections (`unpacked`: per step, gathered over ranks) vs the TP=1 layer's,
    one GEMM over the full weights (vllm #35504: a loader sharding in_proj_ba wrongly passes
    every check that starts from the ranks' own projections). `packed`: the full in_proj pair
    on `device`, when the caller has it."""
    pairs: List[Comparison] = []
    w_qkvz, w_ba = packed if packed is not None else inp.weights.to(device).packed_in_proj(sc.dims, sc.layout)

    def full_proj(s):
        h = to_device(inp.hidden[s], device)
        return unpack_qkvz_ba(h @ w_qkvz.T, h @ w_ba.T, sc.dims, sc.layout)
    fulls = to_host([full_proj(s) for s in range(len(unpacked))])
    for s, (got, full) in enumerate(zip(to_host(unpacked), fulls)):
        for name, idx in (("qkvz", (0, 1, 2, 3)), ("ba", (4, 5))):
            flat = lambda ts: torch.cat([ts[i].reshape(ts[i].shape[0], -1) for i in idx], dim=1)
            pairs.append(Comparison(f"step{s}.proj_{name}", flat(got), flat(full), 0, "tp.projections", step=s,
                                    quantity=f"proj_{name}"))
    return pairs


# Mixes whose layer cases also check that spec decoding never changes the backend's outputs.
SPEC_INVARIANCE_MIXES = ("spec_zero_draft", "spec_zero_draft_migrate")


def _backend_run(backend, ops, sc: Scenario, inp, ranks, conv_layout: str, decode_path: str, device, sources=None):
    """The backend's layer over every step of `sc`, on every rank from the stale pools and
    hidden states of `inp` (`sources`: per step, the step of `inp` and the rows its tokens
    are): (per-step core / out on the host, per-step gathered projections on `device` - the
    oracle starts from them there -, final pools). Nothing waits for the GPU between steps."""
    pools = [rank_pools(sc, inp.conv_pool, inp.ssm_pool, p, conv_layout, backend.ssm_state_layout, device)
             for p in ranks]
    steps_out, unpacked = [], []
    hidden = [to_device(h, device) for h in inp.hidden]
    for s, entries in enumerate(sc.plan()):
        src, rows = sources[s] if sources is not None else (s, None)
        h = hidden[src]
        ref_in, per_rank = zip(*(rank_step(backend, ops, p, h, entries, conv, ssm, sc, conv_layout, decode_path, rows)
                                 for p, (conv, ssm) in zip(ranks, pools)))
        unpacked.append(tuple(gather_heads([r[i] for r in ref_in], dim=1) for i in range(6)))
        steps_out.append(dict(core=gather_heads([r["core"] for r in per_rank], dim=1),
                              out=sum(r["out"].float() for r in per_rank)))
    return to_host(steps_out), unpacked, pools


def spec_invariance_pairs(backend, ops, sc: Scenario, inp, steps_out, ranks, conv_layout: str, decode_path: str,
                          device) -> List[Comparison]:
    """Spec decoding never changes the outputs (vllm #39273): the backend's core over the
    spec run `sc` (`steps_out`) at its accepted tokens == its core when the same tokens come
    as plain decodes (`accepted_as_decodes`), from the same pools; exact, as spec_one_accepted."""
    dec, sources = accepted_as_decodes(sc)
    dec_out, _, _ = _backend_run(backend, ops, dec, inp, ranks, conv_layout, decode_path, device, sources)
    plans = sc.plan()
    pairs = []
    for d, (s, rows) in enumerate(sources):
        # PAD rows are no one's tokens: what they hold is judged by the oracle pairs (or unspecified)
        pad = set(pad_rows(plans[s]))
        keep = [i for i, r in enumerate(rows) if r not in pad]
        pairs.append(Comparison(f"spec_invariance.step{s}[decode step {d}].core",
                                steps_out[s]["core"][[rows[i] for i in keep]], dec_out[d]["core"][keep], 0,
                                "layer.spec_invariance", quantity="spec_invariance.core"))
    return pairs


def pad_rows(plan) -> List[int]:
    """The token rows of a step's PAD entries."""
    return [t for e in plan if e.kind == "pad" for t in range(e.bos, e.eos)]


def rank_step(backend, ops, p, h, entries, conv, ssm, sc: Scenario, conv_layout: str, decode_path: str, rows=None):
    """One TP rank's step: the harness's in_proj GEMMs in the case dtype, the reference's
    unpack of them (what the oracle starts from) and the backend's layer step; the rank's
    caches (`conv` stored in `conv_layout`, `ssm` in the backend's layout) change in place.
    `rows`: the step's tokens are these rows of `h`'s GEMM (the same rounding as in h's batch)."""
    mq, mb = h @ p.w_qkvz.T, h @ p.w_ba.T
    if rows is not None:
        mq, mb = mq[rows], mb[rows]
    ref_in = unpack_qkvz_ba(mq, local_mixed_ba(p, mb), p.local, p.layout)
    with uninitialized_memory_poisoned():
        out = backend_step(ops, p, mq, mb, entries, conv_dim_first_view(conv, conv_layout), ssm, sc.norm,
                           backend.ssm_state_layout, decode_path, getattr(backend, "gdn_core", None), sc.num_spec)
    return ref_in, out


def tf32_dots(backend, sc: Scenario, device) -> bool:
    """Whether an fp32 layer case's chunked prefill ran TF32 tensor-core dots: the backend
    declares it for CUDA (`fp32_dots_cuda`; the CPU interpreter computes IEEE fp32) and a step
    of `sc` runs the prefill (the only TF32 op: a decode / spec-only case keeps the IEEE bounds,
    where an fp16 read-out on the decode path still fails)."""
    return (sc.dtype == "float32" and torch.device(device).type == "cuda"
            and getattr(backend, "fp32_dots_cuda", "ieee") == "tf32"
            and any(e.kind == "prefill" for plan in sc.plan() for e in plan))


# The layer outputs whose bound composes the chunked delta rule's (".tf32" entries: 8 u_tf32)
TF32_KEYS = ("layer.out", "layer.core", "layer.ssm_state")


def oracle_pairs(sc: Scenario, inp, steps_out, unpacked, pools, conv_layout: str, ssm_layout: str,
                 device, tf32: bool = False) -> List[Comparison]:
    """The TP=1 fp64 oracle from the gathered projections `unpacked` (per step), and the
    pairs comparing it with the per-step outputs and the ranks' final `pools` (`tf32`: judged
    under the ".tf32" entries, see `tf32_dots`)."""
    oracle = run_oracle(replace(sc, tp=1), inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool, tp=1,
                        unpacked=unpacked, device=device)
    oracle.steps, oracle.conv_pool, oracle.ssm_pool = to_host((oracle.steps, oracle.conv_pool, oracle.ssm_pool))
    pairs = _pairs(sc, inp, steps_out, oracle, pools, conv_layout, ssm_layout)
    return [replace(c, policy_key=c.policy_key + ".tf32") if tf32 and c.policy_key in TF32_KEYS else c
            for c in pairs]


def _pairs(sc, inp, steps_out, oracle, pools, conv_layout, ssm_layout) -> List[Comparison]:
    pairs: List[Comparison] = []
    plans = sc.plan()
    null_block = sc.pad_slot == "null_block"
    for s, (got, ref) in enumerate(zip(steps_out, oracle.steps)):
        pad = pad_rows(plans[s])
        out, core = got["out"], got["core"]
        if pad and null_block:
            # PAD rows ran against the null block: their outputs are the engine's to drop
            out, core = out.clone(), core.clone()
            out[pad], core[pad] = 0, 0
        pairs.append(Comparison(f"step{s}.out", out, ref["out"], 0, "layer.out", step=s, quantity="out"))
        pairs.append(Comparison(f"step{s}.core", core, ref["core"], 0, "layer.core", step=s, quantity="core"))
        if pad and not null_block:
            rows = got["out"][pad]
            pairs.append(Comparison(f"step{s}.pad_rows", rows, torch.zeros_like(rows), 0, "layer.pad_rows", "pad_rows", s,
                                    quantity="out"))
    conv = gather_conv_channels([conv_dim_first_view(c, conv_layout).cpu() for c, _ in pools], sc.dims, dim=1)
    ssm = gather_heads([ssm_convert(m.cpu(), ssm_layout, "vk") for _, m in pools], dim=1)
    if null_block:      # the null block is scratch: what PAD rows leave there is not compared
        conv[NULL_BLOCK_ID], ssm[NULL_BLOCK_ID] = oracle.conv_pool[NULL_BLOCK_ID], oracle.ssm_pool[NULL_BLOCK_ID]
    pairs.append(Comparison("conv_state", conv, oracle.conv_pool.to(conv.dtype), None, "layer.conv_state", "state",
                            cache="conv"))
    pairs.append(Comparison("ssm_state", ssm, oracle.ssm_pool, None, "layer.ssm_state", "state", cache="ssm"))
    owned = {x for row in sc.slots.values() for x in row}
    spare = [x for x in range(sc.num_slots) if x not in owned and not (null_block and x == NULL_BLOCK_ID)]
    if spare:
        pairs.append(Comparison("untouched.conv", conv[spare], inp.conv_pool[spare], None, "layer.untouched", "untouched",
                                quantity="conv_state", cache="conv"))
        pairs.append(Comparison("untouched.ssm", ssm[spare], inp.ssm_pool[spare], None, "layer.untouched", "untouched",
                                quantity="ssm_state", cache="ssm"))
    return pairs


def spec_equivalence_scenario(dims: GDNDims, layout: str, dtype: str, state_dtype: str, seed: int,
                              conv_layout: str = "dim_first") -> Scenario:
    """The spec run of `run_spec_equivalence` (its decode run has the same inputs)."""
    spec_steps = [[{"seq": 0, "kind": "prefill", "tokens": 10}, {"seq": 1, "kind": "prefill", "tokens": 3}]] + [
        [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 1}, {"seq": 1, "kind": "spec", "tokens": 3, "accepted": 1}]
        for _ in range(3)]
    return Scenario(dims=dims, steps=spec_steps, layout=layout, seed=seed, dtype=dtype, state_dtype=state_dtype,
                    num_spec=2, num_slots=8, slots={0: [5, 1, 6], 1: [2, 7, 0]}, conv_state_layout=conv_layout).validate()


def run_spec_equivalence(backend, ops, dims: GDNDims, layout: str, dtype: str, state_dtype: str, seed: int,
                         device: str, decode_path: str = "recurrent", conv_layout: str = "dim_first") -> List[Comparison]:
    """A backend's spec path with one accepted token per step == its plain decode path,
    bit for bit: token 0 of every spec step, the conv window and the ssm slot read next."""
    base = spec_equivalence_scenario(dims, layout, dtype, state_dtype, seed, conv_layout)
    spec_steps = base.steps
    dec_steps = [spec_steps[0]] + [[{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "decode"}] for _ in range(3)]
    inp = make_inputs(base)
    p = all_ranks(inp.weights.to(device), dims, layout, 1)[0]
    outs = {}
    for name, steps in (("spec", spec_steps), ("decode", dec_steps)):
        sc = replace(base, steps=steps).validate()
        conv, ssm = rank_pools(sc, inp.conv_pool, inp.ssm_pool, p, conv_layout, backend.ssm_state_layout, device)
        tokens = []
        for s, entries in enumerate(sc.plan()):
            # the decode run sees only token 0 of each spec entry
            h = inp.hidden[s].to(device)
            mq, mb = h @ p.w_qkvz.T, h @ p.w_ba.T      # the same GEMM rows for both runs
            if name == "decode" and s:
                mq, mb = mq[[0, 3]], mb[[0, 3]]
            r = backend_step(ops, p, mq, mb, entries, conv_dim_first_view(conv, conv_layout),
                             ssm, sc.norm, backend.ssm_state_layout, decode_path, None, sc.num_spec)
            tokens.append(r["core"] if name == "decode" or not s else r["core"][[0, 3]])
        outs[name] = (tokens, conv_dim_first_view(conv, conv_layout).cpu(), ssm_convert(ssm.cpu(), backend.ssm_state_layout, "vk"))
    (ts, cs, ss), (td, cd, sd) = outs["spec"], outs["decode"]
    W = dims.W
    pairs: List[Comparison] = [Comparison(f"step{s}.core[token0]", a.cpu(), b.cpu(), 0, "layer.spec_one_accepted",
                                          quantity="core[token0]") for s, (a, b) in enumerate(zip(ts, td)) if s]
    for seq, slots in base.slots.items():
        pairs.append(Comparison(f"seq{seq}.conv_window", cs[slots[0], :, :W - 1], cd[slots[0], :, :W - 1], None,
                                "layer.spec_one_accepted", "state", quantity="conv_window", cache="conv"))
        pairs.append(Comparison(f"seq{seq}.ssm_slot", ss[slots[0]], sd[slots[0]], None, "layer.spec_one_accepted",
                                "state", quantity="ssm_slot", cache="ssm"))
    return pairs
