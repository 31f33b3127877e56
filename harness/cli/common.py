"""What every subcommand shares: the exit codes (0 all passed, 1 a correctness failure, 2 usage),
when the CLI started (the first harness.cli module imported: a run's startup_s counts from it),
and how the program ends."""
import atexit
import os
import sys
import threading
import time

STARTED = time.perf_counter()
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def exit_now(code: int) -> None:
    """End the program with `code` as Python would, less its teardown of every module (torch's
    took ~1 s of a CPU run's 5 s): other threads are joined, the workers are told to end (not
    waited for), the exit handlers run (temporary files go), the streams are flushed."""
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    isolate = sys.modules.get("harness.run.isolate")
    if isolate is not None:     # every result is in: the workers' exit (CUDA teardown) is not waited for
        isolate.release_shared_pool()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):      # a closed pipe: nothing left to tell
            pass
    os._exit(code)
