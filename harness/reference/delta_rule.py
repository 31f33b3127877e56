"""The gated delta rule: the per-token recurrence (the oracle) and a chunked torch form.

Per value head hv of each sequence (q / k head ``hv // r``, r = HV / H), with the state
S ``[V, K]``::

    q, k = l2norm(q), l2norm(k)           # optional, x / sqrt(sum x^2 + 1e-6), fp32
    q = q * scale                          # scale = K ** -0.5 by default, after the norm
    S = exp(g_t) * S                       # g in log space
    u = beta_t * (v_t - S k_t)
    S = S + u k_t^T
    o_t = S q_t

Layouts follow vLLM: q, k ``[B, T, H, K]``, v ``[B, T, HV, V]``, g, beta ``[B, T, HV]``; with
cu_seqlens B must be 1 and the T axis holds the sequences back to back. States are
``[.., HV, V, K]`` (``state_layout="vk"``, vLLM) or ``[.., HV, K, V]`` (``"kv"``, FLA).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from harness.batch import PAD_SLOT_ID
from ..errors import INDEX_DTYPES, InputError, check_tensor
from ..layouts.state import check_ssm_layout
from .gating import acc_dtype, fused_gdn_gating
from .norm import l2norm
from .ops import gdn_op



def _check_inputs(q, k, v, g, beta, cu_seqlens):
    check_tensor("q", q, shape=(None, None, None, None))
    B, T, H, K = q.shape
    check_tensor("k", k, shape=(B, T, H, K))
    check_tensor("v", v, shape=(B, T, None, None))
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise InputError("v", f"value heads (a multiple of H={H})", f"k*{H}", HV)
    check_tensor("g", g, shape=(B, T, HV))
    check_tensor("beta", beta, shape=(B, T, HV))
    if cu_seqlens is not None:
        if B != 1:
            raise InputError("q", "batch size with cu_seqlens", 1, B)
        check_tensor("cu_seqlens", cu_seqlens, shape=(None,), dtype=INDEX_DTYPES)
        cu = [int(c) for c in cu_seqlens.tolist()]
        if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
            raise InputError("cu_seqlens", f"non-decreasing offsets from 0 to T={T}", f"[0, ..., {T}]", cu)
        spans = [(0, a, b) for a, b in zip(cu, cu[1:])]
    else:
        spans = [(n, 0, T) for n in range(B)]
    return H, K, HV, V, spans


def check_pool_args(initial_state, state_shape, ssm_state_indices, num_accepted_tokens, N):
    """Checks of the state-pool arguments; returns the indices as ``[N, S]`` (1-D -> ``[N, 1]``)."""
    if initial_state is None:
        raise InputError("initial_state", "the state pool with ssm_state_indices", "a tensor", None)
    check_tensor("initial_state", initial_state, shape=(None, *state_shape))
    idx = ssm_state_indices if ssm_state_indices.dim() == 2 else ssm_state_indices[:, None]
    check_tensor("ssm_state_indices", idx, shape=(N, None), dtype=INDEX_DTYPES)
    if num_accepted_tokens is not None:
        check_tensor("num_accepted_tokens", num_accepted_tokens, shape=(N,), dtype=INDEX_DTYPES)
    return idx


def _prepare(q, k, v, g, beta, scale, use_qk_l2norm, acc):
    """Flatten to [B*T, ...], normalise, scale, and expand q / k to the value heads."""
    H, HV = q.shape[2], v.shape[2]
    q, k = q.reshape(-1, H, q.shape[-1]), k.reshape(-1, H, k.shape[-1])
    if use_qk_l2norm:
        q, k = l2norm(q).to(acc), l2norm(k).to(acc)
    q = q.to(acc) * scale
    k = k.to(acc)
    r = HV // H
    return (q.repeat_interleave(r, dim=1), k.repeat_interleave(r, dim=1),
            v.reshape(-1, HV, v.shape[-1]).to(acc), g.reshape(-1, HV).to(acc),
            beta.reshape(-1, HV).to(acc))


def _token_qk(q, k, scale, use_qk_l2norm, r, acc):
    """One token's q, k ``[H, K]`` -> normalised, scaled, expanded to ``[HV, K]``."""
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return (q.to(acc) * scale).repeat_interleave(r, dim=0), k.to(acc).repeat_interleave(r, dim=0)


