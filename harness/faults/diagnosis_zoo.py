"""How often the diagnosis names the right fault class, measured on the fault zoo.

For every fault of `harness.faults.catalogue` the suite's cases run in the zoo's order
(op cases of ops the fault shares with its base skipped, as the zoo does) until the
first detection - or the first `per_fault` failing cases - and the top hypothesis'
class is checked against the fault's `diagnosis_class`, mapped onto the diagnosis'
vocabulary by `CATALOGUE_CLASSES`. The faults are only the test subjects here: no
hypothesis uses their code.

Command line: ``scripts/experiments/diagnosis_zoo.py --zoo [--suite smoke] [--fault NAME] [--per-fault N] [--out FILE]``
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, List, Optional

# the catalogue's class strings -> diagnosis ids, from the one vocabulary
from harness.diagnosis.classes import CATALOGUE_CLASSES


def _fault_cases(suite: dict, fault, level: Optional[str] = None) -> list:
    from harness.faults.zoo import backend_cases, unchanged_ops
    same = set(unchanged_ops(fault))
    return [c for c in backend_cases(suite, fault.target) if not (c.level == "op" and c.check in same)
            and level in (None, c.level)]


def _diagnosing_run_case():
    """`run_case` with the diagnosis stage plugged in (run sits below diagnosis)."""
    from harness import diagnosis
    from harness.run.runner import run_case, use_diagnosis
    use_diagnosis(diagnosis)
    return run_case


def diagnose_fault(fault, suite: dict, policy, backends, per_fault: int = 1, level: Optional[str] = None) -> dict:
    """Run `fault`'s cases until `per_fault` have failed; the diagnosis of each against the fault's class."""
    run_case = _diagnosing_run_case()
    want = CATALOGUE_CLASSES.get(fault.diagnosis_class)
    out = dict(fault=fault.name, diagnosis_class=fault.diagnosis_class, expected=want, cases=[])
    for case in _fault_cases(suite, fault, level):
        rec = run_case(case, policy, suite["name"], backends, diagnose=True)
        if rec["status"] not in ("fail", "error"):
            continue
        hyps = rec.get("hypotheses") or []
        top = hyps[0] if hyps else None
        out["cases"].append(dict(case=rec["id"], status=rec["status"], top=top["class"] if top else None,
                                 matched=bool(top and top["matched"]), words=top["words"] if top else None,
                                 correct=bool(top and top["class"] == want),
                                 named=any(h["class"] == want for h in hyps),
                                 diagnosis_s=rec.get("diagnosis_s"), error=rec.get("diagnosis_error"),
                                 hypotheses=[(h["hypothesis"], h["class"], h["matched"]) for h in hyps]))
        if len(out["cases"]) >= per_fault:
            break
    first = out["cases"][0] if out["cases"] else None
    out["correct"] = bool(first and first["correct"])
    out["case_fraction"] = (sum(c["correct"] for c in out["cases"]) / len(out["cases"])) if out["cases"] else 0.0
    return out


# ------------------------------------------------------------------ the held-out set
# relations a diagnosis claims about the whole diff: for a fault of plain kernel math
# ("none") claiming one of them (or precision, or a matched hypothesis) misdescribes it
CLAIMS = ("transposed", "sign", "scale", "offset", "affine", "misrouting", "time_shift", "precision")


def _shown(rec: dict, n: int = 2) -> List[dict]:
    """The signatures the sentence shows: the first of each kind, `n` kinds."""
    out, kinds = [], set()
    for s in rec.get("signatures") or []:
        if s["kind"] not in kinds and len(out) < n:
            kinds.add(s["kind"])
            out.append(s)
    return out


def _labels(s: dict) -> set:
    edge = (s.get("where") or {}).get("edge")
    return {s["kind"]} | ({f"boundary:{edge}"} if s["kind"] == "boundary" and edge else set())


def score_heldout(fault, rec: dict) -> dict:
    """One diagnosed case of a held-out fault against what the fault says a right diagnosis
    names: `localised` (the op / gdn_core named is one of expect_ops), `named` (localised and
    the structure right: a matched hypothesis of an expected class, or a shown signature of an
    expected kind; for plain math ("none") no wrong claim), `misdescribed` (a wrong op, a
    matched hypothesis of another class, or precision / a whole-diff relation claimed where
    the fault has none of them)."""
    att = rec.get("attribution") or {}
    op = att.get("op")
    localised = op in fault.expect_ops
    hyps = rec.get("hypotheses") or []
    top = hyps[0] if hyps and hyps[0]["matched"] else None
    shown = _shown(rec)
    labels = set().union(*(_labels(s) for s in shown)) if shown else set()
    want = set(fault.expect)
    if "none" in want:
        wrong_claim = bool(top) or bool(labels & set(CLAIMS))
        structure = not wrong_claim
    else:
        wrong_claim = bool(top and top["class"] not in want) or ("precision" in labels and "precision" not in want)
        structure = bool((top and top["class"] in want) or labels & want)
    return dict(localised=localised, named=localised and structure,
                misdescribed=(op is not None and not localised) or wrong_claim,
                op=op, stage=att.get("stage"), top=top["hypothesis"] if top else None,
                signatures=[s["words"][:160] for s in shown], has_op=op is not None,
                has_structure=bool(top or shown),
                has_where=bool(top or shown or any(w in (rec.get("diagnosis") or "") for w in
                                                   ("the divergence starts at", "the largest difference is at"))))


def measure_heldout(suite_name: str = "smoke", faults: Optional[Iterable[str]] = None, per_fault: int = 1,
                    on_fault: Optional[Callable[[dict], None]] = None, level: Optional[str] = None) -> dict:
    """The held-out faults (`harness.faults.heldout`): each fault's first `per_fault`
    failing cases (of `level` only, when given) diagnosed and scored by `score_heldout`
    (the first one decides the fault)."""
    from harness.faults.heldout import HELDOUT_FAULTS
    from harness.optimized.interpret import interpret_triton
    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache
    from harness.cases.suite import load_suite
    interpret_triton()
    run_case = _diagnosing_run_case()
    suite = load_suite(suite_name)
    policy, backends = Policy(), BackendCache()
    t0, results = time.perf_counter(), []
    for name in (list(faults) if faults else list(HELDOUT_FAULTS)):
        f = HELDOUT_FAULTS[name]
        r = dict(fault=name, incident=f.incident, expect_ops=list(f.expect_ops), expect=list(f.expect), cases=[])
        for case in _fault_cases(suite, f, level):
            rec = run_case(case, policy, suite["name"], backends, diagnose=True)
            if rec["status"] not in ("fail", "error"):
                continue
            r["cases"].append(dict(case=rec["id"], status=rec["status"], diagnosis_s=rec.get("diagnosis_s"),
                                   error=rec.get("diagnosis_error"), sentence=rec.get("diagnosis"),
                                   **score_heldout(f, rec)))
            if len(r["cases"]) >= per_fault:
                break
        first = r["cases"][0] if r["cases"] else {}
        r.update(detected=bool(first), named=bool(first.get("named")), localised=bool(first.get("localised")),
                 misdescribed=bool(first.get("misdescribed")))
        results.append(r)
        if on_fault:
            on_fault(r)
    det = [r for r in results if r["detected"]]
    cases = [c for r in results for c in r["cases"]]
    return dict(suite=suite_name, per_fault=per_fault, heldout=True, level=level, faults=results, total=len(results),
                detected=len(det), named=sum(r["named"] for r in det), localised=sum(r["localised"] for r in det),
                misdescribed=sum(r["misdescribed"] for r in det),
                cases_with_op_and_structure=sum(c["has_op"] and c["has_structure"] for c in cases),
                cases_with_op_and_where=sum(c["has_op"] and c["has_where"] for c in cases),
                cases=len(cases), wall_s=round(time.perf_counter() - t0, 1))


def measure(suite_name: str = "smoke", faults: Optional[Iterable[str]] = None, per_fault: int = 1,
            on_fault: Optional[Callable[[dict], None]] = None, level: Optional[str] = None) -> dict:
    """Per fault: its first detection(s) diagnosed; ``fraction`` = faults whose first
    detection's top hypothesis names the fault's class. `level` ("op" / "layer") keeps
    only that level's cases (how well each level's hypotheses do on their own)."""
    from harness.faults.catalogue import FAULTS
    from harness.optimized.interpret import interpret_triton
    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache
    from harness.cases.suite import load_suite
    interpret_triton()
    suite = load_suite(suite_name)
    policy, backends = Policy(), BackendCache()
    names = list(faults) if faults else list(FAULTS)
    t0, results = time.perf_counter(), []
    for n in names:
        r = diagnose_fault(FAULTS[n], suite, policy, backends, per_fault, level)
        results.append(r)
        if on_fault:
            on_fault(r)
    correct = [r["fault"] for r in results if r["correct"]]
    cases = [c for r in results for c in r["cases"]]
    return dict(suite=suite_name, per_fault=per_fault, level=level, faults=results, total=len(results),
                correct=len(correct),
                fraction=len(correct) / len(results) if results else 0.0,
                case_fraction=(sum(c["correct"] for c in cases) / len(cases)) if cases else 0.0,
                missed=[r["fault"] for r in results if not r["correct"]], wall_s=round(time.perf_counter() - t0, 1))
