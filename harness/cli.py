"""gdn-harness: Gated DeltaNet kernels checked against an fp64 reference, op by op and layer by layer.

Exit codes: 0 all passed; 1 a correctness failure (or a case error); 2 usage / config error;
128 + N a run stopped by signal N (130 Ctrl-C / SIGINT, 143 SIGTERM), its report written
and marked interrupted; 125 (bisect-check only) could not test.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional

from .bisect import add_parser as add_bisect_parser
from .config import PRESET_LAYOUT, PRESETS
from .diagnosis.cli import add_diagnosis_arguments, apply_diagnosis_arguments, print_hypotheses
from .errors import HarnessError
from .bench import add_parser as add_bench_parser
from .evals.gsm8k import add_parser as add_gsm8k_parser
from .faults.zoo import add_parser as add_zoo_parser
from .optimized.interpret import interpret_triton
from .shrink import add_parser as add_shrink_parser, after_repro, repro_options

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_TIMEOUT = 600.0
DEFAULT_REPORTS = Path("reports")


def _report_dir(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg)
    return DEFAULT_REPORTS / datetime.now().strftime("%Y%m%d-%H%M%S")


def _point_latest(report_dir: Path) -> None:
    """reports/latest -> the newest run (only for runs under the default reports folder)."""
    if report_dir.parent.resolve() != DEFAULT_REPORTS.resolve():
        return
    latest = DEFAULT_REPORTS / "latest"
    tmp = DEFAULT_REPORTS / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(report_dir.name)
    os.replace(tmp, latest)


def final_table(records: List[dict]) -> str:
    from collections import Counter
    c = Counter((r["backend"], r["level"], r["status"]) for r in records)
    rows = sorted({(b, lv) for b, lv, _ in c})
    head = f"{'backend':28} {'level':6} {'pass':>6} {'fail':>6} {'error':>6} {'skip':>6}"
    return "\n".join([head] + [f"{b[:28]:28} {lv:6} " + " ".join(f"{c.get((b, lv, s), 0):>6}" for s in
                                                                 ("pass", "fail", "error", "skip")) for b, lv in rows])


def _isolation(args, backends: List[str]) -> str:
    """How the cases run: "workers" (the default for any backend but the reference), "in
    process" (the reference alone, or --no-isolate) or "distributed"; refuses what cannot work."""
    if args.distributed:
        return "distributed"
    if args.no_isolate:
        if args.isolate:
            raise HarnessError("--isolate and --no-isolate contradict each other")
        if args.jobs > 1:
            raise HarnessError("--jobs runs cases in worker processes; drop --no-isolate")
        if args.timeout is not None:
            raise HarnessError("--timeout needs worker processes (a case stuck in native code cannot be "
                               "stopped in process); drop --no-isolate")
        return "in process"
    if args.isolate or args.jobs > 1 or args.timeout is not None or set(backends) != {"reference"}:
        return "workers"
    return "in process"


def _interrupted_line(live, signum: int, stuck: bool = False) -> str:
    import signal as _signal
    running = live.running_now()
    what = (" while running " + ", ".join(f"{r['id']} ({r['seconds']:g} s in)" for r in running)) if running else ""
    return (f"\ninterrupted by {_signal.Signals(signum).name}{what}"
            + (" - the run was stuck in native code" if stuck else "")
            + f"; {len(live.records)} of {len(live.planned)} cases finished; report in {live.dir}")


