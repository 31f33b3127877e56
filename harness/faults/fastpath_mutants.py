"""Faults planted in the production fast-path adapters (flashinfer, sglang, vLLM's FlashInfer
prefill): each a real incident class, each derived from the correct backend with one
conversion gone wrong, for the kill run on a GPU (scripts/device_fastpaths.sh) and, over fake
kernel modules, the CPU tests. Load with ``--backend harness.faults.fastpath_mutants:<Class>``;
``modules=`` / ``platform=`` pass through to the base backend (the fakes).
"""
from __future__ import annotations

from ..optimized.flashinfer_backend import FlashinferBackend
from ..optimized.sglang_backend import SglangBackend
from ..optimized.vllm_backend import VllmBackend, load_vllm


class FiGateLogAsLinear(FlashinferBackend):
    """FlashInfer's chunk takes the linear decay alpha = exp(g); the adapter declares it log
    space, so g reaches it unconverted (test_gdn_prefill_g_space: all-NaN). Class: gate domain."""
    name = "fi_gate_log_as_linear"
    gate_domains = dict(FlashinferBackend.gate_domains, chunk_gated_delta_rule="log")


class FiNullRowUnshifted(FlashinferBackend):
    """The null row in front of FlashInfer's pool forgotten: harness slot s goes to row s, so
    every sequence reads and writes its neighbour's state, and the bf16 path's PAD redirect to
    row 0 lands on a live slot (tokenspeed #700: -1 clamped to 0). Class: PAD / untouched slots."""
    name = "fi_null_row_unshifted"

    @staticmethod
    def _row(slot: int, pad_slot_id: int) -> int:
        return -1 if slot == pad_slot_id or slot < 0 else slot


class FiChunkZeroInitialState(FlashinferBackend):
    """The prefill's initial state dropped on the way into FlashInfer (the port incident: every
    chunk from zeros). Class: state init, chunked prefill."""
    name = "fi_chunk_zero_initial_state"

    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, *args, **kw):
        return super().chunk_gated_delta_rule(q, k, v, g, beta, scale, None, *args, **kw)


class SglangVerifyReadsColumn0(SglangBackend):
    """SGLang's verify handed slot column 0 whatever was accepted (vllm #39273's stale-column
    read). Class: spec decode, accepted-token offset."""
    name = "sglang_verify_reads_column_0"

    def fused_sigmoid_gating_delta_rule_update(self, *args, **kw):
        kw["num_accepted_tokens"] = None
        return super().fused_sigmoid_gating_delta_rule_update(*args, **kw)


class VllmFiWrapperGateNotExp(VllmBackend):
    """vLLM's fi_chunk_gated_delta_rule passing ``g=fi_g`` instead of ``torch.exp(fi_g)`` (the
    regression vllm PR #32846 fixed): a mutant of the installed layer file. Class: gate domain."""
    name = "vllm_fi_wrapper_gate_not_exp"

    def __init__(self, variant: str = "flashinfer", modules=None, layer_source=None, platform=None):
        try:
            src = layer_source if layer_source is not None else load_vllm().get("layer_source")
        except ImportError:
            src = None
        if src is not None:
            bad = src.replace("g=torch.exp(fi_g),", "g=fi_g,")
            if bad == src:
                raise RuntimeError("vLLM's fi_chunk_gated_delta_rule no longer passes g=torch.exp(fi_g)")
            src = bad
        super().__init__(variant=variant, modules=modules, layer_source=src, platform=platform)
        self.name = self.__class__.name


MUTANTS = (FiGateLogAsLinear, FiNullRowUnshifted, FiChunkZeroInitialState, SglangVerifyReadsColumn0,
           VllmFiWrapperGateNotExp)
