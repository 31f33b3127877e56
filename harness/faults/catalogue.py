"""The fault zoo: named, deliberately broken backends, each a real incident class.

Every fault is a `Backend` derived from a correct one - the project's `triton` backend
or the `reference` ops - with exactly one bug planted, and the smoke suite must catch
every one of them (`harness.faults.zoo.run_zoo`, `tests/test_zoo.py`). Where a bug lives:

* ``triton-source`` - inside a Triton kernel's source (index math, masks, strides, casts),
  planted by `harness.faults.mutate.mutate` as exact textual replacements of a kernel
  module of `harness/optimized/triton_kernels`, loaded as a fresh module;
* ``triton-glue`` - in the Python wrapper of a Triton kernel module (same mechanism);
* ``reference-source`` - inside the torch chunked delta rule (the op the triton backend
  lacks on the CPU), mutated the same way;
* ``python-glue`` - an adapter around a correct op (argument plumbing gone wrong);
* ``gdn_core`` - a whole-core entry (``Backend.gdn_core``) as fused ROCm / XPU paths have;
* ``weight-loader`` - the backend's own weight loading / TP sharding (``Backend.shard_params``).

Backends are named after their fault (`Backend.name` is the fault name, the class the
CamelCase of it) and load with ``--backend harness.faults.catalogue:<Class>``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

from .. import reference as ref
from harness.diagnosis.classes import FaultClass
from harness.reference.ops import op_names
from harness.optimized.compose import core_step
from ..layouts.projection import qkv_to_mixed
from ..layouts.tp import shard_params, shard_rows, shard_sections
from ..optimized.api import Backend, FilledOps
from ..optimized.reference_backend import ReferenceBackend
from ..optimized.triton_backend import TritonBackend
from .mutate import Replacement, kernel_module, mutate

MODULE = __name__


def module_ops(mod) -> List[str]:
    """The declared ops a (mutant) kernel module defines itself (not the ones it imports)."""
    return [op for op in op_names() if getattr(getattr(mod, op, None), "__module__", None) == mod.__name__]


@dataclass(frozen=True)
class Fault:
    name: str
    base: str                          # the correct backend it derives from: "triton" | "reference"
    incident: str                      # the real incident class it mirrors
    diagnosis_class: str               # what a report should point at: a `FaultClass` zoo name (or id)
    make: Callable[[], Backend]        # builds the faulty backend
    where: str = ""                    # triton-source | triton-glue | reference-source | python-glue | gdn_core
                                       # | weight-loader
    target: str = ""                   # load_backend spec: "harness.faults.catalogue:<Class>"

    def __post_init__(self):
        FaultClass.of(self.diagnosis_class)     # an unknown class string fails where declared (at import)

    @property
    def fault_class(self) -> FaultClass:
        return FaultClass.of(self.diagnosis_class)


def class_name(fault: str) -> str:
    return "".join(p.capitalize() for p in fault.split("_"))


# ------------------------------------------------------------------ bases
class _TritonMutant(TritonBackend):
    """The triton backend with the ops of one kernel module taken from a mutant of it."""
    module: str = ""
    mutations: Tuple[Replacement, ...] = ()
    append: str = ""

    def __init__(self):
        super().__init__()
        mod = mutate(kernel_module(self.module), self.mutations, self.append, tag=self.name)
        for op in module_ops(mod):
            setattr(self, op, getattr(mod, op))


def _reference_mutant(name: str, replacements, tag: str):
    """A function of a mutant of harness.reference.delta_rule."""
    return getattr(mutate("harness.reference.delta_rule", replacements, tag=tag), name)


class _ReferenceChunkMutant(ReferenceBackend):
    """The reference backend with chunk_gated_delta_rule from a mutant of the torch chunked form."""
    mutations: Tuple[Replacement, ...] = ()

    def __init__(self):
        self.chunk_gated_delta_rule = _reference_mutant("chunk_gated_delta_rule", self.mutations, self.name)


class _TritonCore(TritonBackend):
    """The triton ops behind a whole-core entry (`gdn_core`) composed as vLLM's layer does,
    with the reference filling what the triton backend lacks (chunk on the CPU)."""

    def _ops(self):
        return FilledOps(self, ReferenceBackend())

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        return core_step(ops, p, qkv_to_mixed(q, k, v), a, b, entries, conv_state, ssm_state,
                     self.ssm_state_layout, "recurrent", T, dev)

    def _layout(self, p) -> str:
        """The projection layout the core unpacks with."""
        return p.layout

    def gdn_core(self, mixed_qkvz, mixed_ba, p, batch, conv_state, ssm_state, norm):
        ops = self._ops()
        entries = batch.entries()
        q, k, v, z, b, a = ops.unpack_qkvz_ba(mixed_qkvz, mixed_ba, p.local, self._layout(p))
        return self._run_core(ops, p, q, k, v, a, b, entries, conv_state, ssm_state, mixed_qkvz.shape[0],
                              mixed_qkvz.device)


# ------------------------------------------------------------------ projections
class BaViewFromQkvzGroups(_TritonMutant):
    """b / a shape derived from mixed_qkvz (vLLM's old ``fix_query_key_value_ordering``).

    Old vLLM built the ba view as ``mixed_qkvz.size()[:-1] + (H, 2r)``: the per-key-head
    group geometry of qkvz, imposed on mixed_ba. This port keeps that view for every
    layout, so on a flat checkpoint (``[b_all | a_all]``) each "group" of 2r values is cut
    into r b's and r a's: b = [b_0..b_{r-1}, a_0..a_{r-1}, ...] - silently wrong b and a
    whenever H (per rank) > 1; harmless at H_local = 1, where the two orders coincide.
    Lives in the Python glue of the triton unpack module (the flat branch)."""
    name = "ba_view_from_qkvz_groups"
    module = "unpack"
    mutations = ((
        "        b, a = torch.split(mixed_ba, [HV, HV], dim=-1)\n",
        "        b, a = (t.reshape(*lead, HV) for t in torch.split(\n"
        "            mixed_ba.reshape(*mixed_qkvz.shape[:-1], H, 2 * r), [r, r], dim=-1))\n",
    ),)


class BaSplitFlatOnInterleaved(_TritonMutant):
    """ba split into two shards on the interleaved layout (the TP > 1 ba-sharding incident).

    vLLM shards in_proj_ba of Qwen3.5 (flat) as two sections [b | a]; a port reused that
    picture for Qwen3-Next, whose rank-local mixed_ba is interleaved per key head
    ``[b_g (r), a_g (r)]``. Its unpack kernel reads b at ``g*r`` and a at ``H*r + g*r``
    (``[b_all | a_all]``). The two arrangements coincide only when the rank holds ONE key
    head (H_local = 1): at real dims (H = 16) it is wrong at every TP degree up to 8; in the
    smoke suite it shows at TP 1 and at op level (H = 2), but not in the TP = 2 layer cases,
    whose shrunk dims leave H_local = 1. Lives in the Triton unpack kernel's index math."""
    name = "ba_split_flat_on_interleaved"
    module = "unpack"
    mutations = (
        ("src_ba = ba + i_t * stride_ba_t + (i_g * 2 * R) * stride_ba_c",
         "src_ba = ba + i_t * stride_ba_t + (i_g * R) * stride_ba_c"),
        ("tl.load(src_ba + (R + o_r) * stride_ba_c, mask=m_r)",
         "tl.load(src_ba + (H * R + o_r) * stride_ba_c, mask=m_r)"),
    )


class InterleavedCoreOnFlat(_TritonCore):
    """A fused core path that assumes the interleaved layout on a flat model (the ROCm
    incident: a fused GDN path unpacked Qwen3.5's flat projections as Qwen3-Next's
    interleaved ones; GSM8K 0.92 -> 0.0).

    `gdn_core` always unpacks mixed_qkvz / mixed_ba as interleaved - the layout of the model
    it was written for - and is otherwise the triton core. Exact on interleaved models,
    q / k / v and b / a scrambled on flat ones (z, unpacked by the layer, stays right).
    Like every interleaved / flat mix-up it is invisible where a rank holds one key head
    (H_local = 1: both layouts are then [q k v z]); real models have H_local >= 2 at TP <= 8."""
    name = "interleaved_core_on_flat"

    def _layout(self, p) -> str:
        return "interleaved"        # the bug: the model's own layout is never consulted


# ------------------------------------------------------------------ recurrent kernel: state, heads, strides
_H0 = "o_v[:, None] * s_h0v + o_k[None, :] * s_h0k"
_HT = "o_v[:, None] * s_htv + o_k[None, :] * s_htk"
_H0_T = "o_v[:, None] * s_h0k + o_k[None, :] * (s_h0k * V)"
_HT_T = "o_v[:, None] * s_htk + o_k[None, :] * (s_htk * V)"


class StateStoredTransposed(_TritonMutant):
    """Recurrent state stored transposed (the NPU port incident): the kernel addresses each
    head's state as a contiguous [K, V] tile (element (v, k) at ``k*V + v``) inside the
    [V, K] pool the layer hands it - reads and writes alike. Self-consistent over one call,
    wrong against every other reader of the pool; visible whenever K != V.
    Lives in the Triton recurrent kernel's state addressing."""
    name = "state_stored_transposed"
    module = "recurrent"
    mutations = (
        (f"h0 + slot * s_h0n + i_hv * s_h0h + {_H0}", f"h0 + slot * s_h0n + i_hv * s_h0h + {_H0_T}"),
        (f"h0 + i_n * s_h0n + i_hv * s_h0h + {_H0}", f"h0 + i_n * s_h0n + i_hv * s_h0h + {_H0_T}"),
        (f"ht + slot_t * s_htn + i_hv * s_hth + {_HT}", f"ht + slot_t * s_htn + i_hv * s_hth + {_HT_T}"),
        (f"ht + slot * s_htn + i_hv * s_hth + {_HT}", f"ht + slot * s_htn + i_hv * s_hth + {_HT_T}"),
        (f"ht + i_n * s_htn + i_hv * s_hth + {_HT}", f"ht + i_n * s_htn + i_hv * s_hth + {_HT_T}"),
    )


class QkHeadModH(_TritonMutant):
    """q / k heads mapped to value heads with the wrong grouping (GQA / GVA head mapping):
    the recurrent kernel takes q / k head ``hv % H`` (tiled) instead of ``hv // r``
    (grouped, how Qwen3-Next / Qwen3.5 repeat_interleave their key heads). Identical when
    r = 1 or H = 1; wrong otherwise. Lives in the Triton recurrent kernel's head index."""
    name = "qk_head_mod_h"
    module = "recurrent"
    mutations = (("i_h = i_hv // (HV // H)", "i_h = i_hv % H"),)


class QkvAssumedContiguous(_TritonMutant):
    """Non-contiguous q / k / v mishandled: the recurrent kernel computes token and head
    offsets as if q, k, v were contiguous (``t*H*K + h*K``) instead of using their strides.
    vLLM hands it views into the conv output (token stride 2*H*K + HV*V), as the packed
    decode and the layer do. Lives in the Triton recurrent kernel's pointer arithmetic."""
    name = "qkv_assumed_contiguous"
    module = "recurrent"
    mutations = (
        ("p_q = q + bos * s_qt + i_h * s_qh + o_k", "p_q = q + bos * (H * K) + i_h * K + o_k"),
        ("p_k = k + bos * s_kt + i_h * s_kh + o_k", "p_k = k + bos * (H * K) + i_h * K + o_k"),
        ("p_v = v + bos * s_vt + i_hv * s_vh + o_v", "p_v = v + bos * (HV * V) + i_hv * V + o_v"),
        ("p_q += s_qt\n", "p_q += H * K\n"),
        ("p_k += s_kt\n", "p_k += H * K\n"),
        ("p_v += s_vt\n", "p_v += HV * V\n"),
    )


class PadRowsUninitialised(_TritonMutant):
    """torch.empty output leaking garbage in padded rows: the recurrent kernel returns early
    on a PAD slot without zeroing the sequence's output rows (vLLM's kernels leave them
    uninitialised), and its output buffer comes from torch.empty. On a GPU the caching
    allocator hands back recycled blocks; on the CPU fresh pages are often zero, so the
    mutant fills its torch.empty buffers with NaN, as PyTorch's
    ``torch.utils.deterministic.fill_uninitialized_memory`` does, to make the leak
    reproducible. Lives in the Triton recurrent kernel's PAD branch."""
    name = "pad_rows_uninitialised"
    module = "recurrent"
    mutations = (
        ("            for t in range(0, L):\n"
         "                tl.store(p_o + t * s_ot, tl.zeros([BV], dtype=o.dtype.element_ty), mask=m_v)\n"
         "            return\n",
         "            return\n"),
        ("o = torch.empty(B, T, HV, V, dtype=v.dtype, device=dev)",
         "o = _uninitialised(B, T, HV, V, dtype=v.dtype, device=dev)"),
    )
    append = '''
def _uninitialised(*shape, dtype, device):
    """torch.empty as recycled GPU memory looks: never zero (fill_uninitialized_memory's NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device).fill_(float("nan"))
'''


class PadSentinelClampedToZero(_TritonMutant):
    """The PAD sentinel clamped to slot 0 while slot 0 belongs to a request: the recurrent
    kernel takes ``max(slot, 0)`` for its read slot - FlashInfer's bf16 decode redirects -1 to
    a reserved null block at slot 0, a convention carried into an engine (vLLM's -1 PAD)
    where slot 0 is an ordinary, live slot. Padded rows then read the live sequence's state
    and write their garbage back into it. Lives in the Triton recurrent kernel's slot load."""
    name = "pad_sentinel_clamped_to_zero"
    module = "recurrent"
    mutations = (("slot = tl.load(idx + i_n * s_in + i_read * s_is).to(tl.int64)",
                  "slot = tl.maximum(tl.load(idx + i_n * s_in + i_read * s_is).to(tl.int64), 0)"),)


class NullBlockIdOnLiveSlot(_TritonMutant):
    """Slot 0 taken for padding (vLLM's newest packed decode: ``slot <= 0`` is PAD, slot 0
    being NULL_BLOCK_ID) in an engine whose PAD is -1 and whose slot 0 belongs to a request:
    the sequence living in slot 0 is skipped - its outputs zero, its state never advanced.
    Lives in the Triton recurrent kernel's PAD test."""
    name = "null_block_id_on_live_slot"
    module = "recurrent"
    mutations = (("if (slot < 0) | (slot == pad_slot_id):", "if (slot <= 0) | (slot == pad_slot_id):"),)


class SsmStateStoredBf16(_TritonMutant):
    """The ssm state written back in bf16 when fp32 was asked for: every state store of the
    recurrent kernel goes through a bfloat16 cast (a hard-coded store dtype), so an fp32
    pool holds bf16-rounded states - error 2^-9 per step, compounding over a long decode.
    Lives in the Triton recurrent kernel's state stores."""
    name = "ssm_state_stored_bf16"
    module = "recurrent"
    mutations = tuple(
        (f"{p}\n{ind}tl.store(p_ht, b_h.to(ht.dtype.element_ty), mask=m_h)",
         f"{p}\n{ind}tl.store(p_ht, b_h.to(tl.bfloat16).to(ht.dtype.element_ty), mask=m_h)")
        for p, ind in ((f"p_ht = ht + slot_t * s_htn + i_hv * s_hth + {_HT}", " " * 16),
                       (f"p_ht = ht + slot * s_htn + i_hv * s_hth + {_HT}", " " * 12),
                       (f"p_ht = ht + i_n * s_htn + i_hv * s_hth + {_HT}", " " * 8)))


class BetaRoundedBf16(_TritonMutant):
    """beta rounded to bfloat16 on every step (a gate kept in the activation dtype of a bf16
    model while the state is fp32): each update ``u = beta (v - S k)`` carries a 2^-9
    relative error, every decode step, in every dtype the case runs. The drift lane's
    curve shows it bounded (it does not compound: the state forgets it at exp(g)); the
    per-step tolerance of an fp32 / fp16 case catches it. Lives in the Triton recurrent
    kernel's beta load (both the plain and the fused-gating path)."""
    name = "beta_rounded_bf16"
    module = "recurrent"
    mutations = (
        ("b_beta = (1.0 / (1.0 + tl.exp(-tl.load(p_b).to(GATE)))).to(ACC)",
         "b_beta = (1.0 / (1.0 + tl.exp(-tl.load(p_b).to(GATE)))).to(tl.bfloat16).to(ACC)"),
        ("b_beta = tl.load(p_b).to(ACC)", "b_beta = tl.load(p_b).to(tl.bfloat16).to(ACC)"),
    )


class ReadoutBufferFp16(_TritonMutant):
    """The delta rule's read-out o = S q written through a float16 buffer whatever the
    activation dtype (a scratch buffer sized for fp16 serving): 11-bit outputs in an fp32 /
    bf16 run, and Inf wherever |o| passes 65504 - over long horizons or large values a
    readout that overflows while the fp32 state is fine. Lives in the Triton recurrent
    kernel's output store."""
    name = "readout_buffer_fp16"
    module = "recurrent"
    mutations = (("        tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_v)",
                  "        tl.store(p_o, b_o.to(tl.float16).to(o.dtype.element_ty), mask=m_v)"),)


class QkL2normSkipped(_TritonMutant):
    """The in-kernel q / k l2norm skipped (use_qk_l2norm_in_kernel not honoured): q and k
    enter the delta rule unnormalised, so the state update ``u = beta (v - S k)`` no longer
    has |k| = 1 and decays / blows up. Lives in the Triton recurrent kernel.
    (Its sibling, eps outside the sqrt - ``x / (sqrt(sum x^2) + eps)`` - differs by ~eps/|x|,
    below fp32 tolerance unless a q / k row is near zero; the smoke suite has no such row.)"""
    name = "qk_l2norm_skipped"
    module = "recurrent"
    mutations = ((
        "            b_q = b_q / tl.sqrt(tl.sum(b_q * b_q) + 1e-6)\n"
        "            b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + 1e-6)\n",
        "            pass  # norm skipped\n",
    ),)


class ScaleAppliedToK(_TritonMutant):
    """The attention scale K^-0.5 applied to k instead of q: the state update then uses a
    scaled key (``S += u (s k)^T``, ``u = beta (v - S s k)``) - not a pure rescaling of the
    output. Lives in the Triton recurrent kernel."""
    name = "scale_applied_to_k"
    module = "recurrent"
    mutations = (("b_q = b_q * scale", "b_k = b_k * scale"),)


# ------------------------------------------------------------------ gating
class SoftplusThresholdInverted(_TritonMutant):
    """softplus threshold inverted in fused_gdn_gating: ``x if beta*x < threshold`` instead of
    ``x if beta*x > threshold`` - the linear branch taken for ordinary inputs, the log1p(exp)
    branch (at a clamped 0: log 2) above the threshold. Lives in the Triton gating kernel."""
    name = "softplus_threshold_inverted"
    module = "gating"
    mutations = (("big = bx > threshold", "big = bx < threshold"),)


class DtBiasAfterSoftplus(_TritonMutant):
    """dt_bias added after the softplus: ``g = -exp(A_log) * (softplus(a) + dt_bias)``
    instead of ``softplus(a + dt_bias)`` (Mamba's dt_bias belongs inside). Lives in the
    Triton gating kernel."""
    name = "dt_bias_after_softplus"
    module = "gating"
    mutations = (
        ("x = b_a + b_dt[None, :]", "x = b_a"),
        ("b_g = -tl.exp(b_A)[None, :] * sp", "b_g = -tl.exp(b_A)[None, :] * (sp + b_dt[None, :])"),
    )


# ------------------------------------------------------------------ conv
class ConvStateNotUpdatedOnDecode(_TritonMutant):
    """Conv state not updated on decode: the conv kernel's state-window rewrite is skipped
    on the plain decode path (causal_conv1d_update without num_accepted_tokens), so every
    decode step convolves over the same stale window. Lives in the Triton conv kernel."""
    name = "conv_state_not_updated_on_decode"
    module = "conv"
    mutations = ((
        "    if i_tb == 0:\n        # new state column",
        "    if (i_tb == 0) & (IS_SPEC or INIT_MODE != 2):\n        # new state column",
    ),)


class ConvWritesPadSlot(_TritonMutant):
    """Conv writes into PAD slots: the decode conv resolves its slot indices Python-style,
    so PAD_SLOT_ID = -1 means "the last slot" (as ``conv_state[-1]`` would): PAD rows are
    computed from, and written into, the pool's last slot - a slot another sequence owns.
    Lives in the Python glue of the triton conv module (causal_conv1d_update)."""
    name = "conv_writes_pad_slot"
    module = "conv"
    mutations = ((
        "    L_state = conv_state.shape[2]\n",
        "    if conv_state_indices is not None:   # PAD (-1) wraps to the last slot\n"
        "        conv_state_indices = torch.where(conv_state_indices == pad_slot_id, conv_state.shape[0] - 1,\n"
        "                                         conv_state_indices).to(conv_state_indices.dtype)\n"
        "    L_state = conv_state.shape[2]\n",
    ),)


class SpecConvOffsetOffByOne(_TritonMutant):
    """num_accepted_tokens offset off by one in the spec conv: the window offset is taken as
    num_accepted instead of num_accepted - 1 (clamped to the sequence, which keeps the reads
    in bounds and hides the crash, not the shift): the conv reads its prior inputs one
    column late and rewrites the state from there. Lives in the Triton conv kernel."""
    name = "spec_conv_offset_off_by_one"
    module = "conv"
    mutations = ((
        "off = tl.load(num_accepted + i_n * stride_nacc).to(tl.int64) - 1",
        "off = tl.minimum(tl.load(num_accepted + i_n * stride_nacc).to(tl.int64), L - 1)",
    ),)


# ------------------------------------------------------------------ norm
class GemmaNormWeight(_TritonMutant):
    """RMSNormGated with a Gemma-style ``(1 + w)`` weight (Qwen3-Next's gated norm uses plain
    ``w``; Qwen3-Next's *other* norms are zero-centred, a frequent mix-up). Lives in the
    Triton norm kernel."""
    name = "gemma_norm_weight"
    module = "norm"
    mutations = (("b_w = tl.load(weight + o_n * stride_w, mask=m_n, other=0.0).to(ACC)",
                  "b_w = 1.0 + tl.load(weight + o_n * stride_w, mask=m_n, other=0.0).to(ACC)"),)


class NormBeforeGateFlipped(ReferenceBackend):
    """RMSNormGated with norm_before_gate flipped: ``rmsnorm(x * act(z)) * w`` where
    ``rmsnorm(x) * w * act(z)`` was asked for, and vice versa (FLA's and HF's flags read
    the opposite way round). Python glue around the reference norm."""
    name = "norm_before_gate_flipped"

    @staticmethod
    def rms_norm_gated(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True, activation="silu",
                       out_dtype=None):
        return ref.rms_norm_gated(x, weight, z, eps, group_size, not norm_before_gate, activation, out_dtype)


# ------------------------------------------------------------------ chunked prefill (reference-derived)
class ChunkZeroInitialState(ReferenceBackend):
    """Initial state zeroed in chunked prefill (the port incident: its chunk kernel always
    started from zeros): a continued prefill (chunked prefill, or a prefill with history)
    forgets everything before the chunk. Python glue around the reference chunk."""
    name = "chunk_zero_initial_state"

    @staticmethod
    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        h0 = torch.zeros_like(initial_state) if initial_state is not None else None   # the bug
        return ref.chunk_gated_delta_rule(q, k, v, g, beta, scale, h0, output_final_state, cu_seqlens,
                                          use_qk_l2norm_in_kernel, state_layout, chunk_size)


class FinalStateSqueezeBatchOfOne(ReferenceBackend):
    """Batch of one broken by a squeeze: written for vLLM's ``[1, T, ...]`` varlen convention,
    the port drops the leading size-1 axis of its results with ``.squeeze(0)`` - the final
    states ``[N, HV, V, K]`` too. With one sequence in the prefill batch the sequence axis
    vanishes; the layer's ``final[i]`` then picks head 0's state and broadcasts it over every
    head of the slot. Python glue around the reference chunk."""
    name = "final_state_squeeze_batch_of_one"

    @staticmethod
    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        o, final = ref.chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state,
                                              cu_seqlens, use_qk_l2norm_in_kernel, state_layout, chunk_size)
        return o, (final.squeeze(0) if final is not None else None)


