"""Workers forked from a server that has imported torch and the harness once.

A worker started as ``python -m harness.run.worker`` spends seconds importing torch and the
harness before its first case (4-6 s each on an H200 with eight starting at once, 2026-12-07).
multiprocessing's forkserver imports them once (`PRELOAD`) and forks each worker from there in
milliseconds. The server never touches CUDA (a CUDA context does not survive a fork;
tests/test_forkstart.py checks that the preloaded imports make no CUDA call), so each worker
makes its own, as before. A forked worker is the same protocol on the same three pipes, in
its own session, with the environment it was asked for: what differs from the server's
(`fork_safe`: nothing imported reads them at import) is set before the worker's first line; any other
difference starts the worker the old way (`forked_start`).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, Optional

# imported once by the server: the worker's own imports (torch and the harness, no CUDA call).
# Not triton: preloaded, it made the server ready ~1.2 s later on an H200 (2026-12-07: worker
# start 0.03-0.1 -> 1.1-1.5 s) for what eight workers import side by side in about that time.
PRELOAD = ["harness.run.worker"]
# variables nothing in PRELOAD reads at import: a worker may differ from the server in these
# (and in the harness's own GDN_*, each read when used: tests/test_forkstart.py checks).
# Not TRITON_INTERPRET: triton.language's own @jit helpers are wrapped in the mode of triton's
# import, wherever that happens, so `start_early` gives the server the mode the run's workers will have.
FORK_SAFE_ENV = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRITON_CACHE_AUTOTUNING",
                 # harness.evals' offline switches (set as the CLI imports it; read by the HF libraries)
                 "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE",
                 "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "HF_UPDATE_DOWNLOAD_COUNTS"}


def fork_safe(name: str) -> bool:
    return name in FORK_SAFE_ENV or name.startswith("GDN_")


_lock = threading.Lock()
_server_lock = threading.Lock()
_server_env: Optional[Dict[str, str]] = None


def _context():
    """The forkserver context, its server started (once per process) with this environment."""
    global _server_env
    ctx = multiprocessing.get_context("forkserver")
    with _server_lock:
        if _server_env is None:
            ctx.set_forkserver_preload(PRELOAD)
            _server_env = dict(os.environ)
            from multiprocessing import forkserver
            forkserver.ensure_running()
            atexit.register(_stop_server)
    return ctx


def _stop_server() -> None:
    """At exit: the server would see this process gone and tear torch down (~1 s) while it
    still holds this process's stdout and stderr (a reader of the run's output waits for it).
    It holds nothing else: its workers are on their own."""
    from multiprocessing import forkserver
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass


def forked_start(env: Dict[str, str]) -> bool:
    """Whether a worker for `env` is forked from the server: on by default where fork exists,
    unless GDN_WORKER_START=spawn, and only when `env` differs from the server's in
    `fork_safe` variables alone (the server starts with this process's environment)."""
    if forked_start_off():
        return False
    base = _server_env if _server_env is not None else os.environ
    return all(env.get(k) == base.get(k) for k in set(env) | set(base) if not fork_safe(k))


def _child(env: Dict[str, str], fds) -> None:
    """In the forked worker: its own session, the pipes as fds 0-2, its environment, then the worker."""
    os.setsid()
    for fd, target in zip(fds, (0, 1, 2)):
        if fd.fileno() != target:
            os.dup2(fd.fileno(), target)
            fd.close()
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch
        torch.set_num_threads(int(threads))     # read by torch at its import, in the server
    from harness.run import worker
    code = worker.main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


class ForkedProcess:
    """The part of `subprocess.Popen` the pool uses (text pipes, pid, poll / wait / kill,
    returncode: negative for a signal), for a worker forked from the server. The fork is
    asked for on a thread: the first one waits for the server's imports, which overlap the
    caller's work as a spawned worker's would."""

    def __init__(self, env: Dict[str, str]):
        ctx = _context()
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        self.stdin = os.fdopen(w_in, "w", buffering=1)
        self.stdout = os.fdopen(r_out, "r")
        self.stderr = os.fdopen(r_err, "r")
        self._ends = [r_in, w_out, w_err]
        self._proc = ctx.Process(target=_child, args=(env, [_Fd(f) for f in self._ends]), daemon=False)
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        from multiprocessing import spawn
        try:
            with _lock:                 # multiprocessing's table of children is not thread-safe
                real = spawn.get_preparation_data
                # the child must not re-run this process's __main__ (the CLI script) as multiprocessing
                # does by default: _child needs nothing from it
                spawn.get_preparation_data = lambda name: {k: v for k, v in real(name).items()
                                                           if not k.startswith("init_main_from")}
                try:
                    self._proc.start()
                finally:
                    spawn.get_preparation_data = real
        except BaseException as e:  # noqa: BLE001 - told as a worker that died at once
            self._error = e
        finally:
            for fd in self._ends:       # the child has its copies (or never will)
                os.close(fd)
            self._started.set()

    @property
    def pid(self) -> Optional[int]:
        """The worker's pid, once forked (waits for the fork; None if it failed)."""
        self._started.wait()
        return None if self._error is not None else self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.poll()

    def poll(self) -> Optional[int]:
        if not self._started.is_set():
            return None
        if self._error is not None:
            return 1
        with _lock:
            return self._proc.exitcode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._started.wait(timeout):
            raise subprocess.TimeoutExpired("forked worker", timeout)
        if self._error is None:
            self._proc.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired("forked worker", timeout)
        return code

    def kill(self) -> None:
        """The worker alone (as Popen.kill); the pool kills its session by `pid`."""
        self._started.wait()
        if self._error is None:
            self._proc.kill()


class _Fd:
    """A file descriptor handed to the forked child (multiprocessing duplicates it across)."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)

    def __reduce__(self):
        from multiprocessing.reduction import DupFd
        return _rebuild_fd, (DupFd(self.fd),)


def _rebuild_fd(dup) -> "_Fd":
    return _Fd(dup.detach())


def uses_workers(backends, isolate: bool = False, jobs: int = 1, timeout=None) -> bool:
    """Whether ``gdn-harness run`` (neither --no-isolate nor --distributed) runs its cases on
    workers: a backend besides the reference, --isolate, --jobs > 1 or --timeout."""
    return isolate or jobs > 1 or timeout is not None or set(backends or ["reference"]) != {"reference"}


def start_early(argv) -> bool:
    """Start the server now when `argv` (a ``gdn-harness`` command line) is a run that will use
    workers (`uses_workers`), before the CLI imports torch: the server's imports then overlap the
    parent's. True when started."""
    argv = list(argv)
    if not argv or argv[0] != "run" or forked_start_off() or {"--no-isolate", "--distributed", "-h", "--help"} & \
            set(argv):
        return False
    backends, jobs, timeout, device = [], 1, None, "cpu"
    for i, a in enumerate(argv):
        name, _, value = a.partition("=")
        if not value and i + 1 < len(argv):
            value = argv[i + 1]
        if name == "--backend":
            backends += [b for b in value.split(",") if b]
        elif name == "--jobs":
            jobs = int(value) if value.isdigit() else jobs
        elif name == "--timeout":
            timeout = value
        elif name == "--device":
            device = value
    if not uses_workers(backends, "--isolate" in argv, jobs, timeout):
        return False
    from harness.optimized.interpret import interpret_triton
    interpret_triton(device)       # as the CLI sets it for the run (--device, default cpu): the workers' mode
    _context()
    return True


def forked_start_off() -> bool:
    return os.environ.get("GDN_WORKER_START", "fork") == "spawn" or "forkserver" not in \
        multiprocessing.get_all_start_methods()
