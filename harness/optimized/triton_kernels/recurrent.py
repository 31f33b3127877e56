"""Triton recurrent gated delta rule: vLLM's fused_recurrent, sigmoid-gated and packed decode.

One kernel serves all three: a program owns one (sequence, value head, V block), keeps its
state tile ``[BV, BK]`` in registers and walks the sequence's tokens. Semantics, signatures
and validation are those of `harness.reference.delta_rule` (docs/semantics.md): PAD read slot
-> output rows zero and no state touched; 2-D indices write the state after token t to
``idx[n, t]``; 1-D indices write only the final state. Compute is fp32 (fp64 when the
reference would use fp64); stored states are rounded once per write from the fp32 registers.

Sequences must not share slots (one sequence's write slot being another's read slot): the
reference runs sequences one after another, the kernel runs them in parallel.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from harness.batch import PAD_SLOT_ID
from ...errors import INDEX_DTYPES, InputError, check_tensor
from ...layouts.state import check_ssm_layout
from ...reference.delta_rule import check_pool_args
from ...reference.gating import acc_dtype
from .common import _log1p, capturing

# Largest V tile. 32 as in vLLM; tests lower it to exercise several V blocks.
BV_MAX = 32
# Value checks on indices / cu_seqlens (one host sync). Off only for timing runs.
VALIDATE = True


@triton.jit
def _gdn_recurrent_kernel(
    q, k, v, g, beta, A_log, dt_bias, o, h0, ht, cu_seqlens, idx, num_acc, scale_arg, gate_args,
    T, pad_slot_id,
    s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_gt, s_gh, s_bt, s_bh, s_ot, s_oh,
    s_h0n, s_h0h, s_h0v, s_h0k, s_htn, s_hth, s_htv, s_htk, s_in, s_is,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, USE_GATING: tl.constexpr, USE_INDICES: tl.constexpr,
    PER_TOKEN: tl.constexpr, USE_NUM_ACC: tl.constexpr, USE_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, L2NORM: tl.constexpr,
):
    # Compute dtypes ride on the parameter tensors: [scale] in ACC, [softplus beta, threshold] in GATE.
    ACC: tl.constexpr = scale_arg.dtype.element_ty
    GATE: tl.constexpr = gate_args.dtype.element_ty
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = (i_nh // HV).to(tl.int64)
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)                     # GVA: value head -> its q / k head
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n * T
        eos = bos + T
    L = eos - bos

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_v[:, None] & m_k[None, :]
    p_o = o + bos * s_ot + i_hv * s_oh + o_v

    # State tile in [V, K] orientation whatever the stored layout: strides say which is which.
    b_h = tl.zeros([BV, BK], dtype=ACC)
    if USE_INDICES:
        if USE_NUM_ACC:
            i_read = tl.load(num_acc + i_n).to(tl.int64) - 1
        else:
            i_read = 0
        slot = tl.load(idx + i_n * s_in + i_read * s_is).to(tl.int64)
        if (slot < 0) | (slot == pad_slot_id):
            # PAD: zero output rows, no state read or written.
            for t in range(0, L):
                tl.store(p_o + t * s_ot, tl.zeros([BV], dtype=o.dtype.element_ty), mask=m_v)
            return
        p_h0 = h0 + slot * s_h0n + i_hv * s_h0h + o_v[:, None] * s_h0v + o_k[None, :] * s_h0k
        b_h += tl.load(p_h0, mask=m_h, other=0.0).to(ACC)
    elif USE_H0:
        p_h0 = h0 + i_n * s_h0n + i_hv * s_h0h + o_v[:, None] * s_h0v + o_k[None, :] * s_h0k
        b_h += tl.load(p_h0, mask=m_h, other=0.0).to(ACC)

    scale = tl.load(scale_arg)
    p_q = q + bos * s_qt + i_h * s_qh + o_k
    p_k = k + bos * s_kt + i_h * s_kh + o_k
    p_v = v + bos * s_vt + i_hv * s_vh + o_v
    p_g = g + bos * s_gt + i_hv * s_gh          # a when USE_GATING
    p_b = beta + bos * s_bt + i_hv * s_bh       # b when USE_GATING
    if USE_GATING:
        b_A = tl.load(A_log + i_hv).to(GATE)
        b_dt = tl.load(dt_bias + i_hv).to(GATE)
        sp_beta = tl.load(gate_args)
        thr = tl.load(gate_args + 1)

    for t in range(0, L):
        b_q = tl.load(p_q, mask=m_k, other=0.0).to(ACC)
        b_k = tl.load(p_k, mask=m_k, other=0.0).to(ACC)
        b_v = tl.load(p_v, mask=m_v, other=0.0).to(ACC)
        if L2NORM:
            b_q = b_q / tl.sqrt(tl.sum(b_q * b_q) + 1e-6)
            b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + 1e-6)
        b_q = b_q * scale
        if USE_GATING:
            x = tl.load(p_g).to(GATE) + b_dt
            bx = sp_beta * x
            big = bx > thr
            # exp of the clamped argument so the untaken branch never overflows
            sp = tl.where(big, x, _log1p(tl.exp(tl.where(big, 0.0, bx))) / sp_beta)
            b_g = (-tl.exp(b_A) * sp).to(ACC)
            b_beta = (1.0 / (1.0 + tl.exp(-tl.load(p_b).to(GATE)))).to(ACC)
        else:
            b_g = tl.load(p_g).to(ACC)
            b_beta = tl.load(p_b).to(ACC)
        b_h = b_h * tl.exp(b_g)
        b_u = b_beta * (b_v - tl.sum(b_h * b_k[None, :], 1))
        b_h = b_h + b_u[:, None] * b_k[None, :]
        b_o = tl.sum(b_h * b_q[None, :], 1)
        tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_v)
        if PER_TOKEN:
            slot_t = tl.load(idx + i_n * s_in + t * s_is).to(tl.int64)
            if slot_t >= 0:  # PAD write column: skip
                p_ht = ht + slot_t * s_htn + i_hv * s_hth + o_v[:, None] * s_htv + o_k[None, :] * s_htk
                tl.store(p_ht, b_h.to(ht.dtype.element_ty), mask=m_h)
        p_q += s_qt
        p_k += s_kt
        p_v += s_vt
        p_g += s_gt
        p_b += s_bt
        p_o += s_ot

    if USE_INDICES:
        if not PER_TOKEN:
            p_ht = ht + slot * s_htn + i_hv * s_hth + o_v[:, None] * s_htv + o_k[None, :] * s_htk
            tl.store(p_ht, b_h.to(ht.dtype.element_ty), mask=m_h)
    elif STORE_FINAL:
        p_ht = ht + i_n * s_htn + i_hv * s_hth + o_v[:, None] * s_htv + o_k[None, :] * s_htk
        tl.store(p_ht, b_h.to(ht.dtype.element_ty), mask=m_h)


# ----------------------------------------------------------------------------------------
# host side


@functools.lru_cache(maxsize=64)
def _scalars(values, dtype, device):
    # cached: no host-to-device copy per call (and none inside a CUDA graph capture)
    return torch.tensor(values, dtype=dtype, device=device)


def _last_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def _vk_strides(t: torch.Tensor, layout: str):
    """(slot, head, v, k) strides of a state tensor ``[N, HV, V, K]`` / ``[N, HV, K, V]``."""
    s = t.stride()
    return (s[0], s[1], s[2], s[3]) if layout == "vk" else (s[0], s[1], s[3], s[2])


def _check_qkvgb(q, k, v, g, beta, cu_seqlens, gating: bool):
    """The reference's shape checks; returns H, K, HV, V, N and cu_seqlens as a list (or None)."""
    check_tensor("q", q, shape=(None, None, None, None))
    B, T, H, K = q.shape
    check_tensor("k", k, shape=(B, T, H, K))
    check_tensor("v", v, shape=(B, T, None, None))
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise InputError("v", f"value heads (a multiple of H={H})", f"k*{H}", HV)
    if gating:  # a, b [B*T, HV]
        check_tensor("a", g, shape=(B * T, HV))
        check_tensor("b", beta, shape=(B * T, HV))
    else:
        check_tensor("g", g, shape=(B, T, HV))
        check_tensor("beta", beta, shape=(B, T, HV))
    cu = None
    if cu_seqlens is not None:
        if B != 1:
            raise InputError("q", "batch size with cu_seqlens", 1, B)
        check_tensor("cu_seqlens", cu_seqlens, shape=(None,), dtype=INDEX_DTYPES)
        if VALIDATE and not capturing(cu_seqlens):      # value checks read the host: not under capture
            cu = [int(c) for c in cu_seqlens.tolist()]
            if not cu or cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
                raise InputError("cu_seqlens", f"non-decreasing offsets from 0 to T={T}", f"[0, ..., {T}]", cu)
        N = cu_seqlens.shape[0] - 1
    else:
        N = B
    return H, K, HV, V, N, cu


