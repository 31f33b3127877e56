"""CPU time of the smoke suite's triton cases with one of the interpreter's speed-ups
(harness/optimized/interpret.py) on and off: `nested` (a helper call skips re-patching) or
`shape_types` (shape types built once per shape). Each case runs both ways in turn in one
process, the order alternating, so the machine's drift in speed falls on both alike; every
metric must come out the same both ways.

  python scripts/ab_interpreter.py nested|shape_types [-k EXPR]
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("switch", choices=("nested", "shape_types"))
    ap.add_argument("-k", default=None, help="the cases whose ids match (the run's -k grammar)")
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "1"
    # the speed-up under test is installed by hand below, to switch it per case
    os.environ["GDN_NESTED_PATCH_SKIP" if args.switch == "nested" else "GDN_FAST_SHAPE_TYPES"] = "0"
    import triton.language as tl
    from triton.runtime import interpreter as interp

    from harness.cases.filters import parse_k
    from harness.cases.suite import expand, load_suite
    from harness.judge.policy import Policy
    from harness.optimized import interpret
    from harness.run.runner import BackendCache, run_case

    assert interpret.fast_interpreter()
    if args.switch == "nested":
        owners = [(interp, "_patch_lang"), (interp.InterpretedFunction, "__call__")]
        install = lambda: interpret._skip_repatching_in_device_calls(interp, tl)
    else:
        owners = [(tl.core.block_type, "__init__"), (tl.core.tensor, "__init__"), (tl.core.tuple, "__eq__")]
        install = lambda: interpret._cheap_shape_types(tl)
    modes = {"off": [getattr(o, n) for o, n in owners]}
    assert install(), f"{args.switch} does not install on this triton"
    modes["on"] = [getattr(o, n) for o, n in owners]
    match = parse_k(args.k) if args.k else (lambda _: True)
    cases = [c for c in expand(load_suite("smoke"), ["triton"], device="cpu") if match(c.id)]
    backends, policy = BackendCache(), Policy()
    cpu = {"off": 0.0, "on": 0.0}
    metrics, differ = 0, []
    for i, case in enumerate(cases):
        seen = {}
        for mode in (("on", "off") if i % 2 else ("off", "on")):
            for (o, n), fn in zip(owners, modes[mode]):
                setattr(o, n, fn)
            t = time.process_time()
            rec = run_case(case, policy, "smoke", backends)
            cpu[mode] += time.process_time() - t
            assert rec["status"] in ("pass", "skip"), (case.id, mode, rec["status"])
            seen[mode] = json.dumps(rec["metrics"], sort_keys=True)
        metrics += len(rec["metrics"])
        if seen["on"] != seen["off"]:
            differ.append(case.id)
    print(f"{args.switch}: {len(cases)} cases, CPU seconds: off {cpu['off']:.1f}, on {cpu['on']:.1f} "
          f"({100 * (cpu['on'] / cpu['off'] - 1):+.1f} %); {metrics} metrics, "
          f"{'all identical' if not differ else f'{len(differ)} cases differ: {differ[:3]}'}")


if __name__ == "__main__":
    main()
