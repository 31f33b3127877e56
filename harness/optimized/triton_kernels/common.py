"""Triton helpers shared by the kernels."""
import torch
import triton
import triton.language as tl


def capturing(t) -> bool:
    """A CUDA graph is being captured on the current stream (tensor `t` on a CUDA device): no
    host reads of tensor values then (a sync is illegal, and a value read once would be
    frozen into every replay) - value checks are skipped and sizes come from shapes."""
    return t is not None and t.is_cuda and torch.cuda.is_current_stream_capturing()


@triton.jit
def _log1p(u):
    # log1p without libdevice: log(1+u) * u / ((1+u) - 1) cancels the rounding of 1+u
    # (Goldberg), and is exactly u where 1+u rounds to 1.
    w = 1.0 + u
    d = w - 1.0
    return tl.where(d == 0.0, u, tl.log(w) * (u / tl.where(d == 0.0, 1.0, d)))