class ChunkTailEdgePadded(_ReferenceChunkMutant):
    """Chunk-boundary error for T not a multiple of 64: the last partial chunk is padded by
    repeating its last token instead of with zeros (an unmasked tail load), so the padding
    tokens enter the sequence's final state. Outputs stay right (the chunk is causal); the
    state carried to the next step is wrong whenever a sequence's length % 64 != 0.
    Lives in the torch chunked delta rule's source (reference-derived: the triton backend
    has no chunk kernel on the CPU)."""
    name = "chunk_tail_edge_padded"
    mutations = ((
        "x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x",
        "x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x",
    ),)


class VarlenStateLeak(_ReferenceChunkMutant):
    """State leaking between sequences of a varlen batch: the chunk kernel walks the packed
    token stream and loads an initial state only for the first sequence; each later sequence
    starts from its predecessor's final state. Lives in the torch chunked delta rule's source."""
    name = "varlen_state_leak"
    mutations = ((
        "        if initial_state is None:\n"
        "            S = torch.zeros(HV, K, V, dtype=acc, device=q.device)      # [K, V] inside\n",
        "        if n > 0:\n"
        "            pass   # carries the previous sequence's state\n"
        "        elif initial_state is None:\n"
        "            S = torch.zeros(HV, K, V, dtype=acc, device=q.device)      # [K, V] inside\n",
    ),)


