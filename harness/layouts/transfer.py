"""Tensors between the host and a GPU without a wait per tensor.

Beside other worker processes on one GPU, each wait for the GPU (a ``.cpu()``, a copy from
pageable host memory) costs a turn on it: a drift case waited ~5 000 times. Host-to-GPU copies
go from pinned memory without waiting (torch keeps the pinned block until its copy ran);
GPU-to-host copies are queued into pinned memory and waited for once.
"""
from __future__ import annotations

import torch


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """`x` on `device`; a host tensor goes to a GPU from pinned memory, without waiting."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def as_device_tensor(values, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)`` without waiting for the GPU."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def to_host(tree):
    """Host copies of the tensors in `tree` (nested dicts / lists / tuples), with one wait for the GPU
    instead of one per tensor: each GPU tensor is queued into pinned memory, then the device is
    synchronised once. The same bits as ``.cpu()``."""
    cuda = []

    def queue(x):
        if isinstance(x, torch.Tensor):
            if x.is_cuda:
                cuda.append(x.device)
                return x.to("cpu", non_blocking=True)
            return x
        if isinstance(x, dict):
            return {k: queue(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(queue(v) for v in x)
        return x
    out = queue(tree)
    for dev in set(cuda):
        torch.cuda.synchronize(dev)
    return out