def cmd_run(args) -> int:
    import torch

    from . import interrupt
    from .filters import filter_cases
    from .live import LiveReport, Progress

    apply_diagnosis_arguments(args)

    from .policy import Policy
    from .report import counts
    from .runner import run_cases
    from .suite import expand, load_suite

    suite = load_suite(args.suite)
    if args.autotune or suite.get("autotune"):
        os.environ["GDN_AUTOTUNE"] = args.autotune or suite["autotune"]     # workers inherit it
    policy = Policy(args.policy) if args.policy else Policy()
    if args.device != "cpu" and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {args.device}: no CUDA device is available")
    backends = [b for arg in (args.backend or ["reference"]) for b in arg.split(",") if b]
    from .optimized.registry import load_backend
    for name in backends:        # an unknown or unimportable backend is a usage error (exit 2)
        load_backend(name)
    cases = filter_cases(expand(suite, backends, device=args.device,
                                seeds=[args.seed] if args.seed is not None else None), args, suite["name"])
    if args.distributed:   # layer cases at TP N on N ranks of torch.distributed (harness/distributed.py)
        from .distributed import select_cases
        cases, world = select_cases(cases, args.tp, args.device)
    mode = _isolation(args, backends)
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    report_dir = _report_dir(args.report_dir)
    meta = dict(suite=suite["name"], backends=backends, suite_file=suite["path"], policy_version=policy.version,
                policy_file=str(policy.path), command="gdn-harness " + " ".join(map(shlex.quote, args.argv)),
                device=args.device, isolation=mode, timeout_s=timeout if mode != "in process" else None)
    live = LiveReport(report_dir, meta, [dict(id=c.id, backend=c.backend, level=c.level) for c in cases],
                      Path(args.buildkite_annotate) if args.buildkite_annotate else None)
    live.write("running")            # the folder exists from the start, whatever ends the run
    _point_latest(report_dir)
    print(f"gdn-harness: suite {suite['name']} - {len(cases)} cases ({mode}) - report in {report_dir}",
          file=sys.stderr)
    progress = Progress(len(cases), args.quiet)
    pool = []

    def start(case):
        live.start(case.id)
        progress.start(case.id)

    def done(rec):
        live.done(rec)
        progress.done(rec)

    def stuck(signum):               # the watcher thread: the main thread never took the signal up
        for p in pool:
            p.kill_busy()
        line = _interrupted_line(live, signum, stuck=True)
        live.finish(signum)
        print(line, file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signum = None
    with interrupt.interruptible(stuck, exiting=getattr(args, "program", False)):
        try:
            if mode == "distributed":
                from .distributed import run_distributed
                run_distributed(cases, suite["name"], args.policy, args.oracle_device, done, world, timeout=timeout)
            elif mode == "workers":
                from .isolate import run_isolated, shared_pool
                pool.append(shared_pool())
                gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
                run_isolated(cases, suite["name"], args.policy, args.oracle_device, done, jobs=args.jobs,
                             timeout=timeout, gpus=gpus, on_start=start)
            else:
                run_cases(cases, policy, suite["name"], on_done=done, oracle_device=args.oracle_device,
                          on_start=start)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
        interrupt.hold()             # later signals only mark the run: the report is written whole
        progress.close()
        if signum:
            print(_interrupted_line(live, signum), file=sys.stderr)
        summary = live.finish(signum)
    records = live.records
    c = counts(records)
    print(final_table(records))
    print(f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped "
          f"in {time.perf_counter() - live.t0:.1f}s" + (f" - INTERRUPTED after {c['total']} of {len(cases)} cases"
                                                        if signum else "") + f" - {summary}")
    if signum:
        return 128 + signum
    return EXIT_FAIL if c["fail"] or c["error"] or len(records) < len(cases) else EXIT_OK


def cmd_diff(args) -> int:
    from .diffing import diff_runs, load_results
    d = diff_runs(load_results(args.old), load_results(args.new), factor=args.factor)
    print(d.markdown())
    bad = d.new_failures if args.baseline else d.new_failures + d.regressions
    print(f"{len(d.new_failures)} new failures, {len(d.regressions)} regressions (x{args.factor:g}), "
          f"{len(d.fixes)} fixed" + (" - baseline mode: only new failures fail" if args.baseline else ""))
    return EXIT_FAIL if bad else EXIT_OK


def _find_case(arg: str, results: Optional[str]):
    """A case from a case JSON file, or by id from a results.json (default reports/latest)."""
    import json

    from .cases import Case
    path = Path(arg)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text())
        return Case.from_dict(data.get("case", data)), data.get("suite", "repro")
    from .diffing import load_results
    recs = load_results(results or str(DEFAULT_REPORTS / "latest"))
    matches = [r for cid, r in recs.items() if cid == arg] or [r for cid, r in recs.items() if arg in cid]
    if len(matches) != 1:
        raise HarnessError(f"repro {arg!r}: {len(matches)} cases match in {results or 'reports/latest'}"
                           + (f": {[m['id'] for m in matches[:5]]}" if matches else ""))
    return Case.from_dict(matches[0]["case"]), matches[0]["suite"]


