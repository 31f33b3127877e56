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
    variant: str = ""          # op: sample variant; layer: the label of the three axes below, in ids and records
                               # ("recurrent.dim_first.sharded"); set from them
    # a shrunk case's explicit inputs: layer {"steps": [...], "num_spec": n} replacing the mix's
    # batches; op {"seqs": [...], "lens": [...]}, the sample's sequences kept and their lengths
    scenario: Optional[dict] = None
    decode_path: Optional[str] = None   # layer: the backend's decode path (optimized.api.DECODE_PATHS)
    conv_layout: Optional[str] = None   # layer: how the conv state is stored (layouts.state.CONV_LAYOUTS)
    ba: Optional[str] = None            # layer: how in_proj_ba is split over TP ranks (layouts.tp.BA_MODES)

    def __post_init__(self):
        if self.scenario is not None and self.level == "self":
            raise ConfigError("case.scenario", "only op and layer cases take an explicit scenario")
        axes = (self.decode_path, self.conv_layout, self.ba)
        if self.level != "layer":
            if any(a is not None for a in axes):
                raise ConfigError("case.decode_path", f"only layer cases have a decode path, conv layout and ba "
                                  f"({self.level} case)")
            return
        if all(a is None for a in axes):
            # a case given by its label (a stored case file, results.json's "case"): its one reading
            self.decode_path, self.conv_layout, self.ba = _layer_axes(self.variant)
        elif any(a is None for a in axes):
            raise ConfigError("case.decode_path", f"a layer case's decode_path, conv_layout and ba together, got {axes}")
        self.variant = layer_variant(self.decode_path, self.conv_layout, self.ba)

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
        """The case as stored (repro files, results.json): a layer case's axes as its variant label, as ever."""
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


def layer_variant(decode_path: str, conv_layout: str, ba: str) -> str:
    """A layer case's variant label in ids and records (what -k filters and stored repro commands match)."""
    return f"{decode_path}.{conv_layout}.{ba}"


def _layer_axes(variant: str) -> Tuple[str, str, str]:
    parts = variant.split(".")
    if len(parts) != 3 or not all(parts):
        raise ConfigError("case.variant", f"a layer case's decode_path.conv_layout.ba, got {variant!r}")
    return parts[0], parts[1], parts[2]
