"""Run a suite against the unmutated bases and every fault of the zoo: the kill matrix.

`run_zoo` takes a suite's op and layer cases (self checks judge the oracle, not a
backend, so they are left out), runs them on each unmutated base backend - which must
pass - and on every fault backend (loaded as ``harness.faults.catalogue:<Class>``), and
reports per fault whether the suite killed it, which checks (case + failing outputs)
caught it, how many cases it took and how long. A case that fails or errors counts as a
detection; a fault whose backend cannot even be built is reported ``broken``, never killed.

With ``stop_at_first=True`` each fault stops at its first detection (the CI mode of the
zoo); the bases always run every case. The tasks (a backend and its cases) run on `jobs`
workers of the pool (`harness.run.isolate`; each worker keeps one BackendCache and one
Policy for all its tasks), so a case that crashes its process (a segfault, an abort, an
``os._exit``) or hangs past the per-case `timeout` costs only its worker: it is that task's
error - for a fault, its detection - and the next task gets a fresh worker. A sticky CUDA
error ends its task there and the worker is restarted. ``isolate=False`` runs in process.

Command line: ``gdn-harness zoo --suite smoke --jobs 2`` (each fault stops at its first detection;
``--full`` runs every case on every fault).
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from harness.cases.case import Case
from ..errors import HarnessError
from ..optimized.interpret import interpret_triton
from harness.run.worker import request_restart, sticky_cuda_error
from harness.cases.suite import expand, load_suite

BASE_TARGETS = {"triton": "triton", "reference": "reference"}
BASE_CHUNK = 6          # base cases per task when spread over workers
CASE_TIMEOUT_S = 600.0  # a zoo case that runs longer hangs (as `gdn-harness run --timeout`'s default)


def backend_cases(suite: dict, target: str, device: str = "cpu", seeds: Optional[List[int]] = None) -> List[Case]:
    """The suite's op and layer cases for one backend, in suite order."""
    groups = [g for g in suite["group"] if g["level"] != "self"]
    return expand(dict(suite, group=groups), [target], device=device, seeds=seeds)


# ---------------------------------------------------------------- worker side
_STATE: Dict[str, object] = {}


def _state(policy_path: Optional[str]):
    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache
    key = f"policy:{policy_path}"
    if key not in _STATE:
        _STATE[key] = Policy(policy_path) if policy_path else Policy()
    if "backends" not in _STATE:
        _STATE["backends"] = BackendCache()
    return _STATE[key], _STATE["backends"]


def _caught(rec: dict) -> dict:
    outputs = [m["output"] for m in rec.get("metrics") or [] if not m.get("passed", True)]
    out = dict(case=rec["id"], status=rec["status"], outputs=outputs,
               detail=rec.get("diagnosis") or (rec.get("error") or "")[:300])
    if rec.get("hypotheses"):       # the fault hypotheses the diagnosis re-ran, when it did
        out["hypotheses"] = rec["hypotheses"]
    return out


def diagnosis_text(caught: Optional[dict]) -> str:
    """What the report said about a detection: its diagnosis sentence (with the likely
    cause, when a fault hypothesis matched), or the error."""
    return (caught or {}).get("detail") or ""


def run_task(task: dict, on_case_start: Optional[Callable[[str], None]] = None) -> dict:
    """Run one task (a backend and its cases) in this process; returns its summary.
    `on_case_start(case_id)` is called before each case (a worker announces it, so that a
    case that kills its process is still named)."""
    from harness import diagnosis
    from harness.run.runner import run_case, use_diagnosis
    use_diagnosis(diagnosis)
    policy, backends = _state(task.get("policy"))
    t0 = time.perf_counter()
    out = dict(kind=task["kind"], name=task["name"], target=task["target"], chunk=task.get("chunk", 0),
               statuses={}, caught_by=[], cases_run=0, broken=None, first_kill_index=None,
               time_to_first_kill_s=None, records=[])
    try:
        backends.get(task["target"])
    except Exception as e:  # noqa: BLE001 - a fault that cannot be built is broken, not killed
        out["broken"] = f"{type(e).__name__}: {e}"
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        return out
    counts: Counter = Counter()
    for i, d in enumerate(task["cases"]):
        case = Case.from_dict(d)
        if on_case_start:
            on_case_start(case.id)
        rec = run_case(case, policy, task["suite"], backends, task.get("oracle_device"))
        out["cases_run"] += 1
        counts[rec["status"]] += 1
        out["records"].append(dict(id=rec["id"], status=rec["status"], duration_s=rec.get("duration_s"),
                                   group=f"{case.level}.{case.check}"))
        if rec["status"] in ("fail", "error"):
            out["caught_by"].append(_caught(rec))
            if out["first_kill_index"] is None:
                out["first_kill_index"] = task.get("offset", 0) + i + 1
                out["time_to_first_kill_s"] = round(time.perf_counter() - t0, 3)
            if sticky_cuda_error(rec):
                # every later case in this process would fail with it: the task ends here, and a
                # pool worker is replaced after it
                out["cuda_error_stopped"] = rec["id"]
                request_restart()
                break
            if task.get("stop_at_first"):
                break
    out["statuses"] = dict(counts)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out