class ChunkTailReadsPastEnd(_ReferenceChunkMutant):
    """A sequence's last chunk loads a whole 64-row tile of the packed stream, past the
    sequence's end, and masks the extra rows by multiplying them by 0 (not by a select):
    exact on finite inputs, NaN in the tail and the state when a later sequence's rows hold
    NaN / Inf (seen in FlashInfer 0.7.2's SM90 prefill, 2026-12-06). Lives in the torch
    chunked delta rule's source."""
    name = "chunk_tail_reads_past_end"
    mutations = (
        ("qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi]), chunks(vf[lo:hi])",
         "qc, kc, vc = chunks(qf[lo:hi + pad]), chunks(kf[lo:hi + pad]), chunks(vf[lo:hi + pad])"),
        ("                x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x\n",
         "                x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, L + pad - x.shape[0]))\n"
         "                x = x * (torch.arange(L + pad, device=x.device) < L).to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))\n"),
    )


class QkHeadsTiledChunk(_ReferenceChunkMutant):
    """q / k heads expanded with the wrong grouping in the chunked prefill: ``repeat``
    (tiles: head hv gets key head hv % H) instead of ``repeat_interleave`` (groups:
    hv // r). Lives in the torch chunked delta rule's source."""
    name = "qk_heads_tiled_chunk"
    mutations = (("return (q.repeat_interleave(r, dim=1), k.repeat_interleave(r, dim=1),",
                  "return (q.repeat(1, r, 1), k.repeat(1, r, 1),"),)