def _check_indices(idx2, num_acc, lengths, num_slots, pad_slot_id, per_token):
    """The reference's value checks on the pool indices, in sequence order (one host sync)."""
    N, S = idx2.shape
    dev = idx2.device
    read = (num_acc.to(device=dev, dtype=torch.int64) - 1 if num_acc is not None
            else torch.zeros(N, dtype=torch.int64, device=dev))
    bad_read = (read < 0) | (read >= S)
    slot = idx2.gather(1, read.clamp(0, S - 1)[:, None])[:, 0]
    live = ~bad_read & ~((slot == pad_slot_id) | (slot < 0))
    bad = bad_read | (live & (idx2.max(1).values >= num_slots))
    if per_token:
        bad |= live & (lengths > S)
    if not N or not bool(bad.any()):
        return
    n = int(bad.nonzero()[0, 0])
    row, r = idx2[n].tolist(), int(read[n])
    if not 0 <= r < S:
        raise InputError(f"num_accepted_tokens[{n}]", f"in [1, {S}]", S, r + 1)
    if max(row) >= num_slots:
        raise InputError(f"ssm_state_indices[{n}]", "slots in", f"[0, {num_slots})", row)
    L = int(lengths[n])
    raise InputError("ssm_state_indices", f"columns for {L} tokens of sequence {n}", L, S)