def _step(S, q, k, v, g, beta):
    """One token for all heads; S ``[HV, V, K]``. Returns (new S, o ``[HV, V]``)."""
    S = S * torch.exp(g)[:, None, None]
    u = beta[:, None] * (v - torch.einsum("hvk,hk->hv", S, k))
    S = S + u[:, :, None] * k[:, None, :]
    return S, torch.einsum("hvk,hk->hv", S, q)


@gdn_op("fused_recurrent_gated_delta_rule", kind="recurrent", roles=("decode", "spec"),
        returns=("o", "final_state"))
def recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = True, cu_seqlens: Optional[torch.Tensor] = None,
    ssm_state_indices: Optional[torch.Tensor] = None,
    num_accepted_tokens: Optional[torch.Tensor] = None, inplace_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk",
    pad_slot_id: int = PAD_SLOT_ID,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Token-by-token recurrence; the oracle.

    Without ssm_state_indices, initial_state is ``[N, HV, ...]`` (one per sequence; zeros
    when None) and the result's final state is a new ``[N, HV, ...]``.

    With ssm_state_indices, initial_state is the state pool ``[num_slots, HV, ...]``:
    indices ``[N]``: sequence n reads slot ``idx[n]`` and its final state goes to
    ``idx[n]``; indices ``[N, S]`` (spec decode): it reads ``idx[n, num_accepted[n]-1]``
    (``idx[n, 0]`` without num_accepted_tokens) and the state after its token t is
    written to ``idx[n, t]`` (skipped where that index is PAD). A sequence whose read
    slot is PAD is skipped: no state touched, output rows zero. With
    inplace_final_state the pool is updated in place and returned, else a copy is.

    Returns (o ``[B, T, HV, V]`` in v.dtype, final state or None).
    """
    check_ssm_layout(state_layout)
    H, K, HV, V, spans = _check_inputs(q, k, v, g, beta, cu_seqlens)
    B, T = q.shape[:2]
    state_shape = (HV, V, K) if state_layout == "vk" else (HV, K, V)
    acc = acc_dtype(q.dtype, v.dtype, *(() if initial_state is None else (initial_state.dtype,)))
    scale = K ** -0.5 if scale is None else scale
    # Token by token, q / k included: a token's result never depends on its batch-mates.
    qr, kr = q.reshape(-1, H, K), k.reshape(-1, H, K)
    vf, gf, bf = v.reshape(-1, HV, V).to(acc), g.reshape(-1, HV).to(acc), beta.reshape(-1, HV).to(acc)
    o = torch.zeros(B * T, HV, V, dtype=acc, device=q.device)
    N = len(spans)

    def load(t):  # stored layout -> [HV, V, K] in acc
        return (t if state_layout == "vk" else t.transpose(-1, -2)).to(acc)

    def store(S, dtype):
        return (S if state_layout == "vk" else S.transpose(-1, -2)).to(dtype)

    pool = None
    if ssm_state_indices is not None:
        idx = check_pool_args(initial_state, state_shape, ssm_state_indices, num_accepted_tokens, N).tolist()
        for n, (_, bos, eos) in enumerate(spans):       # validate before any write
            if len(idx[n]) > 1 and eos - bos > len(idx[n]):
                raise InputError("ssm_state_indices", f"columns for {eos - bos} tokens of sequence {n}",
                                 eos - bos, len(idx[n]))
            if max(idx[n]) >= initial_state.shape[0]:
                raise InputError(f"ssm_state_indices[{n}]", "slots in", f"[0, {initial_state.shape[0]})", idx[n])
        pool = initial_state if inplace_final_state else initial_state.clone()
    elif initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(N, *state_shape))
    finals: List[torch.Tensor] = []

    for n, (b, bos, eos) in enumerate(spans):
        base = b * T
        if pool is not None:
            row = idx[n]
            read = (int(num_accepted_tokens[n]) - 1) if num_accepted_tokens is not None else 0
            if not 0 <= read < len(row):
                raise InputError(f"num_accepted_tokens[{n}]", f"in [1, {len(row)}]", len(row), read + 1)
            slot = row[read]
            if slot == pad_slot_id or slot < 0:
                continue
            S = load(pool[slot])
            per_token = len(row) > 1
        else:
            S = (load(initial_state[n]) if initial_state is not None
                 else torch.zeros(HV, V, K, dtype=acc, device=q.device))
        for t in range(eos - bos):
            i = base + bos + t
            qi, ki = _token_qk(qr[i], kr[i], scale, use_qk_l2norm_in_kernel, HV // H, acc)
            S, o[i] = _step(S, qi, ki, vf[i], gf[i], bf[i])
            if pool is not None and per_token:
                if row[t] >= 0 and row[t] != pad_slot_id:
                    pool[row[t]] = store(S, pool.dtype)
        if pool is not None and not per_token:
            pool[row[0]] = store(S, pool.dtype)
        elif pool is None:
            finals.append(S)

    o = o.reshape(B, T, HV, V).to(v.dtype)
    if pool is not None:
        return o, pool
    if not output_final_state:
        return o, None
    out_dtype = initial_state.dtype if initial_state is not None else acc
    return o, torch.stack([store(S, out_dtype) for S in finals]) if finals else None


@gdn_op(kind="chunk", roles=("prefill",), returns=("o", "final_state"))
def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = True, cu_seqlens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk", chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunked (WY) form of the same recurrence, for long sequences.

    Within a chunk of C tokens with cumulative decay G (decays masked to -inf above the
    diagonal before the exp, so nothing overflows), ``T = (I + tril(diag(beta) (K K^T * Gamma), -1))^-1``
    gives ``U = T diag(beta) V - T diag(beta e^G) K S0`` and
    ``O = diag(e^G) Q S0 + (Q K^T * Gamma) U``; the state then moves to the chunk end.
    initial_state ``[N, HV, ...]`` per sequence (zeros when None). Returns (o, final ``[N, HV, ...]``).
    """
    check_ssm_layout(state_layout)
    H, K, HV, V, spans = _check_inputs(q, k, v, g, beta, cu_seqlens)
    B, T = q.shape[:2]
    state_shape = (HV, V, K) if state_layout == "vk" else (HV, K, V)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(len(spans), *state_shape))
    acc = acc_dtype(q.dtype, v.dtype, *(() if initial_state is None else (initial_state.dtype,)))
    scale = K ** -0.5 if scale is None else scale
    qf, kf, vf, gf, bf = _prepare(q, k, v, g, beta, scale, use_qk_l2norm_in_kernel, acc)
    o = torch.zeros(B * T, HV, V, dtype=acc, device=q.device)
    C = chunk_size
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = incl.clone().fill_diagonal_(False)
    eye = torch.eye(C, dtype=acc, device=q.device)
    finals = []
    for n, (b, bos, eos) in enumerate(spans):
        lo, hi = b * T + bos, b * T + eos
        L = hi - lo
        if initial_state is None:
            S = torch.zeros(HV, K, V, dtype=acc, device=q.device)      # [K, V] inside
        else:
            s0 = initial_state[n].to(acc)
            S = s0.transpose(-1, -2) if state_layout == "vk" else s0
        if L:
            pad = (-L) % C
            nc = (L + pad) // C

            def chunks(x):  # [L, HV, d] -> [HV, nc, C, d] (zero padded: no effect on S)
                x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x
                return x.reshape(nc, C, HV, -1).permute(2, 0, 1, 3)

            qc, kc, vc = chunks(qf[lo:hi]), chunks(kf[lo:hi]), chunks(vf[lo:hi])
            gc = chunks(gf[lo:hi, :, None])[..., 0]                     # [HV, nc, C]
            bc = chunks(bf[lo:hi, :, None])[..., 0]
            G = gc.cumsum(-1)
            gamma = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~incl, float("-inf")))
            A = (bc[..., None] * (kc @ kc.transpose(-1, -2)) * gamma).masked_fill(~strict, 0)
            IA = eye + A
            U0 = torch.linalg.solve_triangular(IA, bc[..., None] * vc, upper=False, unitriangular=True)
            Wk = torch.linalg.solve_triangular(IA, (bc * torch.exp(G))[..., None] * kc,
                                               upper=False, unitriangular=True)
            QK = (qc @ kc.transpose(-1, -2)) * gamma
            qG = qc * torch.exp(G)[..., None]
            kG = kc * torch.exp(G[..., -1:] - G)[..., None]
            oc = torch.empty(HV, nc, C, V, dtype=acc, device=q.device)
            for c in range(nc):
                U = U0[:, c] - Wk[:, c] @ S
                oc[:, c] = qG[:, c] @ S + QK[:, c] @ U
                S = S * torch.exp(G[:, c, -1])[:, None, None] + kG[:, c].transpose(-1, -2) @ U
            o[lo:hi] = oc.permute(1, 2, 0, 3).reshape(nc * C, HV, V)[:L]
        finals.append(S.transpose(-1, -2) if state_layout == "vk" else S)
    o = o.reshape(B, T, HV, V).to(v.dtype)
    if not output_final_state:
        return o, None
    out_dtype = initial_state.dtype if initial_state is not None else acc
    return o, torch.stack(finals).to(out_dtype)