# ------------------------------------------------------------------ prefix-cache checkpoints (reference-derived)
class _ReferenceCheckpointMutant(ReferenceBackend):
    """The reference backend with chunk_gated_delta_rule_checkpoints from a mutant of it."""
    mutations: Tuple[Replacement, ...] = ()

    def __init__(self):
        self.chunk_gated_delta_rule_checkpoints = _reference_mutant("chunk_gated_delta_rule_checkpoints",
                                                                    self.mutations, self.name)


class CheckpointAtBlockStart(_ReferenceCheckpointMutant):
    """Prefix-cache checkpoint taken at the start of its block instead of at its end: the
    state saved for block j (tokens up to (j+1) * block) is the one the block started from,
    so a request restoring from it replays a whole block's tokens on top (vLLM align mode /
    SGLang mamba_track_interval bookkeeping). Lives in the checkpointing prefill's source."""
    name = "checkpoint_at_block_start"
    mutations = (
        ("            o, S = chunk_gated_delta_rule(q[b:b + 1, lo:hi]",
         "            start = S if S is not None else torch.zeros(1, *state_checkpoints.shape[1:], dtype=keep or "
         "torch.float32, device=q.device)\n            o, S = chunk_gated_delta_rule(q[b:b + 1, lo:hi]"),
        ("                state_checkpoints[c] = S[0].to(state_checkpoints.dtype)",
         "                state_checkpoints[c] = start[0].to(state_checkpoints.dtype)"),
    )


