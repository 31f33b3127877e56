"""`gdn-harness repro`: one case rerun, its full diff printed (and saved, shrunk on request)."""
from __future__ import annotations

import sys
from pathlib import Path

from harness.cli.common import EXIT_FAIL, EXIT_OK
from harness.diagnosis.cli import print_hypotheses
from harness.report.paths import find_case
from harness.tools.shrink import after_repro, repro_options


def cmd_repro(args) -> int:
    from harness.judge.policy import Policy
    from harness.run.runner import run_case
    case, suite = find_case(args.case, args.results)
    if args.device:
        case.device = args.device
    rec = run_case(case, Policy(args.policy) if args.policy else Policy(), suite, oracle_device=args.oracle_device)
    print(f"{rec['id']}: {rec['status'].upper()}" + (f" - {rec['error']}" if rec.get("error") else ""))
    if rec.get("filled_ops"):
        print(f"filled from the reference: {', '.join(rec['filled_ops'])}")
    print(f"{'output':34} {'verdict':7} {'rel_rms':>10} {'max|diff|':>10} {'at':20} {'worst tok':>9} "
          f"{'1st div':>7}  tolerance")
    for m in rec["metrics"]:
        rel = m["rel_rms"] if isinstance(m["rel_rms"], str) else f"{m['rel_rms']:.3g}"
        mx = m["max_abs"] if isinstance(m["max_abs"], str) else f"{m['max_abs']:.3g}"
        print(f"{m['output'][:34]:34} {'ok' if m['passed'] else 'FAIL':7} {rel:>10} {mx:>10} "
              f"{str(m['max_abs_index'])[:20]:20} {str(m['worst_token']):>9} {str(m['first_divergent_token']):>7}"
              f"  {m['tolerance']}")
    if rec.get("diagnosis"):
        print(f"diagnosis: {rec['diagnosis']}")
    print_hypotheses(rec)
    if rec.get("traceback"):
        print(rec["traceback"], file=sys.stderr)
    if args.save:
        import json
        Path(args.save).write_text(json.dumps(dict(case=case.to_dict(), suite=suite), indent=1))
        print(f"case saved to {args.save}: gdn-harness repro {args.save}")
    shrunk = after_repro(case, rec, args)
    if shrunk is not None:
        return shrunk
    return {"pass": EXIT_OK, "skip": EXIT_OK}.get(rec["status"], EXIT_FAIL)


def add_parser(sub) -> None:
    rp = sub.add_parser("repro", help="rerun one case and print the full diff")
    rp.add_argument("case", help="a case id (or unique part of one) from a results.json, or a case JSON file")
    rp.add_argument("--results", default=None, help="results.json or run folder (default reports/latest)")
    rp.add_argument("--device", default=None, help="override the case's device")
    rp.add_argument("--oracle-device", default=None,
                    help="where the fp64 oracle runs (default: the case's device)")
    rp.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    rp.add_argument("--save", default=None, help="write the case as JSON here (for bisect-check)")
    repro_options(rp)
    rp.set_defaults(fn=cmd_repro)
