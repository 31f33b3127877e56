"""State layouts.

ssm (recurrent) state per value head: ``"vk"`` = ``[V, K]`` (vLLM's ``[N, HV, V, K]``) or
``"kv"`` = ``[K, V]`` (FLA's default ``[N, HV, K, V]``). The reference works in ``vk``.

conv state per slot: ``"dim_first"`` = ``(dim, L)`` or ``"token_first"`` = ``(L, dim)``, with
L = W - 1 (+ num_spec for spec decode). The reference reads either through a strided
view, so a cache stored token-first is passed as ``cache.transpose(-1, -2)``.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

SSM_LAYOUTS = ("vk", "kv")
CONV_LAYOUTS = ("dim_first", "token_first")


def check_ssm_layout(layout: str) -> str:
    if layout not in SSM_LAYOUTS:
        raise ConfigError("state_layout", f"unknown ssm state layout {layout!r}; known: {list(SSM_LAYOUTS)}")
    return layout


def check_conv_layout(layout: str) -> str:
    if layout not in CONV_LAYOUTS:
        raise ConfigError("conv_state_layout",
                          f"unknown conv state layout {layout!r}; known: {list(CONV_LAYOUTS)}")
    return layout


def ssm_convert(state: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Convert an ssm state ``[..., V, K]`` <-> ``[..., K, V]`` (contiguous copy when changed)."""
    check_ssm_layout(src), check_ssm_layout(dst)
    return state if src == dst else state.transpose(-1, -2).contiguous()


def conv_convert(state: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Convert a conv state ``[..., dim, L]`` <-> ``[..., L, dim]`` (contiguous copy when changed)."""
    check_conv_layout(src), check_conv_layout(dst)
    return state if src == dst else state.transpose(-1, -2).contiguous()


def conv_dim_first_view(state: torch.Tensor, layout: str) -> torch.Tensor:
    """A ``[..., dim, L]`` view of a conv cache stored in `layout` (no copy; writes go through)."""
    check_conv_layout(layout)
    return state if layout == "dim_first" else state.transpose(-1, -2)
