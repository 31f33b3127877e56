"""`gdn-harness list`: backends, suites, presets, ops, mixes, checks, mutants."""
from __future__ import annotations

from harness.cli.common import EXIT_OK
from harness.config import PRESET_LAYOUT, PRESETS
from harness.errors import HarnessError


def cmd_list(args) -> int:
    from harness.cases.selfcheck import CHECKS
    from harness.cases.suite import load_suite, suite_names

    if args.what == "backends":
        from harness.optimized.registry import backend_names, load_backend
        for name, target in backend_names().items():
            try:
                b = load_backend(name)
                why = b.unavailable("cuda" if _has_cuda() else "cpu")
                info = f"ops: {', '.join(b.implemented_ops()) or '-'}" + (f"  [unavailable: {why}]" if why else "")
                if b.variants:
                    info += f"  variants: {', '.join(f'{name}@{v}' for v in b.variants)}"
            except HarnessError as e:
                info = f"[cannot load: {e}]"
            print(f"{name:10} {target:55} {info}")
    elif args.what == "ops":
        from harness.cases.opcheck import OP_INFOS
        for name, info in OP_INFOS.items():
            print(f"{name:48} variants: {', '.join(info.variants)}")
    elif args.what == "mixes":
        from harness.cases.scenario import MIXES
        for name, (build, num_spec) in MIXES.items():
            steps = build()
            print(f"{name:22} steps={len(steps)} num_spec={num_spec} entries={sum(len(s) for s in steps)}")
        # parametrised families (any count): the names the suites use
        print(f"{'history_<tokens>':22} a long chunked-prefill history, then decode and spec steps "
              "(nightly history_2048 / history_8192 / history_131072)")
        print(f"{'drift_<decodes>':22} two prefills, then <decodes> decode steps judged step by step: the drift lane "
              "(smoke drift_48, ci drift_256, nightly drift_10000; python -m harness.report.drift)")
    elif args.what == "mutants":
        from harness.faults.catalogue import FAULTS, GRAPH_FAULTS
        for name, f in FAULTS.items():
            print(f"{name:36} base={f.base:9} {f.incident}")
        for name, f in GRAPH_FAULTS.items():    # not run by `gdn-harness zoo`: no suite case can kill them
            print(f"{name:36} base={f.base:9} {f.incident} [GPU only: python -m harness.tools.cudagraph --zoo]")
    elif args.what == "presets":
        for name, d in PRESETS.items():
            print(f"{name:22} hidden={d.hidden:<5} H={d.H:<3} HV={d.HV:<3} K={d.K} V={d.V} W={d.W} "
                  f"layout={PRESET_LAYOUT[name]}")
    elif args.what == "suites":
        for name in suite_names():
            print(f"{name:10} {load_suite(name).get('description', '')}")
    elif args.what == "checks":
        for name, (fn, axes) in CHECKS.items():
            doc = (fn.__doc__ or "").strip().splitlines()[0]
            print(f"{name:26} varies {','.join(axes):28} {doc}")
        # checks beside the oracle's self checks
        print(f"{'op.checkpoint_end':26} {'(op pair, exact)':35} A prefix-cache checkpoint written at a sequence's "
              "end == the cold run's final state, bit-for-bit in the state dtype")
        print(f"{'stepN.proj_qkvz/proj_ba':26} {'(layer pairs, TP > 1)':35} Every rank's projections (its own "
              "weight loading) == the full-weight TP=1 GEMM")
        print(f"{'graph.replay':26} {'(GPU only)':35} Decode and spec-verify steps captured in a CUDA graph "
              "replay == eager (python -m harness.tools.cudagraph [--zoo])")
    return EXIT_OK


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help="list presets, suites or checks")
    ls.add_argument("what", choices=["backends", "suites", "presets", "ops", "mixes", "checks", "mutants"],
                    help="what to list")
    ls.set_defaults(fn=cmd_list)