# ---------------------------------------------------------------- parent side
def _fault_list(faults) -> list:
    from .catalogue import FAULTS
    if faults is None:
        return list(FAULTS.values())
    unknown = [f for f in faults if isinstance(f, str) and f not in FAULTS]
    if unknown:
        raise HarnessError(f"unknown fault {unknown[0]!r}; known (gdn-harness list mutants): {sorted(FAULTS)}")
    return [FAULTS[f] if isinstance(f, str) else f for f in faults]


def unchanged_ops(fault) -> List[str]:
    """Ops the fault's backend shares with its base - the very same function - so that an
    op case of them cannot tell the two apart."""
    from ..optimized.api import OPS
    from ..optimized.registry import load_backend
    fb, bb = fault.make(), load_backend(BASE_TARGETS.get(fault.base, fault.base))
    return [op for op in OPS if getattr(fb, op, None) is getattr(bb, op, None)]


def _hinted_first(cases: list, hint: str) -> list:
    """The same cases, the one a previous run first caught the fault with (`hint`, a case
    id) first, then the rest of its check group, then the others in suite order: with
    stop-at-first, a fault is usually killed by its first case instead of after dozens of
    slow layer cases. A stale hint only costs time; the cases run are still the suite's."""
    group = hint.split("[", 1)[0]
    rank = [0 if c.id == hint else 1 if f"{c.level}.{c.check}" == group else 2 for c in cases]
    return [c for _, c in sorted(zip(rank, cases), key=lambda rc: rc[0])]


def load_first_kills(path) -> Dict[str, str]:
    """{fault: first case id} from a kill_matrix.json (its faults' `first_case`) or a plain
    {fault: case id} map."""
    data = json.loads(Path(path).read_text())
    if isinstance(data.get("faults"), dict):
        return {n: e.get("first_case") for n, e in data["faults"].items() if e.get("first_case")}
    return {n: v for n, v in data.items() if isinstance(v, str)}


def _tasks(suite: dict, base_names: Sequence[str], faults: list, device: str, stop_at_first: bool,
           seeds, policy: Optional[str], chunk: int, skip_unchanged: bool,
           oracle_device: Optional[str] = None, first_kills: Optional[Dict[str, str]] = None) -> List[dict]:
    base_tasks, fault_tasks = [], []
    for b in base_names:
        target = BASE_TARGETS.get(b, b)
        cases = [c.to_dict() for c in backend_cases(suite, target, device, seeds)]
        for n, i in enumerate(range(0, len(cases), chunk)):
            base_tasks.append(dict(kind="base", name=b, target=target, cases=cases[i:i + chunk], offset=i,
                                   chunk=n, suite=suite["name"], stop_at_first=False, policy=policy,
                                   oracle_device=oracle_device))
    for f in faults:
        cases = backend_cases(suite, f.target, device, seeds)
        planned = len(cases)
        if skip_unchanged:
            try:
                same = set(unchanged_ops(f))
            except Exception:  # noqa: BLE001 - cannot be built: the worker reports it broken
                same = set()
            cases = [c for c in cases if not (c.level == "op" and c.check in same)]
        if first_kills and first_kills.get(f.name):
            cases = _hinted_first(cases, first_kills[f.name])
        fault_tasks.append(dict(kind="fault", name=f.name, target=f.target, cases=[c.to_dict() for c in cases],
                                offset=0, planned=planned, suite=suite["name"], stop_at_first=stop_at_first,
                                policy=policy, slow=f.where == "gdn_core", oracle_device=oracle_device))
    # long tasks first so the pool's tail is short: whole-core faults (found only at layer
    # level), then the bases' layer chunks, then the rest
    slow = [t for t in fault_tasks if t["slow"]]
    layer_chunks = [t for t in base_tasks if any(c["level"] == "layer" for c in t["cases"])]
    rest = [t for t in base_tasks if t not in layer_chunks] + [t for t in fault_tasks if not t["slow"]]
    return slow + layer_chunks + rest


