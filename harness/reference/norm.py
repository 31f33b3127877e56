"""L2 norm (the delta rule's in-kernel q/k norm), RMSNormGated and out_proj."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError, check_tensor
from .gating import acc_dtype
from .ops import gdn_op

ACTIVATIONS = ("silu", "swish", "sigmoid")


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, eps inside the sqrt, in fp32 / fp64."""
    xf = x.to(acc_dtype(x.dtype))
    return xf * torch.rsqrt((xf * xf).sum(-1, keepdim=True) + eps)


def gate_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation in ("silu", "swish"):
        return F.silu(z)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    raise ConfigError("activation", f"unknown gate activation {activation!r}; known: {list(ACTIVATIONS)}")


def check_norm_args(x, weight, z, group_size):
    """The checks of `rms_norm_gated`'s arguments; returns (N, group size)."""
    if x.dim() < 1:
        raise InputError("x", "shape", "[..., N]", tuple(x.shape))
    N = x.shape[-1]
    check_tensor("weight", weight, shape=(N,))
    if z is not None:
        check_tensor("z", z, shape=tuple(x.shape))
    gs = N if group_size is None else group_size
    if gs <= 0 or N % gs:
        raise InputError("x", f"last dim divisible by group_size={group_size}", f"multiple of {gs}", N)
    return N, gs


@gdn_op(kind="norm", roles=("prefill", "decode"), returns=("y",))
def rms_norm_gated(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor] = None,
                   eps: float = 1e-6, group_size: Optional[int] = None,
                   norm_before_gate: bool = True, activation: str = "silu",
                   out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """RMSNormGated over the last dim N (``x [..., N]``, ``z`` same shape, ``weight [N]``).

    norm_before_gate=True: ``rmsnorm(x) * w * act(z)``; False: ``rmsnorm(x * act(z)) * w``.
    group_size=None normalises all N features together, else each group of group_size.
    The weight is plain ``w`` (not Gemma's ``1 + w``). Computed in fp32 (fp64 for fp64
    inputs) and cast once, to `out_dtype` (default x.dtype).
    """
    N, gs = check_norm_args(x, weight, z, group_size)
    acc = acc_dtype(x.dtype, weight.dtype)
    xf = x.to(acc)
    if z is not None and not norm_before_gate:
        xf = xf * gate_activation(z.to(acc), activation)
    xg = xf.reshape(*x.shape[:-1], N // gs, gs)
    y = (xg * torch.rsqrt((xg * xg).mean(-1, keepdim=True) + eps)).reshape(x.shape)
    y = y * weight.to(acc)
    if z is not None and norm_before_gate:
        y = y * gate_activation(z.to(acc), activation)
    return y.to(out_dtype or x.dtype)


def out_proj(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x [T, HV*V] @ weight.T`` with ``weight [hidden, HV*V]`` (RowParallel on TP ranks)."""
    check_tensor("out_proj.weight", weight, shape=(None, x.shape[-1]))
    return x @ weight.T
