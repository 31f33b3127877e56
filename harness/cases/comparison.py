"""The seam between the cases and what judges them: one `Comparison` per compared output.

What an output is - a per-step layer output, a final state, slots that must stay untouched,
PAD rows that must be zeros, which cache a state is - travels as fields (`kind`, `step`,
`quantity`, `cache`, `policy_key`), never parsed back out of the output's name: the name is
for reports only, renaming it changes no tolerance, masking or "same failure".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

KINDS = ("out", "state", "untouched", "pad_rows")
CACHES = ("conv", "ssm")            # the conv state, the recurrent (ssm) state


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
    quantity: str = ""              # what is compared, whatever its step / sequence: an op's declared
                                    # output or in-place argument, a layer's "out", "core", "conv_state", ...
                                    # ("" -> `output`)
    cache: Optional[str] = None     # a state's (or its untouched slots') cache: one of CACHES

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Comparison.kind: one of {KINDS}, got {self.kind!r}")
        if self.cache is not None and self.cache not in CACHES:
            raise ValueError(f"Comparison.cache: one of {CACHES} or None, got {self.cache!r}")
        if not self.quantity:
            object.__setattr__(self, "quantity", self.output)

    def with_actual(self, actual) -> "Comparison":
        return replace(self, actual=actual)

