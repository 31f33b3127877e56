"""Projection layouts: how q, k, v, z, b, a are packed in the fused in_proj outputs.

*interleaved* (Qwen3-Next): in_proj_qkvz features are grouped per key head g as
``[q_g (K), k_g (K), v_g (r*V), z_g (r*V)]`` and in_proj_ba per group ``[b_g (r), a_g (r)]``.
*flat* (Qwen3.5): ``[q_all | k_all | v_all | z_all]`` and ``[b_all | a_all]``.

Both unpack to q, k ``[..., H, K]``, v, z ``[..., HV, V]``, b, a ``[..., HV]``; the conv input is
``mixed_qkv = [q_all | k_all | v_all]`` in either layout. The shapes of b and a are taken
from mixed_ba alone, never from mixed_qkvz. All functions work on the last dim, so
any leading dims (tokens, or the hidden dim of a transposed weight) pass through.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..config import GDNDims
from ..errors import ConfigError, InputError, check_tensor

LAYOUTS = ("interleaved", "flat")

Unpacked = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"unknown projection layout {layout!r}; known: {list(LAYOUTS)}")
    return layout


def check_last_dim(name: str, x: torch.Tensor, size: int, what: str) -> None:
    check_tensor(name, x)
    if x.dim() < 1 or x.shape[-1] != size:
        raise InputError(name, f"last dim ({what})", size, tuple(x.shape))


def unpack_qkvz(mixed_qkvz: torch.Tensor, dims: GDNDims, layout: str):
    """Split mixed_qkvz into q, k ``[..., H, K]`` and v, z ``[..., HV, V]``."""
    check_layout(layout)
    H, HV, K, V, r = dims.H, dims.HV, dims.K, dims.V, dims.r
    check_last_dim("mixed_qkvz", mixed_qkvz, dims.qkvz_dim, f"{layout} 2*H*K + 2*HV*V")
    lead = mixed_qkvz.shape[:-1]
    if layout == "interleaved":
        g = mixed_qkvz.reshape(*lead, H, 2 * K + 2 * r * V)
        q, k, v, z = torch.split(g, [K, K, r * V, r * V], dim=-1)
    else:
        q, k, v, z = torch.split(mixed_qkvz, [H * K, H * K, HV * V, HV * V], dim=-1)
        q, k = q.reshape(*lead, H, K), k.reshape(*lead, H, K)
    return q, k, v.reshape(*lead, HV, V), z.reshape(*lead, HV, V)


def unpack_qkvz_ba(mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor, dims: GDNDims,
                   layout: str) -> Unpacked:
    """Split the fused projections into q, k ``[..., H, K]``, v, z ``[..., HV, V]``, b, a ``[..., HV]``.

    `dims` are the dims of the rank that produced the projections (TP-local).
    """
    q, k, v, z = unpack_qkvz(mixed_qkvz, dims, layout)
    b, a = unpack_ba(mixed_ba, dims, layout)
    if b.shape[:-1] != q.shape[:-2]:
        raise InputError("mixed_ba", "leading dims (same as mixed_qkvz)", tuple(q.shape[:-2]),
                         tuple(b.shape[:-1]))
    return q, k, v, z, b, a


def unpack_ba(mixed_ba: torch.Tensor, dims: GDNDims, layout: str):
    """Split mixed_ba ``[..., 2*HV]`` into b, a ``[..., HV]``; shapes from mixed_ba alone."""
    check_layout(layout)
    check_last_dim("mixed_ba", mixed_ba, 2 * dims.HV, "2*HV")
    lead, r = mixed_ba.shape[:-1], dims.r
    if layout == "interleaved":
        b, a = torch.split(mixed_ba.reshape(*lead, dims.H, 2 * r), [r, r], dim=-1)
        return b.reshape(*lead, dims.HV), a.reshape(*lead, dims.HV)
    b, a = torch.split(mixed_ba, [dims.HV, dims.HV], dim=-1)
    return b, a


def pack_qkvz_ba(q, k, v, z, b, a, dims: GDNDims, layout: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `unpack_qkvz_ba`: returns (mixed_qkvz, mixed_ba), contiguous."""
    check_layout(layout)
    H, HV, K, V, r = dims.H, dims.HV, dims.K, dims.V, dims.r
    lead = q.shape[:-2]
    for name, t, tail in (("q", q, (H, K)), ("k", k, (H, K)), ("v", v, (HV, V)),
                          ("z", z, (HV, V)), ("b", b, (HV,)), ("a", a, (HV,))):
        check_tensor(name, t, shape=(*lead, *tail))
    if layout == "interleaved":
        qkvz = torch.cat([q, k, v.reshape(*lead, H, r * V), z.reshape(*lead, H, r * V)], dim=-1)
        ba = torch.cat([b.reshape(*lead, H, r), a.reshape(*lead, H, r)], dim=-1)
        return qkvz.reshape(*lead, dims.qkvz_dim), ba.reshape(*lead, 2 * HV)
    qkvz = torch.cat([q.reshape(*lead, H * K), k.reshape(*lead, H * K),
                      v.reshape(*lead, HV * V), z.reshape(*lead, HV * V)], dim=-1)
    return qkvz, torch.cat([b, a], dim=-1)


def qkv_to_mixed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[q_all | k_all | v_all]``: the conv1d channel order, same in both layouts."""
    lead = q.shape[:-2]
    return torch.cat([q.reshape(*lead, -1), k.reshape(*lead, -1), v.reshape(*lead, -1)], dim=-1)


def split_mixed_qkv(mixed_qkv: torch.Tensor, dims: GDNDims):
    """``[..., conv_dim]`` -> q, k ``[..., H, K]``, v ``[..., HV, V]`` (views)."""
    check_last_dim("mixed_qkv", mixed_qkv, dims.conv_dim, "2*H*K + HV*V")
    lead = mixed_qkv.shape[:-1]
    q, k, v = torch.split(mixed_qkv, [dims.key_dim, dims.key_dim, dims.value_dim], dim=-1)
    return (q.reshape(*lead, dims.H, dims.K), k.reshape(*lead, dims.H, dims.K),
            v.reshape(*lead, dims.HV, dims.V))