def _launch(q, k, v, g, beta, A_log, dt_bias, o, h0, ht, cu_seqlens, idx2, num_acc, scale_arg, gate_args,
            T, N, pad_slot_id, layout, gating, per_token, store_final, l2norm):
    H, K = q.shape[-2], q.shape[-1]
    HV, V = v.shape[-2], v.shape[-1]
    if N == 0 or HV == 0 or V == 0:
        return
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), BV_MAX)
    dummy = scale_arg  # stands in for absent pointers; never dereferenced
    s_h0 = _vk_strides(h0, layout) if h0 is not None else (0, 0, 0, 0)
    s_ht = _vk_strides(ht, layout) if ht is not None else (0, 0, 0, 0)
    s_idx = idx2.stride() if idx2 is not None else (0, 0)
    grid = (triton.cdiv(V, BV), N * HV)
    _gdn_recurrent_kernel[grid](
        q, k, v, g, beta,
        A_log if gating else dummy, dt_bias if gating else dummy, o,
        h0 if h0 is not None else dummy, ht if ht is not None else dummy,
        cu_seqlens if cu_seqlens is not None else dummy,
        idx2 if idx2 is not None else dummy, num_acc if num_acc is not None else dummy, scale_arg, gate_args,
        T, pad_slot_id,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        g.stride(0), g.stride(1), beta.stride(0), beta.stride(1), o.stride(0), o.stride(1),
        *s_h0, *s_ht, *s_idx,
        H=H, HV=HV, K=K, V=V, BK=BK, BV=BV,
        IS_VARLEN=cu_seqlens is not None, USE_GATING=gating, USE_INDICES=idx2 is not None,
        PER_TOKEN=per_token, USE_NUM_ACC=num_acc is not None, USE_H0=h0 is not None,
        STORE_FINAL=store_final, L2NORM=l2norm,
        num_warps=1 if BK * BV <= 1024 else 4,
    )


