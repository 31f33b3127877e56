"""Triton runs CPU tensors only in its interpreter, and triton.jit reads TRITON_INTERPRET
when it wraps a kernel: the mode is chosen once per process, before the kernels' modules are
imported (torch may import triton itself earlier; that wraps none of them)."""
from __future__ import annotations

import os
import sys
from typing import MutableMapping, Optional

# modules whose import wraps Triton kernels in the mode of that moment
KERNEL_MODULES = ("harness.optimized.triton_kernels", "fla", "vllm")


def gpu_kernels() -> bool:
    """This process wraps Triton kernels for the GPU (a GPU, and no interpreter)."""
    import torch
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def interpret_triton(device: Optional[str] = None,
                     env: Optional[MutableMapping[str, str]] = None) -> Optional[MutableMapping[str, str]]:
    """Set TRITON_INTERPRET=1 (unless the user set it) where the Triton work runs on the CPU:
    `device` "cpu", or, with no device named, a machine without a GPU. `env`: a child
    process's environment; default this process's, left alone once kernels are wrapped
    (they keep the mode they were wrapped in)."""
    if env is None:
        if os.environ.get("TRITON_INTERPRET") != "1" and any(m in sys.modules for m in KERNEL_MODULES):
            return None
        env = os.environ
    if device is None:
        import torch
        on_cpu = not torch.cuda.is_available()
    else:
        on_cpu = device.split(":")[0] == "cpu"
    if on_cpu:
        env.setdefault("TRITON_INTERPRET", "1")
    return env
