"""Stage: comparison metrics and the tolerance policy (imports no backend)."""
