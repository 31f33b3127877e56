"""Gated RMSNorm (Qwen3-Next / Qwen3.5 ``RMSNormGated``); same contract as
`harness.reference.norm.rms_norm_gated`: fp32 math (fp64 for fp64 inputs), one cast at the end."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ...errors import ConfigError
from ...reference.gating import acc_dtype
from ...reference.norm import check_norm_args

# gate activation codes (constexpr)
_ACTIVATIONS = {"silu": 0, "swish": 0, "sigmoid": 1}


@triton.jit
def _rms_norm_gated_kernel(
    x, z, weight, out,
    M, N, group_size, eps,
    stride_x_row, stride_x_col, stride_z_row, stride_z_col, stride_w, stride_o_row,
    ACC: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # program: BLOCK_M rows x one group of `group_size` features
    i_m = tl.program_id(0)
    i_g = tl.program_id(1)
    o_m = (i_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    o_n = i_g * group_size + tl.arange(0, BLOCK_N)
    m_n = tl.arange(0, BLOCK_N) < group_size
    mask = (o_m < M)[:, None] & m_n[None, :]

    b_x = tl.load(x + o_m[:, None] * stride_x_row + o_n[None, :] * stride_x_col, mask=mask, other=0.0).to(ACC)
    b_w = tl.load(weight + o_n * stride_w, mask=m_n, other=0.0).to(ACC)
    if HAS_Z:
        b_z = tl.load(z + o_m[:, None] * stride_z_row + o_n[None, :] * stride_z_col, mask=mask, other=0.0).to(ACC)
        if SIGMOID:
            gate = 1.0 / (1.0 + tl.exp(-b_z))
        else:
            gate = b_z / (1.0 + tl.exp(-b_z))
        if not NORM_BEFORE_GATE:
            b_x = b_x * gate
    # masked lanes are zero, so the sum is over the group only
    mean_sq = tl.sum(b_x * b_x, axis=1) / group_size
    if ACC == tl.float32:
        # IEEE sqrt / div: the fast approximate fp32 ones cost ulps the oracle does not have
        rstd = tl.div_rn(tl.full(mean_sq.shape, 1.0, ACC), tl.sqrt_rn(mean_sq + eps))
    else:
        rstd = 1.0 / tl.sqrt(mean_sq + eps)
    y = b_x * rstd[:, None] * b_w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y = y * gate
    tl.store(out + o_m[:, None] * stride_o_row + o_n[None, :], y.to(out.dtype.element_ty), mask=mask)


def rms_norm_gated(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor] = None,
                   eps: float = 1e-6, group_size: Optional[int] = None,
                   norm_before_gate: bool = True, activation: str = "silu",
                   out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """RMSNormGated over the last dim N of ``x [..., N]`` (z same shape, weight ``[N]``).

    norm_before_gate=True: ``rmsnorm(x) * w * act(z)``; False: ``rmsnorm(x * act(z)) * w``;
    per group of `group_size` features (None: all N). act: silu / swish / sigmoid. Inputs
    of any strides; returns a contiguous tensor in `out_dtype` (default x.dtype).
    """
    N, gs = check_norm_args(x, weight, z, group_size)
    if z is not None and activation not in _ACTIVATIONS:
        raise ConfigError("activation", f"unknown gate activation {activation!r}; known: {list(_ACTIVATIONS)}")
    acc = acc_dtype(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    x2 = x if x.dim() == 2 else x.reshape(-1, N)
    z2 = None if z is None else (z if z.dim() == 2 else z.reshape(-1, N))
    M = x2.shape[0]
    if M == 0 or N == 0:
        return out
    BLOCK_N = triton.next_power_of_2(gs)
    BLOCK_M = max(1, min(triton.next_power_of_2(M), 4096 // BLOCK_N, 16))
    grid = (triton.cdiv(M, BLOCK_M), N // gs)
    _rms_norm_gated_kernel[grid](
        x2, z2 if z2 is not None else x2, weight, out,
        M, N, gs, float(eps),
        x2.stride(0), x2.stride(1),
        z2.stride(0) if z2 is not None else 0, z2.stride(1) if z2 is not None else 0,
        weight.stride(0), N,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, HAS_Z=z is not None,
        NORM_BEFORE_GATE=bool(norm_before_gate), SIGMOID=_ACTIVATIONS.get(activation, 0) == 1,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
    )
    return out
