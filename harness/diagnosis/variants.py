"""Hypothesised variants of the reference ops: each one a known way a port gets GDN wrong.

A variant is written in terms of the reference ops (a wrapper changing their inputs,
arguments or results), never with a backend's code. Variants come as override dicts
``{reference op name: callable}``, the form both the op re-runs (`harness.diagnosis.op`)
and the layer oracle (``run_oracle(ops=...)``) take.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from .. import reference as ref
from ..layouts.projection import unpack_ba, unpack_qkvz
from ..reference.gating import acc_dtype, softplus

F64 = torch.float64
Ops = Dict[str, Callable]
RECURRENT, CHUNK = "recurrent_gated_delta_rule", "chunk_gated_delta_rule"


# ------------------------------------------------------------------ memory reinterpretation
def read_transposed(x: torch.Tensor) -> torch.Tensor:
    """What a kernel sees when it addresses a ``[.., A, B]`` tensor's memory as a contiguous
    ``[.., B, A]`` tile (element (a, b) at ``b*A + a``), as a logical ``[.., A, B]``."""
    return x.contiguous().reshape(*x.shape[:-2], x.shape[-1], x.shape[-2]).transpose(-1, -2)


def write_transposed(x: torch.Tensor) -> torch.Tensor:
    """The memory left in a ``[.., A, B]`` tensor by a kernel storing logical ``x`` as a ``[.., B, A]`` tile."""
    return x.transpose(-1, -2).contiguous().reshape(x.shape)


def as_contiguous_read(x: torch.Tensor) -> torch.Tensor:
    """The values a kernel reads from view `x` when it ignores x's strides (contiguous ones
    from the same start)."""
    if x.is_contiguous():
        return x
    strides, acc = [], 1
    for n in reversed(x.shape):
        strides.insert(0, acc)
        acc *= n
    return torch.as_strided(x, x.shape, strides, x.storage_offset())


# ------------------------------------------------------------------ delta rule
def _is_prefill(kw) -> bool:
    """A delta-rule call without a state pool: prefill (the oracle's, vLLM's chunked path)."""
    return kw.get("ssm_state_indices") is None


def _in_scope(scope: str, kw) -> bool:
    return scope == "all" or (scope == "prefill") == _is_prefill(kw)


def qk_variant(kind: str, scope: str = "all", op: str = RECURRENT) -> Ops:
    """q / k prepared wrongly before the recurrence: ``tiled`` (key head hv % H instead of
    hv // r), ``norm_skipped``, ``eps_outside`` (x / (sqrt(sum x^2) + eps)), ``scale_on_k``."""
    base = getattr(ref, op)

    def fn(q, k, v, g, beta, **kw):
        if not _in_scope(scope, kw):
            return base(q, k, v, g, beta, **kw)
        norm = kw.get("use_qk_l2norm_in_kernel", False)
        if kind == "tiled":
            r = v.shape[2] // q.shape[2]
            q, k = q.repeat(1, 1, r, 1), k.repeat(1, 1, r, 1)
        elif kind == "norm_skipped":
            kw["use_qk_l2norm_in_kernel"] = False
        elif kind == "eps_outside" and norm:
            q, k = (x / (x.to(F64).pow(2).sum(-1, keepdim=True).sqrt() + 1e-6).to(x.dtype) for x in (q, k))
            kw["use_qk_l2norm_in_kernel"] = False
        elif kind == "scale_on_k":
            scale = kw.get("scale") or q.shape[-1] ** -0.5
            if norm:
                q, k = ref.l2norm(q).to(q.dtype), ref.l2norm(k).to(k.dtype)
            k, kw["scale"], kw["use_qk_l2norm_in_kernel"] = k * scale, 1.0, False
        return base(q, k, v, g, beta, **kw)
    return {op: fn}


def bf16_truncate(x: torch.Tensor) -> torch.Tensor:
    """x cast to bfloat16 by dropping the low 16 bits of its fp32 form (round toward zero,
    as some casts do; Triton's interpreter among them), back in x's dtype."""
    bits = x.to(torch.float32).view(torch.int32) & -65536
    return bits.view(torch.float32).to(x.dtype)


def _changed_slots(before: torch.Tensor, after: torch.Tensor):
    return [s for s in range(before.shape[0]) if not torch.equal(before[s], after[s])]


def state_variant(kind: str, scope: str = "all", op: str = RECURRENT) -> Ops:
    """The ssm state read / written wrongly: ``transposed`` (read and write as the other
    [K,V] / [V,K] tile), ``read_transposed``, ``write_transposed``, ``bf16`` (written
    states rounded to bfloat16; ``bf16_trunc`` truncated), ``zero_init`` (a prefill's initial state ignored)."""
    base = getattr(ref, op)
    rd = kind in ("transposed", "read_transposed")
    wr = kind in ("transposed", "write_transposed")

    def post(x):
        if wr:
            x = write_transposed(x)
        if kind == "bf16":
            x = x.to(torch.bfloat16).to(x.dtype)
        elif kind == "bf16_trunc":
            x = bf16_truncate(x)
        return x

    def fn(q, k, v, g, beta, **kw):
        init = kw.get("initial_state")
        if not _in_scope(scope, kw):
            return base(q, k, v, g, beta, **kw)
        if kind == "zero_init":
            if _is_prefill(kw) and init is not None:
                kw["initial_state"] = torch.zeros_like(init)
            return base(q, k, v, g, beta, **kw)
        if _is_prefill(kw):
            if init is not None and rd:
                kw["initial_state"] = read_transposed(init)
            o, final = base(q, k, v, g, beta, **kw)
            return o, (None if final is None else post(final))
        pool, inplace = init, kw.get("inplace_final_state", False)
        work = read_transposed(pool) if rd else pool.clone()
        start = work.clone()
        kw.update(initial_state=work, inplace_final_state=True)
        o, _ = base(q, k, v, g, beta, **kw)
        new = pool.clone()
        for s in _changed_slots(start, work):
            new[s] = post(work[s])
        if not inplace:
            return o, new
        pool.copy_(new)
        return o, pool
    return {op: fn}


def accepted_shift(shift: int, conv: bool = True, ssm: bool = True) -> Ops:
    """num_accepted_tokens off by `shift` (clamped to the sequence): in the spec conv window
    offset, the ssm read slot, or both."""
    out: Ops = {}

    def shifted(acc, limit):
        return (acc + shift).clamp(1, limit) if acc is not None else None

    if conv:
        def conv_fn(x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                    num_accepted_tokens=None, query_start_loc=None, **kw):
            if num_accepted_tokens is not None and query_start_loc is not None:
                lens = query_start_loc[1:] - query_start_loc[:-1]
                num_accepted_tokens = torch.minimum((num_accepted_tokens + shift).clamp(min=1), lens).to(
                    num_accepted_tokens.dtype)
            return ref.causal_conv1d_update(x, conv_state, weight, bias, activation, conv_state_indices,
                                            num_accepted_tokens, query_start_loc, **kw)
        out["causal_conv1d_update"] = conv_fn
    if ssm:
        def rec(q, k, v, g, beta, **kw):
            acc, idx = kw.get("num_accepted_tokens"), kw.get("ssm_state_indices")
            if acc is not None and idx is not None and idx.dim() == 2:
                kw["num_accepted_tokens"] = shifted(acc, idx.shape[1]).to(acc.dtype)
            return ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
        out[RECURRENT] = rec
    return out


def pad_wraps() -> Ops:
    """PAD_SLOT_ID (-1) used as a Python index: the pool's last slot, read and written."""
    def wrap(idx, n):
        return None if idx is None else torch.where(idx < 0, torch.full_like(idx, n - 1), idx)

    def conv_update(x, conv_state, weight, bias=None, activation=None, conv_state_indices=None, *a, **kw):
        return ref.causal_conv1d_update(x, conv_state, weight, bias, activation,
                                        wrap(conv_state_indices, conv_state.shape[0]), *a, **kw)

    def conv_fn(x, weight, bias, conv_states, query_start_loc, cache_indices=None, *a, **kw):
        return ref.causal_conv1d_fn(x, weight, bias, conv_states, query_start_loc,
                                    wrap(cache_indices, conv_states.shape[0]), *a, **kw)

    def rec(q, k, v, g, beta, **kw):
        if kw.get("ssm_state_indices") is not None:
            kw["ssm_state_indices"] = wrap(kw["ssm_state_indices"], kw["initial_state"].shape[0])
        return ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    return {"causal_conv1d_update": conv_update, "causal_conv1d_fn": conv_fn, RECURRENT: rec}


def conv_frozen_on_decode() -> Ops:
    """The decode conv (no num_accepted_tokens) computes its output but never shifts the window."""
    def conv_update(x, conv_state, *a, **kw):
        if kw.get("num_accepted_tokens") is not None or (len(a) > 4 and a[4] is not None):
            return ref.causal_conv1d_update(x, conv_state, *a, **kw)
        scratch = conv_state.clone()
        return ref.causal_conv1d_update(x, scratch, *a, **kw)
    return {"causal_conv1d_update": conv_update}


def conv_history(kind: str) -> Ops:
    """The prefill conv's has_initial_state ignored: ``zero`` (history dropped) or ``stale``
    (history always read, also by fresh sequences)."""
    def conv_fn(x, weight, bias, conv_states, query_start_loc, cache_indices=None, has_initial_state=None, **kw):
        n = query_start_loc.shape[0] - 1
        has = torch.full((n,), kind == "stale", dtype=torch.bool, device=x.device)
        return ref.causal_conv1d_fn(x, weight, bias, conv_states, query_start_loc, cache_indices, has, **kw)
    return {"causal_conv1d_fn": conv_fn}


# ------------------------------------------------------------------ chunked prefill, per sequence
def _spans(cu_seqlens, T):
    cu = [0, T] if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
    return list(zip(cu, cu[1:]))


def chunk_variant(kind: str, chunk: int = 64) -> Ops:
    """The chunked prefill of a varlen batch gone wrong per sequence: ``leak`` (sequence n > 0
    starts from sequence n-1's final state), ``tail_repeat`` (the last partial chunk padded
    with its last token instead of zeros), ``tail_next`` (padded with the tokens that follow
    in the packed batch), ``tail_next_times_zero`` (those tokens loaded and multiplied by 0 -
    a mask by product: NaN / Inf there reach the chunk's own rows through its matrix
    products), ``squeeze`` (the size-1 axes of the results dropped)."""
    def fn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None, **kw):
        kw.pop("chunk_size", None)
        T = q.shape[1]
        if kind == "squeeze":
            o, final = ref.chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                  cu_seqlens, **kw)
            return o, (final.squeeze(0) if final is not None else None)
        xs = (q, k, v, g, beta)
        outs, finals, prev = [], [], None
        for n, (bos, eos) in enumerate(_spans(cu_seqlens, T)):
            L = eos - bos
            h0 = prev if (kind == "leak" and n > 0) else (None if initial_state is None else initial_state[n:n + 1])
            seg = [x[:, bos:eos] for x in xs]
            pad = (-L) % chunk
            if kind.startswith("tail") and pad and L:
                if kind == "tail_repeat":
                    seg = [torch.cat([s, s[:, -1:].expand(-1, pad, *s.shape[2:])], 1) for s in seg]
                else:
                    nxt = [x[:, eos:eos + pad] * (0 if kind == "tail_next_times_zero" else 1) for x in xs]
                    seg = [torch.cat([s, t, s.new_zeros(s.shape[0], pad - t.shape[1], *s.shape[2:])], 1)
                           for s, t in zip(seg, nxt)]
            # the chunked form where products inside a chunk matter (a 0 * NaN row), else token by token
            run = ref.chunk_gated_delta_rule if kind == "tail_next_times_zero" else ref.recurrent_gated_delta_rule
            o, final = run(*seg, scale=scale, initial_state=h0, output_final_state=True, **kw)
            outs.append(o[:, :L])
            finals.append(final)
            prev = final
        o = torch.cat(outs, 1)
        if not output_final_state:
            return o, None
        return o, torch.cat(finals).to(initial_state.dtype if initial_state is not None else finals[0].dtype)
    return {CHUNK: fn}


