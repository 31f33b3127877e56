"""A case: one check of one backend at one point of the suite matrix."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional, Tuple

from harness.config import GDNDims
from harness.errors import ConfigError

LEVELS = ("self", "op", "layer")
# The layer-level pseudo-mix: a backend's spec path with one accepted token == its decode path, exact.
SPEC_EQUIVALENCE = "spec_one_accepted"


@dataclass
class Case:
    level: str                 # self (oracle checks) | op | layer (TP included)
    check: str                 # self: check name; op: op name; layer: batch mix
    dims: GDNDims
    layout: str = "flat"
    tp: int = 1
    seed: int = 0
    device: str = "cpu"
    backend: str = "reference"
    dtype: str = "float64"
    state_dtype: str = "float64"
    variant: str = ""          # op: sample variant; layer: decode path / conv layout / ba
    # a shrunk case's explicit inputs: layer {"steps": [...], "num_spec": n} replacing the mix's
    # batches; op {"seqs": [...], "lens": [...]}, the sample's sequences kept and their lengths
    scenario: Optional[dict] = None

    def __post_init__(self):
        if self.scenario is not None and self.level == "self":
            raise ConfigError("case.scenario", "only op and layer cases take an explicit scenario")

    # A layer case's variant names its decode path, conv-state layout and ba sharding
    # ("recurrent.dim_first.sharded"); read them here, never by splitting the string elsewhere.
    def _layer_axes(self) -> Tuple[str, str, str]:
        parts = self.variant.split(".")
        if self.level != "layer" or len(parts) != 3:
            raise ConfigError("case.variant", f"a layer case's decode_path.conv_layout.ba, got {self.variant!r} "
                              f"({self.level} case)")
        return parts[0], parts[1], parts[2]

    @property
    def decode_path(self) -> str:
        return self._layer_axes()[0]

    @property
    def conv_layout(self) -> str:
        return self._layer_axes()[1]

    @property
    def ba(self) -> str:
        return self._layer_axes()[2]

    @property
    def scenario_tag(self) -> str:
        """A short digest naming an explicit scenario in the id ('' for a named mix)."""
        if self.scenario is None:
            return ""
        return "-sc" + hashlib.sha1(json.dumps(self.scenario, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def id(self) -> str:
        d = self.dims.name
        if self.level == "self":
            return f"self.{self.check}[{d}-{self.layout}-tp{self.tp}-s{self.seed}]"
        if self.level == "op":
            return (f"op.{self.check}[{self.backend}-{self.variant}-{d}-{self.dtype}-{self.state_dtype}"
                    f"{self.scenario_tag}-s{self.seed}]")
        return (f"layer.{self.check}[{self.backend}-{d}-{self.layout}-tp{self.tp}-{self.dtype}-"
                f"{self.state_dtype}-{self.variant}{self.scenario_tag}-s{self.seed}]")

    def to_dict(self) -> dict:
        d = dict(level=self.level, check=self.check, dims=self.dims.to_dict(), layout=self.layout, tp=self.tp,
                 seed=self.seed, device=self.device, backend=self.backend, dtype=self.dtype,
                 state_dtype=self.state_dtype, variant=self.variant)
        if self.scenario is not None:      # absent for named mixes: old case files stay as they were
            d["scenario"] = self.scenario
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        d = dict(d)
        d["dims"] = GDNDims.from_dict(d["dims"])
        return cls(**d)