def cmd_repro(args) -> int:
    from .policy import Policy
    from .runner import run_case
    case, suite = _find_case(args.case, args.results)
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


def cmd_list(args) -> int:
    from .selfcheck import CHECKS
    from .suite import load_suite, suite_names

    if args.what == "backends":
        from .optimized.registry import backend_names, load_backend
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
        from .opcheck import OP_INFOS
        for name, info in OP_INFOS.items():
            print(f"{name:48} variants: {', '.join(info.variants)}")
    elif args.what == "mixes":
        from .scenario import MIXES
        for name, (build, num_spec) in MIXES.items():
            steps = build()
            print(f"{name:22} steps={len(steps)} num_spec={num_spec} entries={sum(len(s) for s in steps)}")
        # parametrised families (any count): the names the suites use
        print(f"{'history_<tokens>':22} a long chunked-prefill history, then decode and spec steps "
              "(nightly history_2048 / history_8192 / history_131072)")
        print(f"{'drift_<decodes>':22} two prefills, then <decodes> decode steps judged step by step: the drift lane "
              "(smoke drift_48, ci drift_256, nightly drift_10000; python -m harness.drift)")
    elif args.what == "mutants":
        from .faults.catalogue import FAULTS, GRAPH_FAULTS
        for name, f in FAULTS.items():
            print(f"{name:36} base={f.base:9} {f.incident}")
        for name, f in GRAPH_FAULTS.items():    # not run by `gdn-harness zoo`: no suite case can kill them
            print(f"{name:36} base={f.base:9} {f.incident} [GPU only: python -m harness.cudagraph --zoo]")
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
              "replay == eager (python -m harness.cudagraph [--zoo])")
    return EXIT_OK


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


