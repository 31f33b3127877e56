"""The class vocabulary, hypotheses and their scoring against a failing case's outputs."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from harness.judge.compare import compare

from .classes import CLASSES, FaultClass


@dataclass
class Hypothesis:
    """A known way to get GDN wrong, as a re-run of reference code (or a diff signature).

    `build(ctx)` returns whatever the level's runner needs (override ops, an input / plan
    transform); `when(ctx)` says whether it can tell anything on this case."""
    name: str
    cls: FaultClass                 # given as its id string: an unknown one fails at import
    words: str                      # str.format'ed with the context's `fmt` fields
    build: Callable
    when: Callable = field(default=lambda ctx: True)

    def __post_init__(self):
        self.cls = FaultClass(self.cls)
        if not self.cls.diagnosable:
            raise ValueError(f"hypothesis {self.name}: {self.cls} is no class a diagnosis names")


@dataclass
class Verdict:
    matched: bool                   # every output within tolerance under the hypothesis
    fixed: int                      # outputs failing under the plain reference that pass under it
    failing: int                    # outputs failing under the plain reference
    rel_rms: float                  # worst rel RMS error (over the outputs that failed) under it
    base_rel_rms: float             # the same outputs' worst rel RMS error under the plain reference


def _rel(m) -> float:
    return m.rel_rms if math.isfinite(m.rel_rms) and not (m.nan or m.inf) else math.inf


def judge(pairs, expected: Dict[str, torch.Tensor], policy, dtype: str, state_dtype: str) -> Verdict:
    """Compare the backend's outputs (`pairs`: the case's `Comparison`s)
    with a hypothesis' `expected` outputs (by name; missing: the reference's; a tuple:
    (actual, expected) both replaced, a signature masking what it explains)."""
    failing = fixed = 0
    worst, base_worst, all_ok = 0.0, 0.0, True
    for c in pairs:
        name, actual, ref, token_dim = c.output, c.actual, c.expected, c.token_dim
        tol = policy.lookup(c.policy_key, dtype, state_dtype)
        base = _compare(name, actual, ref, tol, token_dim)
        got = expected.get(name)
        if isinstance(got, tuple):          # a signature: (actual, expected) with some rows masked out
            hyp = _compare(name, got[0], got[1], tol, token_dim)
        else:
            hyp = base if got is None else _compare(name, actual, got, tol, token_dim)
        ok = hyp is not None and hyp.passed
        all_ok &= ok
        if base is None or not base.passed:
            failing += 1
            fixed += ok
            worst = max(worst, _rel(hyp) if hyp is not None else math.inf)
            base_worst = max(base_worst, _rel(base) if base is not None else math.inf)
    return Verdict(all_ok and failing > 0, fixed, failing, worst, base_worst)


def _compare(name, actual, expected, tol, token_dim):
    if expected is None or tuple(actual.shape) != tuple(expected.shape):
        return None
    expected = expected.to(actual.device)
    if actual.is_floating_point() and not bool(torch.isfinite(actual).all()):
        # a hypothesis that blows up where the backend blows up reproduces it: equal finite
        # masks (the hypothesis rounded to the backend's dtype, so fp64 values past its range
        # count as overflowed), the finite rest compared as usual
        bad = ~torch.isfinite(actual)
        if torch.equal(bad, ~torch.isfinite(expected.to(actual.dtype))):
            actual, expected = actual.masked_fill(bad, 0), expected.masked_fill(bad, 0)
    return compare(name, actual, expected, tol, token_dim)


def rank(results: List[dict]) -> List[dict]:
    """Matched first, then the most outputs reproduced, then the smallest remaining error."""
    def key(r):
        rel = r["rel_rms"]      # record() stores a non-finite error as a string ("inf", "nan")
        rel = rel if isinstance(rel, (int, float)) and math.isfinite(rel) else math.inf
        return (not r["matched"], bool(r.get("pad_rows")), -r["fixed"], rel)
    return sorted(results, key=key)


def worth_reporting(v: Verdict) -> bool:
    """A hypothesis that reproduces the failure, or at least part of it (an output fixed,
    or the worst error cut tenfold)."""
    if v.matched or v.fixed:
        return True
    return math.isfinite(v.rel_rms) and (not math.isfinite(v.base_rel_rms) or v.rel_rms * 10 <= v.base_rel_rms)


def record(h: Hypothesis, v: Verdict, fmt: dict) -> dict:
    return {"class": h.cls, "label": CLASSES[h.cls], "hypothesis": h.name, "words": h.words.format(**fmt),
            "matched": bool(v.matched), "fixed": v.fixed, "failing": v.failing,
            "rel_rms": _finite(v.rel_rms), "base_rel_rms": _finite(v.base_rel_rms)}


def _finite(x: float):
    return float(f"{x:.4g}") if math.isfinite(x) else str(x)


def with_pad_rows(h: Hypothesis, v: Verdict, fmt: dict) -> dict:
    """A hypothesis that matches the real rows of a backend whose PAD rows hold garbage: both named."""
    r = record(h, v, fmt)
    r.update(hypothesis=f"pad_rows_garbage+{h.name}", label=f"{CLASSES['pad_rows']} + {CLASSES[h.cls]}",
             words=f"{r['words']}; and the PAD rows hold garbage / NaN (never zeroed)", pad_rows=True)
    return r


def run_hypotheses(hyps: List[Hypothesis], ctx, expected_of: Callable, pairs, policy, dtype: str,
                   state_dtype: str, budget_s: float, fmt: dict, unpad: Optional[Callable] = None,
                   coverage: Optional[dict] = None) -> List[dict]:
    """Each applicable hypothesis re-run (`expected_of(h, ctx)` -> expected outputs by name),
    judged against the backend's outputs, within `budget_s` seconds; ranked results worth
    reporting. A hypothesis that crashes is skipped (it cannot describe this case).
    `unpad(expected)`, given when the backend's PAD rows differ: the hypothesis' outputs as
    signatures with the PAD rows masked out; one that then matches is recorded as
    "[PAD rows] + [its class]" (unless a hypothesis matches on its own).
    `coverage`, when given, receives how many hypotheses were tried out of how many, and
    whether the budget cut the run short (then "none reproduces it" is not a finding)."""
    t0, out, tried = time.perf_counter(), [], 0
    for h in hyps:
        if time.perf_counter() - t0 > budget_s:
            break
        tried += 1
        try:
            if not h.when(ctx):
                continue
            exp = expected_of(h, ctx)
            if exp is None:
                continue
            v = judge(pairs, exp, policy, dtype, state_dtype)
            if not v.matched and unpad is not None and h.cls != "pad_rows":
                masked = unpad(exp)
                vm = judge(pairs, {**exp, **masked}, policy, dtype, state_dtype) if masked else None
                if vm is not None and vm.matched:
                    out.append(with_pad_rows(h, vm, fmt))
                    continue
        except Exception:   # noqa: BLE001 - a hypothesis that does not fit this case's shapes
            continue
        if worth_reporting(v):
            out.append(record(h, v, fmt))
    if any(r["matched"] and not r.get("pad_rows") for r in out):    # explained without PAD garbage
        out = [r for r in out if not r.get("pad_rows")]
    if coverage is not None:
        coverage.update(tried=tried, total=len(hyps), budget_s=budget_s, cut_short=tried < len(hyps))
    return rank(out)


def coverage_note(coverage: Optional[dict]) -> Optional[str]:
    """Words for hypothesis re-runs that found nothing: cut short by their time budget, or
    complete (then the fault is none of the known classes - which says nothing about
    precision: only a reproducing rounding re-run does, `analysis`)."""
    if not coverage or not coverage.get("total"):
        return None
    if not coverage.get("cut_short"):
        return f"none of the {coverage['total']} known fault hypotheses reproduces it"
    return (f"diagnosis incomplete: its {coverage['budget_s']:g} s budget ran out after {coverage['tried']} of "
            f"{coverage['total']} hypotheses (raise --diagnose-budget)")


def sentence(hyps: List[dict]) -> Optional[str]:
    """The human part of a diagnosis: the top hypothesis, in words, and any rivals that match too."""
    if not hyps:
        return None
    top = hyps[0]
    if top["matched"]:
        s = f"likely cause {tag(top)}: {top['words']}"
        also = [h["hypothesis"] for h in hyps[1:] if h["matched"]]
        if also:
            s += f" (also consistent: {', '.join(also[:3])})"
        return s
    return (f"closest hypothesis [{top['label']}] reproduces {top['fixed']}/{top['failing']} failing outputs "
            f"(rel_rms {top['base_rel_rms']} -> {top['rel_rms']}): {top['words']}")


def tag(h: dict) -> str:
    """"[class label]", or "[PAD rows] + [class label]" for a match once PAD rows are masked."""
    if h.get("pad_rows"):
        return f"[{CLASSES['pad_rows']}] + [{CLASSES.get(h.get('class'), h.get('class'))}]"
    return f"[{h.get('label') or h.get('class')}]"


def describe(h: dict) -> str:
    """One line per hypothesis record, for reports: verdict, class, words, error before -> after."""
    verdict = "matches" if h.get("matched") else f"reproduces {h.get('fixed')}/{h.get('failing')} failing outputs"
    return (f"{tag(h)} {h.get('hypothesis')} {verdict} "
            f"(rel_rms {h.get('base_rel_rms')} -> {h.get('rel_rms')}): {h.get('words')}")


def hypothesis_lines(rec: dict, n: int = 3) -> List[str]:
    """The record's first `n` hypotheses as `describe` lines ([] when it has none)."""
    return [describe(h) for h in (rec.get("hypotheses") or [])[:n]]


def signature_lines(rec: dict, n: int = 4) -> List[str]:
    """The record's op attribution and first `n` structural signatures, one line each."""
    from .analysis import attribution_words
    lines = []
    a = attribution_words(rec.get("attribution"))
    if a:
        lines.append(a)
    for s in (rec.get("signatures") or [])[:n]:
        at = f" [{s.get('op')}" + (f", step {s['step']}" if s.get("step") is not None else "") + "]" \
            if s.get("op") else ""
        lines.append(f"{s.get('kind')} ({s.get('confidence')}){at}: {s.get('words')}")
    return lines