# ------------------------------------------------------------------ gating
def gating_variant(kind: str) -> Ops:
    """fused_gdn_gating gone wrong: ``linear_softplus`` (threshold inverted / dropped: softplus(x)
    taken as x everywhere), ``dt_bias_after`` (softplus(a) + dt_bias), ``dt_bias_dropped``,
    ``A_not_exp`` (-A_log instead of -exp(A_log))."""
    def fn(A_log, a, b, dt_bias, beta: float = 1.0, threshold: float = 20.0):
        acc = acc_dtype(a.dtype, A_log.dtype)
        x, dt, A = a.to(F64), dt_bias.to(F64), A_log.to(F64)
        if kind == "linear_softplus":
            sp = x + dt
        elif kind == "dt_bias_after":
            sp = softplus(x, beta, threshold) + dt
        elif kind == "dt_bias_dropped":
            sp = softplus(x, beta, threshold)
        else:
            sp = softplus(x + dt, beta, threshold)
        decay = A if kind == "A_not_exp" else torch.exp(A)
        return (-decay * sp).to(acc), torch.sigmoid(b.to(F64)).to(acc)
    return {"fused_gdn_gating": fn}


def gate_domain_variant(kind: str, op: str = RECURRENT) -> Ops:
    """The log-space gate reaching a kernel of another gate domain unconverted:
    ``log_as_linear`` (a kernel taking the decay alpha = exp(g), FlashInfer's chunk, gets g: its
    decay is g, i.e. a log gate of log(g), NaN for every g < 0), ``linear_as_log`` (a log-space
    kernel gets exp(g): decay exp(exp(g)) > 1, outputs blow up), ``log_as_log2`` (a 2**g kernel
    gets g: the log gate is g * ln 2, under-decayed)."""
    base = getattr(ref, op)
    conv = {"log_as_linear": torch.log, "linear_as_log": torch.exp,
            "log_as_log2": lambda g: g * math.log(2.0)}[kind]

    def fn(q, k, v, g, beta, **kw):
        return base(q, k, v, conv(g), beta, **kw)
    return {op: fn}


