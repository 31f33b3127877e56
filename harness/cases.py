"""A case: one check of one backend at one point of the suite matrix."""
from __future__ import annotations

from dataclasses import dataclass

from .config import GDNDims

LEVELS = ("self", "op", "layer")


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

    @property
    def id(self) -> str:
        d = self.dims.name
        if self.level == "self":
            return f"self.{self.check}[{d}-{self.layout}-tp{self.tp}-s{self.seed}]"
        if self.level == "op":
            return f"op.{self.check}[{self.backend}-{self.variant}-{d}-{self.dtype}-{self.state_dtype}-s{self.seed}]"
        return (f"layer.{self.check}[{self.backend}-{d}-{self.layout}-tp{self.tp}-{self.dtype}-"
                f"{self.state_dtype}-{self.variant}-s{self.seed}]")

    def to_dict(self) -> dict:
        return dict(level=self.level, check=self.check, dims=self.dims.to_dict(), layout=self.layout, tp=self.tp,
                    seed=self.seed, device=self.device, backend=self.backend, dtype=self.dtype,
                    state_dtype=self.state_dtype, variant=self.variant)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        d = dict(d)
        d["dims"] = GDNDims.from_dict(d["dims"])
        return cls(**d)