@gdn_op(kind="chunk", roles=("prefill", "checkpoints"), returns=("o", "final_state"))
def chunk_gated_delta_rule_checkpoints(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state_checkpoints: torch.Tensor, checkpoint_every: int, scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`chunk_gated_delta_rule` that also checkpoints each sequence's state after every
    `checkpoint_every` of its tokens (prefix caching: vLLM's ``align`` mamba cache mode,
    SGLang's ``mamba_track_interval``); the block size need not be a multiple of the 64-token
    chunk. state_checkpoints ``[M, HV, ...]`` (written in place, in the state layout and its
    dtype) receives sequence 0's checkpoints in order, then sequence 1's, ...: sequence n of
    length L_n has ``L_n // checkpoint_every`` of them (one at its end when the block divides
    L_n). Returns (o, final states) as `chunk_gated_delta_rule`.
    """
    H, K, HV, V, spans = _check_inputs(q, k, v, g, beta, cu_seqlens)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise InputError("checkpoint_every", "tokens per checkpoint", ">= 1", checkpoint_every)
    count = sum((eos - bos) // checkpoint_every for _, bos, eos in spans)
    check_tensor("state_checkpoints", state_checkpoints,
                 shape=(count, HV, V, K) if state_layout == "vk" else (count, HV, K, V))
    outs, finals, c = [], [], 0
    # carried between blocks in (at least) fp32, as a kernel keeps it; stored in its dtype
    keep = None if initial_state is None else torch.promote_types(initial_state.dtype, torch.float32)
    for n, (b, bos, eos) in enumerate(spans):
        S = None if initial_state is None else initial_state[n:n + 1].to(keep)
        for lo in range(bos, eos, checkpoint_every):        # block by block, the state carried
            hi = min(lo + checkpoint_every, eos)
            o, S = chunk_gated_delta_rule(q[b:b + 1, lo:hi], k[b:b + 1, lo:hi], v[b:b + 1, lo:hi],
                                          g[b:b + 1, lo:hi], beta[b:b + 1, lo:hi], scale, S, True, None,
                                          use_qk_l2norm_in_kernel, state_layout)
            outs.append(o)
            if hi - lo == checkpoint_every:
                state_checkpoints[c] = S[0].to(state_checkpoints.dtype)
                c += 1
        if S is None:                                        # an empty sequence keeps its state
            S = chunk_gated_delta_rule(q[b:b + 1, :0], k[b:b + 1, :0], v[b:b + 1, :0], g[b:b + 1, :0],
                                       beta[b:b + 1, :0], scale, None, True, None, use_qk_l2norm_in_kernel,
                                       state_layout)[1]
        finals.append(S[0])
    B, T = q.shape[:2]
    o = torch.cat(outs, dim=1).reshape(B, T, HV, V) if outs else torch.zeros(B, T, HV, V, dtype=v.dtype,
                                                                              device=v.device)
    final = torch.stack(finals)
    return o, (final if initial_state is None else final.to(initial_state.dtype))


@gdn_op(kind="recurrent", roles=("decode", "spec", "gating"), returns=("o", None))
def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float = 1.0, threshold: float = 20.0,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
    inplace_final_state: bool = True, cu_seqlens: Optional[torch.Tensor] = None,
    ssm_state_indices: Optional[torch.Tensor] = None, num_accepted_tokens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = False, state_layout: str = "vk",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gating fused into the recurrent update (vLLM's decode / spec path).

    a, b ``[T, HV]`` (the tokens of q / k / v, back to back); g and beta come from
    `fused_gdn_gating`; everything else as `recurrent_gated_delta_rule`.
    """
    HV = v.shape[2]
    check_tensor("a", a, shape=(q.shape[0] * q.shape[1], HV))
    check_tensor("b", b, shape=(q.shape[0] * q.shape[1], HV))
    g, bt = fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
    shape = (*q.shape[:2], HV)
    return recurrent_gated_delta_rule(q, k, v, g.reshape(shape), bt.reshape(shape), scale, initial_state,
                                      True, cu_seqlens, ssm_state_indices, num_accepted_tokens,
                                      inplace_final_state, use_qk_l2norm_in_kernel, state_layout)


@gdn_op(kind="recurrent", roles=("decode", "gating"), returns=(None,))
def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor,
    scale: Optional[float], initial_state: torch.Tensor, out: torch.Tensor,
    ssm_state_indices: torch.Tensor, use_qk_l2norm_in_kernel: bool = True, state_layout: str = "vk",
) -> torch.Tensor:
    """Single-token decode straight from the conv output (vLLM's packed decode).

    mixed_qkv ``[B, 2*H*K + HV*V]`` in ``[q | k | v]`` order (H inferred), a, b ``[B, HV]``,
    initial_state the pool (updated in place), out ``[B, 1, HV, V]`` written (PAD rows
    zero), ssm_state_indices ``[B]``. Returns out.
    """
    HV = A_log.shape[0]
    Vd = out.shape[-1]
    B = mixed_qkv.shape[0]
    check_tensor("out", out, shape=(B, 1, HV, Vd))
    state_K = initial_state.shape[-1] if state_layout == "vk" else initial_state.shape[-2]
    qk = mixed_qkv.shape[1] - HV * Vd
    if qk <= 0 or qk % (2 * state_K):
        raise InputError("mixed_qkv", f"last dim 2*H*K + HV*V (K={state_K}, HV*V={HV * Vd})",
                         f"2*H*{state_K} + {HV * Vd}", mixed_qkv.shape[1])
    H = qk // (2 * state_K)
    q, k, v = torch.split(mixed_qkv, [H * state_K, H * state_K, HV * Vd], dim=-1)
    o, _ = fused_sigmoid_gating_delta_rule_update(
        A_log, a, b, dt_bias, q.reshape(1, B, H, state_K), k.reshape(1, B, H, state_K),
        v.reshape(1, B, HV, Vd), scale=scale, initial_state=initial_state, inplace_final_state=True,
        cu_seqlens=torch.arange(B + 1), ssm_state_indices=ssm_state_indices,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, state_layout=state_layout)
    out.copy_(o.reshape(B, 1, HV, Vd).to(out.dtype))
    return out
