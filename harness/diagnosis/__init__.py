"""Diagnosis of a failing case: which known fault class reproduces the backend's outputs.

On a failing op or layer case the reference (op level) or the fp64 layer oracle (layer
level) is re-run under each known fault hypothesis - a layout swapped, the state
transposed, the head mapping tiled, an initial state zeroed, an accepted-token offset
off by one, a norm or gating variant, a stale slot, ... (`op.HYPOTHESES`,
`layer.HYPOTHESES`, written with the reference ops in `variants`) - and a few diff
signatures are checked (only PAD rows differ; only unowned slots changed). Each is
judged against the backend's actual outputs under the case's tolerance policy; those
that reproduce the failure come back ranked, matched ones first.

Imports reference, layouts, compare, opcheck; never a backend, never harness.faults.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from harness.cases.case import SPEC_EQUIVALENCE

from .core import CLASSES, coverage_note, run_hypotheses, sentence

DEFAULT_BUDGET_S = 60.0

__all__ = ["CLASSES", "diagnose", "analyse", "enabled", "budget_s", "sentence", "coverage_note", "mask_pad_rows"]


def enabled() -> bool:
    """Diagnosis runs unless GDN_DIAGNOSE=0 (``gdn-harness run --no-diagnose`` sets it for its workers too)."""
    return os.environ.get("GDN_DIAGNOSE", "1") not in ("0", "false", "no", "off")


def budget_s() -> float:
    try:
        return float(os.environ.get("GDN_DIAGNOSE_BUDGET_S", DEFAULT_BUDGET_S))
    except ValueError:
        return DEFAULT_BUDGET_S


def diagnose(case, pairs, policy, ssm_layout: str = "vk", budget: float = DEFAULT_BUDGET_S,
             coverage: Optional[dict] = None) -> List[dict]:
    """Ranked hypotheses for a failing case (``class, label, hypothesis, words, matched,
    fixed, failing, rel_rms, base_rel_rms``); [] when none reproduces anything.
    `pairs` are the case's (name, actual, expected, token_dim, policy key); `coverage`
    receives how many hypotheses the budget allowed (`core.run_hypotheses`)."""
    actual = {c.output: c.actual for c in pairs}
    if case.level == "op":
        from . import op
        ctx = op.context(case, actual, ssm_layout)
        fmt = op.fmt(ctx)
        sigs = {"pad_rows": lambda: op.pad_rows_expected(pairs, ctx), "untouched": lambda: op.untouched_expected(pairs)}

        def expected(h, c):
            return sigs[h.build(c)]() if h in op.SIGNATURES else op.expected_of(h, c)
        hyps = op.SIGNATURES + op.HYPOTHESES
        unpad = _unpad(actual, lambda hyp=None: op.pad_rows_expected(pairs, ctx, hyp))
    elif case.level == "layer" and case.check != SPEC_EQUIVALENCE:
        from . import layer
        ctx = layer.context(case, pairs)
        fmt = layer.fmt(ctx, case.state_dtype)
        sigs = {id(layer.PAD_ROWS): layer.pad_rows_expected, id(layer.UNTOUCHED): layer.untouched_expected}

        def expected(h, c):
            return sigs[id(h)](pairs, c) if id(h) in sigs else layer.expected_of(h, c)
        hyps = [layer.PAD_ROWS, layer.UNTOUCHED] + layer.HYPOTHESES
        unpad = _unpad(actual, lambda hyp=None: layer.pad_rows_expected(pairs, ctx, hyp)) \
            if layer.PAD_ROWS.when(ctx) else None
    else:
        return []
    found = run_hypotheses(hyps, ctx, expected, pairs, policy, case.dtype, case.state_dtype, budget, fmt, unpad,
                           coverage)
    return found[:6]


def analyse(case, pairs, policy, backend=None, ssm_layout: str = "vk", budget: float = DEFAULT_BUDGET_S,
            coverage: Optional[dict] = None) -> dict:
    """The whole diagnosis of a failing case within `budget` seconds: op attribution (layer
    cases, through `backend`) and structural signatures first (up to 60 % of the budget),
    then the hypothesis re-runs with what is left. Returns ``hypotheses``, ``signatures``,
    ``attribution`` and the ``sentence`` (`analysis.sentence`)."""
    import time
    from . import analysis
    t0 = time.perf_counter()
    try:
        extra = analysis.analyse(case, pairs, policy, backend, ssm_layout, t0 + 0.6 * budget)
    except Exception as e:  # noqa: BLE001 - the signatures are evidence, never the verdict
        extra = dict(attribution=None, signatures=[], precision_checked=False, error=f"{type(e).__name__}: {e}")
    hyps = diagnose(case, pairs, policy, ssm_layout, max(budget - (time.perf_counter() - t0), 0.0)
                    if budget >= 0 else budget, coverage)
    words = analysis.sentence(hyps, extra, coverage, sentence, coverage_note)
    return dict(hypotheses=hyps, signatures=extra["signatures"], attribution=extra.get("attribution"),
                sentence=words, error=extra.get("error"))


def mask_pad_rows(case, pairs, ssm_layout: str = "vk"):
    """For a backend that declares PAD-row outputs unspecified: `pairs` with every output's
    PAD rows set to the expected values and the layer's PAD-row checks dropped, and the
    names of the outputs so masked. States and real rows are compared as before."""
    if case.level == "op":
        from . import op
        masked = op.pad_rows_expected(pairs, op.context(case, {}, ssm_layout)) or {}
    elif case.level == "layer":
        from . import layer
        from harness.cases.scenario import case_scenario
        masked = layer.pad_rows_masked(pairs, case_scenario(case)) or {}
    else:
        return pairs, []
    out = [c.with_actual(masked[c.output][0]) if c.output in masked else c for c in pairs if c.kind != "pad_rows"]
    pad_checks = {c.output for c in pairs if c.kind == "pad_rows"}
    return out, sorted(n for n in masked if n not in pad_checks)


def _unpad(actual, masked):
    """`masked` (hypothesis outputs -> PAD-row-masked signatures) when the backend's PAD rows
    (`actual`: its outputs by name) differ from the reference's (garbage / NaN), else None."""
    def same(x, y):
        return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())
    return masked if any(not same(a, actual[n]) for n, (a, _) in (masked() or {}).items()) else None
