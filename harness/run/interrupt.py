"""SIGINT / SIGTERM during a run: the report is written, whatever the main thread is doing.

While `interruptible` is active, SIGINT and SIGTERM raise `Interrupted` in the main thread
(later signals are ignored while it is handled, so a second Ctrl-C, or `timeout`'s signal
to the child and then to its process group, cannot cut the report short). Python runs a
signal handler only between bytecodes of the main thread: a main thread stuck in native
code (a Triton compile, a hung kernel, a deadlocked library) would never see it, and a
library may swallow the KeyboardInterrupt or turn it into another error. So a watcher
thread, woken through the signal wakeup fd, calls `on_stuck(signum)` when the main thread
has not taken the interrupt up within `grace_s`; it writes the report and ends the process.
The runner also checks `requested()` after each case, so an interrupt a library swallowed
still stops the run.
"""
from __future__ import annotations

import os
import select
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (`signum`); the exit code is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    signum: Optional[int] = None
    holding = False                    # a signal now only marks the run (the final report is being written)
    taken = threading.Event()          # the main thread is handling the interrupt


_state = _State()


def requested() -> Optional[int]:
    """The signal that asked the run to stop, or None."""
    return _state.signum


def take() -> None:
    """The main thread has taken the interrupt up (the watcher stands down)."""
    _state.taken.set()


def hold() -> None:
    """From now on a signal is only recorded (`requested()`): the main thread is writing the
    final report and must not be cut short, nor the watcher write it a second time."""
    _state.holding = True
    _state.taken.set()


def check() -> None:
    """Raise Interrupted when a signal came in whose KeyboardInterrupt got lost on the way."""
    if _state.signum is not None and not _state.taken.is_set():
        raise Interrupted(_state.signum)


def _handler(signum, frame):
    if _state.signum is not None or _state.holding:    # already stopping, or writing the report
        _state.signum = _state.signum or signum
        return
    _state.signum = signum
    raise Interrupted(signum)


@contextmanager
def interruptible(on_stuck: Callable[[int], None], grace_s: float = 5.0, exiting: bool = False):
    """SIGINT / SIGTERM -> Interrupted; `on_stuck(signum)` from a watcher thread if the main
    thread has not called `take()` within `grace_s` of the signal. A no-op off the main thread.
    `exiting`: the process ends after this run, so once interrupted it ignores later signals
    (a second SIGINT would only print a traceback from the interpreter's shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.signum, _state.holding = None, False
    _state.taken = threading.Event()
    r, w = os.pipe()
    os.set_blocking(w, False)
    old = {s: signal.getsignal(s) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    done = threading.Event()

    def watch():
        while not done.is_set():
            ready, _, _ = select.select([r], [], [], 0.2)
            if not ready:
                continue
            # the C-level handler writes the signal number here even while the main
            # thread is stuck in native code and the Python handler cannot run
            got = [b for b in os.read(r, 64) if b in SIGNALS]
            if not got:
                continue
            if not _state.taken.wait(grace_s) and not done.is_set():
                on_stuck(_state.signum or got[0])
            return

    watcher = threading.Thread(target=watch, name="gdn-interrupt-watcher", daemon=True)
    for s in SIGNALS:
        signal.signal(s, _handler)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if exiting and _state.signum is not None else h)
        signal.set_wakeup_fd(old_fd)
        watcher.join(1.0)
        os.close(r)
        os.close(w)
