"""Causal depthwise conv1d with vLLM's conv-state semantics (prefill `causal_conv1d_fn`, decode /
spec-decode `causal_conv1d_update`); same contract as `harness.reference.conv`.

One kernel serves both: program (sequence, token block, channel block) convolves over
``full = [prior W-1 inputs, x_0 .. x_{L-1}]`` read straight from the state and x, and the
token-block-0 program then rewrites the sequence's state window. The state is
``[num_slots, dim, L_state]`` of any strides (vLLM passes a transposed token-first buffer).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl

from harness.batch import PAD_SLOT_ID
from ...errors import INDEX_DTYPES, InputError, check_tensor
from ...reference.conv import check_conv_args, check_conv_fn_args
from ...reference.gating import acc_dtype
from .common import capturing


# INIT_MODE: where the prior W-1 inputs come from
_INIT_ZEROS, _INIT_FLAG, _INIT_STATE = 0, 1, 2


@triton.jit
def _causal_conv1d_kernel(
    x, weight, bias, state, out,
    query_start_loc, state_indices, num_accepted, has_init,
    dim, seqlen, pad_slot_id,
    stride_x_seq, stride_x_tok, stride_x_dim,
    stride_o_seq, stride_o_tok, stride_o_dim,
    stride_w_dim, stride_w_tap, stride_bias,
    stride_s_slot, stride_s_dim, stride_s_col,
    stride_qsl, stride_idx, stride_nacc, stride_init,
    KERNEL_W: tl.constexpr, ACC: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_INDICES: tl.constexpr, IS_SPEC: tl.constexpr,
    INIT_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    i_tb = tl.program_id(1)
    i_d = tl.program_id(2)

    if IS_VARLEN:
        bos = tl.load(query_start_loc + i_n * stride_qsl).to(tl.int64)
        eos = tl.load(query_start_loc + (i_n + 1) * stride_qsl).to(tl.int64)
        L = eos - bos
        x_base = x + bos * stride_x_tok
        o_base = out + bos * stride_o_tok
    else:
        L = seqlen
        x_base = x + i_n * stride_x_seq
        o_base = out + i_n * stride_o_seq

    t0 = i_tb * BLOCK_T
    if t0 >= L:
        return

    o_t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_t = o_t < L
    m_d = o_d < dim
    m_td = m_t[:, None] & m_d[None, :]
    p_out = o_base + o_t[:, None] * stride_o_tok + o_d[None, :] * stride_o_dim

    if HAS_INDICES:
        slot = tl.load(state_indices + i_n * stride_idx).to(tl.int64)
    else:
        slot = i_n
    if slot == pad_slot_id:
        # PAD: state untouched, output rows zero
        tl.store(p_out, tl.zeros([BLOCK_T, BLOCK_D], dtype=out.dtype.element_ty), mask=m_td)
        return

    if IS_SPEC:
        off = tl.load(num_accepted + i_n * stride_nacc).to(tl.int64) - 1
    else:
        off = 0
    # number of prior inputs taken from the state: W-1, or 0 (zeros) without initial state
    if INIT_MODE == 1:
        n_hist = (tl.load(has_init + i_n * stride_init) != 0).to(tl.int64) * (KERNEL_W - 1)
    elif INIT_MODE == 2:
        n_hist = KERNEL_W - 1
    else:
        n_hist = 0
    p_state = state + slot * stride_s_slot + o_d[None, :] * stride_s_dim   # [1, BLOCK_D]

    # y_t = sum_j w_j * full[t + j]: full[p] is state column off+p for p < W-1, else x[p-(W-1)]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    for j in tl.static_range(KERNEL_W):
        p = o_t + j
        m_s = ((p < n_hist) & m_t)[:, None] & m_d[None, :]
        m_x = ((p >= KERNEL_W - 1) & m_t)[:, None] & m_d[None, :]
        v_s = tl.load(p_state + (off + p)[:, None] * stride_s_col, mask=m_s, other=0.0).to(ACC)
        v_x = tl.load(x_base + (p - (KERNEL_W - 1))[:, None] * stride_x_tok + o_d[None, :] * stride_x_dim,
                      mask=m_x, other=0.0).to(ACC)
        w_j = tl.load(weight + o_d * stride_w_dim + j * stride_w_tap, mask=m_d, other=0.0).to(ACC)
        acc += (v_s + v_x) * w_j[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + o_d * stride_bias, mask=m_d, other=0.0).to(ACC)[None, :]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(p_out, acc.to(out.dtype.element_ty), mask=m_td)

    if i_tb == 0:
        # new state column c (c < s): old column c+shift for c < s-L, else x[c-(s-L)]
        if IS_SPEC:
            s = KERNEL_W - 2 + L
            shift = off + 1
        else:
            s = KERNEL_W - 1
            shift = L
        n_old = s - L
        o_c = tl.arange(0, BLOCK_S).to(tl.int64)
        m_c = (o_c < s)[:, None] & m_d[None, :]
        from_old = (o_c < n_old)[:, None]
        # without initial state the old columns are zeros
        n_read = n_old if INIT_MODE == 2 else tl.minimum(n_old, n_hist)
        v_old = tl.load(p_state + (o_c + shift)[:, None] * stride_s_col,
                        mask=m_c & (o_c < n_read)[:, None], other=0.0)
        v_new = tl.load(x_base + (o_c - n_old)[:, None] * stride_x_tok + o_d[None, :] * stride_x_dim,
                        mask=m_c & ~from_old, other=0.0)
        v_new = v_new.to(ACC).to(state.dtype.element_ty)
        # every read of the old state (also those above) lands before any thread overwrites it
        tl.debug_barrier()
        tl.store(p_state + o_c[:, None] * stride_s_col, tl.where(from_old, v_old, v_new), mask=m_c)


def _silu_flag(activation) -> bool:
    if activation in (None, False):
        return False
    if activation in ("silu", "swish", True):
        return True
    raise InputError("activation", "one of", "silu / swish / None", activation)


def _check_slot(name: str, slot: int, num_slots: int) -> None:
    if not 0 <= slot < num_slots:
        raise InputError(name, "slot in", f"[0, {num_slots})", slot)


def _launch(x, weight, bias, state, out, qsl, indices, num_accepted, has_init, *, B, max_len, dim, seqlen,
            pad_slot_id, x_strides, o_strides, init_mode, silu, acc):
    W = weight.shape[1]
    if B == 0 or max_len == 0 or dim == 0:
        return
    # a token block past the first must never reach back into the state: BLOCK_T >= W-1
    BLOCK_T = triton.next_power_of_2(max_len) if max_len <= 64 else max(64, triton.next_power_of_2(W - 1))
    BLOCK_D = min(triton.next_power_of_2(dim), 128 if BLOCK_T <= 16 else 64)
    s_max = W - 2 + max_len if num_accepted is not None else W - 1
    BLOCK_S = triton.next_power_of_2(s_max)
    dummy = out
    grid = (B, triton.cdiv(max_len, BLOCK_T), triton.cdiv(dim, BLOCK_D))
    _causal_conv1d_kernel[grid](
        x, weight, bias if bias is not None else dummy, state, out,
        qsl if qsl is not None else dummy, indices if indices is not None else dummy,
        num_accepted if num_accepted is not None else dummy, has_init if has_init is not None else dummy,
        dim, seqlen, pad_slot_id,
        *x_strides, *o_strides,
        weight.stride(0), weight.stride(1), bias.stride(0) if bias is not None else 0,
        state.stride(0), state.stride(1), state.stride(2),
        qsl.stride(0) if qsl is not None else 0, indices.stride(0) if indices is not None else 0,
        num_accepted.stride(0) if num_accepted is not None else 0,
        has_init.stride(0) if has_init is not None else 0,
        KERNEL_W=W, ACC=tl.float64 if acc == torch.float64 else tl.float32,
        IS_VARLEN=qsl is not None, HAS_INDICES=indices is not None, IS_SPEC=num_accepted is not None,
        INIT_MODE=init_mode, HAS_BIAS=bias is not None, SILU=silu,
        BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, BLOCK_S=BLOCK_S,
    )


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     conv_states: torch.Tensor, query_start_loc: torch.Tensor,
                     cache_indices: Optional[torch.Tensor] = None,
                     has_initial_state: Optional[torch.Tensor] = None,
                     activation="silu", pad_slot_id: int = PAD_SLOT_ID) -> torch.Tensor:
    """Varlen prefill conv; same contract as `harness.reference.conv.causal_conv1d_fn`.

    x ``[dim, total_tokens]`` (any strides), conv_states ``[num_slots, dim, L]`` (any strides,
    columns ``[0, W-1)`` read when has_initial_state and rewritten in place). PAD sequences
    leave their state untouched and get zero output. Returns ``[dim, total_tokens]`` in x.dtype.
    """
    dim, total, W, qsl, N = check_conv_fn_args(x, weight, bias, conv_states, query_start_loc, cache_indices,
                                               has_initial_state)
    slots = cache_indices.tolist() if cache_indices is not None else list(range(N))
    lens = [b - a for a, b in zip(qsl, qsl[1:])]
    live = [i for i in range(N) if slots[i] != pad_slot_id and lens[i] > 0]
    for i in live:
        _check_slot(f"cache_indices[{i}]", slots[i], conv_states.shape[0])
    silu = _silu_flag(activation) if live else False
    out = torch.empty_like(x)
    _launch(x, weight, bias, conv_states, out, query_start_loc, cache_indices, None,
            has_initial_state.view(torch.int8) if has_initial_state is not None else None,
            B=N, max_len=max(lens, default=0), dim=dim, seqlen=0, pad_slot_id=pad_slot_id,
            x_strides=(0, x.stride(1), x.stride(0)), o_strides=(0, out.stride(1), out.stride(0)),
            init_mode=_INIT_FLAG if has_initial_state is not None else _INIT_ZEROS, silu=silu,
            acc=acc_dtype(x.dtype, conv_states.dtype))
    return out


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation=None,
                         conv_state_indices: Optional[torch.Tensor] = None,
                         num_accepted_tokens: Optional[torch.Tensor] = None,
                         query_start_loc: Optional[torch.Tensor] = None,
                         pad_slot_id: int = PAD_SLOT_ID) -> torch.Tensor:
    """Decode / spec-decode conv step; same contract as `harness.reference.conv.causal_conv1d_update`.

    x ``[B, dim]``, ``[B, dim, seqlen]`` or varlen ``[num_tokens, dim]`` with query_start_loc
    ``[B+1]``; conv_state ``[num_slots, dim, L_state]`` of any strides, updated in place.
    Non-spec: window columns ``[0, W-1)`` shifted by the sequence length. Spec
    (num_accepted_tokens): prior inputs at columns ``[off, off+W-1)``, ``off = num_accepted-1``,
    new state ``[old[off+1 : off+W-1], x_0 .. x_{L-1}]`` at columns ``[0, W-2+L)``.
    PAD slots: state untouched, output rows zero. Returns x's shape in x.dtype.
    """
    check_tensor("x", x)
    # Under CUDA-graph capture nothing reads tensor values on the host: lengths are bounded
    # by shapes (the kernel masks each sequence by its own query_start_loc), value checks skipped.
    graph = capturing(x)
    qsl = None
    if query_start_loc is not None:
        check_tensor("query_start_loc", query_start_loc, shape=(None,), dtype=INDEX_DTYPES)
        check_tensor("x", x, shape=(None, None))
        dim = x.shape[1]
        B = query_start_loc.shape[0] - 1
        lens: Optional[List[int]] = None
        if not graph:
            qsl = [int(v) for v in query_start_loc.tolist()]
            if qsl[0] != 0 or qsl[-1] > x.shape[0] or any(b < a for a, b in zip(qsl, qsl[1:])):
                raise InputError("query_start_loc", f"non-decreasing offsets within {x.shape[0]} tokens",
                                 "[0, ...]", qsl)
            lens = [b - a for a, b in zip(qsl, qsl[1:])]
    else:
        if x.dim() not in (2, 3):
            raise InputError("x", "shape", "[B, dim] or [B, dim, seqlen]", tuple(x.shape))
        dim, B = x.shape[1], x.shape[0]
        lens = [x.shape[2] if x.dim() == 3 else 1] * B
    W = check_conv_args(dim, weight, bias, conv_state, "conv_state")
    if conv_state_indices is not None:
        check_tensor("conv_state_indices", conv_state_indices, shape=(B,), dtype=INDEX_DTYPES)
    if num_accepted_tokens is not None:
        check_tensor("num_accepted_tokens", num_accepted_tokens, shape=(B,), dtype=INDEX_DTYPES)
    L_state = conv_state.shape[2]
    silu = _silu_flag(activation)
    max_len = max(lens, default=0) if lens is not None else x.shape[0]
    if query_start_loc is not None and num_accepted_tokens is not None:
        # spec: the window bounds every sequence; eager and captured steps launch the same kernel
        max_len = min(x.shape[0], L_state - W + 2) if B else 0
    if not graph:
        slots = conv_state_indices.tolist() if conv_state_indices is not None else list(range(B))
        n_acc = num_accepted_tokens.tolist() if num_accepted_tokens is not None else None
        live = [i for i in range(B) if slots[i] != pad_slot_id and lens[i] > 0]
        for i in live:
            _check_slot(f"conv_state_indices[{i}]", slots[i], conv_state.shape[0])
            if n_acc is not None:
                L, off = lens[i], n_acc[i] - 1
                if not 0 <= off or off + W - 1 > L_state:      # off >= L: a zero-draft step's offset read
                    raise InputError(f"num_accepted_tokens[{i}]", "in [1, L-W+2] (the window within the state)",
                                     f"<= {L_state - W + 2}", off + 1)
                if W - 2 + L > L_state:
                    raise InputError("conv_state", f"state length >= W-2+seqlen ({W - 2 + L})",
                                     W - 2 + L, L_state)

    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if query_start_loc is not None:
        if qsl is not None:
            out[qsl[-1]:].zero_()          # tokens past the last sequence belong to nobody
        else:                              # the same, on the device
            past = torch.arange(x.shape[0], device=x.device) >= query_start_loc[-1]
            out.masked_fill_(past[:, None], 0)
        x_strides = (0, x.stride(0), x.stride(1))
        o_strides = (0, out.stride(0), out.stride(1))
    elif x.dim() == 3:
        x_strides = (x.stride(0), x.stride(2), x.stride(1))
        o_strides = (out.stride(0), out.stride(2), out.stride(1))
    else:
        x_strides = (x.stride(0), 0, x.stride(1))
        o_strides = (out.stride(0), 0, out.stride(1))
    _launch(x, weight, bias, conv_state, out, query_start_loc, conv_state_indices, num_accepted_tokens,
            None, B=B, max_len=max_len, dim=dim,
            seqlen=lens[0] if lens and query_start_loc is None else 0,
            pad_slot_id=pad_slot_id, x_strides=x_strides, o_strides=o_strides, init_mode=_INIT_STATE,
            silu=silu, acc=acc_dtype(x.dtype, conv_state.dtype))
    return out