class CheckpointEveryChunkNotBlock(_ReferenceCheckpointMutant):
    """Chunk size and block size mixed up: checkpoints are written every 64 tokens (the
    chunk kernel's grid) where the block size was asked, so checkpoint j holds the state at
    (j+1) * 64; right only when the block is one chunk. Lives in the checkpointing prefill."""
    name = "checkpoint_every_chunk_not_block"
    mutations = (
        ("        for lo in range(bos, eos, checkpoint_every):", "        for lo in range(bos, eos, 64):"),
        ("            hi = min(lo + checkpoint_every, eos)", "            hi = min(lo + 64, eos)"),
        ("            if hi - lo == checkpoint_every:",
         "            if hi - lo == 64 and c < count and (lo - bos) // 64 < (eos - bos) // checkpoint_every:"),
    )


class CheckpointStoredBf16(_ReferenceCheckpointMutant):
    """Prefix-cache checkpoints stored through bfloat16 while the cold run keeps its state in
    fp32: a request restored from a checkpoint resumes from a state 2^-9 off the one the cold
    run carried on with. Within the fp32 chunk tolerance of the checkpoints themselves (8
    u_tf32), caught by the exact check that the checkpoint at a sequence's end equals the
    cold run's final state. Lives in the checkpointing prefill's source."""
    name = "checkpoint_stored_bf16"
    mutations = (
        ("                state_checkpoints[c] = S[0].to(state_checkpoints.dtype)",
         "                state_checkpoints[c] = S[0].to(torch.bfloat16).to(state_checkpoints.dtype)"),
    )


# ------------------------------------------------------------------ batch metadata (gdn_core)
class SpecUngatheredAb(_TritonCore):
    """Spec path using un-gathered a / b (vLLM's spec-decode gating bug): the spec tokens'
    gates are computed from a / b rows taken by position in the whole batch (``a[:n_spec]``)
    instead of the spec tokens' own rows (``a[spec_token_idx]``). Right when the spec
    tokens happen to lead the batch, wrong as soon as a non-spec entry precedes one.
    A whole-core entry (`gdn_core`) over the triton ops."""
    name = "spec_ungathered_ab"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        spec = [t for e in entries if e.kind == "spec" for t in range(e.bos, e.eos)]
        if spec:
            idx = torch.tensor(spec, dtype=torch.long, device=dev)
            a, b = a.clone(), b.clone()
            a[idx], b[idx] = a[:len(spec)].clone(), b[:len(spec)].clone()   # rows by position
        return super()._run_core(ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev)


