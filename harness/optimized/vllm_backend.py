"""`vllm`: thin adapters over an installed vLLM's GDN kernels (written for vLLM >= 0.33).

Every vLLM import is lazy (`_vllm()`), so this module imports without vLLM and
`unavailable()` then says "vLLM is not importable: <error>". Nothing here could be run
while it was written (no vLLM, no GPU): each mapping is from reading vLLM's sources
(the index's newest copies of the files named below) and each assumption is noted where
it is made. The adapters only convert conventions (shapes, dtypes, argument defaults);
what vLLM computes - garbage or x in PAD rows, slot 0 read as NULL_BLOCK_ID, its
rounding - reaches the harness untouched.

Where the kernels are looked up (first import path that works):
- delta rule: ``vllm.third_party.flash_linear_attention.ops`` (newest) or
  ``vllm.model_executor.layers.fla.ops``: chunk_gated_delta_rule,
  fused_recurrent_gated_delta_rule, fused_sigmoid_gating_delta_rule_update,
  fused_recurrent_gated_delta_rule_packed_decode (newest only), layernorm_guard.rmsnorm_fn.
- conv: ``vllm.model_executor.layers.mamba.ops.causal_conv1d`` (causal_conv1d_fn,
  causal_conv1d_update).
- fused_gdn_gating: ``vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn``,
  ``vllm.model_executor.layers.mamba.gdn_linear_attn`` or
  ``vllm.model_executor.models.qwen3_next`` (where each era keeps it).
- rms_norm_gated: the fla ops' layernorm_guard.rmsnorm_fn (Qwen's RMSNormGated.forward_cuda),
  else ``vllm.model_executor.layers.mamba.ops.layernorm_gated.rms_norm_gated`` (silu only).
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional

import torch

from ..errors import InputError
from .api import DECODE_PATHS, Backend

PAD_SLOT_ID = -1

_FLA_OPS_PATHS = ("vllm.third_party.flash_linear_attention.ops", "vllm.model_executor.layers.fla.ops")
_GATING_PATHS = ("vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn",
                 "vllm.model_executor.layers.mamba.gdn_linear_attn",
                 "vllm.model_executor.models.qwen3_next")
_CONV_PATH = "vllm.model_executor.layers.mamba.ops.causal_conv1d"
_GATED_NORM_PATH = "vllm.model_executor.layers.mamba.ops.layernorm_gated"

_CACHE: Dict[str, object] = {}
_ERROR: List[str] = []


def _first(paths, attr: Optional[str] = None, sub: Optional[str] = None):
    """The first importable module of `paths` (its `sub` submodule / `attr` if given), or None."""
    for path in paths:
        try:
            mod = importlib.import_module(f"{path}.{sub}" if sub else path)
        except ImportError:
            continue
        if attr is None:
            return mod
        if hasattr(mod, attr):
            return getattr(mod, attr)
    return None


def _vllm() -> Dict[str, object]:
    """vLLM's entry points (None where the installed version lacks one); raises ImportError."""
    if _CACHE:
        return _CACHE
    if _ERROR:
        raise ImportError(_ERROR[0])
    try:
        import vllm
        conv = importlib.import_module(_CONV_PATH)
    except Exception as e:   # ImportError, or vLLM failing at import on this machine
        _ERROR.append(f"{type(e).__name__}: {e}")
        raise ImportError(_ERROR[0]) from e
    ops = _first(_FLA_OPS_PATHS)
    found = dict(version=getattr(vllm, "__version__", "?"), ops_path=getattr(ops, "__name__", None),
                 conv_fn=getattr(conv, "causal_conv1d_fn", None),
                 conv_update=getattr(conv, "causal_conv1d_update", None))
    for name in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
                 "fused_sigmoid_gating_delta_rule_update", "fused_recurrent_gated_delta_rule_packed_decode"):
        # Assumption: the ops package re-exports these (it does in the copies read); the
        # sigmoid update and the packed decode also live in their own submodules.
        fn = getattr(ops, name, None) if ops is not None else None
        if fn is None and name == "fused_sigmoid_gating_delta_rule_update":
            fn = _first(_FLA_OPS_PATHS, name, sub="fused_sigmoid_gating")
        if fn is None and name == "fused_recurrent_gated_delta_rule_packed_decode":
            fn = _first(_FLA_OPS_PATHS, name, sub="fused_recurrent")
        found[name] = fn
    found["rmsnorm_fn"] = _first(_FLA_OPS_PATHS, "rmsnorm_fn", sub="layernorm_guard")
    found["layer_norm_fwd"] = _first(_FLA_OPS_PATHS, "layer_norm_fwd", sub="layernorm_guard")
    found["rms_norm_gated"] = _first((_GATED_NORM_PATH,), "rms_norm_gated")
    found["fused_gdn_gating"] = _first(_GATING_PATHS, "fused_gdn_gating")
    _CACHE.update(found)
    return _CACHE