def _unfinished_base(name: str) -> dict:
    return dict(name=name, target=BASE_TARGETS.get(name, name), passed=False, broken=None, statuses={},
                cases_run=0, failures=[], cpu_s=0.0, groups=[], incomplete=True)


def _merge_base(name: str, parts: List[dict], expected_chunks: int = 0) -> dict:
    """One base's chunks merged; a base with chunks missing (an interrupted run) has not
    passed: it is marked incomplete."""
    parts = sorted(parts, key=lambda p: p["chunk"])
    incomplete = len(parts) < expected_chunks
    counts: Counter = Counter()
    for p in parts:
        counts.update(p["statuses"])
    failures = [c for p in parts for c in p["caught_by"]]
    broken = next((p["broken"] for p in parts if p["broken"]), None)
    return dict(name=name, target=parts[0]["target"], passed=not failures and not broken and not incomplete,
                broken=broken, incomplete=incomplete,
                statuses=dict(counts), cases_run=sum(p["cases_run"] for p in parts), failures=failures,
                cpu_s=round(sum(p["wall_s"] for p in parts), 3),
                groups=sorted({r["group"] for p in parts for r in p["records"]}))


def _fault_entry(f, r: dict, n_cases: int, planned: int) -> dict:
    killed = bool(r["caught_by"]) and not r["broken"]
    first = r["caught_by"][0] if r["caught_by"] else None
    groups: Dict[str, str] = {}
    caught_ids = {c["case"] for c in r["caught_by"]}
    for rec in r["records"]:
        g = rec["group"]
        if rec["id"] in caught_ids:
            groups[g] = "killed"
        elif rec["status"] != "skip":
            groups.setdefault(g, "survived")
    return dict(
        name=f.name, base=f.base, where=f.where, incident=f.incident, diagnosis_class=f.diagnosis_class,
        target=f.target, killed=killed, broken=r["broken"],
        first_case=first["case"] if first else None,
        first_outputs=first["outputs"] if first else [],
        first_diagnosis=diagnosis_text(first),
        caught_by=r["caught_by"],
        checks=[f"{c['case']} :: {o}" for c in r["caught_by"] for o in (c["outputs"] or [c["status"]])],
        cases_to_first_kill=r["first_kill_index"], cases_run=r["cases_run"], cases_planned=n_cases,
        cases_skipped_unchanged=planned - n_cases,
        time_to_first_kill_s=r["time_to_first_kill_s"], wall_s=r["wall_s"], statuses=r["statuses"],
        groups=groups)


def _matrix_groups(fault_out: Dict[str, dict]) -> List[str]:
    """The kill matrix's columns: the check groups of the faults' `groups`, op groups first."""
    return sorted({g for e in fault_out.values() for g in e["groups"]}, key=lambda g: (not g.startswith("op."), g))