def _run(q, k, v, g, beta, A_log, dt_bias, gating, gate_acc, softplus_beta, threshold, scale,
         initial_state, output_final_state, cu_seqlens, ssm_state_indices, num_accepted_tokens,
         inplace_final_state, use_qk_l2norm_in_kernel, state_layout, pad_slot_id, o=None):
    check_ssm_layout(state_layout)
    H, K, HV, V, N, cu = _check_qkvgb(q, k, v, g, beta, cu_seqlens, gating)
    B, T = q.shape[:2]
    state_shape = (HV, V, K) if state_layout == "vk" else (HV, K, V)
    acc = acc_dtype(q.dtype, v.dtype, *(() if initial_state is None else (initial_state.dtype,)))
    scale = K ** -0.5 if scale is None else scale
    dev = q.device
    # Scalars travel as tensors of the compute dtypes (a float kernel argument would be fp32
    # even in an fp64 run); the kernel takes its ACC / GATE dtypes from them.
    scale_arg = _scalars((float(scale),), acc, dev)
    gate_args = _scalars((float(softplus_beta), float(threshold)), gate_acc, dev)

    pool = idx2 = None
    per_token = False
    if ssm_state_indices is not None:
        idx2 = check_pool_args(initial_state, state_shape, ssm_state_indices, num_accepted_tokens, N)
        per_token = idx2.shape[1] > 1   # [N, 1] behaves as 1-D, as in the reference
        if N and idx2.shape[1] == 0:
            raise InputError("ssm_state_indices", "at least one column", 1, 0)
        if VALIDATE and N and not capturing(idx2):
            lengths = (torch.tensor(cu[1:], device=dev) - torch.tensor(cu[:-1], device=dev)
                       if cu is not None else torch.full((N,), T, device=dev))
            _check_indices(idx2, num_accepted_tokens, lengths, initial_state.shape[0], pad_slot_id, per_token)
        pool = initial_state if inplace_final_state else initial_state.clone()
    elif initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(N, *state_shape))

    q3, k3 = _last_contig(q.reshape(B * T, H, K)), _last_contig(k.reshape(B * T, H, K))
    v3 = _last_contig(v.reshape(B * T, HV, V))
    g2, b2 = _last_contig(g.reshape(B * T, HV)), _last_contig(beta.reshape(B * T, HV))
    if o is None:
        o = torch.empty(B, T, HV, V, dtype=v.dtype, device=dev)
    o3 = o.view(B * T, HV, V)

    final = None
    if pool is not None:
        h0 = ht = pool
        store_final = False
    else:
        h0 = initial_state
        store_final = output_final_state and N > 0
        if store_final:
            out_dtype = initial_state.dtype if initial_state is not None else acc
            final = torch.empty(N, *state_shape, dtype=out_dtype, device=dev)
        ht = final
    _launch(q3, k3, v3, g2, b2, A_log, dt_bias, o3, h0, ht, cu_seqlens, idx2, num_accepted_tokens,
            scale_arg, gate_args, T, N, pad_slot_id, state_layout, gating, per_token, store_final,
            use_qk_l2norm_in_kernel)
    return o, (pool if pool is not None else final)


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = True, cu_seqlens: Optional[torch.Tensor] = None,
    ssm_state_indices: Optional[torch.Tensor] = None,
    num_accepted_tokens: Optional[torch.Tensor] = None, inplace_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk",
    pad_slot_id: int = PAD_SLOT_ID,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same contract as `harness.reference.recurrent_gated_delta_rule`."""
    return _run(q, k, v, g, beta, None, None, False, torch.float32, 1.0, 20.0, scale, initial_state,
                output_final_state, cu_seqlens, ssm_state_indices, num_accepted_tokens,
                inplace_final_state, use_qk_l2norm_in_kernel, state_layout, pad_slot_id)


def _check_gating_params(A_log, dt_bias, HV):
    check_tensor("A_log", A_log, shape=(HV,))
    check_tensor("dt_bias", dt_bias, shape=(HV,))


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float = 1.0, threshold: float = 20.0,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
    inplace_final_state: bool = True, cu_seqlens: Optional[torch.Tensor] = None,
    ssm_state_indices: Optional[torch.Tensor] = None, num_accepted_tokens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same contract as the reference's: g / beta computed in-kernel from A_log, a, b, dt_bias."""
    check_tensor("v", v, shape=(None, None, None, None))
    _check_gating_params(A_log, dt_bias, v.shape[2])
    gate_acc = acc_dtype(a.dtype, A_log.dtype)
    return _run(q, k, v, a, b, A_log, dt_bias, True, gate_acc, beta, threshold, scale, initial_state,
                True, cu_seqlens, ssm_state_indices, num_accepted_tokens, inplace_final_state,
                use_qk_l2norm_in_kernel, state_layout, PAD_SLOT_ID)