class FreshOneTokenPrefillAsDecode(_TritonCore):
    """A fresh 1-token prefill treated as a decode: the batch builder classifies every
    1-token non-spec entry as a decode (query_len == 1) without checking that the sequence
    has a context, so a brand-new 1-token prompt reads its slot's stale conv window and ssm
    state (left by the slot's previous owner) instead of zeros. A whole-core entry."""
    name = "fresh_one_token_prefill_as_decode"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        entries = [dataclasses.replace(e, kind="decode", has_initial_state=True)
                   if e.kind == "prefill" and e.tokens == 1 else e for e in entries]
        return super()._run_core(ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev)


def _linear_gate_chunk(q, k, v, alpha, beta, *args, **kw):
    """A chunked prefill kernel taking the linear-space gate alpha = exp(g) (FlashInfer's
    convention): the reference over log(alpha)."""
    return ref.chunk_gated_delta_rule(q, k, v, torch.log(alpha), beta, *args, **kw)


class GateLogAsLinear(ReferenceBackend):
    """Gate domain mismatch: the chunk kernel takes the linear-space decay alpha = exp(g)
    (FlashInfer's chunk_gated_delta_rule; vLLM PR #32846 wraps it with ``g=torch.exp(g)``) and the
    adapter hands it the log-space g unconverted (FlashInfer's test_gdn_prefill_g_space: all-NaN
    output). Python glue: the declared domain is right, the conversion (`gate_to`) is skipped."""
    name = "gate_log_as_linear"
    gate_domains = {"chunk_gated_delta_rule": "linear"}

    @staticmethod
    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        alpha = g                                       # the bug: gate_to("linear", g) forgotten
        return _linear_gate_chunk(q, k, v, alpha, beta, scale, initial_state, output_final_state, cu_seqlens,
                                  use_qk_l2norm_in_kernel, state_layout, chunk_size)


class ZeroDraftReadsColumnZero(_TritonCore):
    """A zero-draft step after accepted drafts reads a stale state (vllm #39273, the most
    reported GDN spec bug of 2026; fixed in PRs #40738 / #52942): ngram / prompt-lookup
    proposers leave some requests without drafts; such a request runs as a plain decode,
    whose metadata points at block-table column 0 - but the step before accepted k > 1
    tokens and left the sequence's state in column k-1 (conv window at offset k-1). The
    decode continues from the state before the accepted drafts, and the sequence is
    corrupted from then on. Right whenever a decode follows a decode or a spec step that
    accepted one token. A whole-core entry (`gdn_core`) over the triton ops."""
    name = "zero_draft_reads_column_zero"

    def _run_core(self, ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev):
        entries = [dataclasses.replace(e, num_accepted=1, ssm_slots=e.ssm_slots[:1])
                   if e.kind == "decode" and e.spec_read else e for e in entries]      # the bug
        return super()._run_core(ops, p, q, k, v, a, b, entries, conv_state, ssm_state, T, dev)


def _uniform_offsets(offsets: torch.Tensor, width: int, total: int) -> torch.Tensor:
    """Sequence offsets as if every sequence had `width` tokens (clipped to the batch)."""
    n = offsets.shape[0] - 1
    return (torch.arange(n + 1, device=offsets.device) * width).clamp(max=total).to(offsets.dtype)


class SpecWidthFromIndexShape(TritonBackend):
    """Spec width taken from a tensor's shape instead of each request's draft count (vLLM's
    ``spec_state_indices_tensor.size(-1)`` as the width): the spec-path calls locate request
    n's tokens at ``n * (num_spec + 1)`` - the state-index row's width in the recurrent
    update, the conv state's spare columns in the conv - instead of at its query_start_loc.
    Requests with fewer drafts than the compiled maximum (ragged widths, a runtime K below
    it, zero-draft steps) then read their batch-mates' tokens and write outputs into their
    rows. Right whenever every spec request carries the compiled maximum of drafts.
    Python glue around the triton spec ops."""
    name = "spec_width_from_index_shape"

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                             num_accepted_tokens=None, query_start_loc=None, pad_slot_id=-1):
        if num_accepted_tokens is not None and query_start_loc is not None:     # the bug
            query_start_loc = _uniform_offsets(query_start_loc, conv_state.shape[-1] - weight.shape[1] + 2,
                                               x.shape[0])
        return super().causal_conv1d_update(x, conv_state, weight, bias, activation, conv_state_indices,
                                            num_accepted_tokens, query_start_loc, pad_slot_id)

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, *args, cu_seqlens=None, ssm_state_indices=None,
                                         num_accepted_tokens=None, **kw):
        if num_accepted_tokens is not None and cu_seqlens is not None:          # the bug
            cu_seqlens = _uniform_offsets(cu_seqlens, ssm_state_indices.shape[-1], q.shape[1])
        return super().fused_recurrent_gated_delta_rule(q, k, v, g, beta, *args, cu_seqlens=cu_seqlens,
                                                        ssm_state_indices=ssm_state_indices,
                                                        num_accepted_tokens=num_accepted_tokens, **kw)

    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, *args, cu_seqlens=None,
                                               ssm_state_indices=None, num_accepted_tokens=None, **kw):
        if num_accepted_tokens is not None and cu_seqlens is not None:          # the bug
            cu_seqlens = _uniform_offsets(cu_seqlens, ssm_state_indices.shape[-1], q.shape[1])
        return super().fused_sigmoid_gating_delta_rule_update(A_log, a, b, dt_bias, q, k, v, *args,
                                                              cu_seqlens=cu_seqlens,
                                                              ssm_state_indices=ssm_state_indices,
                                                              num_accepted_tokens=num_accepted_tokens, **kw)


# ------------------------------------------------------------------ weight loading (the backend's own TP sharding)
class BaTwoShardsOnInterleaved(TritonBackend):
    """in_proj_ba loaded as two shards [b | a] on the interleaved layout (vllm #35504, a
    weight-loader bug): the loader shards Qwen3-Next's ba - packed per key head
    ``[b_g (r), a_g (r)]`` - the way Qwen3.5's flat ``[b | a]`` is sharded (each half on its
    own), so every rank at TP > 1 holds rows of other key heads' b / a. The layer then runs
    consistently on the wrong projections: only a check against the full-weight TP=1
    projections sees it. The backend's own `shard_params`."""
    name = "ba_two_shards_on_interleaved"

    @staticmethod
    def shard_params(w, dims, layout, tp=1, rank=0, ba="sharded"):
        p = shard_params(w, dims, layout, tp, rank, ba)
        if layout == "interleaved" and ba == "sharded":
            p.w_ba = shard_sections(w.packed_in_proj(dims, layout)[1], [dims.HV, dims.HV], tp, rank)   # the bug
        return p