def run_zoo(suite_name: str = "smoke", base: str = "triton", device: str = "cpu", jobs: int = 1,
            on_progress: Optional[Callable[[dict], None]] = None, stop_at_first: bool = False,
            faults: Optional[Iterable] = None, bases: Optional[Sequence[str]] = None,
            seeds: Optional[List[int]] = None, policy: Optional[str] = None,
            skip_unchanged: bool = True, oracle_device: Optional[str] = None,
            first_kills: Optional[Dict[str, str]] = None, timeout: float = CASE_TIMEOUT_S,
            isolate: bool = True) -> dict:
    """Run the suite's op and layer cases on the unmutated base(s) and on every fault.

    `base` is always checked; so is every base a selected fault derives from (or exactly
    `bases`, when given). `faults`: names or `Fault`s (default: the whole catalogue).
    Returns the kill matrix: ``faults`` (per fault: killed, caught_by, checks, first_case,
    cases_to_first_kill, time_to_first_kill_s, ...), ``bases`` (per base: passed,
    failures), ``base_passed``, ``kill_score`` (killed / total) and timings.
    `on_progress` gets each finished task's summary (kind base / fault) as it arrives.

    `suite_name` is a suite name, a path, or an already loaded suite dict (a subset of
    groups, say). `seeds` replaces the suite's seeds (as ``expand(..., seeds=...)``).
    With `skip_unchanged` (default), a fault does not run the op cases of ops it shares
    with its base - the same function object, so the same (passing) result - and goes
    straight to the cases that can see its bug; layer cases always run. The count is
    reported as ``cases_skipped_unchanged``. `oracle_device`: where the fp64 oracle runs
    (default: `device`), as ``gdn-harness run --oracle-device``. `first_kills` ({fault: case
    id}, `load_first_kills`) runs that case and its check group first for the fault.
    The tasks run on `jobs` pool workers, each case within `timeout` seconds; a case that
    hangs or kills its worker is its task's error (`isolate=False`: in process, no limit)."""
    interpret_triton()      # no GPU; the CPU zoo's workers get it in their env (_pool_env)
    suite = dict(suite_name) if isinstance(suite_name, dict) else load_suite(suite_name)
    suite.setdefault("name", "custom")
    if not any(g["level"] != "self" for g in suite["group"]):
        raise HarnessError(f"suite {suite['name']!r} has no op or layer cases: nothing to run a fault against")
    flist = _fault_list(faults)
    base_names = list(bases) if bases is not None else list(dict.fromkeys([base] + [f.base for f in flist]))
    jobs = max(1, int(jobs or 1))
    chunk = BASE_CHUNK if jobs > 1 else 10 ** 9
    tasks = _tasks(suite, base_names, flist, device, stop_at_first, seeds, policy, chunk, skip_unchanged,
                   oracle_device, first_kills)
    t0 = time.perf_counter()
    results: List[dict] = []

    def done(r: dict):
        results.append(r)
        if on_progress:
            on_progress({k: v for k, v in r.items() if k != "records"})

    interrupted = False
    try:
        if isolate:
            _run_on_pool(tasks, jobs, timeout, done, device)
        else:
            for t in tasks:
                done(run_task(t))
    except KeyboardInterrupt:       # Ctrl-C / timeout -s INT: report what finished
        interrupted = True
    # `timeout -s INT` signals the process and then its group: a second interrupt must not
    # cut the report short
    prev = signal.signal(signal.SIGINT, signal.SIG_IGN) if interrupted else None
    wall = time.perf_counter() - t0
    by_base: Dict[str, List[dict]] = {}
    fault_results: Dict[str, dict] = {}
    for r in results:
        if r["kind"] == "base":
            by_base.setdefault(r["name"], []).append(r)
        else:
            fault_results[r["name"]] = r
    chunks = Counter(t["name"] for t in tasks if t["kind"] == "base")
    base_out = {b: _merge_base(b, by_base[b], chunks[b]) if b in by_base else _unfinished_base(b)
                for b in base_names}
    n_cases = {t["name"]: (len(t["cases"]), t["planned"]) for t in tasks if t["kind"] == "fault"}
    fault_out = {f.name: _fault_entry(f, fault_results[f.name], *n_cases[f.name]) for f in flist
                 if f.name in fault_results}
    not_run = [f.name for f in flist if f.name not in fault_results]
    killed = sum(e["killed"] for e in fault_out.values())
    groups = _matrix_groups(fault_out)
    res = dict(
        suite=suite["name"], device=device, base=base, stop_at_first=stop_at_first, jobs=jobs,
        first_kills_hinted=sorted(first_kills or {}),
        seeds=seeds, base_passed=all(b["passed"] for b in base_out.values()), bases=base_out,
        faults=fault_out, groups=groups, killed=killed, total=len(flist),
        kill_score=(killed / len(flist)) if flist else math.nan,
        survivors=[n for n, e in fault_out.items() if not e["killed"]],
        interrupted=interrupted, not_run=not_run,
        wall_s=round(wall, 3), cpu_s=round(sum(r["wall_s"] for r in results), 3))
    if prev is not None:
        signal.signal(signal.SIGINT, prev)
    return res


