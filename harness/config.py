"""GDN layer dimensions, their validation, the real-model presets and shrunk variants; the
norm configuration, where suites live, the autotune policy names (shared by every stage).

H = linear_num_key_heads, HV = linear_num_value_heads (r = HV / H value heads per key
head), K / V head dims, W the conv kernel width.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional

from .errors import ConfigError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
AUTOTUNE_POLICIES = ("pinned", "sweep", "native")


@dataclass
class NormConfig:
    """RMSNormGated's settings (DESIGN: per head, plain `w`)."""
    norm_before_gate: bool = True
    activation: str = "silu"
    eps: float = 1e-6
    group_size: Optional[int] = None


@dataclass(frozen=True)
class GDNDims:
    hidden: int
    H: int
    HV: int
    K: int
    V: int
    W: int = 4
    name: str = "custom"

    def __post_init__(self):
        for field in ("hidden", "H", "HV", "K", "V"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(field, f"must be a positive integer, got {value!r}")
        if not isinstance(self.W, int) or self.W < 2:
            raise ConfigError("W", f"conv kernel width must be an integer >= 2, got {self.W!r}")
        if self.HV % self.H:
            raise ConfigError(
                "HV", f"linear_num_value_heads ({self.HV}) must be a multiple of "
                f"linear_num_key_heads H ({self.H})")

    # derived sizes
    @property
    def r(self) -> int:
        return self.HV // self.H

    @property
    def key_dim(self) -> int:
        return self.H * self.K

    @property
    def value_dim(self) -> int:
        return self.HV * self.V

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def qkvz_dim(self) -> int:
        return 2 * self.key_dim + 2 * self.value_dim

    def check_tp(self, tp: int) -> None:
        if not isinstance(tp, int) or tp < 1:
            raise ConfigError("tp", f"must be a positive integer, got {tp!r}")
        for field in ("H", "HV"):
            if getattr(self, field) % tp:
                raise ConfigError(
                    "tp", f"{tp} does not divide {field} = {getattr(self, field)} "
                    f"(dims {self.name})")

    def local(self, tp: int) -> "GDNDims":
        """Dims one TP rank sees: H / tp key heads and HV / tp value heads."""
        self.check_tp(tp)
        if tp == 1:
            return self
        return replace(self, H=self.H // tp, HV=self.HV // tp, name=f"{self.name}/tp{tp}")

    def shrink(self, hidden: int = 64, H: int = 2, K: int = 16, V: int = 24,
               name: str | None = None) -> "GDNDims":
        """A CPU-sized variant keeping this preset's r = HV / H and W.

        K != V by default so that a state stored transposed cannot pass a check.
        """
        return GDNDims(hidden=hidden, H=H, HV=H * self.r, K=K, V=V, W=self.W,
                       name=name or f"{self.name}-shrunk")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GDNDims":
        known = {"hidden", "H", "HV", "K", "V", "W", "name"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown dims field; known: {sorted(known)}")
        missing = {"hidden", "H", "HV", "K", "V"} - set(d)
        if missing:
            raise ConfigError(sorted(missing)[0], "missing dims field")
        return cls(**d)


def _preset(name, hidden, H, HV):
    return GDNDims(hidden=hidden, H=H, HV=HV, K=128, V=128, W=4, name=name)


PRESETS: Dict[str, GDNDims] = {p.name: p for p in [
    _preset("qwen3-next-80b-a3b", 2048, 16, 32),
    _preset("qwen3.5-0.8b", 1024, 16, 16),
    _preset("qwen3.5-4b", 2560, 16, 32),
    _preset("qwen3.5-9b", 4096, 16, 32),
    _preset("qwen3.5-27b", 5120, 16, 48),
    _preset("qwen3.5-35b-a3b", 2048, 16, 32),
    _preset("qwen3.5-122b-a10b", 3072, 16, 64),
    _preset("qwen3.5-397b-a17b", 4096, 16, 64),
]}

# Which projection layout each preset's checkpoints use.
PRESET_LAYOUT = {name: ("interleaved" if name.startswith("qwen3-next") else "flat")
                 for name in PRESETS}


def get_preset(name: str) -> GDNDims:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError("preset", f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