class ConvWeightSplitContiguous(TritonBackend):
    """conv1d weight split contiguously at TP > 1 instead of per q | k | v section: rank r
    gets rows ``[r * conv_dim / tp, (r+1) * conv_dim / tp)`` of the ``[q | k | v]`` channels,
    so its q channels convolve with other channels' taps (a loader treating conv1d as one
    ColumnParallel weight). The backend's own `shard_params`."""
    name = "conv_weight_split_contiguous"

    @staticmethod
    def shard_params(w, dims, layout, tp=1, rank=0, ba="sharded"):
        p = shard_params(w, dims, layout, tp, rank, ba)
        p.conv_weight = shard_rows(w.conv_weight, tp, rank)                                    # the bug
        if w.conv_bias is not None:
            p.conv_bias = shard_rows(w.conv_bias, tp, rank)
        return p


# ------------------------------------------------------------------ CUDA-graph capture (GPU only)
def _host_value(holder, key: str, t: torch.Tensor, fn):
    """What an engine keeps in host metadata: `fn(t)` read on the host on an eager call, and
    under CUDA-graph capture (no host reads there) the value the last eager call saw - which
    the captured graph then keeps for every replay."""
    from ..optimized.triton_kernels.common import capturing
    if not capturing(t):
        holder.__dict__[key] = fn(t)
    return holder.__dict__[key]


class SizeFrozenAtCapture(TritonBackend):
    """A batch size read on the host and frozen into the captured graph (vLLM's
    num_actual_tokens taken from host metadata at capture): the recurrent step processes the
    real rows the capture-time batch had, so a replay with more real rows leaves the extra
    rows' outputs zero and their states stale. Right in eager mode (read every call). GPU
    only: killed by `python -m harness.tools.cudagraph --zoo`."""
    name = "size_frozen_at_capture"
    cuda_graphs = True

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, cu_seqlens=None, ssm_state_indices=None, **kw):
        def real(idx):      # rows up to the last real one, and their tokens
            col = idx.reshape(idx.shape[0], -1)[:, 0]
            n = int((col >= 0).nonzero().max()) + 1 if bool((col >= 0).any()) else 0
            return n, int(cu_seqlens[n])
        n, t = _host_value(self, "_frozen", ssm_state_indices, real)
        o = torch.zeros(*q.shape[:2], *v.shape[2:], dtype=v.dtype, device=v.device)
        if n:
            o[:, :t], _ = super().fused_recurrent_gated_delta_rule(
                q[:, :t], k[:, :t], v[:, :t], g[:, :t], beta[:, :t], cu_seqlens=cu_seqlens[:n + 1],
                ssm_state_indices=ssm_state_indices[:n], **{**kw, "num_accepted_tokens": (
                    kw["num_accepted_tokens"][:n] if kw.get("num_accepted_tokens") is not None else None)})
        return o, kw.get("initial_state")


class HostBranchOnPadRows(TritonBackend):
    """A host-side branch on the batch's contents: without PAD rows the slot of row i is
    taken to be i (a fast path skipping the index gather), else the indices are used. In
    eager mode the branch is taken per call and right whenever it is taken; a graph captured
    on a batch without PAD rows keeps the fast path, so replays write PAD rows into slots
    nobody owns. GPU only: killed by `python -m harness.tools.cudagraph --zoo`."""
    name = "host_branch_on_pad_rows"
    cuda_graphs = True

    def fused_recurrent_gated_delta_rule(self, *a, ssm_state_indices=None, **kw):
        plain = _host_value(self, "_plain", ssm_state_indices, lambda idx: bool(
            (idx == torch.arange(idx.numel(), dtype=idx.dtype, device=idx.device).reshape(idx.shape)).all()))
        if plain:
            ssm_state_indices = torch.arange(ssm_state_indices.numel(), dtype=ssm_state_indices.dtype,
                                             device=ssm_state_indices.device).reshape(ssm_state_indices.shape)
        return super().fused_recurrent_gated_delta_rule(*a, ssm_state_indices=ssm_state_indices, **kw)


