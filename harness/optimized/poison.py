"""Uninitialised memory is poisoned while a backend runs.

A kernel that leaves rows of a `torch.empty` output unwritten (PAD rows, say) leaks
whatever the allocator hands out: garbage on the CPU, but often zeros on a GPU, where fresh
device memory is zeroed - so the same fault passed on an H200 and failed on the CPU. With
torch's deterministic mode, `fill_uninitialized_memory` fills every empty / empty_like /
new_empty / resize_ with NaN (floats) or the maximum value (integers), on every device, so
an unwritten row is visible wherever the backend runs. `warn_only` keeps ops without a
deterministic implementation running as they would (they only warn, and that warning is
silenced here: it says nothing about the backend).
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import torch


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    """torch.use_deterministic_algorithms, without importing Inductor (seconds per worker)
    only to set its `deterministic` flag: that flag is set where Inductor is loaded already."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:      # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    cfg = sys.modules.get("torch._inductor.config")
    if cfg is not None:
        cfg.deterministic = mode
    setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def uninitialized_memory_poisoned():
    """Run the block with torch.empty & co. returning NaN / max-int filled memory."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    _set_deterministic(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            warnings.filterwarnings("ignore", message=".*CUBLAS_WORKSPACE_CONFIG.*")
            yield
    finally:
        _set_deterministic(was_on, was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill
