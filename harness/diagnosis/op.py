"""Op-level diagnosis: the failing op sample re-run through the reference under each hypothesis."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Optional

import torch

from .. import reference as ref
from harness.cases.inputs import dtype_of
from harness.cases.opcheck import OP_INFOS, as_tuple, upcast, state_output, without_skipped
from harness.reference.ops import has_role
from . import variants as V
from .core import Hypothesis as H

CONTIGUOUS = "_read_contiguous"      # pseudo-op key: inputs read ignoring their strides


@dataclass
class OpContext:
    op: str
    variant: str
    dims: object
    dtype: str
    state_dtype: str
    ssm_layout: str
    seed: int
    actual: Dict[str, torch.Tensor]
    sample: Optional[dict] = None       # a shrunk case's subset of the variant's sequences

    @property
    def overflowed(self) -> bool:
        """The backend's outputs hold Inf / NaN."""
        return any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in self.actual.values())

    @property
    def family(self) -> str:
        return V.CHUNK if has_role(self.op, "chunk") and not has_role(self.op, "checkpoints") else V.RECURRENT

    @property
    def layout(self) -> str:        # the projection layout of an unpack sample
        return self.variant.split("-")[0]

    @cached_property
    def pad_masks(self) -> Dict[str, torch.Tensor]:
        """`pad_row_masks`, built once per diagnosis (every hypothesis' PAD-masked re-judge uses it)."""
        return pad_row_masks(self)

    def build(self):
        info = OP_INFOS[self.op]
        return info.build(self.variant, self.dims, dtype_of(self.dtype), dtype_of(self.state_dtype),
                          self.ssm_layout, self.seed, "cpu", self.sample)


def _role(*roles, but: str = ""):
    """The case's op has all of `roles` (kinds count as roles; harness.reference.ops), not `but`."""
    return lambda c: all(has_role(c.op, r) for r in roles) and not (but and has_role(c.op, but))


def _any_role(*roles):
    return lambda c: any(has_role(c.op, r) for r in roles)


# the delta-rule ops the variants re-run as one of two families (chunked / per-token);
# the checkpointing op is judged by its own hypotheses
def _delta_ops(c):
    return (has_role(c.op, "chunk") or has_role(c.op, "recurrent")) and not has_role(c.op, "checkpoints")


def _delta_ungated(c):
    """Delta-rule ops that take g / beta as computed (no gating inside)."""
    return _delta_ops(c) and not has_role(c.op, "gating")


def _spec(c):
    return has_role(c.op, "spec") and "spec" in c.variant


def _strided(c):
    s = c.build()
    return any(isinstance(t, torch.Tensor) and not t.is_contiguous() for n, t in s.kwargs.items()
               if n not in s.states) or c.op == "fused_recurrent_gated_delta_rule_packed_decode"


def _accepted_offsets(part: str, plus: str, minus: str, **only):
    """The spec ``{part}_accepted_plus_one`` / ``_minus_one`` pair: num_accepted_tokens off by
    +1 / -1 in `part` alone (`only`: the other part's accepted_shift flag, False)."""
    return [H(f"{part}_accepted_{name}", "spec_accepted_offset",
              f"matches when {what}: accepted-token offset off by one",
              lambda c, d=d: V.accepted_shift(d, **only), _spec)
            for name, what, d in (("plus_one", plus, +1), ("minus_one", minus, -1))]


