#!/usr/bin/env python3
"""Experiment: each zoo fault's first failing case shrunk (harness.tools.shrink), the median size reduction.

    scripts/experiments/shrink_zoo.py --zoo [--suite smoke] [--fault NAME] [--budget-s 60] --report-dir reports/shrink-zoo
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.errors import HarnessError
from harness.tools.shrink import shrink_case, write_case


def shrink_zoo(suite: str = "smoke", faults: Optional[List[str]] = None, budget_s: float = 60.0,
               max_evals: int = 200, out_dir: Optional[str] = None, log=print) -> dict:
    """Each zoo fault's first failing case (``run_zoo(stop_at_first=True)``) shrunk; the
    median size reduction over the faults."""
    from harness.faults.zoo import backend_cases, run_zoo
    from harness.run.runner import BackendCache
    from harness.cases.suite import load_suite
    z = run_zoo(suite, stop_at_first=True, faults=faults, bases=[])
    s = load_suite(suite)
    backends, rows = BackendCache(), []
    for name, e in z["faults"].items():
        if not e["first_case"]:
            rows.append(dict(fault=name, first_case=None, error="not killed by the suite"))
            continue
        case = next(c for c in backend_cases(s, e["target"]) if c.id == e["first_case"])
        try:
            res = shrink_case(case, budget_s, max_evals, backends=backends)
        except HarnessError as err:
            rows.append(dict(fault=name, first_case=case.id, error=str(err)))
            continue
        row = dict(fault=name, **res.summary())
        if out_dir:
            row["file"] = str(write_case(Path(out_dir) / f"{name}.json", res))
        rows.append(row)
        log(f"{name:36} {res.original_size:>8} -> {res.size:>6}  {res.reduction:7.1f}x  "
            f"{res.evaluations:3} runs {res.seconds:5.0f} s  {res.stopped}")
    red = [r["reduction"] for r in rows if "reduction" in r]
    return dict(suite=suite, faults=rows, median_reduction=statistics.median(red) if red else None,
                shrunk=len(red), total=len(rows))


def zoo_markdown(res: dict) -> str:
    lines = [f"# Shrinker over the zoo ({res['suite']} suite, each fault's first failing case)", "",
             f"**Median size reduction: {res['median_reduction']:.1f}x** over {res['shrunk']}/{res['total']} faults "
             "(size: elements of all inputs handed to the backend)", "",
             "| fault | first failing case | size | minimal size | reduction | minimal (tp, H, HV, K, V, ...) | "
             "still failing | runs | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["faults"]:
        if "reduction" not in r:
            lines.append(f"| `{r['fault']}` | `{r.get('first_case')}` | | | | {r['error']} | | | |")
            continue
        p = ", ".join(f"{k}={v}" for k, v in r["parts"].items())
        lines.append(f"| `{r['fault']}` | `{r['original_id']}` | {r['original_size']} | {r['size']} | "
                     f"{r['reduction']:.1f}x | {p} | {', '.join(r['failing_outputs'] or [])} | "
                     f"{r['evaluations']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``scripts/experiments/shrink_zoo.py --zoo [--suite smoke] [--fault F] [--budget-s 60] [--report-dir D]``"""
    import argparse
    ap = argparse.ArgumentParser(prog="scripts/experiments/shrink_zoo.py", description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="store_true", help="shrink every zoo fault's first failing case")
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--fault", action="append", help="only these faults (repeatable)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="per fault")
    ap.add_argument("--max-evals", type=int, default=200, help="per fault")
    ap.add_argument("--report-dir", default="reports/shrink-zoo")
    args = ap.parse_args(argv)
    if not args.zoo:
        ap.error("nothing to do: pass --zoo (or use `gdn-harness shrink <case>`)")
    from harness.optimized.interpret import interpret_triton
    interpret_triton()
    res = shrink_zoo(args.suite, args.fault, args.budget_s, args.max_evals, str(Path(args.report_dir) / "cases"))
    d = Path(args.report_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "shrink_zoo.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (d / "shrink_zoo.md").write_text(zoo_markdown(res))
    print(f"median size reduction {res['median_reduction']:.1f}x over {res['shrunk']}/{res['total']} faults; "
          f"{d / 'shrink_zoo.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
