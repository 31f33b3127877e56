"""Projection layouts, state layouts, weight conversion and TP sharding rules.

Knows nothing of backends (harness.optimized)."""
from .projection import LAYOUTS, pack_qkvz_ba, qkv_to_mixed, split_mixed_qkv, unpack_qkvz_ba
from .weights import GDNWeights, convert_checkpoint, detect_layout, from_checkpoint, to_checkpoint

__all__ = ["LAYOUTS", "pack_qkvz_ba", "unpack_qkvz_ba", "qkv_to_mixed", "split_mixed_qkv",
           "GDNWeights", "to_checkpoint", "from_checkpoint", "convert_checkpoint", "detect_layout"]
