"""What every subcommand shares: the exit codes (0 all passed, 1 a correctness failure, 2 usage),
and when the CLI started (the first harness.cli module imported: a run's startup_s counts from it)."""
import time

STARTED = time.perf_counter()
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
