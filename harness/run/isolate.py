"""Running cases in a pool of persistent worker processes (the default for any backend
but the reference; ``--jobs``; ``--no-isolate`` runs in process instead).

A segfault, an illegal memory access, an out-of-memory kill or a hang inside a case
kills only its worker: the case becomes an ``error`` record ("timed out after N s",
"worker died: killed by signal 6 (SIGABRT)") carrying the worker's stderr tail, the next
case gets a fresh worker, and the run goes on. A CUDA error raised inside a case (it
poisons the context) ends its worker the same way. Workers are reused across cases (and
across runs of one process, per environment), because a worker's start - imports, CUDA
context, kernel loads from the Triton cache - costs seconds (10-25 s on an H200), more
than most cases. Each worker runs in its own session: a terminal's Ctrl-C or ``timeout
-s INT`` reaches only the parent, which stops the workers and writes the report.
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
from typing import Callable, Dict, List, Optional

from harness.run.autotune import worker_env
from harness.cases.case import Case
from harness.optimized.interpret import interpret_triton
from harness.run.runner import case_record
from harness.run.worker import EXIT_RESTART

STDERR_TAIL = 4000
STARTUP_S = 300.0          # a worker's imports (and CUDA context) before its first case


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


class Worker:
    """One ``python -m harness.run.worker`` process and the threads draining its pipes."""

    def __init__(self, env: Dict[str, str]):
        self.key = _env_key(env)
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.run.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True, bufsize=1)
        self.ready = False
        self.served = 0                     # records handed back
        self.spawned = time.monotonic()
        self.start_s: Optional[float] = None    # spawn to ready: imports, CUDA context
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._err: collections.deque = collections.deque(maxlen=200)
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_err(self):
        for line in self.proc.stderr:
            self._err.append(line)

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

    def run(self, job: dict, timeout: float, stop: threading.Event):
        """("record", rec) | ("timeout", seconds) | ("died", returncode) | ("stopped", None)."""
        if not self.ready:
            got = self._next(time.monotonic() + max(timeout, STARTUP_S), stop)
            if not isinstance(got, dict):
                return self._outcome(got, max(timeout, STARTUP_S))
            self.ready = True
            self.start_s = time.monotonic() - self.spawned
        self._err.clear()                    # the tail of a crash is this case's
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._outcome("eof", timeout)
        t0 = time.monotonic()
        got = self._next(t0 + timeout, stop)
        return ("record", got) if isinstance(got, dict) else self._outcome(got, time.monotonic() - t0)

    def _outcome(self, what: str, seconds: float):
        if what == "eof":
            self.proc.wait()
            return "died", self.proc.returncode
        self.kill()
        return ("timeout", seconds) if what == "timeout" else ("stopped", None)

    def kill(self) -> None:
        """Kill the worker and anything it started (its own session)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()          # end of input: the worker exits
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
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

    def close(self) -> None:
        self.kill_busy()
        with self._lock:
            idle, self._idle = [w for ws in self._idle.values() for w in ws], {}
        for w in idle:
            w.close()


_SHARED: Optional[WorkerPool] = None


def shared_pool() -> WorkerPool:
    """The process's pool: later runs in the same process (tests, tools) reuse its workers."""
    global _SHARED
    if _SHARED is None:
        _SHARED = WorkerPool()
        atexit.register(_SHARED.close)
    return _SHARED


def _error_record(case: Case, suite: str, error: str, stderr: str, seconds: Optional[float], kind: str) -> dict:
    rec = case_record(case, suite)
    rec.update(status="error", structural=kind, error=error, stderr_tail=stderr[-STDERR_TAIL:],
               duration_s=None if seconds is None else round(seconds, 3))
    return rec


def run_isolated(cases: List[Case], suite: str, policy: Optional[str], oracle_device: Optional[str],
                 on_done: Callable[[dict], None], jobs: int = 1, timeout: float = 600.0, gpus: int = 0,
                 on_start: Optional[Callable[[Case], None]] = None, pool: Optional[WorkerPool] = None) -> None:
    """Run cases in `jobs` concurrent workers, each case with a `timeout` in seconds; every
    case gets a record (through `on_done`, called under a lock) unless the run is
    interrupted (KeyboardInterrupt in the calling thread: the busy workers are killed and it
    propagates). With `gpus` > 1 each job slot is pinned to one GPU (CUDA_VISIBLE_DEVICES)."""
    pool = pool or shared_pool()
    todo = collections.deque(cases)
    stop = threading.Event()
    lock = threading.Lock()
    nslots = max(1, min(jobs, len(cases)))
    errors: List[BaseException] = []

    def slot(i: int):
        try:
            worker = None
            while not stop.is_set():
                with lock:
                    if not todo:
                        break
                    case = todo.popleft()
                    if on_start:
                        on_start(case)
                env = worker_env(share_cpus(interpret_triton(case.device, dict(os.environ)), nslots))
                if gpus > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
                if worker is None or not worker.alive() or worker.key != _env_key(env):
                    if worker is not None:
                        pool.give(worker)
                    worker = pool.take(env)
                job = dict(case=case.to_dict(), suite=suite, policy=policy, oracle_device=oracle_device)
                what, got = worker.run(job, timeout, stop)
                if what == "stopped":
                    break
                if what == "record":
                    rec = got
                    if not worker.served and worker.start_s is not None and "phases" in rec:
                        rec["phases"]["worker_start_s"] = round(worker.start_s, 4)
                    worker.served += 1
                elif what == "timeout":
                    rec = _error_record(case, suite, f"timed out after {timeout:g} s (its worker was killed)",
                                        worker.stderr_tail(), got, "timeout")
                elif got == EXIT_RESTART and worker.served:
                    with lock:           # it ended after an earlier case's CUDA error: a fresh one runs this
                        todo.appendleft(case)
                    continue
                else:
                    rec = _error_record(case, suite, f"worker died: {death_reason(got)}", worker.stderr_tail(), None, "crash")
                with lock:
                    if not stop.is_set():
                        on_done(rec)
            if worker is not None:
                pool.give(worker)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(nslots)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)              # a join with a timeout lets KeyboardInterrupt in
    except BaseException:
        stop.set()
        pool.kill_busy()
        raise
    if errors:
        raise errors[0]
