"""Causal depthwise conv1d over the mixed_qkv channels, with vLLM's conv-state semantics.

Conv state per slot: ``(dim, L)`` with L >= W-1 (W-1+num_spec when spec decode is
configured); a cache stored ``(L, dim)`` is passed as its transposed view. Columns are
oldest -> newest. Outside spec decode only columns ``[0, W-1)`` are read or written;
columns past that are never touched.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from harness.batch import PAD_SLOT_ID
from ..errors import INDEX_DTYPES, InputError, check_tensor
from .gating import acc_dtype
from .ops import gdn_op



def _activate(y: torch.Tensor, activation) -> torch.Tensor:
    if activation in (None, False):
        return y
    if activation in ("silu", "swish", True):
        return F.silu(y)
    raise InputError("activation", "one of", "silu / swish / None", activation)


def conv_window(full: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                activation) -> torch.Tensor:
    """Depthwise causal conv over ``full [dim, W-1+T]`` (history then inputs) -> ``[dim, T]``.

    One token at a time on contiguous ``[dim]`` rows: every token goes through the same
    kernels with the same shapes, so its result never depends on how many tokens share
    the call (CPU kernels switch between vector and scalar paths by size).
    """
    W = weight.shape[1]
    acc = full.dtype
    T = full.shape[1] - (W - 1)
    rows = full.T.contiguous()
    taps = weight.T.to(acc).contiguous()          # [W, dim]
    b = None if bias is None else bias.to(acc)
    out = torch.empty(T, full.shape[0], dtype=acc, device=full.device)
    for t in range(T):
        y = taps[0] * rows[t]
        for j in range(1, W):
            y = y + taps[j] * rows[t + j]
        if b is not None:
            y = y + b
        out[t] = _activate(y, activation)
    return out.T


def check_conv_args(x_dim: int, weight, bias, conv_states, name_states):
    """Weight ``[dim, W]`` (W >= 2), bias ``[dim]``, a state ``[slots, dim, >= W-1]``; returns W."""
    check_tensor("weight", weight, shape=(x_dim, None))
    W = weight.shape[1]
    if W < 2:
        raise InputError("weight", "kernel width >= 2", ">= 2", W)
    if bias is not None:
        check_tensor("bias", bias, shape=(x_dim,))
    check_tensor(name_states, conv_states, shape=(None, x_dim, None))
    if conv_states.shape[2] < W - 1:
        raise InputError(name_states, "state length >= W-1", W - 1, conv_states.shape[2])
    return W


def check_conv_fn_args(x, weight, bias, conv_states, query_start_loc, cache_indices, has_initial_state):
    """The checks of `causal_conv1d_fn`'s arguments; returns (dim, total, W, offsets, N)."""
    check_tensor("x", x, shape=(None, None))
    dim, total = x.shape
    W = check_conv_args(dim, weight, bias, conv_states, "conv_states")
    check_tensor("query_start_loc", query_start_loc, shape=(None,), dtype=INDEX_DTYPES)
    qsl = [int(v) for v in query_start_loc.tolist()]
    N = len(qsl) - 1
    if N < 0 or qsl[0] != 0 or qsl[-1] != total or any(b < a for a, b in zip(qsl, qsl[1:])):
        raise InputError("query_start_loc", "non-decreasing offsets from 0 to total_tokens",
                         f"[0, ..., {total}]", qsl)
    if cache_indices is not None:
        check_tensor("cache_indices", cache_indices, shape=(N,), dtype=INDEX_DTYPES)
    if has_initial_state is not None:
        check_tensor("has_initial_state", has_initial_state, shape=(N,), dtype=torch.bool)
    return dim, total, W, qsl, N


@gdn_op(kind="conv", roles=("prefill",), returns=("out",))
def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     conv_states: torch.Tensor, query_start_loc: torch.Tensor,
                     cache_indices: Optional[torch.Tensor] = None,
                     has_initial_state: Optional[torch.Tensor] = None,
                     activation="silu", pad_slot_id: int = PAD_SLOT_ID) -> torch.Tensor:
    """Varlen prefill conv (vLLM ``causal_conv1d_fn``).

    x ``[dim, total_tokens]`` (channel-first, as vLLM passes it), weight ``[dim, W]``, bias
    ``[dim]`` or None, conv_states ``[num_slots, dim, L]`` (any strides; updated in place),
    query_start_loc ``[N+1]``, cache_indices ``[N]`` (slot of each sequence; default i),
    has_initial_state ``[N]`` bool (default all False).

    Sequence i reads its W-1 prior inputs from ``conv_states[slot, :, :W-1]`` when
    has_initial_state[i], else zeros; afterwards ``conv_states[slot, :, :W-1]`` holds the
    last W-1 raw inputs (old columns shifted in when the sequence is shorter). A sequence
    whose slot is `pad_slot_id` is skipped: state untouched, its output rows zero.
    Returns ``[dim, total_tokens]`` in x.dtype (computed in fp32, or fp64 for fp64 input).
    """
    dim, total, W, qsl, N = check_conv_fn_args(x, weight, bias, conv_states, query_start_loc, cache_indices,
                                               has_initial_state)
    acc = acc_dtype(x.dtype, conv_states.dtype)
    out = torch.zeros(dim, total, dtype=acc, device=x.device)
    for i in range(N):
        bos, eos = qsl[i], qsl[i + 1]
        slot = int(cache_indices[i]) if cache_indices is not None else i
        if slot == pad_slot_id or eos == bos:
            continue
        if not 0 <= slot < conv_states.shape[0]:
            raise InputError(f"cache_indices[{i}]", "slot in", f"[0, {conv_states.shape[0]})", slot)
        if has_initial_state is not None and bool(has_initial_state[i]):
            hist = conv_states[slot, :, :W - 1].to(acc)
        else:
            hist = torch.zeros(dim, W - 1, dtype=acc, device=x.device)
        full = torch.cat([hist, x[:, bos:eos].to(acc)], dim=1)
        out[:, bos:eos] = conv_window(full, weight, bias, activation)
        conv_states[slot, :, :W - 1] = full[:, -(W - 1):].to(conv_states.dtype)
    return out.to(x.dtype)


