"""The batch a layer step runs on: each entry resolved to its token range, slots and
spec-decode bookkeeping (`EntryPlan`), and the PAD ids. Below every stage: the reference,
the backends' composition and the cases read the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

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
