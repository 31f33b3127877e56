"""Where a case's seconds go: a per-phase breakdown in each record (``phases``).

* ``backend``: inside the backend's op calls, minus the calls below; on a GPU the span
  between CUDA events recorded around each call (no wait for the GPU per call: beside other
  workers each wait costs a turn on it), read when the case's timer next synchronises.
* ``compile``: backend calls during which Triton compiled (or loaded from its cache) a
  kernel: the whole call - compile plus that first run - since the two are not
  separable from outside Triton. Counted by Triton's ``jit_cache_hook``, which fires
  once per new kernel specialisation in a process; under the CPU interpreter nothing is
  compiled, so this stays 0 there.
* ``autotune``: backend calls during which an autotuner met a new key and benchmarked
  its configs (the whole call).
* ``oracle``: the rest of producing the outputs to compare: inputs, the reference's
  fills, the fp64 oracle, copies to the host (a `self` case: the whole check).
* ``compare``: the tolerance checks; ``diagnosis``: diagnosing a failure; ``sweep``: the
  reruns of ``--autotune sweep``, one per config index.
* ``import``: loading the case's backend (its kernel modules; a process's first case
  that uses it pays it, plus the CUDA context if that comes first).
* ``worker_start``: (isolated runs, a worker's first case) the worker's start: Python,
  torch and the harness imported, before its first case.

Counts beside them: ``compiles``, ``autotuned`` and ``oracle_replays`` (the oracle's steps
replayed as CUDA graphs, harness/reference/replay.py: 0 where it ran eagerly).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

PHASES = ("worker_start", "import", "compile", "autotune", "backend", "oracle", "compare", "sweep", "diagnosis")
INNER = ("import", "compile", "autotune", "backend")     # timed inside the oracle phase's timer

_compiles = 0          # Triton compiles seen in this process (jit_cache_hook)
_autotunes = 0         # autotuner benchmarks of a new key (harness.run.autotune counts them)
_hooked = False


def _oracle_replays() -> int:
    """Oracle steps replayed as CUDA graphs so far in this process (harness.reference.replay)."""
    replay = sys.modules.get("harness.reference.replay")
    return replay.replayed if replay is not None else 0


def sync(device: Optional[str]) -> None:
    """Wait for the GPU when timing work on it (kernels launch asynchronously)."""
    if device and device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def note_autotune() -> None:
    global _autotunes
    _autotunes += 1


COMPILE_LOCK_S = 120.0     # longest wait for another worker compiling the same kernel
_held = None               # the compile lock this process holds (one compile at a time)


def compile_started(**kwargs) -> None:
    """Triton is about to compile a kernel specialisation (or load it from the cache): count
    it and, unless GDN_COMPILE_LOCK=0, take a lock named by it, so workers sharing a Triton
    cache compile each specialisation once - the second waits, then loads it from the cache."""
    global _compiles, _held
    _compiles += 1
    release_compile_lock()
    if os.environ.get("GDN_COMPILE_LOCK", "1") != "0":
        from harness.run.autotune import acquire, lock_path
        fn = kwargs.get("fn")
        name = f"{getattr(fn, 'module', '')}.{getattr(fn, 'name', '')}:{kwargs.get('repr') or kwargs.get('key')}"
        _held = acquire(lock_path("compile", name), COMPILE_LOCK_S)


def release_compile_lock(**_) -> None:
    """After the compile (Triton's post-compile hook), after each backend call, and before
    the next compile: a failed compile never leaves the lock held."""
    global _held
    if _held is not None:
        from harness.run.autotune import release
        held, _held = _held, None
        release(held)


def hook_compiles(load: bool = False) -> None:
    """Count Triton compiles through its jit hooks (chaining any hooks already set). Before
    anything imported Triton there is nothing to hook: unless `load`, no import is paid."""
    global _hooked
    if _hooked or not (load or "triton" in sys.modules):
        return
    _hooked = True
    try:
        from triton import knobs
    except ImportError:      # no triton, or one without knobs (< 3.4): compiles are not told apart
        return
    before, after = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook

    def hook(*args, **kwargs):
        compile_started(**kwargs)
        return before(*args, **kwargs) if before else False   # False: go on and compile

    def post(*args, **kwargs):
        release_compile_lock()
        return after(*args, **kwargs) if after else None
    knobs.runtime.jit_cache_hook = hook
    knobs.runtime.jit_post_compile_hook = post


class Phases:
    """Seconds per phase of one case."""

    def __init__(self, device: Optional[str] = None):
        self.device = device
        self.seconds: Dict[str, float] = {}
        self.compiles = 0
        self.autotuned = 0
        self._replayed0 = _oracle_replays()
        self._spans: list = []          # (start, end) CUDA events of backend calls not read yet
        hook_compiles()

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        sync(self.device)
        self._read_spans()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self._read_spans()
            self.add(phase, time.perf_counter() - t0)

    def _events(self):
        if not (self.device and self.device.startswith("cuda")):
            return None
        import torch
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _read_spans(self, wait: bool = False) -> None:
        """The backend calls' GPU spans, once their events completed (after a synchronise;
        `wait`: synchronise first if any is unread)."""
        if wait and self._spans:
            sync(self.device)
        for start, end in self._spans:
            self.add("backend", start.elapsed_time(end) / 1e3)
        self._spans = []

    def call(self, fn, *args, **kwargs):
        """`fn(...)` timed as backend, compile or autotune (what happened during the call). A call
        that compiled or autotuned is synchronised and timed whole; a plain one on a GPU by events."""
        events = self._events()
        if events is None:
            sync(self.device)
        else:
            events[0].record()
        c0, a0, t0 = _compiles, _autotunes, time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            release_compile_lock()
            self.compiles += _compiles - c0
            self.autotuned += _autotunes - a0
            kind = "autotune" if _autotunes > a0 else "compile" if _compiles > c0 else "backend"
            if kind == "backend" and events is not None:
                events[1].record()
                self._spans.append(events)
            else:
                sync(self.device)
                self.add(kind, time.perf_counter() - t0)

    def inner_seconds(self) -> float:
        self._read_spans(wait=True)
        return sum(self.seconds.get(p, 0.0) for p in INNER)

    def to_dict(self) -> dict:
        self._read_spans(wait=True)
        out = {f"{p}_s": round(self.seconds[p], 4) for p in PHASES if p in self.seconds}
        return dict(out, compiles=self.compiles, autotuned=self.autotuned,
                    oracle_replays=_oracle_replays() - self._replayed0)


class TimedBackend:
    """A backend whose op calls (and layer core) are timed into `phases`; every other
    attribute is the backend's own."""

    def __init__(self, backend, phases: Phases):
        self._backend = backend
        self._phases = phases

    def __getattr__(self, name: str):
        from harness.optimized.api import OPS
        attr = getattr(self._backend, name)
        if (name in OPS or name == "gdn_core") and callable(attr):
            return lambda *a, **k: self._phases.call(attr, *a, **k)
        return attr
