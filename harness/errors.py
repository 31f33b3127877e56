"""Errors that name what was wrong, and the tensor checks that raise them.

Bad input must never turn into a verdict: every public entry point checks its tensors
with `check_tensor` and raises `InputError` naming the tensor, the expected and the
actual shape / dtype / layout.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch


class HarnessError(Exception):
    """Base class: a usage or configuration problem (CLI exit code 2)."""


class ConfigError(HarnessError, ValueError):
    """A configuration field is invalid; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class InputError(HarnessError, ValueError):
    """A tensor given to the harness has the wrong shape, dtype or layout."""

    def __init__(self, name: str, what: str, expected, actual):
        self.name, self.what, self.expected, self.actual = name, what, expected, actual
        super().__init__(f"{name}: expected {what} {expected}, got {actual}")


Dim = Union[int, None]
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t,
    shape: Optional[Sequence[Dim]] = None,
    dtype: Optional[Union[torch.dtype, Iterable[torch.dtype]]] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Check `t` is a tensor of `shape` (None entries match anything) and `dtype`."""
    if not isinstance(t, torch.Tensor):
        raise InputError(name, "a tensor, type", "torch.Tensor", type(t).__name__)
    if shape is not None:
        want = tuple("*" if s is None else s for s in shape)
        ok = t.dim() == len(shape) and all(s is None or s == a for s, a in zip(shape, t.shape))
        if not ok:
            raise InputError(name, "shape", want, tuple(t.shape))
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            want = allowed[0] if len(allowed) == 1 else list(allowed)
            raise InputError(name, "dtype", want, t.dtype)
    if device is not None and t.device != torch.device(device):
        raise InputError(name, "device", torch.device(device), t.device)
    return t
