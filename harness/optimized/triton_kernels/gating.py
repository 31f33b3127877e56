"""Fused GDN gating (vLLM ``fused_gdn_gating``): g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b)."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ...errors import check_tensor
from ...reference.gating import acc_dtype
from .common import _log1p


@triton.jit
def _gdn_gating_kernel(
    A_log, a, b, dt_bias, g_out, beta_out,
    T, HV, stride_a_t, stride_a_h, stride_b_t, stride_b_h,
    softplus_beta, threshold,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_h = tl.program_id(1)
    acc_ty = g_out.dtype.element_ty
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < HV
    mask = (o_t < T)[:, None] & m_h[None, :]

    b_A = tl.load(A_log + o_h, mask=m_h, other=0.0).to(acc_ty)
    b_dt = tl.load(dt_bias + o_h, mask=m_h, other=0.0).to(acc_ty)
    b_a = tl.load(a + o_t[:, None] * stride_a_t + o_h[None, :] * stride_a_h, mask=mask, other=0.0).to(acc_ty)
    b_b = tl.load(b + o_t[:, None] * stride_b_t + o_h[None, :] * stride_b_h, mask=mask, other=0.0).to(acc_ty)

    x = b_a + b_dt[None, :]
    bx = softplus_beta * x
    big = bx > threshold
    # exp of the clamped argument so the untaken branch never overflows
    sp = _log1p(tl.exp(tl.where(big, 0.0, bx))) / softplus_beta
    sp = tl.where(big, x, sp)
    b_g = -tl.exp(b_A)[None, :] * sp
    b_beta = 1.0 / (1.0 + tl.exp(-b_b))

    o = o_t[:, None] * HV + o_h[None, :]
    tl.store(g_out + o, b_g.to(acc_ty), mask=mask)
    tl.store(beta_out + o, b_beta.to(acc_ty), mask=mask)


def fused_gdn_gating(A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor,
                     beta: float = 1.0, threshold: float = 20.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `harness.reference.gating.fused_gdn_gating`.

    A_log, dt_bias ``[HV]``; a, b ``[..., HV]`` of any strides. Returns contiguous g and beta
    ``[..., HV]`` in fp32 (fp64 when a or A_log is fp64).
    """
    HV = A_log.shape[-1] if A_log.dim() == 1 else None
    check_tensor("A_log", A_log, shape=(HV,))
    check_tensor("dt_bias", dt_bias, shape=(HV,))
    check_tensor("a", a)
    check_tensor("b", b, shape=tuple(a.shape))
    if a.shape[-1] != HV:
        check_tensor("a", a, shape=(*a.shape[:-1], HV))
    acc = acc_dtype(a.dtype, A_log.dtype)
    lead = a.shape[:-1]
    # 2-D views keep the caller's strides; other ranks are flattened (a copy only if needed)
    a2 = a if a.dim() == 2 else a.reshape(-1, HV)
    b2 = b if b.dim() == 2 else b.reshape(-1, HV)
    T = a2.shape[0]
    g = torch.empty(T, HV, dtype=acc, device=a.device)
    beta_out = torch.empty(T, HV, dtype=acc, device=a.device)
    if T > 0 and HV > 0:
        BLOCK_H = min(triton.next_power_of_2(HV), 64)
        BLOCK_T = max(1, min(triton.next_power_of_2(T), 1024 // BLOCK_H))
        grid = (triton.cdiv(T, BLOCK_T), triton.cdiv(HV, BLOCK_H))
        _gdn_gating_kernel[grid](
            A_log, a2, b2, dt_bias, g, beta_out,
            T, HV, a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1),
            float(beta), float(threshold),
            BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H,
        )
    return g.reshape(*lead, HV), beta_out.reshape(*lead, HV)