def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor,
    scale: Optional[float], initial_state: torch.Tensor, out: torch.Tensor,
    ssm_state_indices: torch.Tensor, use_qk_l2norm_in_kernel: bool = True, state_layout: str = "vk",
) -> torch.Tensor:
    """Same contract as the reference's: one token per row of mixed_qkv ``[B, 2*H*K + HV*V]``
    (H inferred), pool updated in place, ``out [B, 1, HV, V]`` written (PAD rows zero)."""
    check_ssm_layout(state_layout)
    check_tensor("A_log", A_log, shape=(None,))
    HV = A_log.shape[0]
    check_tensor("mixed_qkv", mixed_qkv, shape=(None, None))
    check_tensor("out", out, shape=(None, None, None, None))
    Vd = out.shape[-1]
    B = mixed_qkv.shape[0]
    check_tensor("out", out, shape=(B, 1, HV, Vd))
    check_tensor("initial_state", initial_state, shape=(None, None, None, None))
    state_K = initial_state.shape[-1] if state_layout == "vk" else initial_state.shape[-2]
    qk = mixed_qkv.shape[1] - HV * Vd
    if qk <= 0 or qk % (2 * state_K):
        raise InputError("mixed_qkv", f"last dim 2*H*K + HV*V (K={state_K}, HV*V={HV * Vd})",
                         f"2*H*{state_K} + {HV * Vd}", mixed_qkv.shape[1])
    H = qk // (2 * state_K)
    _check_gating_params(A_log, dt_bias, HV)
    x = _last_contig(mixed_qkv)
    HK = H * state_K
    # Views into the packed row (no copy): B sequences of one token, [B, 1, heads, dim].
    q = x[:, :HK].unflatten(-1, (H, state_K)).unsqueeze(1)
    k = x[:, HK:2 * HK].unflatten(-1, (H, state_K)).unsqueeze(1)
    v = x[:, 2 * HK:].unflatten(-1, (HV, Vd)).unsqueeze(1)
    # The reference rounds o to mixed_qkv's dtype, then to out's: write straight into out
    # when that is a single rounding (same dtype) and its rows are contiguous.
    o = out if out.dtype == x.dtype and (out.stride(-1) == 1 or Vd <= 1) else None
    gate_acc = acc_dtype(a.dtype, A_log.dtype)
    o, _ = _run(q, k, v, a, b, A_log, dt_bias, True, gate_acc, 1.0, 20.0, scale, initial_state, True,
                None, ssm_state_indices, None, True, use_qk_l2norm_in_kernel, state_layout,
                PAD_SLOT_ID, o=o)
    if o.data_ptr() != out.data_ptr():
        out.copy_(o.reshape(B, 1, HV, Vd).to(out.dtype))
    return out
