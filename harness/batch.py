"""The batch a layer step runs on: each entry resolved to its token range, slots and
spec-decode bookkeeping (`EntryPlan`), the PAD ids, and `CoreBatch` - the same step as
vLLM-style metadata tensors, what a backend's `gdn_core` receives. Below every stage: the
reference, the backends' composition and the cases read the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

PAD_SLOT_ID = -1      # vLLM's marker of a padded row's slot: touches nothing, outputs zeros
NULL_BLOCK_ID = 0     # vLLM's reserved null block: PAD rows may point here instead (pad_slot="null_block")


@dataclass
class EntryPlan:
    kind: str
    seq: int
    bos: int                     # token range of this entry within the step's batch
    eos: int
    conv_slot: int
    ssm_slots: List[int]         # spec / spec_read / migrate: the sequence's num_spec + 1 slots; else [slot]
    has_initial_state: bool
    num_accepted: int            # from the sequence's previous step (1 when none)
    migrate: int = 0             # > 0: the engine first moves the state from this column to column 0

    @property
    def tokens(self) -> int:
        return self.eos - self.bos

    @property
    def spec_read(self) -> bool:
        """Reads its state through the spec path (``num_accepted``, all its slots): a spec
        entry, or a zero-draft decode after accepted drafts under ``spec_state="offset"``."""
        return self.kind == "spec" or (self.kind == "decode" and self.num_accepted > 1)


@dataclass(frozen=True)
class CoreBatch:
    """Batch metadata handed to `Backend.gdn_core`, as vLLM's GDN attention metadata carries
    it: one row per entry (sequence or PAD row) of the step, in token order."""
    kinds: List[str]                        # per entry: prefill / decode / spec / pad
    query_start_loc: torch.Tensor           # [N+1] int32 token offsets of the entries
    has_initial_state: torch.Tensor         # [N] bool
    state_indices: torch.Tensor             # [N, num_spec+1] int32 slots (column 0 for non-spec; PAD_SLOT_ID pads)
    num_accepted_tokens: torch.Tensor       # [N] int32 (1 for entries with no accepted drafts)
    num_spec: int

    @classmethod
    def from_plan(cls, entries: List[EntryPlan], num_spec: int, device=None) -> "CoreBatch":
        """The metadata tensors of a step's resolved entries (after the engine's state migration)."""
        width = num_spec + 1
        rows = [list(e.ssm_slots if e.spec_read else [e.conv_slot]) for e in entries]
        rows = [(r + [PAD_SLOT_ID] * width)[:width] for r in rows]
        qsl = [0]
        for e in entries:
            qsl.append(qsl[-1] + e.tokens)
        return cls(kinds=[e.kind for e in entries],
                   query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
                   has_initial_state=torch.tensor([e.has_initial_state for e in entries], dtype=torch.bool,
                                                  device=device),
                   state_indices=torch.tensor(rows, dtype=torch.int32, device=device).reshape(len(entries), width),
                   num_accepted_tokens=torch.tensor([e.num_accepted for e in entries], dtype=torch.int32,
                                                    device=device),
                   num_spec=num_spec)

    def entries(self) -> List[EntryPlan]:
        """The per-entry plan back from the tensors (sequence ids are not part of the metadata:
        -1; migration already done: 0) - what a composition of ops iterates over."""
        qsl = self.query_start_loc.tolist()
        idx = self.state_indices.tolist()
        init = self.has_initial_state.tolist()
        acc = self.num_accepted_tokens.tolist()
        out = []
        for i, kind in enumerate(self.kinds):
            spec_read = kind == "spec" or (kind == "decode" and acc[i] > 1)
            out.append(EntryPlan(kind, -1, qsl[i], qsl[i + 1], idx[i][0], list(idx[i]) if spec_read else [idx[i][0]],
                                 bool(init[i]), acc[i]))
        return out
