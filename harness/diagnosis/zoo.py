"""How often the diagnosis names the right fault class, measured on the fault zoo.

For every fault of `harness.faults.catalogue` the suite's cases run in the zoo's order
(op cases of ops the fault shares with its base skipped, as the zoo does) until the
first detection - or the first `per_fault` failing cases - and the top hypothesis'
class is checked against the fault's `diagnosis_class`, mapped onto the diagnosis'
vocabulary by `CATALOGUE_CLASSES`. The faults are only the test subjects here: no
hypothesis uses their code.

``python -m harness.diagnosis --zoo [--suite smoke] [--fault NAME] [--per-fault N] [--out FILE]``
"""
from __future__ import annotations

import json
import time
from typing import Callable, Iterable, List, Optional

from .core import CLASSES

# the catalogue's diagnosis_class strings -> CLASSES ids
CATALOGUE_CLASSES = {
    "projection layout: b, a": "projection_layout_ba",
    "projection layout: core": "projection_layout_core",
    "ssm state layout": "ssm_state_layout",
    "GVA head mapping": "gva_head_mapping",
    "strides": "strides",
    "PAD rows": "pad_rows",
    "PAD slots": "pad_slots",
    "PAD slots: live slot 0": "pad_slot0",
    "weight loading: TP shards": "weight_sharding",
    "prefix-cache checkpoints": "prefix_checkpoints",
    "state precision": "state_precision",
    "q/k norm": "qk_norm",
    "q/k scale": "qk_scale",
    "gating math": "gating_math",
    "gating precision": "gating_precision",
    "conv state": "conv_state",
    "spec decode: accepted-token offset": "spec_accepted_offset",
    "spec decode: token gather": "spec_token_gather",
    "spec decode: zero-draft state": "spec_zero_draft",
    "spec decode: ragged widths": "spec_ragged_width",
    "gated norm": "gated_norm",
    "state init: chunked prefill": "state_init_chunked",
    "state init: fresh sequence": "state_init_fresh",
    "batch shape": "batch_shape",
    "chunk boundary": "chunk_boundary",
    "varlen isolation": "varlen_isolation",
}
assert set(CATALOGUE_CLASSES.values()) <= set(CLASSES)


def _fault_cases(suite: dict, fault, level: Optional[str] = None) -> list:
    from ..faults.zoo import backend_cases, unchanged_ops
    same = set(unchanged_ops(fault))
    return [c for c in backend_cases(suite, fault.target) if not (c.level == "op" and c.check in same)
            and level in (None, c.level)]


def diagnose_fault(fault, suite: dict, policy, backends, per_fault: int = 1, level: Optional[str] = None) -> dict:
    """Run `fault`'s cases until `per_fault` have failed; the diagnosis of each against the fault's class."""
    from ..runner import run_case
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


def measure(suite_name: str = "smoke", faults: Optional[Iterable[str]] = None, per_fault: int = 1,
            on_fault: Optional[Callable[[dict], None]] = None, level: Optional[str] = None) -> dict:
    """Per fault: its first detection(s) diagnosed; ``fraction`` = faults whose first
    detection's top hypothesis names the fault's class. `level` ("op" / "layer") keeps
    only that level's cases (how well each level's hypotheses do on their own)."""
    from ..faults.catalogue import FAULTS
    from ..optimized.interpret import interpret_triton
    from ..policy import Policy
    from ..runner import BackendCache
    from ..suite import load_suite
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


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m harness.diagnosis", description="diagnosis accuracy on the fault zoo")
    ap.add_argument("--zoo", action="store_true", required=True, help="measure on the fault zoo")
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--fault", action="append", help="only these faults (repeatable)")
    ap.add_argument("--per-fault", type=int, default=1, help="diagnose the first N failing cases of each fault")
    ap.add_argument("--level", choices=["op", "layer"], default=None, help="only this level's cases")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--min-fraction", type=float, default=0.0, help="exit 1 below this fraction")
    args = ap.parse_args(argv)

    def show(r):
        first = r["cases"][0] if r["cases"] else {}
        mark = "ok  " if r["correct"] else "MISS"
        print(f"{mark} {r['fault']:36} want {r['expected']!s:24} got {first.get('top')!s:24} "
              f"({sum(c['correct'] for c in r['cases'])}/{len(r['cases'])} cases; "
              f"{first.get('diagnosis_s')} s) {first.get('case', '')[:80]}", flush=True)

    res = measure(args.suite, args.fault, args.per_fault, show, args.level)
    print(f"diagnosis names the fault class for {res['correct']}/{res['total']} faults "
          f"({100 * res['fraction']:.0f} %) at their first {args.level or ''} detection; over all diagnosed cases "
          f"{100 * res['case_fraction']:.0f} %; missed: {', '.join(res['missed']) or '-'}; {res['wall_s']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0 if res["fraction"] >= args.min_fraction else 1