def _ids(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def _check_vk(state_layout: str) -> None:
    # vLLM's kernels since the mid era hold the state [N, HV, V, K] (v0.10.2 had [K, V]);
    # this backend declares "vk", so the harness never asks for "kv".
    if state_layout != "vk":
        raise InputError("state_layout", "vLLM's state layout", "vk", state_layout)


def _flatten(q, k, v, extra: Dict[str, torch.Tensor], cu_seqlens):
    """[B, T, ...] equal-length batches -> one varlen batch (vLLM's per-token state
    buffer ``ht`` has T rows, so it only works with B == 1)."""
    B, T = q.shape[:2]
    if cu_seqlens is not None or B == 1:
        return q, k, v, extra, cu_seqlens
    flat = lambda t: t.reshape(1, B * T, *t.shape[2:])  # noqa: E731
    cu = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=q.device)
    return flat(q), flat(k), flat(v), {n: flat(t) for n, t in extra.items()}, cu


def _per_sequence(call, q, k, v, extra, initial_state, output_final_state, cu_seqlens):
    """One initial / final state per sequence, through vLLM's pool interface.

    vLLM reads an initial state without ssm_state_indices at row ``bos`` of h0 (right for
    one token per sequence only) and has no per-sequence final state; its layer always
    passes indices. So the states go into a pool ``[zero slot | initial_state]`` read
    through indices 1..N (slot 0 stays unused: newest vLLM reads it as NULL_BLOCK_ID), and
    vLLM's per-token state buffer (inplace_final_state=False: the state after token t in
    row bos+t) gives each sequence's final state at row eos-1.
    """
    B, T, HV, V = v.shape
    K = q.shape[-1]
    q2, k2, v2, extra2, cu = _flatten(q, k, v, extra, cu_seqlens)
    offs = [int(c) for c in cu.tolist()] if cu is not None else [0, q2.shape[1]]
    N = len(offs) - 1
    dtype = initial_state.dtype if initial_state is not None else torch.float32
    pool = torch.zeros(N + 1, HV, V, K, dtype=dtype, device=q.device)
    if initial_state is not None:
        pool[1:] = initial_state
    o, per_token = call(q2, k2, v2, extra2, pool, False, cu, _ids(list(range(1, N + 1)), q.device), None)
    o = o.reshape(B, T, HV, V).to(v.dtype)
    if not output_final_state:
        return o, None
    final = torch.stack([per_token[offs[n + 1] - 1] if offs[n + 1] > offs[n] else pool[n + 1] for n in range(N)])
    return o, final


