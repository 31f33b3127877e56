"""The seam between the cases and what judges them: one `Comparison` per compared output.

What an output is - a per-step layer output, a final state, slots that must stay untouched,
PAD rows that must be zeros - travels as fields (`kind`, `step`, `policy_key`), never parsed
back out of the output's name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

KINDS = ("out", "state", "untouched", "pad_rows")


@dataclass(frozen=True)
class Comparison:
    output: str                     # the name reports show (unique within a case)
    actual: Any                     # the backend's tensor (anything, until checked structurally)
    expected: Any                   # the reference's tensor
    token_dim: Optional[int]        # the axis of tokens (per-token metrics), None for states
    policy_key: str                 # tolerance policy entry (suites/tolerances.toml)
    kind: str = "out"               # one of KINDS
    step: Optional[int] = None      # the scenario step whose token rows the tensor holds (PAD rows are
                                    # found from it), None for states and row subsets

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Comparison.kind: one of {KINDS}, got {self.kind!r}")

    def with_actual(self, actual) -> "Comparison":
        return replace(self, actual=actual)

