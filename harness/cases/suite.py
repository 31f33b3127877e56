"""Declarative suites (suites/<name>.toml) expanded into cases.

A suite is a list of ``[[group]]`` tables, each one level (self / op / layer) and the
values of the axes it runs over; a case is every combination. Axes a group leaves out
take their defaults. TP degrees that do not divide a dims' heads are not cases of it.
``exclude_backends`` drops a group's cases for the backends it names (``--backend`` names,
variants included), e.g. the reference's op cases, which compare the oracle with itself.
"""
from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Dict, List, Optional

from harness.cases.case import LEVELS, Case
from harness.config import AUTOTUNE_POLICIES, SUITES_DIR, GDNDims, get_preset
from harness.cases.case import SPEC_EQUIVALENCE
from harness.errors import ConfigError, HarnessError
from harness.optimized.api import DECODE_PATHS as BACKEND_DECODE_PATHS
from harness.cases.inputs import DTYPES
from harness.layouts.projection import LAYOUTS
from harness.cases.opcheck import OP_INFOS
from harness.cases.scenario import MIXES
from harness.cases.selfcheck import CHECKS

GROUP_KEYS = {"level", "checks", "ops", "mixes", "dims", "layout", "tp", "seed", "dtype", "state_dtype",
              "decode_path", "conv_layout", "ba", "variants", "exclude_backends"}
DECODE_PATHS = tuple(BACKEND_DECODE_PATHS)


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


def _check_values(where: str, values, allowed, what: str):
    if not isinstance(values, list) or not values:
        raise ConfigError(where, f"expected a non-empty list of {what}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(where, f"unknown {what} {bad[0]!r}; known: {sorted(allowed)}")


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
    unknown = set(data) - {"name", "description", "autotune", "group"}
    if unknown:
        raise ConfigError(f"{path.name}:{sorted(unknown)[0]}",
                          "unknown key; expected name, description, autotune, [[group]]")
    if "autotune" in data:       # the suite's autotune policy (harness/run/autotune.py); --autotune overrides it
        _check_values(f"{path.name}:autotune", [data["autotune"]], AUTOTUNE_POLICIES, "autotune policy")
    groups = data.get("group")
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{path.name}:group", "expected at least one [[group]] table")
    for i, g in enumerate(groups):
        where = f"{path.name}:group[{i}]"
        if g.get("level") not in LEVELS:
            raise ConfigError(f"{where}.level", f"expected one of {list(LEVELS)}, got {g.get('level')!r}")
        unknown = set(g) - GROUP_KEYS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"unknown key; known: {sorted(GROUP_KEYS)}")
        if not isinstance(g.get("dims"), list) or not g["dims"]:
            raise ConfigError(f"{where}.dims", "expected a non-empty list of dims specs")
        for d in g["dims"]:
            parse_dims(d)
        what = {"self": ("checks", CHECKS), "op": ("ops", OP_INFOS), "layer": ("mixes", MIXES)}[g["level"]]
        names = g.get(what[0])
        if names != ["*"]:
            allowed = set(what[1]) | ({n for n in names if str(n).startswith(("history_", "drift_"))}
                                      | {SPEC_EQUIVALENCE}
                                      if what[0] == "mixes" else set())
            _check_values(f"{where}.{what[0]}", names, allowed, what[0])
        for key, allowed in (("layout", LAYOUTS), ("dtype", DTYPES), ("state_dtype", DTYPES),
                             ("decode_path", DECODE_PATHS), ("conv_layout", ("dim_first", "token_first")),
                             ("ba", ("sharded", "replicated"))):
            if key in g:
                _check_values(f"{where}.{key}", g[key], allowed, key)
        if "exclude_backends" in g:
            if g["level"] == "self":
                raise ConfigError(f"{where}.exclude_backends", "self checks run on no backend; drop the key")
            from harness.optimized.registry import backend_names
            _check_values(f"{where}.exclude_backends", g["exclude_backends"], set(backend_names()), "backend")
    data.setdefault("name", path.stem)
    data["path"] = str(path)
    return data


def _names(g: dict, key: str, table) -> List[str]:
    names = g[key]
    return list(table) if names == ["*"] else names


def _excluded(backend: str, names: List[str]) -> bool:
    """`backend` (a --backend spec, maybe with an @variant) is one of `names`."""
    return backend in names or backend.split("@")[0] in names


def expand(suite: dict, backends: List[str], device: str = "cpu", seeds: Optional[List[int]] = None) -> List[Case]:
    """Every case of the suite for each backend (self checks run once, on the reference)."""
    cases, seen = [], set()

    def add(case: Case):
        try:
            case.dims.check_tp(case.tp)
        except HarnessError:
            return          # a TP degree that does not divide the heads is not a case of those dims
        if case.id not in seen:
            seen.add(case.id)
            cases.append(case)

    for g in suite["group"]:
        dims = [parse_dims(d) for d in g["dims"]]
        sd = seeds if seeds is not None else g.get("seed", [0])
        if g["level"] == "self":
            for chk in _names(g, "checks", CHECKS):
                varies = CHECKS[chk][1]
                axes = [dims if "dims" in varies else dims[:1],
                        g.get("layout", ["flat"]) if "layout" in varies else g.get("layout", ["flat"])[:1],
                        g.get("tp", [1]) if "tp" in varies else [1], sd if "seed" in varies else sd[:1]]
                for d, lay, tp, seed in itertools.product(*axes):
                    add(Case("self", chk, d, lay, tp, seed, device))
            continue
        for be in backends:
            if _excluded(be, g.get("exclude_backends", [])):
                continue
            dts, sts = g.get("dtype", ["float32"]), g.get("state_dtype", ["float32"])
            if g["level"] == "op":
                for op in _names(g, "ops", OP_INFOS):
                    variants = g.get("variants", ["*"])
                    vs = OP_INFOS[op].variants if variants == ["*"] else [v for v in variants if v in OP_INFOS[op].variants]
                    for d, dt, st, seed, var in itertools.product(dims, dts, sts, sd, vs):
                        # an op whose variant names a projection layout runs in it (unpack_qkvz_ba)
                        lay = var.split("-")[0] if var.split("-")[0] in LAYOUTS else "flat"
                        add(Case("op", op, d, lay, 1, seed, device, be, dt, st, var))
            else:
                for mix, d, lay, tp, dt, st, seed, path, conv, ba in itertools.product(
                        _names(g, "mixes", MIXES), dims, g.get("layout", ["flat"]), g.get("tp", [1]), dts, sts, sd,
                        g.get("decode_path", ["recurrent"]), g.get("conv_layout", ["dim_first"]),
                        g.get("ba", ["sharded"])):
                    add(Case("layer", mix, d, lay, tp, seed, device, be, dt, st, decode_path=path, conv_layout=conv,
                             ba=ba))
    return cases
