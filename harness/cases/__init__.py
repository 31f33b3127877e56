"""Stage: scenarios, inputs, suites and the op / layer / self checks that build comparisons."""
