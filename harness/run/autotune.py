"""Autotuning as an explicit policy (``--autotune``, env ``GDN_AUTOTUNE``).

A bug can live in one config of an autotuned kernel, and autotuning four processes on
one GPU at once cost the ci suite most of its time, so which config runs is chosen:

* ``pinned`` (default): each Triton autotuner (ours, fla's, ...) runs the config recorded
  for its kernel and key in the pins file (``GDN_AUTOTUNE_PINS``, default
  ``harness/run/autotune_pins.json``) - deterministic, nothing benchmarked. A key with no
  pin runs the pin of the kernel's nearest pinned key (same dtypes, closest sizes; the record
  says ``pinned (nearest key ...)``); one with no such key (or a pin that is no longer one of
  the kernel's configs) is autotuned natively and the record says so (``native (no pin)``).
* ``sweep``: the case runs once per config index i, every autotuned kernel pinned to its
  config ``i mod n``: every config of every kernel the case touches is run and judged
  against the oracle; a failing config fails the case and is named.
* ``native``: the library's own autotuner.

Native autotuning of a key not yet tuned holds a file lock per kernel (next to the
Triton cache), so workers sharing one GPU never benchmark the same kernel at once (each
would time the others' load); with ``TRITON_CACHE_AUTOTUNING=1`` (set for workers) the
next worker reads the result from the cache instead of tuning again.

Mechanism: ``triton.runtime.autotuner.Autotuner.run`` is wrapped once per process; the
wrapper pre-fills the autotuner's own per-key cache with the chosen config (Triton then
benchmarks nothing) and records, per case, which config each kernel ran.
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from harness.config import AUTOTUNE_POLICIES
from harness.run import phases

POLICIES = AUTOTUNE_POLICIES
DEFAULT_PINS = Path(__file__).with_name("autotune_pins.json")
PINS_SCHEMA = "gdn-harness-autotune-pins/1"
AUTOTUNE_LOCK_S = 600.0      # longest wait for another worker's autotuning of a kernel

_installed = False
_pins_cache: Dict[str, dict] = {}
_ran: List[dict] = []            # this case's (kernel, key, config, source)
_sweep_index: Optional[int] = None
_widest = 1                      # the most configs of a kernel this case touched
_swept: Dict[tuple, tuple] = {}  # (tuner, key) -> the tuner's cache entry before a sweep replaced it
_pinned_choice: Dict[tuple, tuple] = {}   # (id(tuner), key) -> (the pins it was chosen from, choice)


def policy() -> str:
    p = os.environ.get("GDN_AUTOTUNE", "pinned")
    if p not in POLICIES:
        from harness.errors import HarnessError
        raise HarnessError(f"GDN_AUTOTUNE={p!r}: expected one of {', '.join(POLICIES)}")
    return p


def pins_path() -> Path:
    return Path(os.environ.get("GDN_AUTOTUNE_PINS") or DEFAULT_PINS)


def load_pins(path: Optional[Path] = None) -> dict:
    """kernel -> key -> config dict, from a pins file (an absent file: no pins)."""
    path = Path(path or pins_path())
    if str(path) not in _pins_cache:
        doc = json.loads(path.read_text()) if path.exists() else {"kernels": {}}
        _pins_cache[str(path)] = doc.get("kernels", {})
    return _pins_cache[str(path)]


def config_dict(config) -> dict:
    """A triton.Config as JSON: its kwargs and launch options."""
    d = dict(kwargs=dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages)
    for opt in ("num_ctas", "maxnreg"):
        if getattr(config, opt, None) not in (None, 1):
            d[opt] = getattr(config, opt)
    return d


def kernel_name(tuner) -> str:
    fn = tuner.base_fn
    return f"{fn.__module__}.{fn.__qualname__}"


def tuning_key(tuner, args, kwargs) -> tuple:
    """The autotuner's own cache key (Triton's formula: the key args' values, then the dtypes)."""
    all_args = {**dict(zip(tuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in all_args.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def key_str(key: tuple) -> str:
    return repr(key)


def start_case() -> List[dict]:
    """A new case: the list the configs it runs are appended to (kernel, key, config, source)."""
    global _widest, _ran
    _ran, _widest = [], 1
    return _ran


def case_configs() -> List[dict]:
    return [dict(r) for r in _ran]


def widest() -> int:
    return _widest


@contextmanager
def sweeping(index: Optional[int]) -> Iterator[None]:
    """Inside: every autotuned kernel runs its config `index mod n`."""
    global _sweep_index
    old, _sweep_index = _sweep_index, index
    try:
        yield
    finally:
        _sweep_index = old
        for tuner, key, before in _swept.values():     # later cases run what they would have without the sweep
            if before is None:
                tuner.cache.pop(key, None)
            else:
                tuner.cache[key] = before
        _swept.clear()


def lock_path(kind: str, name: str) -> Path:
    """A lock file next to the Triton cache, so every process sharing the cache sees it."""
    base = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    base.mkdir(parents=True, exist_ok=True)
    return base / f"gdn-{kind}-{hashlib.sha1(name.encode()).hexdigest()[:16]}.lock"


def acquire(path: Path, timeout_s: float):
    """An open file holding an exclusive lock on `path`, or None after `timeout_s` (the
    caller then goes on unlocked: a lock only saves duplicated work, it never guards data)."""
    f = open(path, "w")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                return None
            time.sleep(0.05)


def release(f) -> None:
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@contextmanager
def _exclusive(kernel: str) -> Iterator[None]:
    f = acquire(lock_path("autotune", kernel), AUTOTUNE_LOCK_S)
    try:
        yield
    finally:
        release(f)


def choose(tuner, key: tuple, pol: str):
    """(config or None for native autotuning, source) for this call."""
    if len(tuner.configs) <= 1:
        return None, "single"
    if _sweep_index is not None:
        return tuner.configs[_sweep_index % len(tuner.configs)], f"sweep {_sweep_index % len(tuner.configs)}"
    if pol in ("pinned", "sweep"):        # sweep: the case's own run is the pinned one, then one per config
        kernel_pins = load_pins().get(kernel_name(tuner), {})
        cached = _pinned_choice.get((id(tuner), key))
        if cached is not None and cached[0] is kernel_pins:    # Autotuner.run is called on every launch
            return cached[1]
        choice = _pinned(tuner, key, kernel_pins)
        _pinned_choice[(id(tuner), key)] = (kernel_pins, choice)
        return choice
    return None, "native"


def _pinned(tuner, key: tuple, kernel_pins: dict):
    pin = kernel_pins.get(key_str(key))
    match = [c for c in tuner.configs if pin is not None and config_dict(c) == pin]
    if match:
        return match[0], "pinned"
    return nearest_pin(tuner, key, kernel_pins) or (None, "native (no pin)" if pin is None else "native (stale pin)")


def _split(key: tuple):
    """(sizes, everything else: dtypes, flags) of an autotuning key."""
    def size(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return [float(v) for v in key if size(v)], [v for v in key if not size(v)]


def nearest_pin(tuner, key: tuple, kernel_pins: dict):
    """A key with no pin of its own runs the pinned config of the kernel's nearest pinned key
    (same dtypes and flags, closest sizes on a log scale) instead of autotuning natively:
    still one deterministic config per kernel and key, and never a benchmark that workers on
    one GPU would wait for. None when no pinned key of the kernel has the same non-size parts."""
    sizes, rest = _split(key)
    best = None
    for text, pin in kernel_pins.items():
        try:
            other_sizes, other_rest = _split(ast.literal_eval(text))
        except (ValueError, SyntaxError, TypeError):
            continue
        match = [c for c in tuner.configs if config_dict(c) == pin]
        if other_rest != rest or len(other_sizes) != len(sizes) or not match:
            continue
        dist = sum(abs(math.log2(max(a, 1.0)) - math.log2(max(b, 1.0))) for a, b in zip(sizes, other_sizes))
        if best is None or dist < best[0]:
            best = (dist, match[0], text)
    return None if best is None else (best[1], f"pinned (nearest key {best[2]})")


def install(load: bool = False) -> None:
    """Wrap Triton's Autotuner.run once in this process. Before anything imported Triton
    there is no kernel to tune: unless `load` (a backend under test, which may import its
    kernels lazily), no import is paid."""
    global _installed
    if _installed or not (load or "triton" in sys.modules):
        return
    _installed = True
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return
    original = Autotuner.run

    def run(self, *args, **kwargs):
        global _widest
        key = tuning_key(self, args, kwargs)
        config, source = choose(self, key, policy())
        _widest = max(_widest, len(self.configs))
        if config is not None:
            if _sweep_index is not None:
                _swept.setdefault((id(self), key), (self, key, self.cache.get(key)))
            self.cache[key] = config              # Triton benchmarks nothing for a cached key
            out = original(self, *args, **kwargs)
        elif source != "single" and key not in self.cache:
            with _exclusive(kernel_name(self)):
                self.bench_time = None             # Triton sets it when it benchmarks (not on a cache hit)
                out = original(self, *args, **kwargs)
                if self.bench_time is not None:
                    phases.note_autotune()
        else:
            out = original(self, *args, **kwargs)
        chosen = getattr(self, "best_config", None)       # what Triton ran
        if config is not None and chosen is not config:
            source += " (not applied: Triton's key differs)"  # a Triton whose key formula changed
        entry = dict(kernel=kernel_name(self), key=key_str(key), config=config_dict(chosen) if chosen else None,
                     source=source)
        if entry not in _ran:
            _ran.append(entry)
        return out

    Autotuner.run = run


def worker_env(env: Dict[str, str]) -> Dict[str, str]:
    """Workers share autotuning results through the Triton cache (unless the user chose)."""
    env.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    return env


def pins_from_records(records: List[dict], device_name: str = "", triton_version: str = "") -> dict:
    """A pins file from run records: the config each kernel and key ran (natively tuned)."""
    kernels: Dict[str, Dict[str, dict]] = {}
    for rec in records:
        for r in (rec.get("autotune") or {}).get("configs", []):
            if r.get("config") and r.get("source") != "single":
                kernels.setdefault(r["kernel"], {}).setdefault(r["key"], r["config"])
    return dict(schema=PINS_SCHEMA, device=device_name, triton=triton_version,
                kernels={k: dict(sorted(v.items())) for k, v in sorted(kernels.items())})
