"""Catalogue faults planted in vLLM's own GDN kernel sources (the mutation check on real code).

Each class is the `vllm` backend with one kernel module of vLLM (or the Qwen GDN layer's
unpack functions) replaced by a mutant: exact textual replacements of the installed
source (`harness.faults.mutate`), loaded as a fresh module. vLLM itself is never touched.
Each class's comment names the catalogue fault (harness/faults/catalogue.py) it mirrors.
Load one with ``--backend harness.faults.vllm_mutants:<Class>``; `MUTANTS` lists them.
Without vLLM every mutant loads and skips with the reason.
"""
from __future__ import annotations

from typing import Tuple

from ..optimized.vllm_backend import LAYER_MODULE, MODULES, VllmBackend, load_vllm
from .mutate import Replacement, apply_replacements, mutate


class _VllmMutant(VllmBackend):
    key: str = ""                                  # a key of MODULES, or "layer"
    mutations: Tuple[Replacement, ...] = ()

    def __init__(self):
        try:
            found = load_vllm()
        except ImportError:
            super().__init__()
            return
        if self.key == "layer":
            src = apply_replacements(found["layer_source"], self.mutations, where=LAYER_MODULE)
            super().__init__(layer_source=src)
        else:
            super().__init__(modules={self.key: mutate(MODULES[self.key], self.mutations, tag=self.name)})


class VllmInterleavedUnpackOnFlat(_VllmMutant):
    """prepare_gdn_attention_core_inputs always takes the interleaved (Qwen3-Next) branch:
    the ROCm incident (a fused path assuming the interleaved layout on a flat model)."""
    name = "vllm_interleaved_unpack_on_flat"
    # mirrors the catalogue fault: interleaved_core_on_flat
    key = "layer"
    mutations = (("        if not self.gqa_interleaved_layout:\n            # Qwen3.5",
                  "        if False:\n            # Qwen3.5"),)


_H = "i_hv * V * K + o_v[:, None] * K + o_k[None, :]"
_H_T = "i_hv * V * K + o_v[:, None] + o_k[None, :] * V"


class VllmStateStoredTransposed(_VllmMutant):
    """fused_recurrent's state read and written as [K, V] tiles inside the [V, K] pool."""
    name = "vllm_state_stored_transposed"
    # mirrors the catalogue fault: state_stored_transposed
    key = "recurrent"
    mutations = (
        (f"p_h0 = p_h0 + {_H}\n        b_h += tl.load", f"p_h0 = p_h0 + {_H_T}\n        b_h += tl.load"),
        (f"final_state_idx * stride_final_state_token\n                p_ht = p_ht + {_H}",
         f"final_state_idx * stride_final_state_token\n                p_ht = p_ht + {_H_T}"),
        (f"(bos + i_t) * stride_final_state_token\n            p_ht = p_ht + {_H}",
         f"(bos + i_t) * stride_final_state_token\n            p_ht = p_ht + {_H_T}"),
    )


class VllmQkHeadModH(_VllmMutant):
    """fused_recurrent maps value head hv to q / k head hv % H instead of hv // r."""
    name = "vllm_qk_head_mod_h"
    # mirrors the catalogue fault: qk_head_mod_h
    key = "recurrent"
    mutations = (("    i_h = i_hv // (HV // H)\n    if IS_VARLEN:", "    i_h = i_hv % H\n    if IS_VARLEN:"),)


class VllmSpecConvOffsetOffByOne(_VllmMutant):
    """causal_conv1d_update's spec window read at num_accepted instead of num_accepted - 1."""
    name = "vllm_spec_conv_offset_off_by_one"
    # mirrors the catalogue fault: spec_conv_offset_off_by_one
    key = "conv"
    mutations = (("tl.load(num_accepted_tokens_ptr + idx_seq).to(tl.int64) - 1\n",
                  "tl.load(num_accepted_tokens_ptr + idx_seq).to(tl.int64)\n"),)


class VllmSpecStateOffsetOffByOne(_VllmMutant):
    """fused_recurrent reads the spec state at slot [num_accepted] instead of [num_accepted - 1]."""
    name = "vllm_spec_state_offset_off_by_one"
    # mirrors the catalogue fault: num_accepted_tokens offset off by one (catalogue: spec_conv_offset_off_by_one, state side)
    key = "recurrent"
    mutations = (("i_t = tl.load(num_accepted_tokens + i_n).to(tl.int64) - 1",
                  "i_t = tl.load(num_accepted_tokens + i_n).to(tl.int64)"),)


class VllmDtBiasAfterSoftplus(_VllmMutant):
    """fused_post_conv_prep's gating adds dt_bias after the softplus."""
    name = "vllm_dt_bias_after_softplus"
    # mirrors the catalogue fault: dt_bias_after_softplus
    key = "post_conv"
    mutations = (("x = a_vals + dt_bias_val", "x = a_vals"),
                 ("g_vals = -tl.exp(A_log_val) * sp", "g_vals = -tl.exp(A_log_val) * (sp + dt_bias_val)"))


class VllmSoftplusThresholdInverted(_VllmMutant):
    """The packed decode's softplus takes x itself below the threshold, log1p(exp(x)) above."""
    name = "vllm_softplus_threshold_inverted"
    # mirrors the catalogue fault: softplus_threshold_inverted
    key = "recurrent"
    mutations = (("tl.where(x <= SOFTPLUS_THRESHOLD, tl.log(1.0 + tl.exp(x)), x)",
                  "tl.where(x > SOFTPLUS_THRESHOLD, tl.log(1.0 + tl.exp(x)), x)"),)


MUTANTS = (VllmInterleavedUnpackOnFlat, VllmStateStoredTransposed, VllmQkHeadModH, VllmSpecConvOffsetOffByOne,
           VllmSpecStateOffsetOffByOne, VllmDtBiasAfterSoftplus, VllmSoftplusThresholdInverted)
