"""gdn-harness: Gated DeltaNet kernels checked against an fp64 reference, op by op and layer by layer.

Exit codes: 0 all passed; 1 a correctness failure (or a case error); 2 usage / config error;
128 + N a run stopped by signal N (130 Ctrl-C / SIGINT, 143 SIGTERM), its report written
and marked interrupted; 125 (bisect-check only) could not test.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from harness.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, exit_now  # noqa: F401 - exit codes, for callers
from harness.run.forkstart import start_early

# Run as the CLI (the console script, or -m while harness.cli is imported): the workers' server
# starts before the imports below load torch, so the two imports overlap.
if os.path.basename(sys.argv[0]) in ("gdn-harness", "-m"):
    start_early(sys.argv[1:])

from harness.cli import diff, listing, repro, run
from harness.errors import HarnessError
from harness.evals.gsm8k import add_parser as add_gsm8k_parser
from harness.faults.zoo import add_parser as add_zoo_parser
from harness.optimized.interpret import interpret_triton
from harness.tools.bench import add_parser as add_bench_parser
from harness.tools.bisect import add_parser as add_bisect_parser
from harness.tools.shrink import add_parser as add_shrink_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdn-harness", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (run.add_parser, repro.add_parser, diff.add_parser, add_bench_parser, listing.add_parser,
                add_zoo_parser, add_shrink_parser, add_bisect_parser, add_gsm8k_parser):
        add(sub)
    p.subcommands = sub.choices
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """The CLI on `argv`; without it, the program on sys.argv, which ends this process
    without Python's teardown of torch (`exit_now`)."""
    code = _main(argv)
    if argv is None:
        exit_now(code)
    return code


def _main(argv: Optional[List[str]]) -> int:
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
    from harness import diagnosis
    from harness.run import runner
    runner.use_diagnosis(diagnosis)      # run sits below diagnosis: the CLI plugs it in
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
