"""``gdn-harness bisect-check``: one saved case against one backend, as a `git bisect run` script.

Exit codes follow git bisect's convention: 0 good (the case passes), 1 bad (it fails, the
kernel raises, crashes the process or hangs past ``--timeout``), 125 untestable (this
commit cannot be judged: the backend does not import or build, out of memory, no such
device, the backend cannot run the case) and 2 for a usage error of the command itself
(the same at every commit: check by hand once before bisecting). Never above 127, which
would abort the bisection. docs/bisect.md shows the workflow.

The case runs in a child process (a worker of the pool, `harness.run.isolate`, as ``--isolate``
runs cases) so that a segfault or an abort of the kernel is judged, not suffered.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional, Tuple

from harness.errors import HarnessError

GOOD, BAD, UNTESTABLE = 0, 1, 125
WORDS = {GOOD: "GOOD", BAD: "BAD", UNTESTABLE: "UNTESTABLE"}

# exception types (the record's "Type: message" prefix) that mean "could not build / run
# the code under test" rather than "the code is wrong"
UNTESTABLE_TYPES = {
    "BackendLoadError": "the backend could not be imported or built",
    "ModuleNotFoundError": "an import failed",
    "ImportError": "an import failed",
    "SyntaxError": "the code does not compile",
    "IndentationError": "the code does not compile",
    "TabError": "the code does not compile",
    "OutOfMemoryError": "out of memory",
    "MemoryError": "out of memory",
}
# messages of torch / drivers when the device is missing or memory ran out
UNTESTABLE_TEXT = {
    "out of memory": "out of memory",
    "Torch not compiled with CUDA": "no CUDA in this torch",
    "No CUDA GPUs are available": "no CUDA device",
    "Found no NVIDIA driver": "no CUDA driver",
    "CUDA driver initialization failed": "no CUDA driver",
    "invalid device ordinal": "no such device",
}


def _untestable_why(text: str) -> Optional[str]:
    kind = text.split(":", 1)[0].strip()
    if kind in UNTESTABLE_TYPES:
        return UNTESTABLE_TYPES[kind]
    low = text.lower()
    return next((why for marker, why in UNTESTABLE_TEXT.items() if marker.lower() in low), None)


def judge_record(rec: dict) -> Tuple[int, str]:
    """(exit code, reason) for a finished case record."""
    st = rec["status"]
    if st == "pass":
        m = rec.get("margin")
        margin = f"{m:.3g}" if isinstance(m, float) else m
        return GOOD, f"pass, {len(rec.get('metrics') or [])} outputs within tolerance (margin {margin})"
    if st == "fail":
        return BAD, f"fail: {rec.get('diagnosis') or 'outputs out of tolerance'}"
    if st == "skip":
        return UNTESTABLE, f"the backend cannot run this case: {rec.get('error')}"
    err = rec.get("error") or "unknown error"
    why = _untestable_why(err)
    if why:
        return UNTESTABLE, f"{why}: {err}"
    return BAD, f"the kernel raised {err}"


def judge_exit(returncode: int, stderr: str) -> Tuple[int, str]:
    """(exit code, reason) for a worker that died without a record."""
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        if sig == signal.SIGKILL:     # nobody but the kernel's OOM killer sends it here
            return UNTESTABLE, f"the case process was killed by {name} (most likely out of memory)"
        return BAD, f"the case crashed its process with {name}"
    why = _untestable_why(stderr[-2000:])
    if why == "out of memory":
        return UNTESTABLE, f"out of memory (the case process exited with code {returncode})"
    return BAD, f"the case process exited with code {returncode} without a result"


def run_in_child(case, suite: str, policy: Optional[str], oracle_device: Optional[str],
                 timeout: float) -> Tuple[int, str]:
    """Run `case` on a worker of the pool (`harness.run.isolate.run_one`: its own session,
    killed as a group on timeout); returns (exit code, reason)."""
    from harness.run.isolate import case_env, run_one
    job = dict(case=case.to_dict(), suite=suite, policy=policy, oracle_device=oracle_device)
    got = run_one(job, case_env(case.device, 1), timeout)
    if got.kind == "result":
        return judge_record(got.value)
    if got.kind == "timeout":
        return BAD, f"hung: no result within --timeout {timeout:g} s (a hang counts as bad)"
    code, why = judge_exit(got.returncode, got.stderr_tail)
    tail = "\n".join(got.stderr_tail.strip().splitlines()[-6:])
    return code, why + (f"; stderr tail: {tail}" if tail else "")


def _device_missing(device: str) -> Optional[str]:
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise HarnessError(f"--device {device!r}: not a torch device ({e})") from None
    if dev.type == "cpu":
        return None
    mod = getattr(torch, dev.type, None)
    if mod is None or not callable(getattr(mod, "is_available", None)):
        return None                   # a plugin device: let the case find out
    if not mod.is_available():
        return f"no {dev.type} device is available"
    count = getattr(mod, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        return f"no device {device} (this machine has {count()})"
    return None


def load_case_file(path: str):
    """(Case, suite name) from a file written by ``gdn-harness repro <id> --save``."""
    from harness.cases.case import Case
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"--case {path}: no such file (write one with `gdn-harness repro <case id> --save {path}`)")
    try:
        data = json.loads(p.read_text())
        case = Case.from_dict(data.get("case", data))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HarnessError(f"--case {path}: not a case file ({type(e).__name__}: {e}); expected what "
                           f"`gdn-harness repro <id> --save` writes") from None
    if case.level == "self":
        raise HarnessError(f"--case {path}: {case.id} is a self check of the oracle; bisect-check needs an op or "
                           f"layer case, which runs a backend")
    return case, data.get("suite", "bisect")


def decide(args) -> Tuple[int, str, str]:
    """(exit code, case id, reason); usage errors raise HarnessError."""
    if args.timeout <= 0:
        raise HarnessError(f"--timeout: expected a positive number of seconds, got {args.timeout:g}")
    if args.policy and not Path(args.policy).is_file():
        raise HarnessError(f"--policy {args.policy}: no such file")
    case, suite = load_case_file(args.case)
    if args.backend:
        case.backend = args.backend
    if args.device:
        case.device = args.device
    from harness.optimized.registry import backend_names
    if ":" not in backend_names().get(case.backend, case.backend):
        raise HarnessError(f"--backend {case.backend!r}: not a registered name ({sorted(backend_names())}) "
                           f"nor package.module:attr")
    missing = _device_missing(case.device) or (_device_missing(args.oracle_device) if args.oracle_device else None)
    if missing:
        return UNTESTABLE, case.id, missing
    code, why = run_in_child(case, suite, args.policy, args.oracle_device, args.timeout)
    return code, case.id, why


def cmd_bisect_check(args) -> int:
    """Print one line with the decision; exit 0 / 1 / 125 (2: usage error, raised)."""
    try:
        code, case_id, why = decide(args)
    except HarnessError:
        raise                         # exit 2 through the CLI
    except KeyboardInterrupt:
        code, case_id, why = UNTESTABLE, args.case, "interrupted before a decision"
    except BaseException as e:  # noqa: BLE001 - the harness itself failed: this commit was not judged
        code, case_id, why = UNTESTABLE, args.case, f"bisect-check could not run the case: {type(e).__name__}: {e}"
    print(f"bisect-check: {WORDS[code]} (exit {code}) - {case_id} on {args.backend or 'its backend'}: "
          + " ".join(why.split())[:1500], flush=True)
    return code


def add_parser(sub):
    """`gdn-harness bisect-check`: registered by harness.cli."""
    b = sub.add_parser("bisect-check", help="judge one saved case for `git bisect run`: exit 0 good, 1 bad, "
                       "125 untestable",
                       description="Run one case file (gdn-harness repro <id> --save case.json) against a backend "
                                   "in a child process. Exit 0 good (pass); 1 bad (fail, the kernel raised, crashed "
                                   "or hung past --timeout); 125 untestable (import / build failure, out of memory, "
                                   "no such device, the backend cannot run the case); 2 usage error. See "
                                   "docs/bisect.md.")
    b.add_argument("--case", required=True, help="case JSON written by `gdn-harness repro <id> --save FILE`")
    b.add_argument("--backend", default=None, help="backend under test: a registered name or package.module:attr "
                   "(resolved from the current directory, e.g. the kernel repository's checkout); default: the "
                   "case's backend")
    b.add_argument("--device", default=None, help="override the case's device (e.g. cuda)")
    b.add_argument("--oracle-device", default=None, help="where the fp64 oracle runs (default: the case's device)")
    b.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    b.add_argument("--timeout", type=float, default=600.0,
                   help="seconds before the case counts as hung, which is bad (default 600)")
    b.set_defaults(fn=cmd_bisect_check)
    return b
