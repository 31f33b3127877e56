#!/usr/bin/env python3
"""Experiment: the diagnosis' accuracy on the fault zoo (or, --heldout, on the held-out
faults): `scripts/experiments/diagnosis_zoo.py --zoo [--level op|layer] [--per-fault N]`.
The measurement itself is `harness.faults.diagnosis_zoo`; this is its command line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.faults.diagnosis_zoo import measure, measure_heldout


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="scripts/experiments/diagnosis_zoo.py", description="diagnosis accuracy on the fault zoo")
    ap.add_argument("--zoo", action="store_true", required=True, help="measure on the fault zoo")
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--fault", action="append", help="only these faults (repeatable)")
    ap.add_argument("--per-fault", type=int, default=1, help="diagnose the first N failing cases of each fault")
    ap.add_argument("--level", choices=["op", "layer"], default=None, help="only this level's cases")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--min-fraction", type=float, default=0.0, help="exit 1 below this fraction")
    ap.add_argument("--heldout", action="store_true",
                    help="measure on the held-out faults (harness.faults.heldout) instead of the public zoo")
    args = ap.parse_args(argv)
    if args.heldout:
        return _main_heldout(args)

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


def _main_heldout(args) -> int:
    def show(r):
        c = r["cases"][0] if r["cases"] else {}
        mark = "named" if r["named"] else "MISDESCRIBED" if r["misdescribed"] else "localised" if r["localised"] \
            else "missed" if r["detected"] else "undetected"
        print(f"{mark:12} {r['fault']:36} op {c.get('op')!s:40} top {c.get('top')!s:28} "
              f"sig {'; '.join(c.get('signatures') or [])[:140]} ({c.get('diagnosis_s')} s)", flush=True)

    res = measure_heldout(args.suite, args.fault, args.per_fault, show, args.level)
    d = res["detected"] or 1
    print(f"held-out: {res['detected']}/{res['total']} detected; named right {res['named']}/{res['detected']} "
          f"({100 * res['named'] / d:.0f} %), localised right {res['localised']}/{res['detected']}, misdescribed "
          f"{res['misdescribed']}/{res['detected']}; of {res['cases']} diagnosed cases "
          f"{res['cases_with_op_and_structure']} name an op and a structure (hypothesis or signature), {res['cases_with_op_and_where']} an op and a "
          f"structure or where the divergence starts; {res['wall_s']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0 if res["named"] / d >= args.min_fraction else 1


if __name__ == "__main__":
    sys.exit(main())
