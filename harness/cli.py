"""The ``gdn-harness`` command line.

Exit codes: 0 all passed; 1 a correctness failure (or a case error); 2 usage / config error.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional

from .config import PRESET_LAYOUT, PRESETS
from .errors import HarnessError

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


def cmd_run(args) -> int:
    import torch

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
    cases = expand(suite, backends, device=args.device, seeds=[args.seed] if args.seed is not None else None)
    if args.k:
        cases = [c for c in cases if any(k in c.id for k in args.k)]
        if not cases:
            raise HarnessError(f"-k {args.k}: no case of suite {suite['name']!r} matches")
    report_dir = _report_dir(args.report_dir)
    print(f"gdn-harness: suite {suite['name']} - {len(cases)} cases - report in {report_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    n = len(cases)

    def progress(rec, done=[0]):  # noqa: B006 - a counter across calls
        done[0] += 1
        if not args.quiet:
            print(f"[{done[0]:>4}/{n}] {rec['status'].upper():5} {rec['id']}  {rec.get('duration_s', 0):.2f}s",
                  file=sys.stderr)

    records: List[dict] = []
    try:
        records = run_cases(cases, policy, suite["name"], on_done=lambda r: (records.append(r), progress(r)),
                            oracle_device=args.oracle_device)
    except KeyboardInterrupt:
        print("interrupted: writing the report of the finished cases", file=sys.stderr)
    meta = dict(suite=suite["name"], backends=backends, suite_file=suite["path"], policy_version=policy.version,
                policy_file=str(policy.path), command="gdn-harness " + " ".join(map(shlex.quote, args.argv)),
                device=args.device, wall_s=round(time.perf_counter() - t0, 3))
    write_results(report_dir, records, meta)
    summary = write_summary(report_dir, records, meta)
    _point_latest(report_dir)
    c = counts(records)
    print(f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped "
          f"in {meta['wall_s']:.1f}s - {summary}")
    return EXIT_FAIL if c["fail"] or c["error"] or len(records) < len(cases) else EXIT_OK


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


def cmd_bench(args) -> int:
    import json

    from .bench import bench_oracle
    from .report import atomic_write
    from .suite import parse_dims

    rows = bench_oracle(parse_dims(args.dims), args.tokens, args.device, args.repeat, args.recurrent, args.seed)
    for r in rows:
        print(f"{r['bench']}/{r['form']:9} {r['dims']['name']} T={r['tokens']} {r['device_name']}: "
              f"median {r['median_s']:.3f}s (first {r['first_s']:.3f}s, {len(r['times_s'])} runs)")
    if args.report_dir:
        atomic_write(Path(args.report_dir) / "bench.json", json.dumps(rows, indent=1))
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
    r.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    r.add_argument("--report-dir", default=None, help="default reports/<timestamp> (+ reports/latest)")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    r.set_defaults(fn=cmd_run)
    b = sub.add_parser("bench", help="time the harness itself (the fp64 oracle on a long prefill)")
    b.add_argument("--dims", default="qwen3-next-80b-a3b", help="preset[:shrunk[:k=v,...]]")
    b.add_argument("--tokens", type=int, default=32768)
    b.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--recurrent", action="store_true", help="also time the per-token recurrence")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--report-dir", default=None, help="write bench.json here")
    b.set_defaults(fn=cmd_bench)
    ls = sub.add_parser("list", help="list presets, suites or checks")
    ls.add_argument("what", choices=["backends", "suites", "presets", "ops", "mixes", "checks"])
    ls.set_defaults(fn=cmd_list)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:        # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    args.argv = argv
    try:
        return args.fn(args)
    except HarnessError as e:
        print(f"gdn-harness: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
