"""Triton helpers shared by the kernels."""
import triton
import triton.language as tl


@triton.jit
def _log1p(u):
    # log1p without libdevice: log(1+u) * u / ((1+u) - 1) cancels the rounding of 1+u
    # (Goldberg), and is exactly u where 1+u rounds to 1.
    w = 1.0 + u
    d = w - 1.0
    return tl.where(d == 0.0, u, tl.log(w) * (u / tl.where(d == 0.0, 1.0, d)))
