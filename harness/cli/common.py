"""What every subcommand shares: the exit codes (0 all passed, 1 a correctness failure, 2 usage)."""
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
