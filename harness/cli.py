"""The ``gdn-harness`` command line.

Exit codes: 0 all passed; 1 a correctness failure (or a case error); 2 usage / config error.
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


def _filter(cases, args):
    """-k / --dtype / --layout / --tp / --mix narrow the suite's cases."""
    def want(values, value):
        return not values or str(value) in {v for arg in values for v in arg.split(",")}
    return [c for c in cases
            if (not args.k or any(k in c.id for k in args.k)) and want(args.dtype, c.dtype)
            and want(args.layout, c.layout) and want(args.tp, c.tp)
            and (not args.mix or (c.level == "layer" and want(args.mix, c.check)))]


def _progress(total: int, quiet: bool):
    """A progress bar with ETA on a terminal, one line per case otherwise (CI logs)."""
    if quiet:
        return lambda rec: None, lambda: None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, unit="case", dynamic_ncols=True)
        fails = [0]

        def update(rec):
            fails[0] += rec["status"] in ("fail", "error")
            bar.set_postfix_str(f"{fails[0]} failing", refresh=False)
            bar.update(1)
        return update, bar.close
    done = [0]

    def line(rec):
        done[0] += 1
        print(f"[{done[0]:>4}/{total}] {rec['status'].upper():5} {rec['id']}  {rec.get('duration_s') or 0:.2f}s",
              file=sys.stderr)
    return line, lambda: None


def final_table(records: List[dict]) -> str:
    from collections import Counter
    c = Counter((r["backend"], r["level"], r["status"]) for r in records)
    rows = sorted({(b, lv) for b, lv, _ in c})
    head = f"{'backend':28} {'level':6} {'pass':>6} {'fail':>6} {'error':>6} {'skip':>6}"
    return "\n".join([head] + [f"{b[:28]:28} {lv:6} " + " ".join(f"{c.get((b, lv, s), 0):>6}" for s in
                                                                 ("pass", "fail", "error", "skip")) for b, lv in rows])


def cmd_run(args) -> int:
    import torch

    apply_diagnosis_arguments(args)

    from .policy import Policy
    from .report import counts, write_results, write_summary
    from .runner import run_cases
    from .suite import expand, load_suite

    suite = load_suite(args.suite)
    policy = Policy(args.policy) if args.policy else Policy()
    if args.device != "cpu" and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {args.device}: no CUDA device is available")
    backends = [b for arg in (args.backend or ["reference"]) for b in arg.split(",") if b]
    from .optimized.registry import load_backend
    for name in backends:        # an unknown or unimportable backend is a usage error (exit 2)
        load_backend(name)
    cases = _filter(expand(suite, backends, device=args.device,
                           seeds=[args.seed] if args.seed is not None else None), args)
    if not cases:
        raise HarnessError(f"no case of suite {suite['name']!r} matches the filters")
    if args.distributed:   # layer cases at TP N on N ranks of torch.distributed (harness/distributed.py)
        from .distributed import select_cases
        cases, world = select_cases(cases, args.tp, args.device)
    report_dir = _report_dir(args.report_dir)
    print(f"gdn-harness: suite {suite['name']} - {len(cases)} cases - report in {report_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    update, close = _progress(len(cases), args.quiet)
    records: List[dict] = []

    def done(rec):
        records.append(rec)
        update(rec)

    interrupted = False
    try:
        if args.distributed:
            from .distributed import run_distributed
            run_distributed(cases, suite["name"], args.policy, args.oracle_device, done, world, timeout=args.timeout)
        elif args.isolate or args.jobs > 1:
            from .isolate import run_isolated
            gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
            run_isolated(cases, suite["name"], args.policy, args.oracle_device, done, jobs=args.jobs,
                         timeout=args.timeout, gpus=gpus)
        else:
            run_cases(cases, policy, suite["name"], on_done=done, oracle_device=args.oracle_device)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the report of the finished cases", file=sys.stderr)
    finally:
        close()
    meta = dict(suite=suite["name"], backends=backends, suite_file=suite["path"], policy_version=policy.version,
                policy_file=str(policy.path), command="gdn-harness " + " ".join(map(shlex.quote, args.argv)),
                device=args.device, wall_s=round(time.perf_counter() - t0, 3), interrupted=interrupted,
                planned_cases=len(cases))
    write_results(report_dir, records, meta)
    summary = write_summary(report_dir, records, meta)
    from .report_html import write_html
    from .report_junit import write_buildkite, write_junit
    write_junit(report_dir, records, meta)
    write_html(report_dir, records, meta)
    if args.buildkite_annotate:
        write_buildkite(Path(args.buildkite_annotate), records, meta)
    _point_latest(report_dir)
    c = counts(records)
    print(final_table(records))
    print(f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped "
          f"in {meta['wall_s']:.1f}s - {summary}")
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
    elif args.what == "mutants":
        from .faults.catalogue import FAULTS
        for name, f in FAULTS.items():
            print(f"{name:36} base={f.base:9} {f.incident}")
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
    return EXIT_OK


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdn-harness", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a suite and write results.json + summary.md")
    r.add_argument("--suite", default="self", help="suite name (suites/<name>.toml) or path")
    r.add_argument("--backend", action="append", help="backend under test: a registered name or "
                   "package.module:attr (repeatable, or comma-separated; default reference)")
    r.add_argument("--device", default="cpu", help="torch device for the cases (default cpu)")
    r.add_argument("--oracle-device", default=None,
                   help="where the fp64 oracle runs (default: --device; cpu for devices without fp64)")
    r.add_argument("--seed", type=int, default=None, help="replace the suite's seeds with this one")
    r.add_argument("-k", action="append", help="only cases whose id contains this (repeatable)")
    r.add_argument("--dtype", action="append", help="only these activation dtypes (comma-separated)")
    r.add_argument("--layout", action="append", help="only these projection layouts")
    r.add_argument("--tp", action="append", help="only these TP degrees")
    r.add_argument("--mix", action="append", help="only layer cases of these batch mixes")
    r.add_argument("--isolate", action="store_true",
                   help="run cases in worker subprocesses: a crash or hang costs one case (error record)")
    r.add_argument("--jobs", type=int, default=1, help="concurrent workers (implies --isolate; one GPU each)")
    r.add_argument("--timeout", type=float, default=600.0, help="per-case timeout in seconds with --isolate")
    r.add_argument("--distributed", action="store_true", help="run the layer cases of --tp N on N torch.distributed "
                   "ranks (gloo on CPU, NCCL one GPU per rank; under torchrun: its ranks)")
    r.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    r.add_argument("--report-dir", default=None, help="default reports/<timestamp> (+ reports/latest)")
    r.add_argument("--buildkite-annotate", default=None, metavar="FILE",
                   help="also write a markdown annotation for `buildkite-agent annotate`")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    add_diagnosis_arguments(r)
    r.set_defaults(fn=cmd_run)
    rp = sub.add_parser("repro", help="rerun one case and print the full diff")
    rp.add_argument("case", help="a case id (or unique part of one) from a results.json, or a case JSON file")
    rp.add_argument("--results", default=None, help="results.json or run folder (default reports/latest)")
    rp.add_argument("--device", default=None, help="override the case's device")
    rp.add_argument("--oracle-device", default=None)
    rp.add_argument("--policy", default=None)
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
    ls.add_argument("what", choices=["backends", "suites", "presets", "ops", "mixes", "checks", "mutants"])
    ls.set_defaults(fn=cmd_list)
    add_zoo_parser(sub)
    add_shrink_parser(sub)
    add_bisect_parser(sub)
    add_gsm8k_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:        # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    args.argv = argv
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