def pool_task(task: dict, emit: Callable[[str], None]) -> dict:
    """A task on a pool worker (``{"call": "harness.faults.zoo:pool_task"}``): each case's
    id is emitted as it starts, so a case that kills or hangs its worker is still named."""
    return run_task(task, emit)


def _died(task: dict, started: List[str], why: str, wall: Optional[float]) -> dict:
    """A task whose worker died or hung inside a case (a segfault, an abort, a hang): that
    case is an error - for a fault, its detection. Cases before it passed or were skipped (a
    stop-at-first fault task would have returned at an earlier detection); their records
    died with the worker."""
    case_id = started[-1] if started else (task["cases"][0]["check"] if task["cases"] else task["name"])
    err = dict(case=case_id, status="error", outputs=[], detail=why)
    wall = round(wall or 0.0, 3)
    return dict(kind=task["kind"], name=task["name"], target=task["target"], chunk=task.get("chunk", 0),
                statuses={"error": 1, "pass or skip": max(0, len(started) - 1)}, caught_by=[err],
                cases_run=len(started), broken=None, first_kill_index=task.get("offset", 0) + max(1, len(started)),
                time_to_first_kill_s=wall, records=[], wall_s=wall)


def _pool_env(device: str, jobs: int) -> Dict[str, str]:
    from harness.run.isolate import case_env
    return case_env(device, jobs)


def _run_on_pool(tasks: List[dict], jobs: int, timeout: float, done: Callable[[dict], None], device: str) -> None:
    """Run tasks on `jobs` pool workers; results (or the crash / hang of a case) go to `done`
    in the calling thread. A KeyboardInterrupt propagates, the finished tasks delivered."""
    from harness.run.isolate import Job, run_jobs
    env = _pool_env(device, jobs)
    t0: Dict[int, float] = {}

    def finished(job, got) -> None:
        if got.kind == "result":
            done(got.value)
            return
        tail = " ".join(got.stderr_tail.split())[-1500:]
        why = f"the case killed its worker process: {got.error}" if got.kind == "crash" else \
            f"the case hung: {got.error}"
        done(_died(job.tag, got.events, why + (f"; stderr tail: {tail}" if tail else ""),
                   time.perf_counter() - t0.get(id(job), time.perf_counter())))

    run_jobs([Job(dict(call="harness.faults.zoo:pool_task", args=t), t) for t in tasks], lambda job, i: env,
             finished, jobs, timeout, lambda job: t0.__setitem__(id(job), time.perf_counter()))


