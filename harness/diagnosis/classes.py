"""The fault-class vocabulary, declared once: what a diagnosis names, what the zoo's faults
claim, and the bridge between the two.

A `FaultClass` is a str (its id, e.g. ``"projection_layout_ba"``), so results.json and
every comparison keep the plain strings. Each carries `label` (what a report calls it; None
for classes no hypothesis can name, e.g. faults that exist only under CUDA-graph capture)
and `zoo` (the short name the fault catalogue writes in its entries and zoo reports).
"""
from __future__ import annotations

from enum import StrEnum
from typing import Dict, Optional


class FaultClass(StrEnum):
    def __new__(cls, value: str, label: Optional[str], zoo: Optional[str] = None):
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.label = label
        obj.zoo = zoo or label       # the catalogue's name: the label unless a shorter one is given
        return obj

    PROJECTION_LAYOUT_BA = ("projection_layout_ba", "projection layout: b, a")
    PROJECTION_LAYOUT_CORE = ("projection_layout_core", "projection layout: core (q, k, v, b, a)",
                              "projection layout: core")
    SSM_STATE_LAYOUT = ("ssm_state_layout", "ssm state layout")
    GVA_HEAD_MAPPING = ("gva_head_mapping", "GVA head mapping")
    STRIDES = ("strides", "strides (non-contiguous inputs)", "strides")
    PAD_ROWS = ("pad_rows", "PAD rows")
    PAD_SLOTS = ("pad_slots", "PAD / untouched slots", "PAD slots")
    PAD_SLOT0 = ("pad_slot0", "PAD slots: live slot 0")
    WEIGHT_SHARDING = ("weight_sharding", "weight loading: TP shards")
    PREFIX_CHECKPOINTS = ("prefix_checkpoints", "prefix-cache checkpoints")
    STATE_PRECISION = ("state_precision", "state precision")
    OUTPUT_PRECISION = ("output_precision", "output precision (read-out buffer)", "output precision")
    QK_NORM = ("qk_norm", "q/k L2 norm", "q/k norm")
    QK_SCALE = ("qk_scale", "q/k scale")
    GATING_MATH = ("gating_math", "gating math")
    GATING_PRECISION = ("gating_precision", "gating precision")
    CONV_STATE = ("conv_state", "conv state")
    SPEC_ACCEPTED_OFFSET = ("spec_accepted_offset", "spec decode: accepted-token offset")
    SPEC_TOKEN_GATHER = ("spec_token_gather", "spec decode: token gather")
    SPEC_ZERO_DRAFT = ("spec_zero_draft", "spec decode: zero-draft state")
    SPEC_RAGGED_WIDTH = ("spec_ragged_width", "spec decode: ragged widths")
    GATED_NORM = ("gated_norm", "gated norm (RMSNormGated)", "gated norm")
    STATE_INIT_CHUNKED = ("state_init_chunked", "state init: chunked prefill / history", "state init: chunked prefill")
    STATE_INIT_FRESH = ("state_init_fresh", "state init: fresh sequence")
    BATCH_SHAPE = ("batch_shape", "batch shape")
    CHUNK_BOUNDARY = ("chunk_boundary", "chunk boundary")
    VARLEN_ISOLATION = ("varlen_isolation", "varlen isolation")
    GATE_DOMAIN = ("gate_domain", "gate domain (log / linear / log2)", "gate domain")
    # faults no hypothesis names: eager runs are right (CUDA graphs), or scored by their own expectations
    CUDA_GRAPH_FROZEN_SIZE = ("cuda_graph_frozen_size", None, "CUDA graph: frozen size")
    CUDA_GRAPH_HOST_BRANCH = ("cuda_graph_host_branch", None, "CUDA graph: host branch")
    HELD_OUT = ("held_out", None, "held-out")
    # a kernel that crashes, aborts or hangs: the pool's structured error names it, no hypothesis
    PROCESS = ("process", None, "process")

    @classmethod
    def of(cls, text: str) -> "FaultClass":
        """The class whose id or zoo name is `text`; ValueError naming the known ones otherwise."""
        found = _BY_TEXT.get(text)
        if found is None:
            raise ValueError(f"unknown fault class {text!r}; known: {sorted(c.zoo for c in cls)}")
        return found

    @property
    def diagnosable(self) -> bool:
        return self.label is not None


_BY_TEXT: Dict[str, FaultClass] = {**{c.value: c for c in FaultClass}, **{c.zoo: c for c in FaultClass}}

# id -> report label, of the classes a diagnosis can name
CLASSES: Dict[str, str] = {c.value: c.label for c in FaultClass if c.diagnosable}
# the catalogue's class strings -> diagnosis ids (the classes a diagnosis can name)
CATALOGUE_CLASSES: Dict[str, str] = {c.zoo: c.value for c in FaultClass if c.diagnosable}
