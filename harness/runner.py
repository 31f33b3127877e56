"""Run cases, compare under the tolerance policy, and turn each into a result record.

An exception inside a case becomes an ``error`` record; the run goes on.
"""
from __future__ import annotations

import math
import time
import traceback
from typing import Callable, Iterable, List, Optional

from .compare import compare
from .policy import Policy
from .selfcheck import CHECKS, Case
from .suite import skip_reason


def repro_command(case: Case, suite: str) -> str:
    dev = f" --device {case.device}" if case.device != "cpu" else ""
    return f"gdn-harness run --suite {suite} -k '{case.id}' --seed {case.seed}{dev}"


def run_case(case: Case, policy: Policy, suite: str) -> dict:
    rec = dict(id=case.id, suite=suite, level="self", op=case.check, backend="reference",
               layout=case.layout, tp=case.tp, mix=None, dtype="float64", state_dtype="float64",
               dims=case.dims.to_dict(), seed=case.seed, device=case.device, status="pass",
               metrics=[], tolerance=None, margin=None, diagnosis=None, error=None,
               repro=repro_command(case, suite))
    reason = skip_reason(case)
    if reason:
        rec.update(status="skip", error=reason)
        return rec
    t0 = time.perf_counter()
    try:
        tol = policy.lookup(f"self.{case.check}", "float64", "float64")
        rec["tolerance"] = dict(kind=tol.kind, value=tol.value, reason=tol.reason, source=tol.source)
        pairs = CHECKS[case.check][0](case)
        metrics = [compare(name, out, ref, tol, token_dim) for name, out, ref, token_dim in pairs]
        rec["metrics"] = [m.to_dict() for m in metrics]
        failed = [m for m in metrics if not m.passed]
        rec["status"] = "fail" if failed else "pass"
        rec["margin"] = _fmt(min((m.margin for m in metrics), default=math.inf))
        if failed:
            worst = min(failed, key=lambda m: m.margin)
            rec["diagnosis"] = (f"{len(failed)}/{len(metrics)} outputs out of tolerance; worst "
                                f"{worst.output}: rel_rms {worst.rel_rms:.3g}, max |diff| "
                                f"{worst.max_abs:.3g} at {worst.max_abs_index}")
    except Exception as e:  # a crash costs one case, never the run
        rec.update(status="error", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-4000:])
    rec["duration_s"] = round(time.perf_counter() - t0, 4)
    return rec


def _fmt(x: float):
    return x if math.isfinite(x) else str(x)


def run_cases(cases: Iterable[Case], policy: Policy, suite: str,
              on_done: Optional[Callable[[dict], None]] = None) -> List[dict]:
    records = []
    for case in cases:
        rec = run_case(case, policy, suite)
        records.append(rec)
        if on_done:
            on_done(rec)
    return records
