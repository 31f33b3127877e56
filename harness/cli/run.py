"""`gdn-harness run`: a suite's cases against backends, the report written as they finish."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import List

from harness.cli.common import EXIT_FAIL, EXIT_OK, STARTED
from harness.diagnosis.cli import add_diagnosis_arguments, apply_diagnosis_arguments
from harness.errors import HarnessError
from harness.report.paths import point_latest, report_dir as new_report_dir
from harness.run.forkstart import uses_workers

DEFAULT_TIMEOUT = 600.0


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
    return "workers" if uses_workers(backends, args.isolate, args.jobs, args.timeout) else "in process"


def _interrupted_line(live, signum: int, stuck: bool = False) -> str:
    import signal as _signal
    running = live.running_now()
    what = (" while running " + ", ".join(f"{r['id']} ({r['seconds']:g} s in)" for r in running)) if running else ""
    return (f"\ninterrupted by {_signal.Signals(signum).name}{what}"
            + (" - the run was stuck in native code" if stuck else "")
            + f"; {len(live.records)} of {len(live.planned)} cases finished; report in {live.dir}")


def _laps(t0: float, into: dict):
    """`lap(name)`: the seconds since the previous lap (or `t0`) into `into[name]`."""
    last = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        into[name] = round(now - last[0], 3)
        last[0] = now
    return lap


def cmd_run(args) -> int:
    startup: dict = {}
    lap = _laps(STARTED, startup)
    lap("cli_imports_s")
    import torch

    from harness.run import interrupt
    from harness.cases.filters import filter_cases
    from harness.report.live import LiveReport, Progress

    apply_diagnosis_arguments(args)

    from harness.judge.policy import Policy
    from harness.report.results import counts
    from harness.run.runner import run_cases
    from harness.cases.suite import expand, load_suite

    suite = load_suite(args.suite)
    if args.autotune or suite.get("autotune"):
        os.environ["GDN_AUTOTUNE"] = args.autotune or suite["autotune"]     # workers inherit it
    policy = Policy(args.policy) if args.policy else Policy()
    if args.device != "cpu" and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {args.device}: no CUDA device is available")
    backends = [b for arg in (args.backend or ["reference"]) for b in arg.split(",") if b]
    mode = _isolation(args, backends)
    lap("run_imports_s")
    cases = filter_cases(expand(suite, backends, device=args.device,
                                seeds=[args.seed] if args.seed is not None else None), args, suite["name"])
    if args.distributed:   # layer cases at TP N on N ranks of torch.distributed (harness/run/distributed.py)
        from harness.run.distributed import select_cases
        cases, world = select_cases(cases, args.tp, args.device)
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    lap("plan_s")
    if mode == "workers":        # their first steps overlap the backends' check here
        from harness.run.isolate import prestart_isolated
        prestart_isolated(cases, args.jobs, gpus)
    lap("workers_s")
    from harness.optimized.registry import check_backend
    try:
        for name in backends:    # an unknown or unimportable backend is a usage error (exit 2)
            check_backend(name)
    except BaseException:
        if mode == "workers":    # the workers started for nothing
            from harness.run.isolate import shared_pool
            shared_pool().close()
        raise
    lap("backend_check_s")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    report_dir = new_report_dir(args.report_dir)
    meta = dict(suite=suite["name"], backends=backends, suite_file=suite["path"], policy_version=policy.version,
                policy_file=str(policy.path), command="gdn-harness " + " ".join(map(shlex.quote, args.argv)),
                device=args.device, isolation=mode, timeout_s=timeout if mode != "in process" else None,
                startup_s=round(time.perf_counter() - STARTED, 3), startup=startup)
    live = LiveReport(report_dir, meta, [dict(id=c.id, backend=c.backend, level=c.level) for c in cases],
                      Path(args.buildkite_annotate) if args.buildkite_annotate else None)
    live.write("running")            # the folder exists from the start, whatever ends the run
    point_latest(report_dir)
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
                from harness.run.distributed import run_distributed
                run_distributed(cases, suite["name"], args.policy, args.oracle_device, done, world, timeout=timeout)
            elif mode == "workers":
                from harness.run.isolate import run_isolated, shared_pool
                pool.append(shared_pool())
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


def add_parser(sub) -> None:
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
