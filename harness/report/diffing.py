"""Comparing two runs (``gdn-harness diff OLD NEW``): new failures, fixes, regressions."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from harness.errors import ConfigError

BAD = ("fail", "error")


def load_results(path: str) -> Dict[str, dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "results file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(str(p), f"not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise ConfigError(f"{p}:cases", "expected a results.json with a 'cases' list")
    return {c["id"]: c for c in doc["cases"]}


def _rel(m):
    v = m.get("rel_rms")
    return float(v) if isinstance(v, (int, float)) or (isinstance(v, str) and v in ("inf", "nan")) else None


@dataclass
class RunDiff:
    new_failures: List[str] = field(default_factory=list)
    fixes: List[str] = field(default_factory=list)
    still_failing: List[str] = field(default_factory=list)
    regressions: List[str] = field(default_factory=list)      # passing, but error grew past the factor
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = []
        for title, items in (("New failures", self.new_failures), ("Metric regressions", self.regressions),
                             ("Fixed", self.fixes), ("Still failing", self.still_failing),
                             ("New cases", self.added), ("Removed cases", self.removed)):
            out.append(f"## {title}: {len(items)}")
            out += [f"- {i}" for i in items[:200]]
            if len(items) > 200:
                out.append(f"- ... {len(items) - 200} more")
            out.append("")
        return "\n".join(out)


def diff_runs(old: Dict[str, dict], new: Dict[str, dict], factor: float = 2.0,
              floor: float = 1e-12) -> RunDiff:
    """Cases by id. A regression: an output whose rel_rms grew by more than `factor`
    (errors below `floor` are noise and never count)."""
    d = RunDiff()
    for cid, n in new.items():
        o = old.get(cid)
        if o is None:
            d.added.append(cid)
            if n["status"] in BAD:
                d.new_failures.append(f"{cid} ({n['status']}, new case)")
            continue
        if n["status"] in BAD and o["status"] not in BAD:
            d.new_failures.append(f"{cid} ({o['status']} -> {n['status']}): {n.get('diagnosis') or n.get('error')}")
        elif o["status"] in BAD and n["status"] not in BAD:
            d.fixes.append(cid)
        elif o["status"] in BAD:
            d.still_failing.append(cid)
        elif n["status"] == "pass":
            before = {m["output"]: _rel(m) for m in o.get("metrics", [])}
            for m in n.get("metrics", []):
                a, b = before.get(m["output"]), _rel(m)
                if a is not None and b is not None and b > floor and b > factor * max(a, floor):
                    d.regressions.append(f"{cid}: {m['output']} rel_rms {a:.3g} -> {b:.3g}")
    d.removed = [cid for cid in old if cid not in new]
    return d
