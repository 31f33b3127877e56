"""Backends under test (the Backend interface, registry and built-in fast paths).

Only this package may import kernels; harness.reference and harness.layouts never
import it."""