# ------------------------------------------------------------------ the catalogue
_INCIDENTS: List[Tuple[type, str, str, str, str]] = [
    # class, base, where, incident, diagnosis class
    (BaViewFromQkvzGroups, "triton", "triton-glue",
     "b/a shape derived from mixed_qkvz (old vLLM fix_query_key_value_ordering)", "projection layout: b, a"),
    (BaSplitFlatOnInterleaved, "triton", "triton-source",
     "ba split into two shards [b|a] on the interleaved layout at TP > 1", "projection layout: b, a"),
    (InterleavedCoreOnFlat, "triton", "gdn_core",
     "fused path assuming the interleaved layout on a flat model (ROCm, GSM8K 0.92 -> 0.0)",
     "projection layout: core"),
    (StateStoredTransposed, "triton", "triton-source",
     "recurrent state stored transposed, [K,V] into a [V,K] pool (NPU port)", "ssm state layout"),
    (QkHeadModH, "triton", "triton-source", "q/k heads mapped hv % H instead of hv // r", "GVA head mapping"),
    (QkHeadsTiledChunk, "reference", "reference-source",
     "q/k heads expanded with repeat instead of repeat_interleave", "GVA head mapping"),
    (QkvAssumedContiguous, "triton", "triton-source",
     "non-contiguous q/k/v inputs read with contiguous strides", "strides"),
    (PadRowsUninitialised, "triton", "triton-source", "torch.empty output leaking garbage in padded rows",
     "PAD rows"),
    (PadSentinelClampedToZero, "triton", "triton-source",
     "PAD sentinel -1 clamped to slot 0 while slot 0 belongs to a request (FlashInfer null-block redirect)",
     "PAD slots: live slot 0"),
    (NullBlockIdOnLiveSlot, "triton", "triton-source",
     "slot 0 taken for padding (NULL_BLOCK_ID) while slot 0 belongs to a request", "PAD slots: live slot 0"),
    (SsmStateStoredBf16, "triton", "triton-source", "ssm state written back in bf16 when fp32 was asked for",
     "state precision"),
    (BetaRoundedBf16, "triton", "triton-source", "beta rounded to bf16 every step (long-horizon drift lane)",
     "gating precision"),
    (ReadoutBufferFp16, "triton", "triton-source",
     "an fp16 read-out buffer overflowing (o = S q stored through fp16 whatever the dtype; long-horizon drift lane)",
     "output precision"),
    (QkL2normSkipped, "triton", "triton-source", "in-kernel q/k l2norm skipped", "q/k norm"),
    (ScaleAppliedToK, "triton", "triton-source", "attention scale applied to k instead of q", "q/k scale"),
    (SoftplusThresholdInverted, "triton", "triton-source", "softplus threshold inverted", "gating math"),
    (DtBiasAfterSoftplus, "triton", "triton-source", "dt_bias added after the softplus", "gating math"),
    (ConvStateNotUpdatedOnDecode, "triton", "triton-source", "conv state not updated on decode", "conv state"),
    (ConvWritesPadSlot, "triton", "triton-glue", "conv writes into PAD slots (-1 wraps to the last slot)",
     "PAD slots"),
    (SpecConvOffsetOffByOne, "triton", "triton-source", "num_accepted_tokens offset off by one (spec conv window)",
     "spec decode: accepted-token offset"),
    (GemmaNormWeight, "triton", "triton-source", "RMSNormGated with a Gemma-style (1 + w) weight", "gated norm"),
    (NormBeforeGateFlipped, "reference", "python-glue", "RMSNormGated norm_before_gate flipped", "gated norm"),
    (ChunkZeroInitialState, "reference", "python-glue", "initial state zeroed in chunked prefill (port incident)",
     "state init: chunked prefill"),
    (FinalStateSqueezeBatchOfOne, "reference", "python-glue", "batch of one broken by a squeeze", "batch shape"),
    (GateLogAsLinear, "reference", "python-glue",
     "log-space g handed to a kernel taking the linear decay alpha = exp(g) (FlashInfer chunk; all-NaN)",
     "gate domain"),
    (ChunkTailEdgePadded, "reference", "reference-source", "chunk-boundary error for T not a multiple of 64",
     "chunk boundary"),
    (VarlenStateLeak, "reference", "reference-source", "state leaking between sequences of a varlen batch",
     "varlen isolation"),
    (ChunkTailReadsPastEnd, "reference", "reference-source",
     "a sequence's last chunk reads a 64-row tile past its end, masked by multiplying (FlashInfer SM90 prefill)",
     "varlen isolation"),
    (CheckpointAtBlockStart, "reference", "reference-source",
     "prefix-cache checkpoint taken at its block's start instead of its end", "prefix-cache checkpoints"),
    (CheckpointEveryChunkNotBlock, "reference", "reference-source",
     "checkpoints every 64-token chunk where the block size was asked (chunk vs block size mixed up)",
     "prefix-cache checkpoints"),
    (CheckpointStoredBf16, "reference", "reference-source",
     "prefix-cache checkpoint stored in bf16 while the cold run keeps an fp32 state (restored state narrower)",
     "prefix-cache checkpoints"),
    (SpecUngatheredAb, "triton", "gdn_core", "spec path gating with un-gathered a/b rows",
     "spec decode: token gather"),
    (FreshOneTokenPrefillAsDecode, "triton", "gdn_core",
     "fresh 1-token prefill treated as a decode, reading a stale slot", "state init: fresh sequence"),
    (ZeroDraftReadsColumnZero, "triton", "gdn_core",
     "zero-draft step after accepted drafts reads column 0 (vllm #39273; PRs #40738, #52942)",
     "spec decode: zero-draft state"),
    (BaTwoShardsOnInterleaved, "triton", "weight-loader",
     "in_proj_ba sharded as two shards [b|a] on the interleaved layout at TP > 1 (vllm #35504)",
     "weight loading: TP shards"),
    (ConvWeightSplitContiguous, "triton", "weight-loader",
     "conv1d weight split contiguously at TP > 1 instead of per q|k|v section", "weight loading: TP shards"),
    (SpecWidthFromIndexShape, "triton", "python-glue",
     "spec width from the state-index tensor's shape, not each request's draft count",
     "spec decode: ragged widths"),
]


# Faults that exist only under CUDA-graph capture: no suite case can kill them (eager they are
# right), so the suite zoo lists them and leaves them to `python -m harness.tools.cudagraph --zoo`.
_GRAPH_INCIDENTS: List[Tuple[type, str, str, str, str]] = [
    (SizeFrozenAtCapture, "triton", "cuda-graph",
     "a batch size read on the host at capture and frozen into the graph (replays process the capture's rows)",
     "CUDA graph: frozen size"),
    (HostBranchOnPadRows, "triton", "cuda-graph",
     "a host-side branch on batch contents (no PAD rows -> slot = row) kept by the graph for every replay",
     "CUDA graph: host branch"),
]
GRAPH_ONLY = ("GPU only: exists only under CUDA-graph capture (eager it is right); killed by "
              "`python -m harness.tools.cudagraph --zoo`, not by a suite")


def _build(incidents=None) -> Dict[str, Fault]:
    faults = {}
    for cls, base, where, incident, diag in (_INCIDENTS if incidents is None else incidents):
        assert class_name(cls.name) == cls.__name__, (cls.name, cls.__name__)
        assert cls.__doc__, cls.__name__
        faults[cls.name] = Fault(name=cls.name, base=base, incident=incident, diagnosis_class=diag, make=cls,
                                 where=where, target=f"{MODULE}:{cls.__name__}")
    return faults


FAULTS: Dict[str, Fault] = _build()
GRAPH_FAULTS: Dict[str, Fault] = _build(_GRAPH_INCIDENTS)


def fault_of(backend_name: str) -> Fault:
    """The fault whose backend is `backend_name` (its fault name or its load spec)."""
    for f in (*FAULTS.values(), *GRAPH_FAULTS.values()):
        if backend_name in (f.name, f.target):
            return f
    raise KeyError(backend_name)


__all__ = ["Fault", "FAULTS", "GRAPH_FAULTS", "GRAPH_ONLY", "class_name", "fault_of"] + \
    [cls.__name__ for cls, *_ in (*_INCIDENTS, *_GRAPH_INCIDENTS)]

# sanity: names are snake_case
assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in (*FAULTS, *GRAPH_FAULTS))