# Ordered: cheap and specific first; the runner stops when its time budget is spent.
HYPOTHESES = [
    # projections
    H("ba_other_layout", "projection_layout_ba",
      "b and a reproduce when mixed_ba is unpacked with the {other} layout on this {layout}-layout sample: the b/a "
      "split does not follow the model's layout (b/a view taken from mixed_qkvz's groups, or a [b | a] two-shard "
      "split on an interleaved model)",
      lambda c: V.unpack_with(ba=V.other_layout(c.layout)), _role("projection")),
    H("core_other_layout", "projection_layout_core",
      "matches the reference when the {other} unpack is applied to this {layout}-layout sample (q, k, v, b, a): "
      "the path assumes the {other} in_proj layout",
      lambda c: V.unpack_with(qkv=V.other_layout(c.layout), ba=V.other_layout(c.layout)), _role("projection")),
    H("qkvz_other_layout", "projection_layout_core",
      "matches the reference when mixed_qkvz is unpacked with the {other} layout on this {layout}-layout sample",
      lambda c: V.unpack_with(qkv=V.other_layout(c.layout), z=V.other_layout(c.layout)), _role("projection")),
    H("all_other_layout", "projection_layout_core",
      "matches the reference when everything is unpacked with the {other} layout on this {layout}-layout sample",
      lambda c: V.unpack_with(V.other_layout(c.layout), V.other_layout(c.layout), V.other_layout(c.layout)),
      _role("projection")),
    # gating
    H("softplus_linear", "gating_math",
      "matches when softplus(x) is taken as x for ordinary inputs: the softplus threshold test is inverted "
      "(or the linear branch always taken)", lambda c: V.gating_variant("linear_softplus"), _role("gating")),
    H("dt_bias_after_softplus", "gating_math",
      "matches when dt_bias is added after the softplus: g = -exp(A_log) * (softplus(a) + dt_bias)",
      lambda c: V.gating_variant("dt_bias_after"), _role("gating")),
    H("dt_bias_dropped", "gating_math", "matches when dt_bias is not added: g = -exp(A_log) * softplus(a)",
      lambda c: V.gating_variant("dt_bias_dropped"), _role("gating")),
    H("A_log_not_exp", "gating_math", "matches when A_log is used without exp: g = -A_log * softplus(a + dt_bias)",
      lambda c: V.gating_variant("A_not_exp"), _role("gating")),
    H("beta_rounded_bf16", "gating_precision",
      "matches when beta is rounded to bfloat16 before the update u = beta (v - S k)",
      lambda c: V.beta_bf16(), _role("recurrent", but="gating")),
    H("beta_truncated_bf16", "gating_precision",
      "matches when beta is truncated to bfloat16 before the update u = beta (v - S k)",
      lambda c: V.beta_bf16(truncate=True), _role("recurrent", but="gating")),
    H("readout_buffer_fp16", "output_precision",
      "matches when the read-out o = S q goes through a float16 buffer (rounded to 11 bits, Inf past 65504) "
      "whatever the activation dtype ({dtype} here)", lambda c: V.readout_fp16(), _role("recurrent")),
    H("checkpoint_at_block_start", "prefix_checkpoints",
      "matches when each prefix-cache checkpoint is the state at its block's start instead of its end",
      lambda c: checkpoint_variant("block_start"), _role("checkpoints")),
    H("checkpoint_every_chunk", "prefix_checkpoints",
      "matches when checkpoints are taken every 64-token chunk instead of every block (chunk size and block "
      "size mixed up)", lambda c: checkpoint_variant("chunk_grid"), _role("checkpoints")),
    H("checkpoint_stored_bf16", "prefix_checkpoints",
      "matches when the prefix-cache checkpoints are stored through bfloat16 while the cold run keeps its "
      "{state_dtype} state: a restore resumes from a narrower state than the cold run carried on with",
      lambda c: checkpoint_variant("bf16"), _role("checkpoints")),
    # gated norm
    H("norm_gemma_weight", "gated_norm", "matches when RMSNormGated scales by a Gemma-style (1 + w) instead of w",
      lambda c: V.norm_variant("gemma"), _role("norm")),
    H("norm_before_gate_flipped", "gated_norm",
      "matches when norm_before_gate is flipped: rmsnorm(x * act(z)) * w vs rmsnorm(x) * w * act(z)",
      lambda c: V.norm_variant("flipped"), _role("norm")),
    H("norm_activation_swapped", "gated_norm", "matches when the gate activation is swapped (silu <-> sigmoid)",
      lambda c: V.norm_variant("act_swapped"), _role("norm")),
    H("norm_group_ignored", "gated_norm", "matches when group_size is ignored (the whole head normalised at once)",
      lambda c: V.norm_variant("group_ignored"), _role("norm")),
    # conv
    H("conv_state_frozen_on_decode", "conv_state",
      "matches when the decode conv computes its output but never shifts its state window: conv state not "
      "updated on decode", lambda c: V.conv_frozen_on_decode(), _role("conv", "decode")),
    H("conv_history_ignored", "state_init_chunked",
      "matches when the prefill conv ignores has_initial_state and starts from zeros: the conv history of a "
      "continued prefill is dropped", lambda c: V.conv_history("zero"), _role("conv", "prefill")),
    H("conv_history_always_read", "state_init_fresh",
      "matches when the prefill conv reads its slot's history also for fresh sequences (stale window)",
      lambda c: V.conv_history("stale"), _role("conv", "prefill")),
    *_accepted_offsets("conv", "the spec conv window starts at num_accepted instead of num_accepted - 1",
                       "the spec conv window starts at num_accepted - 2", ssm=False),
    # delta rule: state
    H("state_transposed", "ssm_state_layout",
      "matches when the ssm state is read and written as the transposed tile ({tile_wrong} inside the "
      "{tile_right} pool): the kernel's state addressing is transposed", lambda c: V.state_variant(
          "transposed", op=c.family), _delta_ops),
    H("state_read_transposed", "ssm_state_layout",
      "matches when the ssm state is read as the transposed tile ({tile_wrong} inside the {tile_right} pool) "
      "and written right", lambda c: V.state_variant("read_transposed", op=c.family), _delta_ops),
    H("state_write_transposed", "ssm_state_layout",
      "matches when the ssm state is read right and written as the transposed tile ({tile_wrong} inside the "
      "{tile_right} pool)", lambda c: V.state_variant("write_transposed", op=c.family), _delta_ops),
    H("state_stored_bf16", "state_precision",
      "matches when every ssm state the kernel writes is rounded to bfloat16 (the pool is {state_dtype}): the "
      "state store casts through bf16", lambda c: V.state_variant("bf16", op=c.family), _delta_ops),
    H("state_stored_bf16_truncated", "state_precision",
      "matches when every ssm state the kernel writes is truncated to bfloat16 (the pool is {state_dtype}): the "
      "state store casts through bf16", lambda c: V.state_variant("bf16_trunc", op=c.family), _delta_ops),
    H("initial_state_ignored", "state_init_chunked",
      "matches when the initial state is ignored (zeros): a chunked prefill / prefill with history forgets "
      "everything before the chunk", lambda c: V.state_variant("zero_init", op=c.family),
      _delta_ungated),
    *_accepted_offsets("ssm", "the ssm state is read from slot [num_accepted] instead of [num_accepted - 1]",
                       "the ssm state is read from slot [num_accepted - 2]", conv=False),
    H("gate_log_as_linear", "gate_domain",
      "matches when the log-space g reaches a kernel that takes the linear-space decay (alpha = exp(g), "
      "FlashInfer's chunk_gated_delta_rule) unconverted: the decay is g itself, NaN / garbage for every g < 0; "
      "the adapter's gate-domain conversion is missing", lambda c: V.gate_domain_variant("log_as_linear", op=c.family),
      _delta_ops),
    # delta rule: q / k
    H("qk_heads_tiled", "gva_head_mapping",
      "matches when value head hv uses q/k head hv % H (tiled) instead of hv // r (grouped, repeat_interleave): "
      "the GVA head mapping is wrong", lambda c: V.qk_variant("tiled", op=c.family), _delta_ops),
    H("qk_l2norm_skipped", "qk_norm",
      "matches when the in-kernel q/k L2 norm is skipped (use_qk_l2norm_in_kernel not honoured)",
      lambda c: V.qk_variant("norm_skipped", op=c.family), _delta_ops),
    H("qk_l2norm_eps_outside", "qk_norm",
      "matches when the q/k L2 norm puts eps outside the sqrt: x / (sqrt(sum x^2) + eps)",
      lambda c: V.qk_variant("eps_outside", op=c.family), _delta_ops),
    H("scale_on_k", "qk_scale", "matches when the K^-0.5 scale multiplies k instead of q",
      lambda c: V.qk_variant("scale_on_k", op=c.family), _delta_ops),
    # chunked prefill over a varlen batch
    H("varlen_state_leak", "varlen_isolation",
      "matches when each sequence of the varlen batch starts from the previous sequence's final state: the "
      "state leaks across cu_seqlens boundaries", lambda c: V.chunk_variant("leak"), _role("chunk", but="checkpoints")),
    H("chunk_tail_repeat", "chunk_boundary",
      "matches when the last partial 64-token chunk is padded with its last token instead of zeros (an unmasked "
      "tail load): the final state of a sequence whose length % 64 != 0 is wrong",
      lambda c: V.chunk_variant("tail_repeat"), _role("chunk", but="checkpoints")),
    H("chunk_tail_next", "chunk_boundary",
      "matches when the last partial 64-token chunk is filled with the tokens that follow in the packed batch "
      "(an unmasked tail load)", lambda c: V.chunk_variant("tail_next"), _role("chunk", but="checkpoints")),
    H("chunk_tail_next_times_zero", "varlen_isolation",
      "matches when a sequence's last partial 64-token chunk loads the rows that follow it in the packed batch "
      "and masks them by multiplying by 0 (not a select): exact on finite inputs, but NaN / Inf in a later "
      "sequence reach this sequence's tail rows and final state", lambda c: V.chunk_variant("tail_next_times_zero"),
      _role("chunk", but="checkpoints")),
    H("batch_axis_squeezed", "batch_shape",
      "matches when the results' size-1 leading axis is squeezed away: a one-sequence batch loses its sequence "
      "axis (final state [HV, ...] instead of [1, HV, ...])",
      lambda c: V.chunk_variant("squeeze"), _role("chunk", but="checkpoints")),
    # slots, rows, strides
    H("pad_slot_wraps", "pad_slots",
      "matches when PAD_SLOT_ID (-1) is used as a Python index: PAD rows read from and write into the pool's "
      "last slot, which another sequence may own", lambda c: V.pad_wraps(),
      _any_role("conv", "recurrent")),
    H("inputs_read_contiguous", "strides",
      "matches when the non-contiguous inputs are read with contiguous strides: the kernel ignores its inputs' "
      "strides (vLLM passes views into the conv output / wider buffers)", lambda c: {CONTIGUOUS: True}, _strided),
]


