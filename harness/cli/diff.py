"""`gdn-harness diff`: two runs compared - new failures, fixes, metric regressions."""
from __future__ import annotations

from harness.cli.common import EXIT_FAIL, EXIT_OK


def cmd_diff(args) -> int:
    from harness.report.diffing import diff_runs, load_results
    d = diff_runs(load_results(args.old), load_results(args.new), factor=args.factor)
    print(d.markdown())
    bad = d.new_failures if args.baseline else d.new_failures + d.regressions
    print(f"{len(d.new_failures)} new failures, {len(d.regressions)} regressions (x{args.factor:g}), "
          f"{len(d.fixes)} fixed" + (" - baseline mode: only new failures fail" if args.baseline else ""))
    return EXIT_FAIL if bad else EXIT_OK


def add_parser(sub) -> None:
    df = sub.add_parser("diff", help="compare two runs: new failures, fixes, metric regressions")
    df.add_argument("old", help="results.json (or run folder) of the old run")
    df.add_argument("new", help="results.json (or run folder) of the new run")
    df.add_argument("--baseline", action="store_true", help="fail only on new failures")
    df.add_argument("--factor", type=float, default=2.0, help="a rel_rms grown past this factor is a regression")
    df.set_defaults(fn=cmd_diff)
