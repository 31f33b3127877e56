"""Gating (vLLM's fused_gdn_gating) and the shared precision rule of the reference ops."""
from __future__ import annotations

from typing import Tuple

import torch

from ..errors import InputError, check_tensor
from .ops import gdn_op


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The reference computes in fp64 when handed fp64, otherwise in fp32 (as kernels do)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """``log(1 + exp(beta x)) / beta``, and ``x`` itself where ``beta x > threshold``."""
    bx = beta * x
    soft = torch.log1p(torch.exp(torch.where(bx > threshold, torch.zeros_like(bx), bx))) / beta
    return torch.where(bx > threshold, x, soft)


@gdn_op(kind="gating", roles=("prefill", "decode"), returns=("g", "beta"))
def fused_gdn_gating(A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor,
                     beta: float = 1.0, threshold: float = 20.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gates of the delta rule.

    A_log, dt_bias ``[HV]``; a, b ``[..., HV]``. Returns
    ``g = -exp(A_log) * softplus(a + dt_bias)`` (log-space decay, fp32 or fp64) and
    ``beta = sigmoid(b)`` (same dtype as g), both ``[..., HV]``.
    """
    HV = A_log.shape[-1] if A_log.dim() == 1 else None
    check_tensor("A_log", A_log, shape=(HV,))
    check_tensor("dt_bias", dt_bias, shape=(HV,))
    check_tensor("a", a)
    if a.dim() < 1:
        raise InputError("a", "shape", "[..., HV]", tuple(a.shape))
    check_tensor("b", b, shape=tuple(a.shape))
    if a.shape[-1] != HV:
        check_tensor("a", a, shape=(*a.shape[:-1], HV))
    acc = acc_dtype(a.dtype, A_log.dtype)
    # In fp64, rounded once: CPU exp / log1p take vector or scalar paths by tensor size,
    # which would make a token's fp32 gate depend on its batch-mates.
    x = a.to(acc).double() + dt_bias.to(acc).double()
    g = -torch.exp(A_log.to(acc).double()) * softplus(x, beta, threshold)
    return g.to(acc), torch.sigmoid(b.double()).to(acc)
