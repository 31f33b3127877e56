"""A case's verdict from its `Comparison`s: one metric per output under its policy entry.

The one judge path: layer / op / self cases (run), TP ranks (rank 0 of distributed) and
the CUDA-graph check (tools.cudagraph) all fill their record here.
"""
from __future__ import annotations

import math

from harness.judge.compare import compare
from harness.judge.policy import Policy


def judge_into(rec: dict, pairs, policy: Policy, dtype: str, state_dtype: str) -> None:
    """`rec`'s metrics, tolerances, status (pass / fail), margin and failure sentence from
    `pairs` (`Comparison`s) judged under `policy` for (dtype, state_dtype). Each metric also
    carries what its output is (`output_fields`), so readers of results.json parse no names."""
    metrics, tolerances = [], {}
    for c in pairs:
        tol = policy.lookup(c.policy_key, dtype, state_dtype)
        tolerances[c.policy_key] = dict(kind=tol.kind, value=tol.value, reason=tol.reason, source=tol.source)
        m = compare(c.output, c.actual, c.expected, tol, c.token_dim)
        m.notes.append(c.policy_key)
        metrics.append(m)
    rec["metrics"] = [dict(m.to_dict(), **output_fields(c)) for m, c in zip(metrics, pairs)]
    rec["tolerance"] = tolerances
    failed = [m for m in metrics if not m.passed]
    rec["status"] = "fail" if failed else "pass"
    rec["margin"] = _fmt(min((m.margin for m in metrics), default=math.inf))
    if failed:
        nonfinite = [m for m in failed if m.nan or m.inf]
        worst = min(failed, key=lambda m: m.margin)
        where = f" (worst token {worst.worst_token}, first divergent token {worst.first_divergent_token})" \
            if worst.worst_token is not None else ""
        rec["diagnosis"] = (f"{len(failed)}/{len(metrics)} outputs out of tolerance: "
                            f"{', '.join(m.output for m in failed[:6])}; worst {worst.output}: rel_rms "
                            f"{worst.rel_rms:.3g} vs {worst.tolerance}, max |diff| {worst.max_abs:.3g} at "
                            f"{worst.max_abs_index}{where}")
        if nonfinite:
            rec["structural"] = "nan/inf"
            rec["diagnosis"] = ("NaN / Inf in the output: " + ", ".join(
                f"{m.output} has {m.nan} NaN and {m.inf} Inf of {math.prod(m.shape)} values" for m in nonfinite[:6])
                + "; " + rec["diagnosis"])


def output_fields(c) -> dict:
    """What a compared output is, as a record's fields (a metric's, a broken output's)."""
    return dict(quantity=c.quantity, kind=c.kind, step=c.step, cache=c.cache, policy_key=c.policy_key)


def _fmt(x: float):
    return x if math.isfinite(x) else str(x)