@gdn_op(kind="conv", roles=("decode", "spec"), returns=("out",))
def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation=None,
                         conv_state_indices: Optional[torch.Tensor] = None,
                         num_accepted_tokens: Optional[torch.Tensor] = None,
                         query_start_loc: Optional[torch.Tensor] = None,
                         pad_slot_id: int = PAD_SLOT_ID) -> torch.Tensor:
    """Decode / spec-decode conv step (vLLM ``causal_conv1d_update``).

    x: ``[B, dim]`` (one token each), ``[B, dim, seqlen]``, or varlen ``[num_tokens, dim]``
    with query_start_loc ``[B+1]``. conv_state ``[num_slots, dim, L]`` (updated in place),
    conv_state_indices ``[B]`` (default i), num_accepted_tokens ``[B]`` (spec decode).

    Non-spec: the prior inputs are columns ``[0, W-1)``; the window shifts by the
    sequence length over those columns. Spec (num_accepted_tokens given): with
    ``off = num_accepted - 1`` the prior inputs are columns ``[off, off+W-1)`` and the new
    state is ``[old[off+1 : off+W-1], x_0 .. x_{L-1}]`` written to columns
    ``[0, W-2+L)``; later columns are untouched. off may exceed L - 1: a zero-draft step
    (L = 1) after a step that accepted drafts reads its window at that step's offset. PAD slots are skipped (state untouched,
    output rows zero). Returns the same shape as x.
    """
    check_tensor("x", x)
    if query_start_loc is not None:
        check_tensor("query_start_loc", query_start_loc, shape=(None,), dtype=INDEX_DTYPES)
        check_tensor("x", x, shape=(None, None))
        dim = x.shape[1]
        qsl = [int(v) for v in query_start_loc.tolist()]
        seqs = [(a, b) for a, b in zip(qsl, qsl[1:])]
        if qsl[0] != 0 or qsl[-1] > x.shape[0] or any(b < a for a, b in seqs):
            raise InputError("query_start_loc", f"non-decreasing offsets within {x.shape[0]} tokens",
                             "[0, ...]", qsl)
        tokens = lambda i: x[seqs[i][0]:seqs[i][1]].T
        B = len(seqs)
    else:
        if x.dim() not in (2, 3):
            raise InputError("x", "shape", "[B, dim] or [B, dim, seqlen]", tuple(x.shape))
        dim, B = x.shape[1], x.shape[0]
        xs = x if x.dim() == 3 else x.unsqueeze(-1)
        tokens = lambda i: xs[i]
    W = check_conv_args(dim, weight, bias, conv_state, "conv_state")
    if conv_state_indices is not None:
        check_tensor("conv_state_indices", conv_state_indices, shape=(B,), dtype=INDEX_DTYPES)
    if num_accepted_tokens is not None:
        check_tensor("num_accepted_tokens", num_accepted_tokens, shape=(B,), dtype=INDEX_DTYPES)
    acc = acc_dtype(x.dtype, conv_state.dtype)
    out = torch.zeros(x.shape, dtype=acc, device=x.device)
    L_state = conv_state.shape[2]
    for i in range(B):
        xi = tokens(i).to(acc)
        L = xi.shape[1]
        slot = int(conv_state_indices[i]) if conv_state_indices is not None else i
        if slot == pad_slot_id or L == 0:
            continue
        if not 0 <= slot < conv_state.shape[0]:
            raise InputError(f"conv_state_indices[{i}]", "slot in", f"[0, {conv_state.shape[0]})", slot)
        if num_accepted_tokens is not None:
            off = int(num_accepted_tokens[i]) - 1
            # off may pass L: a zero-draft step (L = 1) after accepted drafts reads at the offset
            if not 0 <= off or off + W - 1 > L_state:
                raise InputError(f"num_accepted_tokens[{i}]", "in [1, L-W+2] (the window within the state)",
                                 f"<= {L_state - W + 2}", off + 1)
            keep = conv_state[slot, :, off + 1: off + W - 1].to(acc)   # W-2 columns
            if W - 2 + L > L_state:
                raise InputError("conv_state", f"state length >= W-2+seqlen ({W - 2 + L})",
                                 W - 2 + L, L_state)
        else:
            off = 0
            keep = conv_state[slot, :, L: W - 1].to(acc)               # max(W-1-L, 0) columns
        full = torch.cat([conv_state[slot, :, off: off + W - 1].to(acc), xi], dim=1)
        yi = conv_window(full, weight, bias, activation)
        new = torch.cat([keep, xi], dim=1)
        if num_accepted_tokens is None:
            new = new[:, -(W - 1):]
        conv_state[slot, :, :new.shape[1]] = new.to(conv_state.dtype)
        if query_start_loc is not None:
            out[seqs[i][0]:seqs[i][1]] = yi.T
        elif x.dim() == 3:
            out[i] = yi
        else:
            out[i] = yi[:, 0]
    return out.to(x.dtype)
