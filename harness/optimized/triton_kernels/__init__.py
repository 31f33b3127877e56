"""Triton kernels of the optimized backend (run under TRITON_INTERPRET=1 where there is no GPU)."""
