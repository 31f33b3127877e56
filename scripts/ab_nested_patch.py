"""CPU time of the smoke suite's triton cases with the interpreter's helper-call patch skip
(harness/optimized/interpret.py) on and off, each case run both ways in turn in one process, the
order alternating, so the machine's drift in speed falls on both alike.

  python scripts/ab_nested_patch.py [-k EXPR]
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default=None, help="the cases whose ids match (the run's -k grammar)")
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["GDN_NESTED_PATCH_SKIP"] = "0"       # installed by hand below, to switch it per case
    import triton.language as tl
    from triton.runtime import interpreter as interp

    from harness.cases.filters import parse_k
    from harness.cases.suite import expand, load_suite
    from harness.judge.policy import Policy
    from harness.optimized import interpret
    from harness.run.runner import BackendCache, run_case

    assert interpret.fast_interpreter()
    modes = {"off": (interp._patch_lang, interp.InterpretedFunction.__call__)}
    assert interpret._skip_repatching_in_device_calls(interp, tl), "the skip does not install on this triton"
    modes["on"] = (interp._patch_lang, interp.InterpretedFunction.__call__)
    match = parse_k(args.k) if args.k else (lambda _: True)
    cases = [c for c in expand(load_suite("smoke"), ["triton"], device="cpu") if match(c.id)]
    backends, policy = BackendCache(), Policy()
    cpu = {"off": 0.0, "on": 0.0}
    for i, case in enumerate(cases):
        for mode in (("on", "off") if i % 2 else ("off", "on")):
            interp._patch_lang, interp.InterpretedFunction.__call__ = modes[mode]
            t = time.process_time()
            rec = run_case(case, policy, "smoke", backends)
            cpu[mode] += time.process_time() - t
            assert rec["status"] in ("pass", "skip"), (case.id, mode, rec["status"])
    print(f"{len(cases)} cases, CPU seconds: off {cpu['off']:.1f}, on {cpu['on']:.1f} "
          f"({100 * (cpu['on'] / cpu['off'] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