# ------------------------------------------------------------------ running an op under overrides
CHECKPOINT_STORE = "_checkpoint_store"    # pseudo-op key: how a checkpoint is stored from the running state


def checkpoint_variant(kind: str) -> dict:
    """Prefix-cache checkpoints gone wrong: ``block_start`` (each saved at its block's start:
    the sequence's initial state, then the previous checkpoint), ``chunk_grid`` (saved every
    64 tokens: checkpoint j at (j+1) * 64) or ``bf16`` (stored rounded to bfloat16)."""
    op = "chunk_gated_delta_rule_checkpoints"
    if kind == "bf16":
        def fn(**kw):
            out = ref.chunk_gated_delta_rule_checkpoints(**kw)
            ck = kw["state_checkpoints"]
            ck.copy_(_bf16(ck))
            return out
        return {op: fn, CHECKPOINT_STORE: _bf16}

    def fn(**kw):
        ck, every = kw["state_checkpoints"], kw["checkpoint_every"]
        cu = [int(x) for x in kw["cu_seqlens"].tolist()]
        lens = [b - a for a, b in zip(cu, cu[1:])]
        if kind == "chunk_grid":
            grid = ck.new_zeros(sum(L // 64 for L in lens), *ck.shape[1:])
            out = ref.chunk_gated_delta_rule_checkpoints(**{**kw, "state_checkpoints": grid, "checkpoint_every": 64})
            at, pos = 0, 0
            for L in lens:
                ck[at:at + L // every] = grid[pos:pos + L // every]
                at, pos = at + L // every, pos + L // 64
            return out
        out = ref.chunk_gated_delta_rule_checkpoints(**kw)
        at = 0
        for n, L in enumerate(lens):
            m = L // every
            if m:
                ck[at + 1:at + m] = ck[at:at + m - 1].clone()
                ck[at] = kw["initial_state"][n].to(ck.dtype)
            at += m
        return out
    return {op: fn}


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def _checkpoint_end_expected(c: OpContext, s, exp: dict, ops: dict) -> None:
    """`checkpoint_end` (the backend's end checkpoints vs its own final states) under a
    hypothesis: stored from the final state the way the hypothesis stores checkpoints, or
    excused when the hypothesis itself puts the end checkpoint elsewhere."""
    from harness.cases.opcheck import checkpoint_ends
    if "checkpoint_end" not in c.actual or "final_state" not in c.actual:
        return
    cks, seqs = checkpoint_ends(s.kwargs)
    store = ops.get(CHECKPOINT_STORE)
    if store is not None:
        fin = c.actual["final_state"][seqs]
        exp["checkpoint_end"] = store(fin.to(torch.float32)).to(c.actual["checkpoint_end"].dtype)
    elif not torch.allclose(exp["state_checkpoints"][cks], exp["final_state"][seqs].to(exp["state_checkpoints"])):
        exp["checkpoint_end"] = c.actual["checkpoint_end"]


def call_op(op: str, kw: dict, ops: dict):
    """The op of `kw` composed from reference ops, each replaceable through `ops`."""
    get = lambda name, default: ops.get(name, default)
    if op == "fused_recurrent_gated_delta_rule":
        return get(V.RECURRENT, ref.recurrent_gated_delta_rule)(**kw)
    if op == "fused_sigmoid_gating_delta_rule_update":
        return _sigmoid(dict(kw), get)
    if op == "fused_recurrent_gated_delta_rule_packed_decode":
        return _packed(dict(kw), get, ops.get(CONTIGUOUS, False))
    return get(op, OP_INFOS[op].reference)(**kw)


def _sigmoid(kw, get):
    A_log, a, b, dt_bias, q, k, v = (kw.pop(n) for n in ("A_log", "a", "b", "dt_bias", "q", "k", "v"))
    g, beta = get("fused_gdn_gating", ref.fused_gdn_gating)(A_log, a, b, dt_bias)
    shape = (*q.shape[:2], v.shape[2])
    return get(V.RECURRENT, ref.recurrent_gated_delta_rule)(q, k, v, g.reshape(shape), beta.reshape(shape), **kw)


def _packed(kw, get, contiguous: bool):
    mixed, out, pool = kw.pop("mixed_qkv"), kw.pop("out"), kw["initial_state"]
    HV, Vd, B = kw["A_log"].shape[0], out.shape[-1], mixed.shape[0]
    K = pool.shape[-1] if kw.get("state_layout", "vk") == "vk" else pool.shape[-2]
    H = (mixed.shape[1] - HV * Vd) // (2 * K)
    q, k, v = torch.split(mixed, [H * K, H * K, HV * Vd], dim=-1)
    if contiguous:
        q, k, v = (V.as_contiguous_read(t) for t in (q, k, v))
    kw.pop("scale", None)
    kw.update(q=q.reshape(1, B, H, K), k=k.reshape(1, B, H, K), v=v.reshape(1, B, HV, Vd),
              cu_seqlens=torch.arange(B + 1), inplace_final_state=True)
    o, _ = _sigmoid(kw, get)
    out.copy_(o.reshape(B, 1, HV, Vd).to(out.dtype))
    return out


def expected_of(h: H, c: OpContext) -> Optional[Dict[str, torch.Tensor]]:
    """The outputs the op would give under hypothesis `h`, named as the case's pairs."""
    ops = h.build(c)
    s = c.build()
    kw = dict(s.kwargs)
    if ops.get(CONTIGUOUS) and c.op != "fused_recurrent_gated_delta_rule_packed_decode":
        kw = {n: (V.as_contiguous_read(t) if isinstance(t, torch.Tensor) and n not in s.states else t)
              for n, t in kw.items()}
    kw = {n: upcast(t) for n, t in kw.items()}
    if c.overflowed:        # re-run in the kernels' fp32, so it overflows where they do
        kw = {n: t.to(torch.float32) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for n, t in kw.items()}
    outs = as_tuple(call_op(c.op, kw, ops))
    exp = {name: without_skipped(s, name, t.detach().cpu()) for name, t in zip(s.outputs, outs) if name is not None}
    for arg in s.states:
        name = state_output(arg)        # the name opcheck reports it under
        exp[name] = kw[arg].detach().cpu()
        touched = set((s.touched or {}).get(arg, []))
        spare = [x for x in range(exp[name].shape[0]) if x not in touched]
        if spare:
            exp[f"{name}.untouched"] = exp[name][spare]
    if c.op == "chunk_gated_delta_rule_checkpoints":
        _checkpoint_end_expected(c, s, exp, ops)
    return exp


# ------------------------------------------------------------------ signatures: PAD rows
def pad_row_masks(c: OpContext) -> Dict[str, torch.Tensor]:
    """Output name -> bool mask of the rows that belong to PAD_SLOT_ID sequences."""
    kw = c.build().kwargs
    masks = {}
    if c.op in ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update"):
        idx, cu = kw.get("ssm_state_indices"), kw.get("cu_seqlens")
        if idx is None:
            return {}
        acc = kw.get("num_accepted_tokens")
        m = torch.zeros(kw["v"].shape[:2], dtype=torch.bool)
        for n in range(idx.shape[0]):
            row = idx.reshape(idx.shape[0], -1)[n]
            slot = int(row[int(acc[n]) - 1]) if acc is not None else int(row[0])
            if slot < 0:
                m[:, int(cu[n]):int(cu[n + 1])] = True
        masks["o"] = m[..., None, None]
    elif c.op == "fused_recurrent_gated_delta_rule_packed_decode":
        masks["out"] = (kw["ssm_state_indices"] < 0)[:, None, None, None]
    elif c.op == "causal_conv1d_update":
        idx, qsl, x = kw["conv_state_indices"], kw.get("query_start_loc"), kw["x"]
        if qsl is not None:
            m = torch.zeros(x.shape[0], dtype=torch.bool)
            for i in range(idx.shape[0]):
                if int(idx[i]) < 0:
                    m[int(qsl[i]):int(qsl[i + 1])] = True
            masks["out"] = m[:, None]
        else:
            masks["out"] = (idx < 0).reshape(-1, *([1] * (x.dim() - 1)))
    elif c.op == "causal_conv1d_fn":
        idx, qsl = kw["cache_indices"], kw["query_start_loc"]
        m = torch.zeros(kw["x"].shape[1], dtype=torch.bool)
        for i in range(idx.shape[0]):
            if int(idx[i]) < 0:
                m[int(qsl[i]):int(qsl[i + 1])] = True
        masks["out"] = m[None, :]
    return masks


def pad_rows_expected(pairs, c: OpContext, hyp: Optional[dict] = None) -> Optional[Dict[str, torch.Tensor]]:
    """The outputs with their PAD rows masked out (set to the reference's, or to hypothesis
    `hyp`'s outputs): everything else must match."""
    masks = c.pad_masks
    exp = {}
    for cmp in pairs:
        name, actual, refv = cmp.output, cmp.actual, cmp.expected
        e = (hyp or {}).get(name, refv)
        if name in masks and not isinstance(e, tuple) and tuple(actual.shape) == tuple(e.shape):
            m = masks[name].to(actual.device).expand(actual.shape)     # masks come from the CPU-built sample
            if bool(m.any()):
                exp[name] = (torch.where(m, e.to(actual), actual), e)
    return exp or None


def untouched_expected(pairs) -> Optional[Dict[str, torch.Tensor]]:
    """Everything but the slots no sequence owns must match."""
    exp = {c.output: c.actual.to(c.expected.dtype) for c in pairs if c.kind == "untouched"}
    return exp or None


SIGNATURES = [
    H("pad_rows_garbage", "pad_rows",
      "matches everywhere but the PAD rows (slot PAD_SLOT_ID), which hold garbage / NaN: the output buffer comes "
      "from torch.empty and PAD rows are never zeroed", lambda c: "pad_rows"),
    H("writes_outside_owned_slots", "pad_slots",
      "matches everywhere but in slots no sequence owns, which changed: a write through a PAD or out-of-batch "
      "index", lambda c: "untouched"),
]


def context(case, actual, ssm_layout: str) -> OpContext:
    return OpContext(case.check, case.variant, case.dims, case.dtype, case.state_dtype, ssm_layout, case.seed,
                     actual, getattr(case, "scenario", None))


def fmt(c: OpContext) -> dict:
    a, b = ("V", "K") if c.ssm_layout == "vk" else ("K", "V")
    layout = c.layout if c.op == "unpack_qkvz_ba" else "flat"
    return dict(layout=layout, other=V.other_layout(layout), tile_right=f"[{a}, {b}]", tile_wrong=f"[{b}, {a}]",
                state_dtype=c.state_dtype, dtype=c.dtype)
