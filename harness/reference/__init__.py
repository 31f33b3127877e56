"""Pure-torch GDN reference: ops and the fp64 layer oracle.

Runs on any torch device, in fp64 when given fp64. Imports nothing of harness.optimized.
"""
from .conv import PAD_SLOT_ID, causal_conv1d_fn, causal_conv1d_update
from .delta_rule import (chunk_gated_delta_rule, chunk_gated_delta_rule_checkpoints,
                         fused_recurrent_gated_delta_rule_packed_decode,
                         fused_sigmoid_gating_delta_rule_update, recurrent_gated_delta_rule)
from .gating import fused_gdn_gating, softplus
from .layer import OracleResult, oracle_step, run_oracle
from .norm import l2norm, out_proj, rms_norm_gated

__all__ = ["PAD_SLOT_ID", "causal_conv1d_fn", "causal_conv1d_update", "chunk_gated_delta_rule",
           "chunk_gated_delta_rule_checkpoints",
           "recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
           "fused_recurrent_gated_delta_rule_packed_decode", "fused_gdn_gating", "softplus", "l2norm", "out_proj",
           "rms_norm_gated", "OracleResult", "oracle_step", "run_oracle"]
