"""Running cases in worker subprocesses with a timeout (``--isolate``, ``--jobs``).

A segfault, an illegal memory access, an out-of-memory kill or a hang inside a case
kills only its worker: the case becomes an ``error`` record carrying the stderr tail,
the cases after it in the same group go to a fresh worker, and the run goes on. A CUDA
error raised inside a case (it poisons the context) ends its worker the same way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

from .cases import Case
from .optimized.interpret import interpret_triton
from .runner import case_record
from .worker import EXIT_RESTART

STDERR_TAIL = 4000


def share_cpus(env: Dict[str, str], procs: int) -> Dict[str, str]:
    """`env` with OMP / MKL threads set to this host's CPUs / `procs` (unless the user set
    them): each torch process otherwise spins one thread per CPU, and a few concurrent
    workers ran the ci suite's cases up to 100x slower (4 workers on a 64-core H200 host)."""
    n = str(max(1, (os.cpu_count() or 1) // max(1, procs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if not env.get(var):
            env[var] = n
    return env


def _error_record(case: Case, suite: str, error: str, stderr: str) -> dict:
    rec = case_record(case, suite)
    rec.update(status="error", error=error, stderr_tail=stderr[-STDERR_TAIL:], duration_s=None)
    return rec


def _run_group(cases: List[Case], suite: str, policy: Optional[str], oracle_device: Optional[str],
               timeout: float, env: Dict[str, str], on_done: Callable[[dict], None],
               stop: threading.Event) -> None:
    """Run `cases` in workers until each has a record; `timeout` is per case."""
    todo = list(cases)
    while todo and not stop.is_set():
        job = json.dumps(dict(cases=[c.to_dict() for c in todo], suite=suite, policy=policy,
                              oracle_device=oracle_device))
        proc = subprocess.Popen([sys.executable, "-m", "harness.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        proc.stdin.write(job)
        proc.stdin.close()
        err_chunks: List[str] = []
        reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        reader.start()
        lines: List[str] = []
        line_reader = threading.Thread(target=lambda: [lines.append(ln) for ln in proc.stdout], daemon=True)
        line_reader.start()
        done, deadline = 0, time.monotonic() + timeout
        while True:
            while done < len(lines):
                on_done(json.loads(lines[done]))
                done += 1
                deadline = time.monotonic() + timeout
            if not line_reader.is_alive() or time.monotonic() > deadline or stop.is_set():
                break
            time.sleep(0.02)
        line_reader.join(timeout=0.5)
        while done < len(lines):            # records written just before the end
            on_done(json.loads(lines[done]))
            done += 1
        hung = proc.poll() is None
        if hung:
            proc.kill()
        proc.wait()
        reader.join(timeout=2)
        todo = todo[done:]
        if not todo or stop.is_set():
            return
        if not hung and proc.returncode == EXIT_RESTART and done:   # its last case broke the CUDA context
            continue
        stderr = "".join(err_chunks)
        why = (f"timed out after {timeout:g} s" if hung else
               f"worker died with exit code {proc.returncode}"
               + (f" (signal {-proc.returncode})" if proc.returncode < 0 else ""))
        on_done(_error_record(todo[0], suite, f"case crashed the worker: {why}", stderr))
        todo = todo[1:]


def run_isolated(cases: List[Case], suite: str, policy: Optional[str], oracle_device: Optional[str],
                 on_done: Callable[[dict], None], jobs: int = 1, timeout: float = 600.0,
                 group_size: int = 16, gpus: int = 0) -> None:
    """Run cases in `jobs` concurrent workers. One worker: `group_size` cases per worker
    process. Several: one long-lived worker per job slot over every `jobs`-th case (a
    fresh one only after a crash or hang), because a worker's start - CUDA context,
    kernel loads from the Triton cache - cost 10-25 s per process on an H200, more than
    the ci suite's cases themselves. With `gpus` > 1 each job slot is pinned to one GPU
    (CUDA_VISIBLE_DEVICES)."""
    if jobs > 1:
        groups = [g for g in (cases[i::jobs] for i in range(jobs)) if g]
    else:
        groups = [cases[i:i + group_size] for i in range(0, len(cases), group_size)]
    stop = threading.Event()
    lock = threading.Lock()
    slots = list(range(max(1, jobs)))
    free = list(slots)

    def done(rec):
        with lock:
            on_done(rec)

    def work(group):
        with lock:
            slot = free.pop()
        env = share_cpus(interpret_triton(group[0].device, dict(os.environ)), len(slots))
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        try:
            _run_group(group, suite, policy, oracle_device, timeout, env, done, stop)
        finally:
            with lock:
                free.append(slot)

    pool = ThreadPoolExecutor(max_workers=len(slots))
    futures = [pool.submit(work, g) for g in groups]
    try:
        for f in futures:
            f.result()
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
