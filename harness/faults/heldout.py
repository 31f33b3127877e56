"""HELD-OUT faults: written after the diagnosis' structural signatures were frozen, to
measure how the diagnosis does on faults nobody wrote a hypothesis or a signature for.

Not part of the public zoo (`harness.faults.catalogue.FAULTS`, 24 faults): `gdn-harness
zoo` never runs them and no hypothesis of `harness.diagnosis` was written beside them.
Each mirrors a real GDN incident kind (DESIGN's fault classes and the 2026 landscape
notes, shared/research/gdn-landscape-2026-12.md: precision narrowing inside the
recurrence, gate-domain mismatch, padding sentinel aliasing a live slot, batch- vs
pool-scoped indexing, GGUF tiled V-head order, chunk-boundary state carry, ...).

Every entry says, written with the fault and before any diagnosis of it was run, what a
right diagnosis names: `expect_ops` (the op - or ``gdn_core`` - the bug lives in; any of
them counts) and `expect` (fault classes of `harness.diagnosis.CLASSES`, signature kinds
of `harness.diagnosis.signatures.KINDS`, ``boundary:<edge>`` for a boundary signature of
that edge, or ``none`` when the bug is plain kernel math with no structural relation -
then "named right" means the right op and no wrong structural or precision claim).
Measured by ``scripts/experiments/diagnosis_zoo.py --zoo --heldout`` (`harness.faults.diagnosis_zoo`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Tuple


from .catalogue import Fault, _ReferenceChunkMutant, _TritonCore, _TritonMutant, class_name

MODULE = __name__
HELD_OUT = True

RECURRENT = ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
             "fused_recurrent_gated_delta_rule_packed_decode")
CONV = ("causal_conv1d_fn", "causal_conv1d_update")
_HT_FINAL = "p_ht = ht + i_n * s_htn + i_hv * s_hth + o_v[:, None] * s_htv + o_k[None, :] * s_htk"


@dataclass(frozen=True)
class HeldOutFault(Fault):
    expect_ops: Tuple[str, ...] = ()
    expect: Tuple[str, ...] = ()
    held_out: bool = True


# ------------------------------------------------------------------ recurrent kernel
class BetaSigmoidBf16(_TritonMutant):
    """sigmoid(b) narrowed to bf16 inside the gated recurrent kernel (vLLM PR #53877: the
    packed decode's ``sigmoid(b).to(bf16).to(fp32)``; state drift 1.6e-3 over 1000 steps)."""
    name = "beta_sigmoid_bf16"
    module = "recurrent"
    mutations = (("b_beta = (1.0 / (1.0 + tl.exp(-tl.load(p_b).to(GATE)))).to(ACC)",
                  "b_beta = (1.0 / (1.0 + tl.exp(-tl.load(p_b).to(GATE)))).to(tl.bfloat16).to(ACC)"),)


class DecayAfterUpdate(_TritonMutant):
    """The state decay exp(g) applied after the delta update instead of before it (an
    operation-order slip in a port of the recurrence)."""
    name = "decay_after_update"
    module = "recurrent"
    mutations = ((
        "        b_h = b_h * tl.exp(b_g)\n"
        "        b_u = b_beta * (b_v - tl.sum(b_h * b_k[None, :], 1))\n"
        "        b_h = b_h + b_u[:, None] * b_k[None, :]\n",
        "        b_u = b_beta * (b_v - tl.sum(b_h * b_k[None, :], 1))\n"
        "        b_h = b_h + b_u[:, None] * b_k[None, :]\n"
        "        b_h = b_h * tl.exp(b_g)\n",
    ),)


class PadSlotClampedToZero(_TritonMutant):
    """PAD_SLOT_ID clamped to slot 0 (tokenspeed PR #700: -1 clamped to 0 during MTP graph
    padding, "padded rows could overwrite a live request's SSM state"): the PAD branch never
    fires, PAD sequences compute from and write into slot 0."""
    name = "pad_slot_clamped_to_zero"
    module = "recurrent"
    mutations = (("        slot = tl.load(idx + i_n * s_in + i_read * s_is).to(tl.int64)\n",
                  "        slot = tl.maximum(tl.load(idx + i_n * s_in + i_read * s_is).to(tl.int64), 0)\n"),)


class ValueHeadFromKeyHead(_TritonMutant):
    """v read at the q / k head index (i_h) instead of the value head (i_hv): a GVA slip on
    the value side of the recurrent kernel."""
    name = "value_head_from_key_head"
    module = "recurrent"
    mutations = (("p_v = v + bos * s_vt + i_hv * s_vh + o_v", "p_v = v + bos * s_vt + i_h * s_vh + o_v"),)


class FinalStateNeverStored(_TritonMutant):
    """The pool-less path never stores its final state (the store dropped from the
    STORE_FINAL branch); the caller gets its torch.empty buffer (NaN-filled here, as
    fill_uninitialized_memory does, so the garbage is reproducible)."""
    name = "final_state_never_stored"
    module = "recurrent"
    mutations = (
        (f"    elif STORE_FINAL:\n        {_HT_FINAL}\n        tl.store(p_ht, b_h.to(ht.dtype.element_ty), mask=m_h)\n",
         "    elif STORE_FINAL:\n        pass  # final state never stored\n"),
        ("final = torch.empty(N, *state_shape, dtype=out_dtype, device=dev)",
         "final = torch.empty(N, *state_shape, dtype=out_dtype, device=dev).fill_(float('nan'))"),
    )


class SpecStateWrittenOneColumnLate(_TritonMutant):
    """Spec decode writes the state after token t into column t + 1 of the sequence's index
    row (an index-math slip of the ragged-spec kind, vllm-xpu-kernels #599 / AscendC fix:
    tokens' states landing in the wrong slots); the last token's goes one past the row."""
    name = "spec_state_written_one_column_late"
    module = "recurrent"
    mutations = (("slot_t = tl.load(idx + i_n * s_in + t * s_is).to(tl.int64)",
                  "slot_t = tl.load(idx + i_n * s_in + tl.minimum(t + 1, L - 1) * s_is).to(tl.int64)"),)


class GatedDecodeALogNotExp(_TritonMutant):
    """The in-kernel gating of the gated decodes (sigmoid-gating, packed) uses A_log as the
    decay rate without its exp: g = -A_log * softplus(a + dt_bias) (a port that fused the
    gating into the recurrence and dropped the exp the separate gating kernel has).
    Written 2026-12-05, after the role-based hypothesis selection."""
    name = "gated_decode_a_log_not_exp"
    module = "recurrent"
    mutations = (("b_g = (-tl.exp(b_A) * sp).to(ACC)", "b_g = (-b_A * sp).to(ACC)"),)


class H0ReadAtBatchRow(_TritonMutant):
    """With state indices, the initial state is read at the sequence's batch row instead of
    its pool slot (the write still goes to the slot): the h0-indexing kind of vLLM's
    fused_recurrent `p_h0 = h0 + bos * ...` (docs/findings.md). Written 2026-12-05."""
    name = "h0_read_at_batch_row"
    module = "recurrent"
    mutations = (("        p_h0 = h0 + slot * s_h0n + i_hv * s_h0h + o_v[:, None] * s_h0v + o_k[None, :] * s_h0k\n",
                  "        p_h0 = h0 + i_n * s_h0n + i_hv * s_h0h + o_v[:, None] * s_h0v + o_k[None, :] * s_h0k\n"),)


# ------------------------------------------------------------------ conv kernel
class ConvTapsReversed(_TritonMutant):
    """The conv weight's taps read in reverse (correlation vs convolution: tap j taken as
    W-1-j), a classic port slip."""
    name = "conv_taps_reversed"
    module = "conv"
    mutations = (("w_j = tl.load(weight + o_d * stride_w_dim + j * stride_w_tap, mask=m_d, other=0.0).to(ACC)",
                  "w_j = tl.load(weight + o_d * stride_w_dim + (KERNEL_W - 1 - j) * stride_w_tap, mask=m_d, "
                  "other=0.0).to(ACC)"),)


class ConvStateStoredFp16(_TritonMutant):
    """The conv state window stored through fp16 (ROCm hip-ep PR #403 kind: fp16 rounding
    every step): an fp32 pool holds fp16-rounded inputs."""
    name = "conv_state_stored_fp16"
    module = "conv"
    mutations = (("tl.store(p_state + o_c[:, None] * stride_s_col, tl.where(from_old, v_old, v_new), mask=m_c)",
                  "tl.store(p_state + o_c[:, None] * stride_s_col, tl.where(from_old, v_old, v_new).to(tl.float16)"
                  ".to(state.dtype.element_ty), mask=m_c)"),)


class ConvSiluBeforeBias(_TritonMutant):
    """The conv's SiLU applied before the bias is added (silu(x * w) + b instead of
    silu(x * w + b)): an operation-order slip. Written 2026-12-05."""
    name = "conv_silu_before_bias"
    module = "conv"
    mutations = (("""    if HAS_BIAS:
        acc += tl.load(bias + o_d * stride_bias, mask=m_d, other=0.0).to(ACC)[None, :]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
""", """    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    if HAS_BIAS:
        acc += tl.load(bias + o_d * stride_bias, mask=m_d, other=0.0).to(ACC)[None, :]
"""),)


# ------------------------------------------------------------------ gating kernel
class GateStoredLinear(_TritonMutant):
    """Gate-domain mismatch (FlashInfer test_gdn_prefill_g_space: ln-space g passed as
    linear): the gating kernel stores the decay factor exp(g) where the log-space g is expected."""
    name = "gate_stored_linear"
    module = "gating"
    mutations = (("tl.store(g_out + o, b_g.to(acc_ty), mask=mask)",
                  "tl.store(g_out + o, tl.exp(b_g).to(acc_ty), mask=mask)"),)


class BetaNotSigmoided(_TritonMutant):
    """In-kernel vs precomputed gate mismatch: the gating kernel passes b through as beta
    (assuming the caller applied the sigmoid)."""
    name = "beta_not_sigmoided"
    module = "gating"
    mutations = (("b_beta = 1.0 / (1.0 + tl.exp(-b_b))", "b_beta = b_b"),)


# ------------------------------------------------------------------ norm kernel
class NormRstdOverBlock(_TritonMutant):
    """RMSNormGated's mean square reduced over the whole row block instead of per row (a
    reduction-axis slip): every row of a block gets the block's RMS."""
    name = "norm_rstd_over_block"
    module = "norm"
    mutations = (("    mean_sq = tl.sum(b_x * b_x, axis=1) / group_size\n",
                  "    mean_sq = tl.zeros([BLOCK_M], dtype=ACC) + tl.sum(b_x * b_x) / (\n"
                  "        group_size * tl.minimum(BLOCK_M, M - i_m * BLOCK_M))\n"),)


class NormWeightOfGroupZero(_TritonMutant):
    """RMSNormGated with groups: the weight indexed by the lane within the group instead of
    the feature, so every group uses group 0's weights."""
    name = "norm_weight_of_group_zero"
    module = "norm"
    mutations = (("b_w = tl.load(weight + o_n * stride_w, mask=m_n, other=0.0).to(ACC)",
                  "b_w = tl.load(weight + tl.arange(0, BLOCK_N) * stride_w, mask=m_n, other=0.0).to(ACC)"),)


# ------------------------------------------------------------------ unpack
class QkSwappedInterleaved(_TritonMutant):
    """q and k swapped by the interleaved unpack kernel (a copy-paste slip of the two loads)."""
    name = "qk_swapped_interleaved"
    module = "unpack"
    mutations = (
        ("tl.store(q + dst_k, tl.load(src + o_k * stride_qkvz_c, mask=m_k), mask=m_k)",
         "tl.store(q + dst_k, tl.load(src + (K + o_k) * stride_qkvz_c, mask=m_k), mask=m_k)"),
        ("tl.store(k + dst_k, tl.load(src + (K + o_k) * stride_qkvz_c, mask=m_k), mask=m_k)",
         "tl.store(k + dst_k, tl.load(src + o_k * stride_qkvz_c, mask=m_k), mask=m_k)"),
    )


class VHeadsTiledOrder(_TritonMutant):
    """GGUF tiled V-head order (weicj/vLLM-2080Ti PR #107: the conversion permutes v heads
    grouped -> tiled and the loader lacks the inverse): the flat unpack reads v's heads in
    tiled order, value head g*r + j taken from position j*H + g."""
    name = "v_heads_tiled_order"
    module = "unpack"
    mutations = (("v.reshape(*lead, HV, V).contiguous()",
                  "v.reshape(*lead, r, H, V).transpose(-3, -2).reshape(*lead, HV, V).contiguous()"),)


# ------------------------------------------------------------------ layer composition (gdn_core)
class PadSentinelSlotZero(_TritonCore):
    """Slot 0 used as the padding sentinel (weicj/vLLM-2080Ti PR #93: NULL_BLOCK_ID = 0 though
    slot 0 is valid): the batch builder runs PAD entries as decodes of slot 0."""
    name = "pad_sentinel_slot_zero"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        entries = [dataclasses.replace(e, kind="decode", conv_slot=0, ssm_slots=[0], has_initial_state=True)
                   if e.kind == "pad" else e for e in entries]
        return super()._run_core(ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev)


class DecodeSlotsBatchScoped(_TritonCore):
    """Batch-scoped vs pool-scoped indexing (flashinfer PR #3145, sglang PR #27905): the
    decodes' state indices taken as their position in the batch instead of their pool slot."""
    name = "decode_slots_batch_scoped"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        out, i = [], 0
        for e in entries:
            if e.kind == "decode":
                e = dataclasses.replace(e, conv_slot=i, ssm_slots=[i])
                i += 1
            out.append(e)
        return super()._run_core(ops, p, q, k, v, a, b, out, conv_state, ssm_state, T, dev)


class PrefillSlotsSorted(_TritonCore):
    """The prefills' slot array sorted apart from their token ranges (metadata arrays
    reordered independently): prefill i reads and writes the i-th smallest slot."""
    name = "prefill_slots_sorted"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        pre = [e for e in entries if e.kind == "prefill"]
        slots = iter(sorted(e.conv_slot for e in pre))
        out = []
        for e in entries:
            if e.kind == "prefill":
                s = next(slots)
                e = dataclasses.replace(e, conv_slot=s, ssm_slots=[s])
            out.append(e)
        return super()._run_core(ops, p, q, k, v, a, b, out, conv_state, ssm_state, T, dev)


# ------------------------------------------------------------------ chunked delta rule (reference-derived)
class ChunkCarrySkipsDecay(_ReferenceChunkMutant):
    """The state carried from one 64-token chunk to the next is not decayed by the chunk's
    total gate (the inter-chunk recurrence drops exp(G_last))."""
    name = "chunk_carry_skips_decay"
    mutations = (("S = S * torch.exp(G[:, c, -1])[:, None, None] + kG[:, c].transpose(-1, -2) @ U",
                  "S = S + kG[:, c].transpose(-1, -2) @ U"),)


class ChunkIntraDiagonalDropped(_ReferenceChunkMutant):
    """The within-chunk output drops the current token's own contribution (the Q K^T mask
    taken strictly below the diagonal)."""
    name = "chunk_intra_diagonal_dropped"
    mutations = (("QK = (qc @ kc.transpose(-1, -2)) * gamma",
                  "QK = ((qc @ kc.transpose(-1, -2)) * gamma).masked_fill(~strict, 0)"),)


class ChunkValuesOneRowLate(_ReferenceChunkMutant):
    """The chunked prefill reads v one row late: token t of a sequence gets token t+1's
    value, the last one the next sequence's first (a packed-stream offset off by one; past
    the batch's end it reads zeros, as a kernel reading padding would)."""
    name = "chunk_values_one_row_late"
    mutations = (("qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi]), chunks(vf[lo:hi])",
                  "qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi]), "
                  "chunks(torch.nn.functional.pad(vf, (0, 0, 0, 0, 0, 1))[lo + 1:hi + 1])"),)


class ChunkDecayMaskMultiplied(_ReferenceChunkMutant):
    """The within-chunk decay matrix masked by multiplying exp(G_i - G_j) by the causal mask
    instead of masking the exponent to -inf: above the diagonal exp(.) overflows to Inf where
    the chunk decays fast, and Inf * 0 is NaN."""
    name = "chunk_decay_mask_multiplied"
    mutations = (("gamma = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~incl, float(\"-inf\")))",
                  "gamma = torch.exp(G[..., :, None] - G[..., None, :]) * incl"),)


class ChunkFinalStateOfNextStart(_ReferenceChunkMutant):
    """Sequence n's final state is taken with its last partial chunk padded by the next rows of
    the packed batch, the outputs masked right: only the states carry the neighbour's tokens."""
    name = "chunk_final_state_of_next_start"
    mutations = (("qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi]), chunks(vf[lo:hi])",
                  "qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi + pad]), chunks(vf[lo:hi + pad])"),
                 ("                x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x\n",
                  "                x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, L + pad - x.shape[0]))\n"),
                 ("gc = chunks(gf[lo:hi, :, None])[..., 0]", "gc = chunks(gf[lo:hi + pad, :, None])[..., 0]"),
                 ("bc = chunks(bf[lo:hi, :, None])[..., 0]", "bc = chunks(bf[lo:hi + pad, :, None])[..., 0]"))


# ------------------------------------------------------------------ the held-out set
# class, base, where, incident, expect_ops, expect
_HELD_OUT: List[tuple] = [
    (BetaSigmoidBf16, "triton", "triton-source", "sigmoid(b) narrowed to bf16 in the gated recurrence (vLLM #53877)",
     RECURRENT[1:], ("precision", "state_precision")),
    (DecayAfterUpdate, "triton", "triton-source", "state decay applied after the delta update", RECURRENT,
     ("none",)),
    (PadSlotClampedToZero, "triton", "triton-source", "PAD slot -1 clamped to slot 0 (tokenspeed #700)", RECURRENT,
     ("pad_slots", "pad_rows", "boundary:pad_row", "misrouting")),
    (ValueHeadFromKeyHead, "triton", "triton-source", "v read at the q/k head index", RECURRENT,
     ("gva_head_mapping", "head_pattern", "misrouting")),
    (FinalStateNeverStored, "triton", "triton-source", "final state never stored (torch.empty garbage)",
     RECURRENT[:1], ("nonfinite", "zeros", "untouched")),
    (SpecStateWrittenOneColumnLate, "triton", "triton-source",
     "spec per-token states written one column late (ragged-spec slot indexing)", RECURRENT,
     ("misrouting", "time_shift", "spec_accepted_offset")),
    (ConvTapsReversed, "triton", "triton-source", "conv taps reversed (correlation vs convolution)", CONV,
     ("none",)),
    (ConvStateStoredFp16, "triton", "triton-source", "conv state stored through fp16 (hip-ep #403 kind)", CONV,
     ("precision", "state_precision")),
    (GateStoredLinear, "triton", "triton-source", "gate domain: exp(g) stored where ln-space g is expected",
     ("fused_gdn_gating",), ("none",)),
    (BetaNotSigmoided, "triton", "triton-source", "beta passed through without the sigmoid", ("fused_gdn_gating",),
     ("none",)),
    (NormRstdOverBlock, "triton", "triton-source", "RMSNormGated mean square reduced over the row block",
     ("rms_norm_gated",), ("norm_shape",)),
    (NormWeightOfGroupZero, "triton", "triton-source", "RMSNormGated: every group uses group 0's weights",
     ("rms_norm_gated",), ("channel_section",)),
    (QkSwappedInterleaved, "triton", "triton-source", "q and k swapped by the interleaved unpack",
     ("unpack_qkvz_ba",), ("misrouting",)),
    (VHeadsTiledOrder, "triton", "triton-glue", "GGUF tiled V-head order not undone (vLLM-2080Ti #107)",
     ("unpack_qkvz_ba",), ("misrouting", "head_pattern")),
    (PadSentinelSlotZero, "triton", "gdn_core", "slot 0 used as the padding sentinel (vLLM-2080Ti #93)",
     ("gdn_core",), ("pad_slots", "pad_rows", "boundary:pad_row", "misrouting")),
    (DecodeSlotsBatchScoped, "triton", "gdn_core", "decode state indices batch-scoped instead of pool-scoped "
     "(flashinfer #3145)", ("gdn_core",), ("misrouting", "pad_slots")),
    (PrefillSlotsSorted, "triton", "gdn_core", "prefill slot array sorted apart from the token ranges",
     ("gdn_core",), ("misrouting",)),
    (ChunkCarrySkipsDecay, "reference", "reference-source", "inter-chunk state carry drops the chunk decay",
     ("chunk_gated_delta_rule",), ("boundary:chunk", "chunk_boundary")),
    (ChunkIntraDiagonalDropped, "reference", "reference-source", "within-chunk output drops the diagonal term",
     ("chunk_gated_delta_rule",), ("none",)),
    # written 2026-12-05, after this stop's diagnosis changes (ops by role, outputs by record fields)
    (GatedDecodeALogNotExp, "triton", "triton-source", "fused in-kernel gating: A_log used without exp",
     RECURRENT[1:], ("gating_math",)),
    (H0ReadAtBatchRow, "triton", "triton-source", "initial state read at the batch row, not the pool slot",
     RECURRENT, ("misrouting",)),
    (ConvSiluBeforeBias, "triton", "triton-source", "conv SiLU applied before the bias", CONV, ("none",)),
    # written 2026-12-06, after the chunk_tail_next_times_zero hypothesis and the attribution's
    # PAD masking; expectations fixed before any diagnosis of them ran
    (ChunkValuesOneRowLate, "reference", "reference-source", "chunked prefill reads v one row late",
     ("chunk_gated_delta_rule",), ("time_shift", "boundary", "varlen_isolation")),
    (ChunkDecayMaskMultiplied, "reference", "reference-source",
     "within-chunk decay masked by multiplying (Inf * 0 above the diagonal)", ("chunk_gated_delta_rule",),
     ("nonfinite",)),
    (ChunkFinalStateOfNextStart, "reference", "reference-source",
     "last partial chunk's state padded with the next sequence's rows (outputs masked right)",
     ("chunk_gated_delta_rule",), ("chunk_boundary", "varlen_isolation", "boundary:sequence", "boundary")),
]


def _build() -> Dict[str, HeldOutFault]:
    faults = {}
    for cls, base, where, incident, ops, expect in _HELD_OUT:
        assert class_name(cls.name) == cls.__name__ and cls.__doc__, cls.__name__
        faults[cls.name] = HeldOutFault(name=cls.name, base=base, incident=incident, diagnosis_class="held-out",
                                        make=cls, where=where, target=f"{MODULE}:{cls.__name__}", expect_ops=ops,
                                        expect=expect)
    return faults


HELDOUT_FAULTS: Dict[str, HeldOutFault] = _build()

__all__ = ["HeldOutFault", "HELDOUT_FAULTS"] + [c.__name__ for c, *_ in _HELD_OUT]