def beta_bf16(scope: str = "all", op: str = RECURRENT, truncate: bool = False) -> Ops:
    """beta rounded (or truncated, as Triton's interpreter casts) to bfloat16 before the delta
    rule uses it (every token)."""
    base = getattr(ref, op)

    def fn(q, k, v, g, beta, **kw):
        if _in_scope(scope, kw):
            beta = bf16_truncate(beta) if truncate else beta.to(torch.bfloat16).to(beta.dtype)
        return base(q, k, v, g, beta, **kw)
    return {op: fn}


def readout_fp16(scope: str = "all", op: str = RECURRENT) -> Ops:
    """The delta rule's read-out o = S q passed through a float16 buffer whatever the
    activation dtype: rounded to fp16's 11 bits, Inf past 65504."""
    base = getattr(ref, op)

    def fn(*args, **kw):
        o, final = base(*args, **kw)
        if _in_scope(scope, kw):
            o = o.to(torch.float16).to(o.dtype)
        return o, final
    return {op: fn}


# ------------------------------------------------------------------ gated norm
def norm_variant(kind: str) -> Ops:
    """RMSNormGated gone wrong: ``gemma`` ((1 + w)), ``flipped`` (norm_before_gate the other
    way), ``act_swapped`` (silu <-> sigmoid), ``group_ignored`` (the whole head normalised)."""
    def fn(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True, activation="silu", out_dtype=None):
        if kind == "gemma":
            weight = weight + 1
        elif kind == "flipped":
            norm_before_gate = not norm_before_gate
        elif kind == "act_swapped":
            activation = "sigmoid" if activation in ("silu", "swish") else "silu"
        elif kind == "group_ignored":
            group_size = None
        return ref.rms_norm_gated(x, weight, z, eps, group_size, norm_before_gate, activation, out_dtype)
    return {"rms_norm_gated": fn}


# ------------------------------------------------------------------ projection layouts
def other_layout(layout: str) -> str:
    return "flat" if layout == "interleaved" else "interleaved"


def unpack_with(qkv: Optional[str] = None, ba: Optional[str] = None, z: Optional[str] = None) -> Ops:
    """unpack_qkvz_ba with some parts unpacked in a given layout (None: the model's own)."""
    def fn(mixed_qkvz, mixed_ba, dims, layout):
        q, k, v, _ = unpack_qkvz(mixed_qkvz, dims, qkv or layout)
        zz = unpack_qkvz(mixed_qkvz, dims, z or layout)[3]
        b, a = unpack_ba(mixed_ba, dims, ba or layout)
        return q, k, v, zz, b, a
    return {"unpack_qkvz_ba": fn}