# ---------------------------------------------------------------- reports
def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def kill_matrix_markdown(result: dict) -> str:
    faults = result["faults"]
    lines = [f"# Fault zoo: kill matrix ({result['suite']} suite, {result['device']})", ""]
    score = result["kill_score"]
    lines.append(f"**Kill score: {result['killed']}/{result['total']}"
                 f" ({100 * score:.0f} %)**" if result["total"] else "**Kill score: n/a (no faults)**")
    lines.append("")
    for name, b in result["bases"].items():
        st = ", ".join(f"{v} {k}" for k, v in sorted(b["statuses"].items()))
        verdict = "passes" if b["passed"] else "FAILS"
        lines.append(f"- unmutated base `{name}` {verdict} ({st}; {b['cpu_s']:.1f} s)")
        for c in b["failures"][:10]:
            lines.append(f"  - {c['status']}: `{c['case']}` {_md_escape(c['detail'])[:200]}")
    mode = "stopping each fault at its first detection" if result["stop_at_first"] else "every case on every fault"
    if result.get("first_kills_hinted"):
        mode += f" ({len(result['first_kills_hinted'])} fault(s) tried first on their earlier first-kill case)"
    lines += [f"- {mode}; wall {result['wall_s']:.1f} s, {result['jobs']} job(s)", ""]
    if result["survivors"]:
        lines += ["**Survivors:** " + ", ".join(f"`{s}`" for s in result["survivors"]), ""]
    if result.get("not_run"):
        lines += ["**Interrupted; not run (counted as not killed):** "
                  + ", ".join(f"`{s}`" for s in result["not_run"]), ""]

    lines += ["## Faults", "",
              "| fault | base | lives in | incident class | killed | first caught by | failing outputs | "
              "cases to kill | time to kill |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in faults.values():
        t = f"{e['time_to_first_kill_s']:.1f} s" if e["time_to_first_kill_s"] is not None else "-"
        k = "KILLED" if e["killed"] else ("BROKEN" if e["broken"] else "survived")
        lines.append(f"| `{e['name']}` | {e['base']} | {e['where']} | {_md_escape(e['incident'])} | {k} | "
                     f"`{e['first_case'] or '-'}` | {', '.join(e['first_outputs']) or (e['caught_by'][0]['status'] if e['caught_by'] else '-')} | "
                     f"{e['cases_to_first_kill'] or '-'}/{e['cases_planned']} | {t} |")

    groups = result.get("groups") or _matrix_groups(faults)
    if groups:
        lines += ["", "## Caught by (fault x check group)", "",
                  "`X` caught, `.` ran and passed, blank: not run (skipped, or after the first detection).", "",
                  "| fault | " + " | ".join(f"`{g}`" for g in groups) + " |",
                  "|---|" + "---|" * len(groups)]
        mark = {"killed": "X", "survived": "."}
        for e in faults.values():
            lines.append(f"| `{e['name']}` | " + " | ".join(mark.get(e["groups"].get(g), "") for g in groups) + " |")
    lines += ["", "## Checks that caught each fault", ""]
    for e in faults.values():
        lines.append(f"- `{e['name']}` ({_md_escape(e['diagnosis_class'])}):")
        if e.get("first_diagnosis"):
            lines.append(f"  - first detection said: {_md_escape(e['first_diagnosis'])[:300]}")
        for c in e["caught_by"][:8]:
            lines.append(f"  - `{c['case']}` {c['status']}: {', '.join(c['outputs']) or _md_escape(c['detail'])[:160]}")
        if len(e["caught_by"]) > 8:
            lines.append(f"  - ... {len(e['caught_by']) - 8} more")
        if e["broken"]:
            lines.append(f"  - broken: {_md_escape(e['broken'])}")
    return "\n".join(lines) + "\n"


def write_kill_matrix(report_dir, result: dict) -> Dict[str, Path]:
    """Write kill_matrix.json and kill_matrix.md into `report_dir`; returns their paths."""
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    js, md = d / "kill_matrix.json", d / "kill_matrix.md"
    js.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md.write_text(kill_matrix_markdown(result))
    return dict(json=js, md=md)


def _add_arguments(ap) -> None:
    ap.add_argument("--suite", default="smoke", help="suite whose op and layer cases judge the faults: smoke (CPU, "
                    "minutes) or ci (GPU), or a suite file (default smoke)")
    ap.add_argument("--base", default="triton", choices=sorted(BASE_TARGETS),
                    help="unmutated backend that must pass (bases the faults derive from are checked too)")
    ap.add_argument("--fault", action="append", metavar="NAME",
                    help="only these faults (repeatable or comma-separated; `gdn-harness list mutants`)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--device", default="cpu", help="torch device for the cases (default cpu)")
    ap.add_argument("--oracle-device", default=None, help="where the fp64 oracle runs (default: --device)")
    ap.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    ap.add_argument("--full", action="store_true",
                    help="run every case on every fault (the complete matrix); default: a fault stops at its "
                         "first detection")
    ap.add_argument("--all-cases", action="store_true",
                    help="also run op cases of ops a fault shares with its base (same function, same result)")
    ap.add_argument("--report-dir", default="reports/zoo",
                    help="where kill_matrix.md / kill_matrix.json go (default reports/zoo)")
    ap.add_argument("--first-kills", default=None, metavar="JSON",
                    help="a previous kill_matrix.json (or {fault: case id}): each fault runs the case that first "
                         "caught it there, and that case's check group, first (same cases, found sooner)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no line per finished fault / base chunk")


def add_parser(sub):
    """`gdn-harness zoo`: registered by harness.cli."""
    z = sub.add_parser("zoo", help="run a suite against every fault of the catalogue: kill matrix and score",
                       description="Run a suite's op and layer cases on the unmutated base and on every fault "
                                   "of the catalogue; write the kill matrix. Exit 0 when every fault is caught and "
                                   "the bases pass, 1 when a fault survives or a base fails, 2 on usage errors.")
    _add_arguments(z)
    z.set_defaults(fn=cmd_zoo)
    return z


def summary_lines(res: dict) -> List[str]:
    """The console summary: one line per fault, the bases, the kill score."""
    lines = []
    for e in res["faults"].values():
        if e["killed"]:
            t = e["time_to_first_kill_s"]
            lines.append(f"KILLED   {e['name']:36} after {e['cases_to_first_kill']:>3} case(s) {t:7.1f}s  "
                         f"by {e['first_case']} [{', '.join(e['first_outputs']) or e['caught_by'][0]['status']}]")
        else:
            why = f"BROKEN: {e['broken']}" if e["broken"] else \
                (f"no check caught it in {e['cases_run']} case(s)"
                 + (f" ({e['cases_skipped_unchanged']} skipped: ops unchanged from the base)"
                    if e["cases_skipped_unchanged"] else ""))
            lines.append(f"SURVIVED {e['name']:36} {why}")
    for name, b in res["bases"].items():
        st = ", ".join(f"{v} {k}" for k, v in sorted(b["statuses"].items()))
        verdict = "INCOMPLETE" if b.get("incomplete") else ("passes" if b["passed"] else "FAILS")
        lines.append(f"base {name}: {verdict} ({st})")
        for c in b["failures"][:5]:
            lines.append(f"  {c['status']}: {c['case']} {c['detail'][:160]}")
    score = f"{100 * res['kill_score']:.0f} %" if res["total"] else "n/a"
    lines.append(f"kill score {res['killed']}/{res['total']} ({score}) on the {res['suite']} suite; "
                 f"bases pass: {res['base_passed']}; wall {res['wall_s']:.1f}s"
                 + (f"; survivors: {', '.join(res['survivors'])}" if res["survivors"] else "")
                 + (f"; INTERRUPTED, not run: {', '.join(res['not_run'])}" if res.get("not_run") else ""))
    from .catalogue import GRAPH_FAULTS, GRAPH_ONLY
    lines.append(f"not in this zoo: {', '.join(GRAPH_FAULTS)} ({GRAPH_ONLY})")
    return lines


def cmd_zoo(args) -> int:
    """Exit 0: every fault killed and the bases pass; 1: a survivor or a failing base; usage
    errors raise HarnessError (exit 2 through the CLI)."""
    from datetime import datetime, timezone
    faults = [f for arg in args.fault for f in arg.split(",") if f] if args.fault else None
    _fault_list(faults)                     # unknown names are usage errors, before any work
    if args.jobs < 1:
        raise HarnessError(f"--jobs: expected a positive number of workers, got {args.jobs}")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise HarnessError(f"--device {args.device}: no CUDA device is available")

    def progress(r):
        what = ("KILLED" if r["caught_by"] else "survived") if r["kind"] == "fault" else \
            ("pass" if not r["caught_by"] else "FAIL")
        print(f"{r['kind']:5} {r['name']:36} {what:8} {r['wall_s']:.1f}s", file=sys.stderr, flush=True)

    res = run_zoo(args.suite, args.base, args.device, args.jobs, None if args.quiet else progress,
                  stop_at_first=not args.full, faults=faults, policy=args.policy,
                  skip_unchanged=not args.all_cases, oracle_device=args.oracle_device,
                  first_kills=load_first_kills(args.first_kills) if args.first_kills else None)
    res["command"] = "gdn-harness zoo " + " ".join(getattr(args, "argv", None) or [])
    res["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if res["interrupted"]:          # the group's second interrupt: still write the report
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    paths = write_kill_matrix(args.report_dir, res)
    print("\n".join(summary_lines(res)))
    print(f"kill matrix: {paths['md']} and {paths['json'].name}")
    return 0 if res["base_passed"] and not res["survivors"] and not res.get("not_run") else 1


if __name__ == "__main__":      # the command line is `gdn-harness zoo`; its workers are the pool's
    sys.exit("run the zoo with `gdn-harness zoo`")