RUN_EPILOG = """\
cases run in worker processes for any backend but the reference (a crash or hang costs
one case); the report folder is written from the start and kept current as cases finish.

exit codes:
  0    every case passed (or was skipped)
  1    a correctness failure, or a case error (crash, timeout, wrong shape, NaN)
  2    usage or configuration error (unknown backend, filter value the suite lacks, ...)
  130  interrupted by Ctrl-C / SIGINT, 143 by SIGTERM: the report of the finished cases is
       written and says so (summary.md's first line, results.json "interrupted")

examples:
  gdn-harness run --suite smoke
  gdn-harness run --suite ci --backend triton --device cuda --jobs 4
  gdn-harness run --suite ci --backend my_port.gdn:MyPortBackend -k "decode and not spec" --dtype bf16
  gdn-harness run --suite ci --backend fla --layout interleaved --tp 2 --report-dir out
  gdn-harness run --suite smoke --backend triton --no-isolate   # in process, for a debugger
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdn-harness", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a suite and write its report (results.json, summary.md, report.html, "
                       "junit.xml)", description="Run a suite's cases against backends and write the report.",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--suite", default="self", help="suite name (suites/<name>.toml) or path")
    r.add_argument("--backend", action="append", help="backend under test: a registered name or "
                   "package.module:attr (repeatable, or comma-separated; default reference)")
    r.add_argument("--device", default="cpu", help="torch device for the cases (default cpu)")
    r.add_argument("--oracle-device", default=None,
                   help="where the fp64 oracle runs (default: --device; cpu for devices without fp64)")
    r.add_argument("--seed", type=int, default=None, help="replace the suite's seeds with this one")
    r.add_argument("-k", action="append", metavar="EXPR",
                   help="only cases whose id matches EXPR, pytest-style: words matched in the id (case-insensitive)"
                   " joined with and / or / not and parentheses (repeatable: the union)")
    r.add_argument("--dtype", action="append", help="only these activation dtypes, comma-separated (float32 / fp32, "
                   "bfloat16 / bf16, float16 / fp16 / half, float64 / fp64)")
    r.add_argument("--layout", action="append", help="only these projection layouts (interleaved, flat)")
    r.add_argument("--tp", action="append", help="only these TP degrees, comma-separated")
    r.add_argument("--mix", action="append", help="only layer cases of these batch mixes (gdn-harness list mixes)")
    r.add_argument("--isolate", action="store_true",
                   help="run in worker processes also when only the reference runs (the default for any other "
                   "backend: a crash or hang then costs one case, an error record)")
    r.add_argument("--no-isolate", action="store_true",
                   help="run every case in this process (for a debugger; a crash then ends the run)")
    r.add_argument("--jobs", type=int, default=1, help="concurrent worker processes (one GPU each on a multi-GPU "
                   "host; default 1)")
    r.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"per-case limit in seconds in worker processes (default {DEFAULT_TIMEOUT:g}); a case past "
                   "it is killed and reads 'timed out after S s'; refused with --no-isolate")
    r.add_argument("--distributed", action="store_true", help="run the layer cases of --tp N on N torch.distributed "
                   "ranks (gloo on CPU, NCCL one GPU per rank; under torchrun: its ranks)")
    r.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    r.add_argument("--report-dir", default=None, help="default reports/<timestamp> (+ reports/latest)")
    r.add_argument("--buildkite-annotate", default=None, metavar="FILE",
                   help="also write a markdown annotation for `buildkite-agent annotate`")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    r.add_argument("--autotune", choices=("pinned", "sweep", "native"), default=None,
                   help="which config autotuned Triton kernels run (env GDN_AUTOTUNE; default pinned: the one in "
                   "the pins file, GDN_AUTOTUNE_PINS; sweep: every config, each judged; native: the library's "
                   "autotuner; default: the suite's `autotune`, else pinned)")
    add_diagnosis_arguments(r)
    r.set_defaults(fn=cmd_run)
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
    df = sub.add_parser("diff", help="compare two runs: new failures, fixes, metric regressions")
    df.add_argument("old", help="results.json (or run folder) of the old run")
    df.add_argument("new", help="results.json (or run folder) of the new run")
    df.add_argument("--baseline", action="store_true", help="fail only on new failures")
    df.add_argument("--factor", type=float, default=2.0, help="a rel_rms grown past this factor is a regression")
    df.set_defaults(fn=cmd_diff)
    add_bench_parser(sub)
    ls = sub.add_parser("list", help="list presets, suites or checks")
    ls.add_argument("what", choices=["backends", "suites", "presets", "ops", "mixes", "checks", "mutants"],
                    help="what to list")
    ls.set_defaults(fn=cmd_list)
    add_zoo_parser(sub)
    add_shrink_parser(sub)
    add_bisect_parser(sub)
    add_gsm8k_parser(sub)
    p.subcommands = sub.choices
    return p


def main(argv: Optional[List[str]] = None) -> int:
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:                  # the subcommand's usage, not the top-level one
            parser.subcommands[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:        # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    args.argv = argv
    args.program = program
    if program:     # an in-process call keeps its caller's process as it is
        interpret_triton(getattr(args, "device", None))      # a CPU run on a machine with a GPU too
        # SIGINT (Ctrl-C, `timeout -s INT`, bench's limit) stops a run and writes its report, also
        # when started as a background job, which inherits SIGINT ignored (and Python keeps that)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return args.fn(args)
    except HarnessError as e:
        print(f"gdn-harness: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
