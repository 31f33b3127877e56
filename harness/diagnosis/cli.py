"""The diagnosis' command-line bits for ``gdn-harness run`` / ``repro``."""
from __future__ import annotations

import os

from .core import coverage_note, hypothesis_lines, signature_lines


def add_diagnosis_arguments(parser) -> None:
    parser.add_argument("--no-diagnose", action="store_true",
                        help="do not re-run the fault hypotheses on failing cases (harness.diagnosis)")
    parser.add_argument("--diagnose-budget", type=float, default=None, metavar="S",
                        help="seconds of hypothesis re-runs per failing case (default 60)")


def apply_diagnosis_arguments(args) -> None:
    """Through the environment, so isolated / distributed workers follow too."""
    if getattr(args, "no_diagnose", False):
        os.environ["GDN_DIAGNOSE"] = "0"
    if getattr(args, "diagnose_budget", None) is not None:
        os.environ["GDN_DIAGNOSE_BUDGET_S"] = str(args.diagnose_budget)


def print_hypotheses(rec: dict, n: int = 5) -> None:
    lines = hypothesis_lines(rec, n)
    if lines:
        print("fault hypotheses (re-run through the reference, best first):")
        for line in lines:
            print(f"  {line}")
    elif rec.get("status") in ("fail", "error") and "hypotheses" in rec:
        note = coverage_note(rec.get("diagnosis_coverage"))
        print(f"fault hypotheses: {note or 'none of the known ones reproduces this failure'}")
    sigs = signature_lines(rec)
    if sigs:
        print("localised / structure of the difference:")
        for line in sigs:
            print(f"  {line}")
