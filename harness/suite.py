"""Declarative suites (suites/<name>.toml) expanded into cases."""
from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Dict, List

from .config import GDNDims, get_preset
from .errors import ConfigError, HarnessError
from .policy import SUITES_DIR
from .selfcheck import CHECKS, Case

SUITE_KEYS = {"name", "description", "checks", "dims", "layout", "tp", "seed"}


def parse_dims(spec: str) -> GDNDims:
    """``preset``, ``preset:shrunk`` or ``preset:shrunk:H=8,K=16`` (overrides of shrink())."""
    parts = spec.split(":")
    dims = get_preset(parts[0])
    if len(parts) == 1:
        return dims
    if parts[1] != "shrunk" or len(parts) > 3:
        raise ConfigError("dims", f"expected 'preset[:shrunk[:k=v,...]]', got {spec!r}")
    kw: Dict[str, int] = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, _, val = item.partition("=")
            if key not in ("hidden", "H", "K", "V") or not val.isdigit():
                raise ConfigError("dims", f"bad override {item!r} in {spec!r} (hidden, H, K, V = integer)")
            kw[key] = int(val)
    return dims.shrink(name=spec, **kw)


def suite_names() -> List[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml") if p.stem != "tolerances")


def load_suite(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ConfigError("suite", f"unknown suite {name_or_path!r}; known: {suite_names()}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path.name}:{sorted(unknown)[0]}", f"unknown key; known: {sorted(SUITE_KEYS)}")
    for key in ("checks", "dims"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{path.name}:{key}", "expected a non-empty list")
    for chk in data["checks"]:
        if chk not in CHECKS:
            raise ConfigError(f"{path.name}:checks", f"unknown check {chk!r}; known: {sorted(CHECKS)}")
    data.setdefault("name", path.stem)
    data["path"] = str(path)
    return data


def expand(suite: dict, device: str = "cpu", seeds: List[int] | None = None) -> List[Case]:
    """Cases of a suite: each check over the product of the axes it declares."""
    axes = {"dims": [parse_dims(d) for d in suite["dims"]],
            "layout": suite.get("layout", ["flat"]), "tp": suite.get("tp", [1]),
            "seed": seeds if seeds is not None else suite.get("seed", [0]), "device": [device]}
    cases, seen = [], set()
    for chk in suite["checks"]:
        _, varies = CHECKS[chk]
        values = [axes[a] if a in varies else axes[a][:1] for a in ("dims", "layout", "tp", "seed", "device")]
        for dims, layout, tp, seed, dev in itertools.product(*values):
            case = Case(chk, dims, layout, tp, seed, dev)
            # A TP degree that does not divide the heads is not a case of those dims.
            if skip_reason(case) is None and case.id not in seen:
                seen.add(case.id)
                cases.append(case)
    return cases


def skip_reason(case: Case) -> str | None:
    """Why a case cannot run (e.g. TP that does not divide the heads), or None."""
    try:
        case.dims.check_tp(case.tp)
    except HarnessError as e:
        return str(e)
    return None
