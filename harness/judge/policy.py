"""The versioned tolerance policy (suites/tolerances.toml) and its lookup."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from harness.judge.compare import Tolerance
from harness.config import SUITES_DIR
from harness.errors import ConfigError

DEFAULT_POLICY = SUITES_DIR / "tolerances.toml"
SUPPORTED_VERSIONS = (1,)


@dataclass
class PolicyEntry:
    op: str
    dtype: str
    state_dtype: str
    tol: Tolerance


class Policy:
    def __init__(self, path: Path = DEFAULT_POLICY):
        self.path = Path(path)
        try:
            data = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            raise ConfigError(str(self.path), "tolerance policy file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(self.path), f"not valid TOML: {e}") from None
        self.version = data.get("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise ConfigError(f"{self.path}:version", f"expected one of {SUPPORTED_VERSIONS}, got {self.version!r}")
        self.entries: List[PolicyEntry] = []
        for i, e in enumerate(data.get("entry", [])):
            where = f"{self.path.name}:entry[{i}]"
            for key in ("op", "kind", "reason"):
                if not isinstance(e.get(key), str) or not e[key].strip():
                    raise ConfigError(f"{where}.{key}", "expected a non-empty string")
            if e["kind"] not in ("exact", "rel_rms"):
                raise ConfigError(f"{where}.kind", f"expected 'exact' or 'rel_rms', got {e['kind']!r}")
            if e["kind"] == "rel_rms" and not isinstance(e.get("value"), (int, float)):
                raise ConfigError(f"{where}.value", "expected a number (the rel_rms bound)")
            unknown = set(e) - {"op", "dtype", "state_dtype", "kind", "value", "atol", "reason"}
            if unknown:
                raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key")
            tol = Tolerance(kind=e["kind"], value=float(e.get("value", 0.0)), atol=float(e.get("atol", 0.0)),
                            reason=e["reason"], source=f"{where} (policy v{self.version})")
            entry = PolicyEntry(e["op"], e.get("dtype", "*"), e.get("state_dtype", "*"), tol)
            for other in self.entries:
                if (other.op, other.dtype, other.state_dtype) == (entry.op, entry.dtype, entry.state_dtype):
                    raise ConfigError(f"{where}.op", f"duplicate entry for ({entry.op}, {entry.dtype}, "
                                      f"{entry.state_dtype}); first at {other.tol.source}")
            self.entries.append(entry)

    def lookup(self, op: str, dtype: str = "*", state_dtype: str = "*") -> Tolerance:
        """The most specific entry for (op, dtype, state_dtype); exact matches beat '*'."""
        best: Optional[PolicyEntry] = None
        best_score = -1
        for e in self.entries:
            if e.op != op or e.dtype not in ("*", dtype) or e.state_dtype not in ("*", state_dtype):
                continue
            score = (e.dtype == dtype) * 2 + (e.state_dtype == state_dtype)
            if score > best_score:
                best, best_score = e, score
        if best is None:
            raise ConfigError(f"{self.path.name}", f"no tolerance entry for op={op!r} dtype={dtype!r} "
                              f"state_dtype={state_dtype!r}")
        return best.tol
