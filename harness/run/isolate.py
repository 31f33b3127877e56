"""The worker pool: every job the harness runs in a child process goes through here -
the isolated cases of ``gdn-harness run`` (the default for any backend but the reference;
``--jobs``; ``--no-isolate`` runs in process instead), the fault zoo's tasks and
``bisect-check``'s case.

`run_jobs` hands jobs (lines of the `harness.run.worker` protocol: a case, or a call of a
function by name) to persistent worker processes and gives back one `Outcome` per job: its
result, or a structured error. A segfault, an illegal memory access, an out-of-memory kill
or a hang inside a job kills only its worker: the job's outcome is a ``crash`` (exit code
or signal, in words: "worker died: killed by signal 6 (SIGABRT)") or a ``timeout`` ("timed
out after N s"), carrying the worker's stderr tail; the next job gets a fresh worker, and
the run goes on. A CUDA error raised inside a job (it poisons the context) ends its worker
after the job's result; the next job runs on a fresh one. Workers are reused across jobs
(and across runs of one process, per environment), because a worker's start - imports,
CUDA context, kernel loads from the Triton cache - costs seconds (~8 s on an H200, mostly
imports), more than most cases; they are forked from a server that did the common imports once
(`harness.run.forkstart`); `gdn-harness run` starts its workers before it loads the
backends itself (`prestart_isolated`), and idle workers are ended all at once. Each worker runs
in its own session: a terminal's Ctrl-C or ``timeout -s INT`` reaches only the parent, which
stops the busy workers and keeps the finished outcomes.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Set

from harness.run.autotune import worker_env
from harness.run.forkstart import ForkedProcess, forked_start
from harness.cases.case import Case
from harness.cases.scenario import mix_scenario
from harness.errors import ConfigError
from harness.optimized.interpret import interpret_triton
from harness.run.runner import case_record
from harness.run.worker import EXIT_RESTART

STDERR_TAIL = 4000
STARTUP_S = 300.0          # a worker's imports (and CUDA context) before its first case
CLOSE_S = 5.0              # idle workers' exit at the end of input, all at once, before they are killed


def share_cpus(env: Dict[str, str], procs: int) -> Dict[str, str]:
    """`env` with OMP / MKL threads set to this host's CPUs / `procs` (unless the user set
    them): each torch process otherwise spins one thread per CPU, and a few concurrent
    workers ran the ci suite's cases up to 100x slower (4 workers on a 64-core H200 host)."""
    n = str(max(1, (os.cpu_count() or 1) // max(1, procs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if not env.get(var):
            env[var] = n
    return env


def death_reason(returncode: int) -> str:
    """Words for a worker's exit status: the signal's name, and what a SIGKILL usually is."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    hint = "; the out-of-memory killer sends this" if -returncode == signal.SIGKILL else ""
    return f"killed by signal {-returncode} ({name}{hint})"


@dataclass
class Outcome:
    """What became of one job: ``result`` (`value` holds it), ``timeout``, ``crash`` (the
    worker died: `returncode`) or ``stopped`` (the run was interrupted; never handed out)."""
    kind: str
    value: Any = None
    events: List[Any] = field(default_factory=list)     # what the job emitted before it ended
    returncode: Optional[int] = None
    seconds: Optional[float] = None
    stderr_tail: str = ""
    limit: Optional[float] = None       # the timeout the job ran under
    worker_start_s: Optional[float] = None      # a fresh worker's start, on its first result
    served_before: int = 0              # results its worker had given before it died

    @property
    def error(self) -> str:
        """The words for a timeout or a crash, as error records say them."""
        if self.kind == "timeout":
            return f"timed out after {self.limit:g} s (its worker was killed)"
        if self.kind == "crash":
            return f"worker died: {death_reason(self.returncode)}"
        return ""


@dataclass
class Job:
    """One line of the worker protocol (`payload`) and the caller's own handle on it (`tag`:
    a case, a task)."""
    payload: dict
    tag: Any = None
    # jobs of one key compile the same kernels: a slot keeps to its keys (None: no preference)
    affinity: Optional[Hashable] = None


def compile_affinity(case: Case) -> Optional[Hashable]:
    """The kernels a case compiles, as far as scheduling cares: an op case's op at its dims and
    dtypes, a layer case's decode path at its dims and dtypes; a self check compiles none."""
    if case.level == "self":
        return None
    what = case.check if case.level == "op" else case.decode_path
    return (case.backend, case.level, what, dataclasses.astuple(case.dims), case.dtype, case.state_dtype)


def expected_cost(case: Case) -> int:
    """A layer case's rough cost, for the order jobs start in: its batch entries times a value
    head's state size (the oracle and the backend step entry by entry, so a drift lane's 514
    entries at full dims outlast hundreds of op cases). Op, self and pseudo-mix cases: 0."""
    if case.level != "layer":
        return 0
    try:
        sc = mix_scenario(case.check, case.dims, case.scenario)
    except ConfigError:
        return 0
    return sum(len(step) for step in sc.steps) * case.dims.HV * case.dims.K * case.dims.V


def longest_first(jobs: List[Job]) -> List[Job]:
    """Jobs of cases by `expected_cost`, largest first, else in suite order: the long layer lanes
    start beside the short cases instead of last (in suite order the drift lane, six cases at once
    on one GPU, was the warm --jobs 8 run's tail)."""
    return sorted(jobs, key=lambda job: -expected_cost(job.tag))


def _take(todo: "collections.deque[Job]", mine: Set[Hashable], claimed: Set[Hashable]) -> Job:
    """The next job for a slot that has run jobs of the keys `mine`: one of its own keys first,
    else one of a key no slot has run yet (so two workers do not compile the same kernels at
    once, the cold-cache cost of --jobs N on one GPU), else the first."""
    if mine:
        for i, job in enumerate(todo):
            if job.affinity in mine:
                del todo[i]
                return job
    for i, job in enumerate(todo):
        if job.affinity is None or job.affinity not in claimed:
            del todo[i]
            return job
    return todo.popleft()

# the environment of the worker a job needs, from the job and its slot's index (a GPU per slot)
EnvFor = Callable[[Job, int], Dict[str, str]]


class Worker:
    """One worker process (forked from the preloaded server, or ``python -m harness.run.worker``) and
    the threads draining its pipes."""

    def __init__(self, env: Dict[str, str]):
        self.key = _env_key(env)
        self.proc = ForkedProcess(env) if forked_start(env) else subprocess.Popen(
            [sys.executable, "-m", "harness.run.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, bufsize=1)
        self.ready = False
        self.served = 0                     # records handed back
        self.spawned = time.monotonic()
        self.ready_at: Optional[float] = None   # its first line: a worker started ahead idles after it
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._err: collections.deque = collections.deque(maxlen=200)
        threading.Thread(target=self._read_out, daemon=True).start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read_out(self):
        for line in self.proc.stdout:
            if self.ready_at is None:
                self.ready_at = time.monotonic()
            self._lines.put(line)
        self._lines.put(None)

    def _read_err(self):
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def start_s(self) -> Optional[float]:
        """Spawn to ready: imports, CUDA context."""
        return None if self.ready_at is None else self.ready_at - self.spawned

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        return "".join(self._err)[-STDERR_TAIL:]

    def _next(self, deadline: float, stop: threading.Event):
        """The next protocol line: a dict, "eof", "timeout" or "stopped"."""
        while True:
            if stop.is_set():
                return "stopped"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                line = self._lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if line is None:
                return "eof"
            try:
                got = json.loads(line)
            except ValueError:
                continue
            if isinstance(got, dict):
                return got

    def run(self, job: dict, timeout: float, stop: threading.Event) -> "Outcome":
        """One job on this worker. A case job ends at its record; a call at its ``result``
        line, each ``event`` line restarting the `timeout` (a per-step limit)."""
        if not self.ready:
            got = self._next(time.monotonic() + max(timeout, STARTUP_S), stop)
            if not isinstance(got, dict):
                return self._outcome(got, max(timeout, STARTUP_S), timeout, [])
            self.ready = True
        self._err.clear()                    # the tail of a crash is this job's
        events: List[Any] = []
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._outcome("eof", 0.0, timeout, events)
        t0 = step = time.monotonic()
        while True:
            got = self._next(step + timeout, stop)
            if not isinstance(got, dict):
                return self._outcome(got, time.monotonic() - step, timeout, events)
            if "call" in job and "event" in got:
                events.append(got["event"])
                step = time.monotonic()
                continue
            value = got.get("result") if "call" in job else got
            self.served += 1
            return Outcome("result", value, events, seconds=time.monotonic() - t0,
                           worker_start_s=self.start_s if self.served == 1 else None)

    def _outcome(self, what: str, seconds: float, limit: float, events: list) -> "Outcome":
        if what == "eof":
            self.proc.wait()
            self._err_reader.join(2.0)      # its last words (a fatal error's message) before the tail
            return Outcome("crash", None, events, returncode=self.proc.returncode, stderr_tail=self.stderr_tail(),
                           limit=limit, served_before=self.served)
        self.kill()
        return Outcome("timeout" if what == "timeout" else "stopped", None, events, seconds=seconds,
                       stderr_tail=self.stderr_tail(), limit=limit)

    def kill(self) -> None:
        """Kill the worker and anything it started (its own session)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, TypeError):     # TypeError: a fork that failed has no pid
                self.proc.kill()
        self.proc.wait()

    def end_input(self) -> None:
        """End of input: the worker exits. One still at its imports has run nothing: it is killed."""
        if self.ready_at is None:
            self.kill()
            return
        try:
            self.proc.stdin.close()
        except OSError:
            self.kill()

    def wait_exit(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()


def _env_key(env: Dict[str, str]):
    return tuple(sorted(env.items()))


class WorkerPool:
    """Idle workers by environment; a worker goes back after a case unless it died."""

    def __init__(self):
        self._idle: Dict[tuple, List[Worker]] = {}
        self._busy: set = set()
        self._lock = threading.Lock()

    def take(self, env: Dict[str, str]) -> Worker:
        with self._lock:
            idle = self._idle.get(_env_key(env), [])
            while idle:
                w = idle.pop()
                if w.alive():
                    self._busy.add(w)
                    return w
        w = Worker(env)
        with self._lock:
            self._busy.add(w)
        return w

    def prestart(self, envs: List[Dict[str, str]]) -> None:
        """A worker per environment, started now and idle until taken (its imports overlap
        whatever the caller does before the run), less the idle ones there already are."""
        want = collections.Counter(_env_key(env) for env in envs)
        with self._lock:
            have = {key: sum(w.alive() for w in self._idle.get(key, [])) for key in want}
        for env in envs:
            key = _env_key(env)
            if have[key] < want[key]:
                have[key] += 1
                self.give(Worker(env))

    def give(self, w: Worker) -> None:
        with self._lock:
            self._busy.discard(w)
            if w.alive():
                self._idle.setdefault(w.key, []).append(w)

    def kill_busy(self) -> None:
        """Stop the workers in the middle of a case (an interrupted run)."""
        with self._lock:
            busy, self._busy = list(self._busy), set()
        for w in busy:
            w.kill()

    def close(self, wait: bool = True) -> None:
        """End every worker: busy ones are killed, idle ones reach the end of their input and
        exit, waited for (`wait`) up to CLOSE_S before they are killed. Without `wait` they exit
        on their own (or when they see this process gone): the program's end, whose workers
        have handed over everything, need not wait for their CUDA teardown."""
        self.kill_busy()
        with self._lock:
            idle, self._idle = [w for ws in self._idle.values() for w in ws], {}
        for w in idle:                       # all at once: a GPU worker's exit takes seconds
            w.end_input()
        if not wait:
            return
        deadline = time.monotonic() + CLOSE_S
        for w in idle:
            w.wait_exit(deadline)


_SHARED: Optional[WorkerPool] = None


def release_shared_pool() -> None:
    """At the program's end: the shared pool's workers told to end, not waited for."""
    if _SHARED is not None:
        _SHARED.close(wait=False)


def shared_pool() -> WorkerPool:
    """The process's pool: later runs in the same process (tests, tools) reuse its workers."""
    global _SHARED
    if _SHARED is None:
        _SHARED = WorkerPool()
        atexit.register(_SHARED.close)
    return _SHARED


def run_jobs(jobs: List[Job], env: EnvFor, on_done: Callable[[Job, Outcome], None], slots: int = 1,
             timeout: float = 600.0, on_start: Optional[Callable[[Job], None]] = None,
             pool: Optional[WorkerPool] = None) -> None:
    """Run `jobs` on `slots` concurrent workers (each in the environment `env(job, slot)`),
    each job with a `timeout` in seconds (per step
    for a call that emits events); `on_done(job, outcome)` for every job, and `on_start(job)`
    as it goes to a worker, both in the calling thread. A job whose worker ended after an
    earlier job's CUDA error (`EXIT_RESTART`) runs again on a fresh worker. A
    KeyboardInterrupt in the calling thread (or raised by a callback) kills the busy workers
    and propagates: the outcomes handed out so far are the finished jobs."""
    pool = pool or shared_pool()
    todo = collections.deque(jobs)
    stop = threading.Event()
    lock = threading.Lock()
    events: "queue.Queue[tuple]" = queue.Queue()
    nslots = max(1, min(slots, len(jobs)))
    claimed: Set[Hashable] = set()      # keys some slot has run

    def slot(i: int):
        worker = None
        mine: Set[Hashable] = set()
        try:
            while not stop.is_set():
                with lock:
                    if not todo:
                        break
                    job = _take(todo, mine, claimed) if nslots > 1 else todo.popleft()
                    if job.affinity is not None:
                        mine.add(job.affinity)
                        claimed.add(job.affinity)
                want = env(job, i)
                if worker is None or not worker.alive() or worker.key != _env_key(want):
                    if worker is not None:
                        pool.give(worker)
                    worker = pool.take(want)
                events.put(("start", job, None))
                got = worker.run(job.payload, timeout, stop)
                if got.kind == "stopped":
                    break
                if got.kind == "crash" and got.returncode == EXIT_RESTART and got.served_before and not got.events:
                    with lock:           # it ended after an earlier job's CUDA error: a fresh one runs this
                        todo.appendleft(job)
                    continue
                events.put(("done", job, got))
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            events.put(("error", None, e))
        finally:
            if worker is not None:
                pool.give(worker)
            events.put(("exit", None, None))

    threads = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(nslots)]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            try:
                what, job, got = events.get(timeout=0.2)     # a get with a timeout lets KeyboardInterrupt in
            except queue.Empty:
                continue
            if what == "exit":
                running -= 1
            elif what == "error":
                raise got
            elif what == "start":
                if on_start:
                    on_start(job)
            elif not stop.is_set():
                on_done(job, got)
    except BaseException:
        stop.set()
        pool.kill_busy()
        raise


def run_one(payload: dict, env: Dict[str, str], timeout: float, pool: Optional[WorkerPool] = None) -> Outcome:
    """One job on a worker of `pool` (default: a pool of its own, closed after)."""
    own = pool is None
    pool = pool or WorkerPool()
    got: List[Outcome] = []
    try:
        run_jobs([Job(payload)], lambda job, i: env, lambda job, outcome: got.append(outcome), timeout=timeout,
                 pool=pool)
    finally:
        if own:
            pool.close()
    return got[0]


def case_env(device: str, slots: int, gpu: Optional[int] = None) -> Dict[str, str]:
    """A case worker's environment: the interpreter on a CPU device, the host's CPUs shared
    among `slots` workers, autotuning shared through the Triton cache, one GPU when pinned."""
    env = worker_env(share_cpus(interpret_triton(device, dict(os.environ)), slots))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def _error_record(case: Case, suite: str, error: str, stderr: str, seconds: Optional[float], kind: str) -> dict:
    rec = case_record(case, suite)
    rec.update(status="error", structural=kind, error=error, stderr_tail=stderr[-STDERR_TAIL:],
               duration_s=None if seconds is None else round(seconds, 3))
    return rec


def run_isolated(cases: List[Case], suite: str, policy: Optional[str], oracle_device: Optional[str],
                 on_done: Callable[[dict], None], jobs: int = 1, timeout: float = 600.0, gpus: int = 0,
                 on_start: Optional[Callable[[Case], None]] = None, pool: Optional[WorkerPool] = None) -> None:
    """Run cases in `jobs` concurrent workers, each case with a `timeout` in seconds; every
    case gets a record (through `on_done`, in the calling thread) unless the run is
    interrupted (KeyboardInterrupt in the calling thread: the busy workers are killed and it
    propagates). With `gpus` > 1 each job slot is pinned to one GPU (CUDA_VISIBLE_DEVICES)."""
    nslots = slot_count(jobs, cases)
    work = [Job(dict(case=c.to_dict(), suite=suite, policy=policy, oracle_device=oracle_device), c,
                compile_affinity(c)) for c in cases]
    if nslots > 1 and os.environ.get("GDN_JOB_ORDER", "longest") != "suite":   # "suite": the A/B baseline
        work = longest_first(work)

    def done(job: Job, got: Outcome):
        if got.kind == "result":
            rec = got.value
            if got.worker_start_s is not None and "phases" in rec:
                rec["phases"]["worker_start_s"] = round(got.worker_start_s, 4)
        else:
            rec = _error_record(job.tag, suite, got.error, got.stderr_tail, got.seconds, got.kind)
        on_done(rec)

    run_jobs(work, lambda job, i: slot_env(job.tag, nslots, i, gpus), done, nslots,
             timeout, (lambda job: on_start(job.tag)) if on_start else None, pool)


def slot_count(jobs: int, cases: List[Case]) -> int:
    """Job slots of a run: `jobs`, at most one a case."""
    return max(1, min(jobs, len(cases)))


def slot_env(case: Case, nslots: int, slot: int, gpus: int) -> Dict[str, str]:
    """The environment of job slot `slot`'s worker for `case` (a GPU of its own on a multi-GPU host)."""
    return case_env(case.device, nslots, slot % gpus if gpus > 1 else None)


def prestart_isolated(cases: List[Case], jobs: int = 1, gpus: int = 0, pool: Optional[WorkerPool] = None) -> None:
    """Start now, in `pool` (the shared one by default), the workers `run_isolated` with the same
    `cases`, `jobs` and `gpus` will take: ``gdn-harness run`` does before it loads the backends
    itself, so the workers' imports (3 s of torch and 4 s of fla on an H200, 2026-12-07) overlap
    the parent's own."""
    if not cases:
        return
    nslots = slot_count(jobs, cases)
    (pool or shared_pool()).prestart([slot_env(cases[0], nslots, i, gpus) for i in range(nslots)])
