"""The long-horizon drift lane: per-step error curves of the ``drift_<decodes>`` layer cases.

A drift case is a prefill and then many decode steps (`scenario.drift_steps`); its layer
check already compares every step's output (``step<s>.out``) and core read-out
(``step<s>.core`` = S_t q_t, the state as the output sees it) with the fp64 oracle under
the per-step tolerance. This module turns those per-step errors (results.json) into
curves, fits their growth - rel_rms ~ step^b over the last 7/8 of the steps - and judges
it: a bounded error (b <= 0.75; rounding that does not compound stays flat, a random walk
gives 0.5) or a drifting one (b > 0.75: an error that compounds, e.g. a state kept in a
narrower dtype than asked for). It writes ``drift.md`` and ``drift.png`` (matplotlib) next
to the report:

    python -m harness.report.drift reports/latest
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List

BOUNDED_EXPONENT = 0.75
_STEP = re.compile(r"^step(\d+)\.(out|core)$")


def curves(case: dict) -> Dict[str, List[tuple]]:
    """``{"out": [(step, rel_rms)], "core": [...]}`` of one case record (decode steps only)."""
    out: Dict[str, List[tuple]] = {"out": [], "core": []}
    for m in case.get("metrics") or []:
        hit = _STEP.match(m.get("output", ""))
        if hit and int(hit.group(1)) >= 1 and m.get("rel_rms") is not None:
            out[hit.group(2)].append((int(hit.group(1)), float(m["rel_rms"])))
    return {k: sorted(v) for k, v in out.items()}


def growth_exponent(points: List[tuple]) -> float:
    """Least-squares slope of log(rel_rms) on log(step) over the last 7/8 of the steps."""
    pts = [(s, e) for s, e in points if s >= max(1, points[-1][0] // 8)] if points else []
    if len(pts) < 2:
        return float("nan")
    xs = [math.log(s) for s, _ in pts]
    ys = [math.log(max(e, 1e-30)) for _, e in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def verdict(b: float) -> str:
    if math.isnan(b):
        return "too few steps"
    return "bounded" if b <= BOUNDED_EXPONENT else "drifting"


def drift_cases(results: dict) -> List[dict]:
    return [c for c in results.get("cases", []) if str(c.get("mix") or "").startswith("drift_")]


def write_report(report_dir: Path) -> List[dict]:
    """drift.md and drift.png for the drift cases of `report_dir`/results.json; returns the rows."""
    results = json.loads((report_dir / "results.json").read_text())
    rows = []
    for c in drift_cases(results):
        cv = curves(c)
        rows.append(dict(id=c["id"], status=c["status"], curves=cv,
                         **{f"b_{k}": growth_exponent(v) for k, v in cv.items()},
                         **{f"last_{k}": (v[-1][1] if v else float("nan")) for k, v in cv.items()}))
    lines = ["# Long-horizon drift", "",
             f"rel_rms per decode step vs the fp64 oracle; growth exponent b of rel_rms ~ step^b over the last 7/8 "
             f"of the steps; bounded when b <= {BOUNDED_EXPONENT}.", "",
             "| case | status | steps | last out rel_rms | b (out) | b (core) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = r["curves"]["out"][-1][0] if r["curves"]["out"] else 0
        worst = max((b for b in (r["b_out"], r["b_core"]) if not math.isnan(b)), default=float("nan"))
        lines.append(f"| `{r['id']}` | {r['status']} | {steps} | {r['last_out']:.3g} | {r['b_out']:.2f} | "
                     f"{r['b_core']:.2f} | {verdict(worst)} |")
    if rows:
        _plot(rows, report_dir / "drift.png")
        lines += ["", "![per-step error](drift.png)"]
    else:
        lines += ["", "No drift_<decodes> cases in this report."]
    (report_dir / "drift.md").write_text("\n".join(lines) + "\n")
    return rows


def _plot(rows: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("out", "core")):
        for r in rows:
            pts = r["curves"][key]
            if pts:
                ax.loglog([s for s, _ in pts], [max(e, 1e-30) for _, e in pts], label=f"{r['id'][:70]} (b={r['b_' + key]:.2f})")
        ax.set_title(f"step<s>.{key} rel_rms vs fp64 oracle")
        ax.set_xlabel("decode step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("rel_rms")
    axes[1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report.drift", description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", type=Path, help="a report directory with results.json")
    args = ap.parse_args(argv)
    if not (args.report_dir / "results.json").exists():
        print(f"no results.json in {args.report_dir}", file=sys.stderr)
        return 2
    rows = write_report(args.report_dir)
    for r in rows:
        worst = max((b for b in (r["b_out"], r["b_core"]) if not math.isnan(b)), default=float("nan"))
        print(f"{verdict(worst):>14}  b_out={r['b_out']:.2f} b_core={r['b_core']:.2f}  {r['id']}")
    print(f"wrote {args.report_dir / 'drift.md'}")
    return 1 if any(verdict(max(r["b_out"], r["b_core"])) == "drifting" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