class VllmBackend(Backend):
    name = "vllm"
    description = ("an installed vLLM's GDN kernels (fla ops, mamba causal_conv1d, gating, gated norm) "
                   "behind thin adapters")
    devices = ("cuda",)                          # vLLM's Triton kernels need a GPU
    ssm_state_layout = "vk"
    # causal_conv1d_fn asserts conv_states.stride(1) == 1: a token-first cache viewed transposed.
    conv_state_layouts = ("token_first",)
    decode_paths = ("recurrent", "sigmoid_gating", "packed")

    def __init__(self):
        # Where vLLM is installed, drop what its version lacks; without vLLM keep the
        # declarations (unavailable() then skips every case with the reason).
        try:
            found = _vllm()
        except ImportError:
            return
        needs = dict(chunk_gated_delta_rule="chunk_gated_delta_rule",
                     fused_recurrent_gated_delta_rule="fused_recurrent_gated_delta_rule",
                     fused_sigmoid_gating_delta_rule_update="fused_sigmoid_gating_delta_rule_update",
                     fused_recurrent_gated_delta_rule_packed_decode="fused_recurrent_gated_delta_rule_packed_decode",
                     causal_conv1d_fn="conv_fn", causal_conv1d_update="conv_update",
                     fused_gdn_gating="fused_gdn_gating")
        for op, key in needs.items():
            if found.get(key) is None:
                setattr(self, op, None)
        if found.get("rmsnorm_fn") is None and found.get("rms_norm_gated") is None:
            self.rms_norm_gated = None
        self.decode_paths = tuple(p for p in self.decode_paths if all(self.implements(o) for o in DECODE_PATHS[p]))

    def unavailable(self, device: str) -> Optional[str]:
        try:
            _vllm()
        except ImportError as e:
            return f"vLLM is not importable: {e}"
        return super().unavailable(device)

    def describe(self) -> Dict:
        d = super().describe()
        if _CACHE:
            d.update(vllm_version=_CACHE.get("version"), vllm_fla_ops=_CACHE.get("ops_path"))
        return d

    # ------------------------------------------------------------------ gating
    def fused_gdn_gating(self, A_log, a, b, dt_bias, beta: float = 1.0, threshold: float = 20.0):
        # vLLM: `batch, num_heads = a.shape` (2-D only; a and b read as contiguous, strides
        # ignored - passed as given), returns g [1, T, HV] fp32 and beta [1, T, HV] in b.dtype.
        fn = _vllm()["fused_gdn_gating"]
        a2 = a if a.dim() == 2 else a.reshape(-1, a.shape[-1])
        b2 = b if b.dim() == 2 else b.reshape(-1, b.shape[-1])
        g, bt = fn(A_log=A_log, a=a2, b=b2, dt_bias=dt_bias, beta=beta, threshold=threshold)
        return g.reshape(a.shape), bt.reshape(b.shape)

    # ------------------------------------------------------------------ delta rule
    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        # vLLM's chunk size is fixed (FLA_CHUNK_SIZE = 64): chunk_size is not passed.
        # vLLM asserts q.dtype != float32: fp32 cases fail with its own message.
        # The initial state goes in its own dtype and the fp32 final state is cast back, as
        # vLLM's layer does (`ssm_state[idx] = final.to(ssm_state.dtype)`).
        _check_vk(state_layout)
        fn = _vllm()["chunk_gated_delta_rule"]
        o, final = fn(q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        if final is not None and initial_state is not None:
            final = final.to(initial_state.dtype)
        return o, final

    def _recurrent(self, call, q, k, v, extra, initial_state, output_final_state, cu_seqlens, ssm_state_indices,
                   num_accepted_tokens, inplace_final_state):
        """`call(q, k, v, extra, initial_state, inplace, cu_seqlens, indices, num_accepted)`
        runs the vLLM kernel and returns (o, final_state)."""
        if ssm_state_indices is None:
            return _per_sequence(call, q, k, v, extra, initial_state, output_final_state, cu_seqlens)
        # The pool path as vLLM runs it. The harness's non-inplace contract (update a copy)
        # is vLLM's inplace update applied to a clone; vLLM's own inplace=False would write
        # per-token states to a new [T, ...] buffer instead of the pool.
        # Assumptions, from the kernel source: 1-D indices with T > 1 write token t's state
        # to idx[n + t] (vLLM's documented limitation); newest vLLM reads slot <= 0 as
        # NULL_BLOCK_ID (skipped, zero output), older ones slot < 0 (skipped, output left
        # uninitialised). pad_slot_id is not a vLLM argument here.
        pool = initial_state if inplace_final_state else initial_state.clone()
        o, _ = call(q, k, v, extra, pool, True, cu_seqlens, ssm_state_indices, num_accepted_tokens)
        return o.to(v.dtype), pool

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None,
                                         output_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                         num_accepted_tokens=None, inplace_final_state=False,
                                         use_qk_l2norm_in_kernel=False, state_layout="vk",
                                         pad_slot_id=PAD_SLOT_ID):
        _check_vk(state_layout)
        fn = _vllm()["fused_recurrent_gated_delta_rule"]

        def call(q, k, v, x, h0, inplace, cu, idx, acc):
            return fn(q=q, k=k, v=v, g=x["g"], beta=x["beta"], scale=scale, initial_state=h0,
                      inplace_final_state=inplace, cu_seqlens=cu, ssm_state_indices=idx,
                      num_accepted_tokens=acc, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        return self._recurrent(call, q, k, v, dict(g=g, beta=beta), initial_state, output_final_state, cu_seqlens,
                               ssm_state_indices, num_accepted_tokens, inplace_final_state)

    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, beta: float = 1.0,
                                               threshold: float = 20.0, scale=None, initial_state=None,
                                               inplace_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                               num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                                               state_layout="vk"):
        # a, b [T, HV] are indexed by vLLM at bos * HV (`.contiguous()` inside); they ride
        # along as [B, T, HV] views only so that _per_sequence can flatten them with q.
        _check_vk(state_layout)
        fn = _vllm()["fused_sigmoid_gating_delta_rule_update"]
        HV = v.shape[2]
        shape = (*q.shape[:2], HV)

        def call(q, k, v, x, h0, inplace, cu, idx, acc):
            # Newest vLLM materialises o in fp32 when the state is fp32; cast to v.dtype below
            # (what its layer does when it copies o into core_attn_out).
            return fn(A_log=A_log, a=x["a"].reshape(-1, HV), b=x["b"].reshape(-1, HV), dt_bias=dt_bias,
                      q=q, k=k, v=v, beta=beta, threshold=threshold, scale=scale, initial_state=h0,
                      inplace_final_state=inplace, cu_seqlens=cu, ssm_state_indices=idx,
                      num_accepted_tokens=acc, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        return self._recurrent(call, q, k, v, dict(a=a.reshape(shape), b=b.reshape(shape)), initial_state, True,
                               cu_seqlens, ssm_state_indices, num_accepted_tokens, inplace_final_state)

    def fused_recurrent_gated_delta_rule_packed_decode(self, mixed_qkv, a, b, A_log, dt_bias, scale, initial_state,
                                                       out, ssm_state_indices, use_qk_l2norm_in_kernel=True,
                                                       state_layout="vk"):
        # Same arguments as vLLM's; vLLM's kernel multiplies by `scale` unconditionally, so the
        # reference's default (None -> K ** -0.5, what vLLM's layer passes) is filled in here.
        _check_vk(state_layout)
        fn = _vllm()["fused_recurrent_gated_delta_rule_packed_decode"]
        if scale is None:
            scale = initial_state.shape[-1] ** -0.5
        fn(mixed_qkv=mixed_qkv, a=a, b=b, A_log=A_log, dt_bias=dt_bias, scale=scale, initial_state=initial_state,
           out=out, ssm_state_indices=ssm_state_indices, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        return out

    # ------------------------------------------------------------------ conv
    def causal_conv1d_fn(self, x, weight, bias, conv_states, query_start_loc, cache_indices=None,
                         has_initial_state=None, activation="silu", pad_slot_id: int = PAD_SLOT_ID):
        # Same arguments as vLLM's. Its kernel dereferences cache_indices and
        # has_initial_state unconditionally, so the reference's defaults (slot i, no initial
        # state) are made explicit. x must be a channel-last [dim, T] view and conv_states
        # the transposed view of a token-first cache (vLLM asserts stride(1) == 1). PAD rows
        # of the result are whatever vLLM leaves there (uninitialised memory).
        fn = _vllm()["conv_fn"]
        N = query_start_loc.shape[0] - 1
        if cache_indices is None:
            cache_indices = _ids(list(range(N)), x.device)
        if has_initial_state is None:
            has_initial_state = torch.zeros(N, dtype=torch.bool, device=x.device)
        return fn(x=x, weight=weight, bias=bias, conv_states=conv_states, query_start_loc=query_start_loc,
                  cache_indices=cache_indices,
                  has_initial_state=has_initial_state, activation=activation, pad_slot_id=pad_slot_id)

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                             num_accepted_tokens=None, query_start_loc=None, pad_slot_id: int = PAD_SLOT_ID):
        # Varlen input: vLLM takes the batch from conv_state_indices (required) and the
        # window from max_query_len; its kernel revises the window per sequence
        # (state_len - (max_query_len - L_i)), so the longest sequence's length gives what
        # vLLM's layer gets from num_spec + 1. PAD rows are returned as vLLM leaves them
        # (x itself in mainline, uninitialised in the eagle-tree variant).
        fn = _vllm()["conv_update"]
        kwargs = dict(bias=bias, activation=activation, conv_state_indices=conv_state_indices,
                      num_accepted_tokens=num_accepted_tokens, pad_slot_id=pad_slot_id)
        if query_start_loc is not None:
            lens = query_start_loc.diff().tolist()
            if conv_state_indices is None:
                kwargs["conv_state_indices"] = _ids(list(range(len(lens))), x.device)
            kwargs.update(query_start_loc=query_start_loc, max_query_len=int(max(lens, default=0)))
        return fn(x=x, conv_state=conv_state, weight=weight, **kwargs)

    # ------------------------------------------------------------------ norm
    def rms_norm_gated(self, x, weight, z=None, eps: float = 1e-6, group_size=None, norm_before_gate: bool = True,
                       activation: str = "silu", out_dtype=None):
        # fla's layernorm_guard (what Qwen's RMSNormGated.forward_cuda calls): fp32 math, one
        # store in x.dtype; `activation` is passed only when not silu, so older copies without
        # the argument still serve the silu case. out_dtype other than x.dtype goes through
        # layer_norm_fwd's `out` buffer (the kernel stores in the buffer's dtype).
        f = _vllm()
        act = {} if activation in ("silu", "swish") else dict(activation=activation)
        if out_dtype is not None and out_dtype != x.dtype:
            if f["layer_norm_fwd"] is None:
                raise NotImplementedError("this vLLM has no layernorm_guard.layer_norm_fwd to store in out_dtype")
            N = x.shape[-1]
            x2 = x.reshape(-1, N).contiguous()
            y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
            z2 = None if z is None else z.reshape(-1, N).contiguous()
            f["layer_norm_fwd"](x=x2, weight=weight.contiguous(), bias=None, eps=eps, z=z2, out=y,
                                group_size=group_size, norm_before_gate=norm_before_gate, is_rms_norm=True, **act)
            return y.reshape(x.shape)
        if f["rmsnorm_fn"] is not None:
            return f["rmsnorm_fn"](x=x, weight=weight, bias=None, z=z, eps=eps, group_size=group_size,
                                   norm_before_gate=norm_before_gate, **act)
        if act:
            raise NotImplementedError(f"vLLM's mamba layernorm_gated has a silu gate only, not {activation!r}")
        return f["rms_norm_gated"](x=x, weight=weight, bias=None, z=z, eps=eps, group_size=group_size,
                                   norm_before_gate=norm_before_gate)
