"""The reference ops as a backend: the harness's own baseline, at the backend's dtypes
(fp32 math for fp16 / bf16 / fp32 inputs, as kernels do)."""
from __future__ import annotations

from .. import reference as ref
from ..layouts.projection import unpack_qkvz_ba
from .api import Backend


class ReferenceBackend(Backend):
    name = "reference"
    description = "pure-torch reference ops (harness.reference) run at the case dtypes"
    decode_paths = ("recurrent", "sigmoid_gating", "packed")

    unpack_qkvz_ba = staticmethod(unpack_qkvz_ba)
    causal_conv1d_fn = staticmethod(ref.causal_conv1d_fn)
    causal_conv1d_update = staticmethod(ref.causal_conv1d_update)
    fused_gdn_gating = staticmethod(ref.fused_gdn_gating)
    chunk_gated_delta_rule = staticmethod(ref.chunk_gated_delta_rule)
    chunk_gated_delta_rule_checkpoints = staticmethod(ref.chunk_gated_delta_rule_checkpoints)
    fused_recurrent_gated_delta_rule = staticmethod(ref.recurrent_gated_delta_rule)
    fused_sigmoid_gating_delta_rule_update = staticmethod(ref.fused_sigmoid_gating_delta_rule_update)
    fused_recurrent_gated_delta_rule_packed_decode = staticmethod(ref.fused_recurrent_gated_delta_rule_packed_decode)
    rms_norm_gated = staticmethod(ref.rms_norm_gated)
