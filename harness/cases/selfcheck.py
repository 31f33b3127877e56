"""The reference's own checks (the ``self`` suite): is the oracle beyond doubt?

Each check is declared once in `CHECKS` with the case axes it uses, and returns the
`Comparison`s to judge under the tolerance policy entry ``self.<check>``. The suite file picks dims / layouts / TP / seeds; pytest and the CLI
expand the same declarations.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

import torch

from harness.cases.case import SPEC_EQUIVALENCE, Case
from harness.cases.comparison import Comparison
from harness.cases.inputs import make_delta_inputs, make_inputs
from harness.layouts.lora import LoraDelta, LoraProjection, fold_lora
from harness.layouts.weights import convert_checkpoint, from_checkpoint, to_checkpoint
from harness.reference.conv import causal_conv1d_fn
from harness.reference.delta_rule import chunk_gated_delta_rule, chunk_gated_delta_rule_checkpoints, recurrent_gated_delta_rule
from harness.reference.layer import run_oracle
from harness.cases.scenario import Scenario, accepted_as_decodes, mix_scenario, mixed_scenario

def _cmp(c: Case, name: str, actual, expected, token_dim: Optional[int], kind: str = "out") -> Comparison:
    """A comparison of check `c`, judged under the policy entry ``self.<check>``."""
    return Comparison(name, actual, expected, token_dim, f"self.{c.check}", kind)


def _oracle(sc: Scenario, inp, **kw):
    return run_oracle(sc, inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool, **kw)


def _result_pairs(c: Case, prefix: str, a, b) -> List[Comparison]:
    pairs = []
    for s, (sa, sb) in enumerate(zip(a.steps, b.steps)):
        pairs += [_cmp(c, f"{prefix}step{s}.{k}", sa[k], sb[k], 0) for k in sa]
    return pairs + [_cmp(c, f"{prefix}conv_pool", a.conv_pool, b.conv_pool, None, "state"),
                    _cmp(c, f"{prefix}ssm_pool", a.ssm_pool, b.ssm_pool, None, "state")]


def check_chunked_vs_recurrent(c: Case) -> List[Comparison]:
    """Chunked torch form == per-token recurrence: varlen, initial states, T % 64 != 0, long T."""
    lengths = [1, 63, 64, 65, 200, 517]
    d = make_delta_inputs(c.dims, lengths, c.seed)
    d = {k: (v.to(c.device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    kw = dict(initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"], use_qk_l2norm_in_kernel=True)
    o_r, s_r = recurrent_gated_delta_rule(*args, **kw)
    o_c, s_c = chunk_gated_delta_rule(*args, **kw)
    kv = dict(kw, initial_state=d["initial_state"].transpose(-1, -2).contiguous(), state_layout="kv")
    o_ck, s_ck = chunk_gated_delta_rule(*args, **kv)
    return [_cmp(c, "o", o_c[0], o_r[0], 0), _cmp(c, "final_state", s_c, s_r, None, "state"),
            _cmp(c, "o[kv]", o_ck[0], o_r[0], 0),
            _cmp(c, "final_state[kv]", s_ck.transpose(-1, -2), s_r, None, "state")]


def check_tp_reduce(c: Case) -> List[Comparison]:
    """Per-rank layers on their shards, out_proj partials summed == the TP=1 layer."""
    pairs = []
    for ba in ("sharded", "replicated"):
        sc = mixed_scenario(c.dims, c.layout, c.tp, c.seed, ba=ba)
        inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
        pairs += _result_pairs(c, f"ba={ba}.", _oracle(sc, inp, tp=c.tp), _oracle(sc, inp, tp=1))
    return pairs


def check_layout_convert(c: Case) -> List[Comparison]:
    """An interleaved checkpoint converted to flat (and back) computes bit-identical outputs."""
    sc = mixed_scenario(c.dims, "interleaved", 1, c.seed)
    inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
    ck_i = to_checkpoint(inp.weights, c.dims, "interleaved")
    ck_f = convert_checkpoint(ck_i, c.dims, "flat")
    back = convert_checkpoint(ck_f, c.dims, "interleaved")
    res_i = run_oracle(sc, from_checkpoint(ck_i, c.dims), inp.hidden, inp.conv_pool, inp.ssm_pool)
    res_f = run_oracle(replace(sc, layout="flat"), from_checkpoint(ck_f, c.dims), inp.hidden,
                       inp.conv_pool, inp.ssm_pool)
    return ([_cmp(c, f"roundtrip.{k}", back[k], ck_i[k], None, "state") for k in ck_i]
            + _result_pairs(c, "", res_f, res_i))


def check_chunked_prefill_split(c: Case) -> List[Comparison]:
    """A 150-token prefill split into chunks [64, 1, 50, 35] with carried state == whole."""
    dims = c.dims
    whole = Scenario(dims=dims, layout=c.layout, seed=c.seed, steps=[[{"seq": 0, "kind": "prefill", "tokens": 150}]])
    split = replace(whole, steps=[[{"seq": 0, "kind": "prefill", "tokens": n}] for n in (64, 1, 50, 35)])
    inp = make_inputs(replace(whole, dtype="float64", state_dtype="float64"))
    chunks = list(torch.split(inp.hidden[0], [64, 1, 50, 35]))
    a = run_oracle(whole, inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool)
    b = run_oracle(split.validate(), inp.weights, chunks, inp.conv_pool, inp.ssm_pool)
    pairs = [_cmp(c, k, torch.cat([s[k] for s in b.steps]), a.steps[0][k], 0) for k in ("core", "out")]
    return pairs + [_cmp(c, "conv_pool", b.conv_pool, a.conv_pool, None, "state"),
                    _cmp(c, "ssm_pool", b.ssm_pool, a.ssm_pool, None, "state")]


def check_batch_independence(c: Case) -> List[Comparison]:
    """Varlen ops: each sequence's outputs and states are the same alone as in a batch,
    PAD and empty sequences included."""
    lengths = [7, 1, 0, 33, 5]
    d = make_delta_inputs(c.dims, lengths, c.seed)
    cu = d["cu_seqlens"].tolist()
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    o, s = recurrent_gated_delta_rule(*args, initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"],
                                      use_qk_l2norm_in_kernel=True)
    pairs = []
    gen = torch.Generator().manual_seed(c.seed)
    dim, W = c.dims.conv_dim, c.dims.W
    x = torch.randn(dim, cu[-1], dtype=torch.float64, generator=gen)
    wgt = torch.randn(dim, W, dtype=torch.float64, generator=gen)
    pool = torch.randn(8, dim, W - 1, dtype=torch.float64, generator=gen)
    idx = torch.tensor([5, 0, 2, -1, 7])
    init = torch.tensor([True, False, True, True, False])
    batch_pool = pool.clone()
    y = causal_conv1d_fn(x, wgt, None, batch_pool, d["cu_seqlens"], idx, init)
    for n, L in enumerate(lengths):
        lo, hi = cu[n], cu[n + 1]
        sl = {k: d[k][:, lo:hi] for k in ("q", "k", "v", "g", "beta")}
        o1, s1 = recurrent_gated_delta_rule(sl["q"], sl["k"], sl["v"], sl["g"], sl["beta"],
                                            initial_state=d["initial_state"][n:n + 1], use_qk_l2norm_in_kernel=True)
        pairs += [_cmp(c, f"seq{n}.o", o[:, lo:hi], o1, 1),
                  _cmp(c, f"seq{n}.final_state", s[n:n + 1], s1, None, "state")]
        alone_pool = pool.clone()
        y1 = causal_conv1d_fn(x[:, lo:hi], wgt, None, alone_pool, torch.tensor([0, L]), idx[n:n + 1], init[n:n + 1])
        pairs.append(_cmp(c, f"seq{n}.conv_out", y[:, lo:hi], y1, 1))
        if idx[n] >= 0:
            pairs.append(_cmp(c, f"seq{n}.conv_state", batch_pool[idx[n]], alone_pool[idx[n]], None, "state"))
    return pairs


def check_spec_one_accepted(c: Case) -> List[Comparison]:
    """Spec steps that accept one token == decodes of those tokens (outputs, conv window, ssm slot)."""
    W = c.dims.W
    spec = Scenario(dims=c.dims, layout=c.layout, seed=c.seed, num_spec=2, num_slots=8, slots={0: [4, 1, 6]},
                    steps=[[{"seq": 0, "kind": "prefill", "tokens": 10}]]
                    + [[{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 1}]] * 3).validate()
    dec = replace(spec, steps=[[{"seq": 0, "kind": "prefill", "tokens": 10}]]
                  + [[{"seq": 0, "kind": "decode"}]] * 3).validate()
    inp = make_inputs(replace(spec, dtype="float64", state_dtype="float64"))
    a = _oracle(spec, inp)
    b = run_oracle(dec, inp.weights, [inp.hidden[0]] + [h[:1] for h in inp.hidden[1:]],
                   inp.conv_pool, inp.ssm_pool)
    pairs = []
    for s in range(1, 4):
        pairs += [_cmp(c, f"step{s}.{k}[token0]", a.steps[s][k][:1], b.steps[s][k], 0) for k in ("core", "out")]
    return pairs + [_cmp(c, "conv_window", a.conv_pool[4, :, :W - 1], b.conv_pool[4, :, :W - 1], None, "state"),
                    _cmp(c, "ssm_slot", a.ssm_pool[4], b.ssm_pool[4], None, "state")]


def check_spec_invariance(c: Case) -> List[Comparison]:
    """Spec decoding never changes the outputs (vllm #39273): ragged drafts (0..K, runtime K
    below the compiled maximum), accepted drafts followed by zero-draft decodes and spec again,
    under both engine conventions (read at the offset / migrate to column 0) == the same
    accepted tokens fed as plain decodes, token for token."""
    pairs = []
    for mix in ("spec_zero_draft", "spec_zero_draft_migrate"):
        sc = mix_scenario(mix, c.dims, layout=c.layout, seed=c.seed, dtype="float64", state_dtype="float64")
        dec, sources = accepted_as_decodes(sc)
        inp = make_inputs(sc)
        a = _oracle(sc, inp)
        b = run_oracle(dec, inp.weights, [inp.hidden[s][rows] for s, rows in sources], inp.conv_pool, inp.ssm_pool)
        for d, (s, rows) in enumerate(sources):
            pairs += [_cmp(c, f"{mix}.step{s}.{k}[decode step {d}]", a.steps[s][k][rows], b.steps[d][k], 0)
                      for k in ("core", "out")]
    return pairs


def check_checkpoint_restore(c: Case) -> List[Comparison]:
    """Prefix-cache checkpoints: a request restored from any block's checkpoint and continued
    == one cold run (outputs of the remaining tokens, final state), for block sizes 128 /
    800 / 1088 (a multiple of the 64-token chunk or not) and tails of 0 / 1 / 63 tokens."""
    pairs = []
    for B in (128, 800, 1088):
        for tail in (0, 1, 63):
            L = 2 * B + tail
            d = make_delta_inputs(c.dims, [L], c.seed)
            args = [d[n] for n in ("q", "k", "v", "g", "beta")]
            kw = dict(use_qk_l2norm_in_kernel=True)
            ck = torch.zeros(L // B, c.dims.HV, c.dims.V, c.dims.K, dtype=torch.float64)
            cold_o, cold_s = chunk_gated_delta_rule_checkpoints(*args, ck, B, initial_state=d["initial_state"], **kw)
            for j in (0, L // B - 1):          # the first block's checkpoint and the last one
                lo = (j + 1) * B
                o, s_ = chunk_gated_delta_rule(*(t[:, lo:] for t in args), initial_state=ck[j:j + 1], **kw)
                pairs += [_cmp(c, f"block{B}.tail{tail}.restore{j}.o", o, cold_o[:, lo:], 1),
                          _cmp(c, f"block{B}.tail{tail}.restore{j}.final", s_, cold_s, None, "state")]
    return pairs


def check_untouched_slots(c: Case) -> List[Comparison]:
    """PAD rows output exact zeros; slots no sequence owns keep their stale bytes."""
    sc = mixed_scenario(c.dims, c.layout, c.tp, c.seed)
    inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
    res = _oracle(sc, inp)
    owned = {s for row in sc.slots.values() for s in row}
    spare = [s for s in range(sc.num_slots) if s not in owned]
    pairs = [_cmp(c, "spare.conv", res.conv_pool[spare], inp.conv_pool[spare], None, "untouched"),
             _cmp(c, "spare.ssm", res.ssm_pool[spare], inp.ssm_pool[spare], None, "untouched")]
    for s, entries in enumerate(sc.plan()):
        for e in entries:
            if e.kind == "pad":
                for k in ("core", "out"):
                    rows = res.steps[s][k][e.bos:e.eos]
                    pairs.append(_cmp(c, f"step{s}.pad@{e.bos}.{k}", rows, torch.zeros_like(rows), 0, "pad_rows"))
    return pairs


def check_fresh_prefill_stale_slot(c: Case) -> List[Comparison]:
    """Fresh prefills (1 token and longer) give identical results whatever their slot held."""
    sc = Scenario(dims=c.dims, layout=c.layout, seed=c.seed, num_spec=1,
                  steps=[[{"seq": 0, "kind": "prefill", "tokens": 1}, {"seq": 1, "kind": "prefill", "tokens": 6}],
                         [{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "spec", "tokens": 2, "accepted": 2}]]).validate()
    inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
    a = _oracle(sc, inp)
    b = run_oracle(sc, inp.weights, inp.hidden, -3.0 * inp.conv_pool.flip(0), 2.0 * inp.ssm_pool.flip(0))
    pairs = []
    for s in range(len(sc.steps)):
        pairs += [_cmp(c, f"step{s}.{k}", a.steps[s][k], b.steps[s][k], 0) for k in ("conv_out", "core", "out")]
    written = [sc.slots[0][0], *sc.slots[1][:2]]     # seq 0 decoded, seq 1 spec-wrote 2 slots
    return pairs + [_cmp(c, "written.ssm", a.ssm_pool[written], b.ssm_pool[written], None, "state"),
                    _cmp(c, "written.conv", a.conv_pool[written[:2], :, :c.dims.W - 1],
                         b.conv_pool[written[:2], :, :c.dims.W - 1], None, "state")]


def check_lora_arrangement(c: Case) -> List[Comparison]:
    """Separate in_proj_qkv / in_proj_z with low-rank deltas, TP-sharded on their own, ==
    the flat layer with the deltas folded into its weights."""
    sc = mixed_scenario(c.dims, "flat", c.tp, c.seed)
    inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
    gen = torch.Generator().manual_seed(c.seed + 7)
    rank, hid = 4, c.dims.hidden
    deltas = {"qkv": LoraDelta(torch.randn(rank, hid, dtype=torch.float64, generator=gen) * 0.1,
                               torch.randn(c.dims.conv_dim, rank, dtype=torch.float64, generator=gen) * 0.1, 0.5),
              "z": LoraDelta(torch.randn(rank, hid, dtype=torch.float64, generator=gen) * 0.1,
                             torch.randn(c.dims.value_dim, rank, dtype=torch.float64, generator=gen) * 0.1, 2.0)}
    folded = fold_lora(inp.weights, c.dims, deltas)
    projs = [LoraProjection(inp.weights, c.dims, c.tp, r, deltas).mixed_qkvz for r in range(c.tp)]
    a = run_oracle(sc, inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool, projections=projs)
    b = run_oracle(sc, folded, inp.hidden, inp.conv_pool, inp.ssm_pool)
    return _result_pairs(c, "", a, b)


def check_device_agreement(c: Case) -> List[Comparison]:
    """The fp64 oracle on c.device == the same on CPU (ops and a mixed layer scenario)."""
    if c.device == "cpu":
        raise RuntimeError("device_agreement needs --device other than cpu")
    d = make_delta_inputs(c.dims, [1, 63, 300], c.seed)
    dev = {k: (v.to(c.device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    pairs = []
    for fn in (recurrent_gated_delta_rule, chunk_gated_delta_rule):
        kw = lambda x: dict(initial_state=x["initial_state"], cu_seqlens=x["cu_seqlens"],
                            use_qk_l2norm_in_kernel=True)
        o_c, s_c = fn(d["q"], d["k"], d["v"], d["g"], d["beta"], **kw(d))
        o_d, s_d = fn(dev["q"], dev["k"], dev["v"], dev["g"], dev["beta"], **kw(dev))
        name = fn.__name__.split("_")[0]
        pairs += [_cmp(c, f"{name}.o", o_d.cpu()[0], o_c[0], 0),
                  _cmp(c, f"{name}.final_state", s_d.cpu(), s_c, None, "state")]
    for layout in ("interleaved", "flat"):
        sc = mixed_scenario(c.dims, layout, 1, c.seed)
        inp = make_inputs(replace(sc, dtype="float64", state_dtype="float64"))
        on_dev = _oracle(sc, inp, device=c.device)
        on_cpu = _oracle(sc, inp)
        on_dev.steps = [{k: v.cpu() for k, v in s.items()} for s in on_dev.steps]
        on_dev.conv_pool, on_dev.ssm_pool = on_dev.conv_pool.cpu(), on_dev.ssm_pool.cpu()
        pairs += _result_pairs(c, f"layer[{layout}].", on_dev, on_cpu)
    return pairs


CHECKS: Dict[str, Tuple[Callable[[Case], List[Comparison]], Tuple[str, ...]]] = {
    # name: (function, case axes it varies over)
    "chunked_vs_recurrent": (check_chunked_vs_recurrent, ("dims", "seed")),
    "tp_reduce": (check_tp_reduce, ("dims", "layout", "tp", "seed")),
    "layout_convert": (check_layout_convert, ("dims", "seed")),
    "chunked_prefill_split": (check_chunked_prefill_split, ("dims", "layout", "seed")),
    "batch_independence": (check_batch_independence, ("dims", "seed")),
    SPEC_EQUIVALENCE: (check_spec_one_accepted, ("dims", "layout", "seed")),
    "spec_invariance": (check_spec_invariance, ("dims", "layout", "seed")),
    "checkpoint_restore": (check_checkpoint_restore, ("seed",)),
    "untouched_slots": (check_untouched_slots, ("dims", "layout", "seed")),
    "fresh_prefill_stale_slot": (check_fresh_prefill_stale_slot, ("dims", "layout", "seed")),
    "lora_arrangement": (check_lora_arrangement, ("dims", "tp", "seed")),
    "device_agreement": (check_device_agreement, ("dims", "seed", "device")),
}
