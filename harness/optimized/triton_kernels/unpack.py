"""Unpacking of the fused in_proj outputs into q, k, v, z, b, a (Qwen3-Next's
``fix_query_key_value_ordering``); same contract as `harness.layouts.projection.unpack_qkvz_ba`,
except that every output is contiguous. The interleaved layout is one fused copy kernel.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ...config import GDNDims
from ...errors import InputError
from ...layouts.projection import check_last_dim, check_layout

Unpacked = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@triton.jit
def _unpack_interleaved_kernel(
    qkvz, ba, q, k, v, z, b, a,
    stride_qkvz_t, stride_qkvz_c, stride_ba_t, stride_ba_c,
    H: tl.constexpr, K: tl.constexpr, RV: tl.constexpr, R: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_RV: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # program: one token x one key head g; its group is [q_g (K) k_g (K) v_g (r*V) z_g (r*V)]
    # and [b_g (r) a_g (r)], and each piece lands contiguous in its own output
    i_t = tl.program_id(0).to(tl.int64)
    i_g = tl.program_id(1)
    src = qkvz + i_t * stride_qkvz_t + (i_g * (2 * K + 2 * RV)) * stride_qkvz_c
    src_ba = ba + i_t * stride_ba_t + (i_g * 2 * R) * stride_ba_c

    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    dst_k = (i_t * H + i_g) * K + o_k
    tl.store(q + dst_k, tl.load(src + o_k * stride_qkvz_c, mask=m_k), mask=m_k)
    tl.store(k + dst_k, tl.load(src + (K + o_k) * stride_qkvz_c, mask=m_k), mask=m_k)

    o_v = tl.arange(0, BLOCK_RV)
    m_v = o_v < RV
    dst_v = (i_t * H + i_g) * RV + o_v          # value heads g*r .. g*r+r-1 are adjacent
    tl.store(v + dst_v, tl.load(src + (2 * K + o_v) * stride_qkvz_c, mask=m_v), mask=m_v)
    tl.store(z + dst_v, tl.load(src + (2 * K + RV + o_v) * stride_qkvz_c, mask=m_v), mask=m_v)

    o_r = tl.arange(0, BLOCK_R)
    m_r = o_r < R
    dst_r = (i_t * H + i_g) * R + o_r
    tl.store(b + dst_r, tl.load(src_ba + o_r * stride_ba_c, mask=m_r), mask=m_r)
    tl.store(a + dst_r, tl.load(src_ba + (R + o_r) * stride_ba_c, mask=m_r), mask=m_r)


def unpack_qkvz_ba(mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor, dims: GDNDims,
                   layout: str) -> Unpacked:
    """Split the fused projections into contiguous q, k ``[..., H, K]``, v, z ``[..., HV, V]``,
    b, a ``[..., HV]`` (inputs of any strides; `dims` are the TP-local dims)."""
    check_layout(layout)
    H, HV, K, V, r = dims.H, dims.HV, dims.K, dims.V, dims.r
    check_last_dim("mixed_qkvz", mixed_qkvz, dims.qkvz_dim, f"{layout} 2*H*K + 2*HV*V")
    check_last_dim("mixed_ba", mixed_ba, 2 * HV, "2*HV")
    lead = mixed_qkvz.shape[:-1]
    if mixed_ba.shape[:-1] != lead:
        raise InputError("mixed_ba", "leading dims (same as mixed_qkvz)", tuple(lead),
                         tuple(mixed_ba.shape[:-1]))
    if layout == "flat":
        q, k, v, z = torch.split(mixed_qkvz, [H * K, H * K, HV * V, HV * V], dim=-1)
        b, a = torch.split(mixed_ba, [HV, HV], dim=-1)
        return (q.reshape(*lead, H, K).contiguous(), k.reshape(*lead, H, K).contiguous(),
                v.reshape(*lead, HV, V).contiguous(), z.reshape(*lead, HV, V).contiguous(),
                b.contiguous(), a.contiguous())

    dev = mixed_qkvz.device
    q = torch.empty(*lead, H, K, dtype=mixed_qkvz.dtype, device=dev)
    k = torch.empty_like(q)
    v = torch.empty(*lead, HV, V, dtype=mixed_qkvz.dtype, device=dev)
    z = torch.empty_like(v)
    b = torch.empty(*lead, HV, dtype=mixed_ba.dtype, device=dev)
    a = torch.empty_like(b)
    qkvz2 = mixed_qkvz if mixed_qkvz.dim() == 2 else mixed_qkvz.reshape(-1, dims.qkvz_dim)
    ba2 = mixed_ba if mixed_ba.dim() == 2 else mixed_ba.reshape(-1, 2 * HV)
    T = qkvz2.shape[0]
    if T > 0:
        _unpack_interleaved_kernel[(T, H)](
            qkvz2, ba2, q, k, v, z, b, a,
            qkvz2.stride(0), qkvz2.stride(1), ba2.stride(0), ba2.stride(1),
            H=H, K=K, RV=r * V, R=r,
            BLOCK_K=triton.next_power_of_2(K), BLOCK_RV=triton.next_power_of_2(r * V),
            BLOCK_R=triton.next_power_of_2(r),
        )
    return q, k, v, z, b, a
