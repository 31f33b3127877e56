"""Fake kernel modules with the exact signatures of FlashInfer 0.7.2.post1's GDN entry points,
SGLang 0.5.23's GDN kernel objects and vLLM 0.33's FlashInfer prefill glue, computed with the
harness's reference ops - so the CPU tests check the adapters' argument conversion (gate
domain, layouts, slots, PAD conventions, spec bookkeeping) against the oracle. Each fake keeps
its package's documented conventions: FlashInfer's chunk takes the linear-space gate alpha and
q / k ``[T, H, D]``; its bf16 decode redirects index -1 to pool row 0 while the fp32 one skips
it; its MTP indexes ``intermediate_states_buffer`` by batch row; SGLang's Triton kernels skip
only the state load / store of a row with slot < 0.
"""
from __future__ import annotations

import types
from enum import Enum
from typing import Optional

import torch

from harness import reference as ref

F32 = torch.float32


# ------------------------------------------------------------------ shared: rows through the oracle
def _rows(q, k, v, g, beta, states, scale, norm):
    """Per row n of ``[B, T, ...]`` inputs from state ``states[n]`` ([HV, V, K]; None: zeros):
    (o [B, T, HV, V] fp32, per-token states [B, T, HV, V, K] fp32)."""
    B, T = q.shape[:2]
    HV, V, K = v.shape[2], v.shape[3], q.shape[3]
    o = torch.zeros(B, T, HV, V, dtype=F32, device=q.device)
    hs = torch.zeros(B, T, HV, V, K, dtype=F32, device=q.device)
    for n in range(B):
        S = (torch.zeros(HV, V, K, dtype=F32) if states[n] is None else states[n].float())[None]
        for t in range(T):
            sl = slice(t, t + 1)
            ot, S = ref.recurrent_gated_delta_rule(
                q[n:n + 1, sl], k[n:n + 1, sl], v[n:n + 1, sl], g[n:n + 1, sl].float(), beta[n:n + 1, sl].float(),
                scale=scale, initial_state=S, output_final_state=True, use_qk_l2norm_in_kernel=norm)
            S = S.float()
            o[n, t], hs[n, t] = ot[0, 0].float(), S[0]
    return o, hs


def _gates(A_log, a, dt_bias, b):
    g, beta = ref.fused_gdn_gating(A_log, a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dt_bias)
    return g.reshape(a.shape), beta.reshape(b.shape)


# ------------------------------------------------------------------ FlashInfer 0.7.2.post1
def fi_chunk_gated_delta_rule(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                              cu_seqlens=None, use_qk_l2norm_in_kernel=False, output=None, output_state=None,
                              state_checkpoints=None, checkpoint_cu_starts=None, checkpoint_every_n_tokens=0,
                              use_cp="auto", state_indices=None, _cp_chunk_len=None, backend="auto",
                              max_seqlen=None):
    assert cu_seqlens is not None, "cu_seqlens is required for varlen mode"
    # FlashInfer's documented contract (gdn_prefill.py, _cake_gdn_prefill_seq_lens checks it)
    assert int(cu_seqlens[-1]) == q.shape[0], "GDN non-CP prefill requires cu_seqlens spanning all input tokens"
    assert q.dim() == 3 and g.dtype == F32 and beta.dtype == F32
    HV, D = v.shape[1], q.shape[2]
    assert v.shape[2] == D, "state is [.., head_size, head_size]"
    N = cu_seqlens.shape[0] - 1
    log_g = torch.log(g)                              # FlashInfer's g is the decay alpha
    if use_qk_l2norm_in_kernel:                      # outside the kernel, rounded back to the input dtype
        q, k = ref.l2norm(q).to(q.dtype), ref.l2norm(k).to(k.dtype)
    h0 = initial_state if state_indices is None else initial_state[state_indices.long()]
    o, final = ref.chunk_gated_delta_rule(q[None], k[None], v[None], log_g[None], beta[None], scale=scale,
                                          initial_state=None if h0 is None else h0.float(), output_final_state=True,
                                          cu_seqlens=cu_seqlens)
    if checkpoint_every_n_tokens:
        cu = [int(c) for c in cu_seqlens.tolist()]
        for n, (bos, eos) in enumerate(zip(cu, cu[1:])):
            for c in range((eos - bos) // checkpoint_every_n_tokens):
                end = bos + (c + 1) * checkpoint_every_n_tokens
                _, st = ref.chunk_gated_delta_rule(
                    q[None, bos:end], k[None, bos:end], v[None, bos:end], log_g[None, bos:end], beta[None, bos:end],
                    scale=scale, initial_state=None if h0 is None else h0[n:n + 1].float(), output_final_state=True)
                state_checkpoints[int(checkpoint_cu_starts[n]) + c] = st[0].to(state_checkpoints.dtype)
    out = o[0].to(q.dtype)
    if output_state is None:
        output_state = torch.empty(N, HV, D, D, dtype=F32)
    if state_indices is None:
        output_state.copy_(final.to(output_state.dtype))
    else:
        output_state[state_indices.long()] = final.to(output_state.dtype)
    return (out, output_state) if output_final_state else out


def fi_gated_delta_rule_decode_pretranspose(q, k, v, state, A_log, a, dt_bias, b, scale=None, output=None,
                                            use_qk_l2norm=True, initial_state=None, initial_state_indices=None,
                                            output_state_indices=None, intermediate_states_buffer=None,
                                            disable_state_update=False, backend="auto"):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    assert initial_state is not None and initial_state.shape == (initial_state.shape[0], HV, V, K)
    assert dt_bias.dtype in (torch.bfloat16, F32) and A_log.dtype == F32
    if initial_state.dtype == torch.bfloat16:
        assert K == V == 128
        read = initial_state_indices.clamp(min=0)          # -1 -> the null row 0
        write = read if output_state_indices is None else output_state_indices.clamp(min=0)
        g, beta = _gates(A_log, a, dt_bias, b)
        o, hs = _rows(q, k, v, g, beta, [initial_state[int(r)] for r in read], scale, use_qk_l2norm)
        if intermediate_states_buffer is not None:
            intermediate_states_buffer[:, :T] = hs.to(intermediate_states_buffer.dtype)
        if not disable_state_update:
            for n in range(B):
                initial_state[int(write[n])] = hs[n, -1].to(initial_state.dtype)
        return o.to(q.dtype), initial_state
    assert initial_state.dtype == F32
    if T > 1:
        return fi_gated_delta_rule_mtp(q, k, v, initial_state, initial_state_indices, A_log, a, dt_bias, b, scale,
                                       output, intermediate_states_buffer, None, disable_state_update, use_qk_l2norm,
                                       output_state_indices)
    assert K >= 128 and V >= 128
    return _fp32_pool(q, k, v, initial_state, initial_state_indices, output_state_indices, A_log, a, dt_bias, b,
                      scale, use_qk_l2norm, None, None, False)


def _fp32_pool(q, k, v, pool, read, write, A_log, a, dt_bias, b, scale, norm, buf, per_token, disable):
    """FlashInfer's fp32 pool semantics: a negative read index skips the row (output zero)."""
    B, T = q.shape[:2]
    g, beta = _gates(A_log, a, dt_bias, b)
    live = [n for n in range(B) if int(read[n]) >= 0]
    o = torch.zeros(B, T, v.shape[2], v.shape[3], dtype=F32)
    if live:
        ol, hs = _rows(q[live], k[live], v[live], g[live], beta[live], [pool[int(read[n])] for n in live],
                       scale, norm)
        o[live] = ol
        for j, n in enumerate(live):
            if buf is not None:
                buf[n, :T] = hs[j]                         # by batch row, not by pool slot
            if per_token is not None:
                for t in range(T):
                    if int(per_token[n, t]) >= 0:
                        pool[int(per_token[n, t])] = hs[j, t]
            elif not disable:
                w = int(read[n] if write is None else write[n])
                if w >= 0:
                    pool[w] = hs[j, -1]
    return o.to(torch.bfloat16).to(q.dtype), pool          # the kernel writes bf16


def fi_gated_delta_rule_mtp(q, k, v, initial_state, initial_state_indices, A_log, a, dt_bias, b, scale=None,
                            output=None, intermediate_states_buffer=None, ssm_state_indices=None,
                            disable_state_update=None, use_qk_l2norm=True, output_state_indices=None,
                            cache_replayssm=False, replayssm_rawv=None, replayssm_rawk=None, replayssm_g=None,
                            replayssm_beta=None):
    disable_state_update = True if disable_state_update is None else disable_state_update
    assert initial_state.dtype == F32 and q.shape[-1] >= 128 and v.shape[-1] >= 128
    assert A_log.dtype == F32, f"A_log must be float32, got {A_log.dtype}"      # as FlashInfer's
    if ssm_state_indices is not None:
        assert intermediate_states_buffer is None and not disable_state_update
        assert ssm_state_indices.dtype == torch.int32 and ssm_state_indices.shape == q.shape[:2]
    if intermediate_states_buffer is not None:
        assert intermediate_states_buffer.shape[0] >= q.shape[0] and intermediate_states_buffer.dtype == F32
    return _fp32_pool(q, k, v, initial_state, initial_state_indices, output_state_indices, A_log, a, dt_bias, b,
                      scale, use_qk_l2norm, intermediate_states_buffer, ssm_state_indices, disable_state_update)


def fi_gated_delta_rule_decode(q, k, v, state, A_log, a, dt_bias, b, scale=None, output=None, use_qk_l2norm=True,
                               backend="auto"):
    B, T, H, K = q.shape
    assert T == 1 and state.dtype == F32 and state.shape == (B, v.shape[2], K, v.shape[3])   # K-major
    g, beta = _gates(A_log, a, dt_bias, b)
    o, hs = _rows(q, k, v, g, beta, [state[n].transpose(-1, -2) for n in range(B)], scale, use_qk_l2norm)
    state.copy_(hs[:, -1].transpose(-1, -2))
    return o.to(torch.bfloat16).to(q.dtype), state


def flashinfer_modules():
    return dict(prefill=types.SimpleNamespace(chunk_gated_delta_rule=fi_chunk_gated_delta_rule),
                decode=types.SimpleNamespace(gated_delta_rule_decode_pretranspose=fi_gated_delta_rule_decode_pretranspose,
                                             gated_delta_rule_mtp=fi_gated_delta_rule_mtp,
                                             gated_delta_rule_decode=fi_gated_delta_rule_decode))


# ------------------------------------------------------------------ SGLang 0.5.23
class LinearAttnKernelBackend(Enum):
    TRITON = "triton"
    FLASHINFER = "flashinfer"

    def is_triton(self):
        return self == LinearAttnKernelBackend.TRITON

    def is_flashinfer(self):
        return self == LinearAttnKernelBackend.FLASHINFER


class TritonGDNKernel:
    """SGLang's TritonGDNKernel entry points over the oracle (a row with slot < 0 runs from zeros,
    its state untouched)."""
    supports_packed_decode = True

    def _pool_rows(self, q, k, v, g, beta, pool, idx, qsl, scale=None, write=True, buf=None, buf_idx=None):
        cu = [int(c) for c in qsl.tolist()]
        o = torch.zeros(v.shape, dtype=F32)
        for n, (bos, eos) in enumerate(zip(cu, cu[1:])):
            s = int(idx[n])
            sl = slice(bos, eos)
            on, hs = _rows(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], [pool[s] if s >= 0 else None],
                           scale, True)
            o[0, sl] = on[0]
            if buf is not None and int(buf_idx[n]) >= 0:
                buf[int(buf_idx[n]), :eos - bos] = hs[0].to(buf.dtype)
            if write and s >= 0:
                pool[s] = hs[0, -1].to(pool.dtype)
        return o.to(q.dtype)

    def decode(self, q, k, v, a, b, *, A_log, dt_bias, ssm_states, cache_indices, query_start_loc, **kwargs):
        g, beta = _gates(A_log, a, dt_bias, b)
        return self._pool_rows(q, k, v, g[None], beta[None], ssm_states, cache_indices, query_start_loc)

    def extend(self, q, k, v, g, beta, *, ssm_states, cache_indices, query_start_loc, inplace_update=True, **kwargs):
        o = self._pool_rows(q, k, v, g, beta, ssm_states, cache_indices, query_start_loc)
        return o, None, None

    def target_verify(self, A_log, dt_bias, q, k, v, a, b, *, ssm_states, cache_indices, query_start_loc,
                      intermediate_states_buffer, intermediate_state_indices, cache_steps, retrieve_parent_token,
                      **kwargs):
        g, beta = _gates(A_log, a, dt_bias, b)
        return self._pool_rows(q, k, v, g[None], beta[None], ssm_states, cache_indices, query_start_loc, write=False,
                               buf=intermediate_states_buffer, buf_idx=intermediate_state_indices)

    def packed_decode(self, mixed_qkv, a, b, *, A_log, dt_bias, scale, ssm_states, cache_indices, num_v_heads,
                      head_v_dim, **kwargs):
        out = torch.zeros(mixed_qkv.shape[0], 1, num_v_heads, head_v_dim, dtype=mixed_qkv.dtype)
        live = cache_indices >= 0
        ref.fused_recurrent_gated_delta_rule_packed_decode(mixed_qkv, a, b, A_log, dt_bias, scale, ssm_states, out,
                                                           cache_indices, use_qk_l2norm_in_kernel=True)
        out[~live] = 0
        return out.transpose(0, 1)


# GDNKernelDispatcher's routing as 0.5.23 writes it (gdn_backend.py:251), Triton / FlashInfer only.
DISPATCHER_SOURCE = '''
class GDNKernelDispatcher:
    def __init__(self, decode_backend: LinearAttnKernelBackend, prefill_backend: LinearAttnKernelBackend,
                 verify_backend: Optional[LinearAttnKernelBackend] = None):
        triton_kernel = TritonGDNKernel()
        self.tree_verify_kernel = triton_kernel
        if decode_backend.is_triton():
            self.decode_kernel = triton_kernel
        else:
            raise ValueError(f"Unsupported GDN decode backend: {decode_backend}")
        if prefill_backend.is_triton():
            self.extend_kernel = triton_kernel
        else:
            raise ValueError(f"Unsupported GDN prefill backend: {prefill_backend}")
        self.verify_kernel = triton_kernel
        self.supports_packed_decode = getattr(self.decode_kernel, "supports_packed_decode", False)
        rank0_log("GDN kernel dispatcher")

    def packed_decode(self, mixed_qkv, a, b, *, A_log, dt_bias, scale, ssm_states, cache_indices, num_v_heads,
                      head_v_dim, **kwargs):
        return self.decode_kernel.packed_decode(mixed_qkv, a, b, A_log=A_log, dt_bias=dt_bias, scale=scale,
                                                ssm_states=ssm_states, cache_indices=cache_indices,
                                                num_v_heads=num_v_heads, head_v_dim=head_v_dim, **kwargs)

    def decode(self, q, k, v, a, b, *, A_log, dt_bias, ssm_states, cache_indices, query_start_loc, **kwargs):
        return self.decode_kernel.decode(q, k, v, a, b, A_log=A_log, dt_bias=dt_bias, ssm_states=ssm_states,
                                         cache_indices=cache_indices, query_start_loc=query_start_loc, **kwargs)

    def extend(self, q, k, v, g, beta, *, ssm_states, cache_indices, query_start_loc, **kwargs):
        return self.extend_kernel.extend(q, k, v, g, beta, ssm_states=ssm_states, cache_indices=cache_indices,
                                         query_start_loc=query_start_loc, **kwargs)

    def target_verify(self, A_log, dt_bias, q, k, v, a, b, *, ssm_states, cache_indices, query_start_loc, **kwargs):
        return self.verify_kernel.target_verify(A_log=A_log, dt_bias=dt_bias, q=q, k=k, v=v, a=a, b=b,
                                                ssm_states=ssm_states, cache_indices=cache_indices,
                                                query_start_loc=query_start_loc, **kwargs)
'''


def sglang_modules():
    def gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        g, bt = ref.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
        return g.float()[None], bt.float()[None]
    return dict(triton=types.SimpleNamespace(TritonGDNKernel=TritonGDNKernel),
                utils=types.SimpleNamespace(LinearAttnKernelBackend=LinearAttnKernelBackend),
                common=types.SimpleNamespace(is_cuda=lambda: False, is_xpu=lambda: False),
                gating=types.SimpleNamespace(fused_gdn_gating=gating), dispatcher_source=DISPATCHER_SOURCE)


# ------------------------------------------------------------------ vLLM 0.33 FlashInfer prefill glue
# fi_chunk_gated_delta_rule verbatim from vLLM 0.33.0's qwen_gdn_linear_attn.py (Apache-2.0),
# and _resolve_gdn_prefill_backend's CUDA branch.
VLLM_LAYER_SOURCE = '''
def _resolve_gdn_prefill_backend(vllm_config):
    backend = str(vllm_config.additional_config.get("gdn_prefill_backend", "auto")).strip().lower()
    head_k_dim = getattr(vllm_config.model_config.hf_text_config, "linear_key_head_dim", None)
    if not current_platform.is_cuda():
        return backend, "triton"
    supports_flashinfer = False
    if current_platform.is_device_capability(90):
        supports_flashinfer = True
    if backend in ["flashinfer", "auto"] and supports_flashinfer:
        return backend, "flashinfer"
    return backend, "triton"


def fi_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = True,
    state_checkpoints: torch.Tensor | None = None,
    checkpoint_cu_starts: torch.Tensor | None = None,
    checkpoint_every_n_tokens: int = 0,
    use_cp: Literal["auto"] | bool = "auto",
):
    from flashinfer.gdn_prefill import (
        chunk_gated_delta_rule as chunk_gated_delta_rule_fi,
    )

    if use_qk_l2norm_in_kernel:
        q = l2norm_fwd(q)
        k = l2norm_fwd(k)

    # use flashinfer implementation
    q = q.squeeze(0).contiguous()
    k = k.squeeze(0).contiguous()
    v = v.squeeze(0).contiguous()

    g = g.squeeze(0).contiguous()
    beta = beta.squeeze(0).contiguous()
    fi_state = initial_state.to(torch.float32)
    fi_g = g.to(torch.float32)
    fi_beta = beta.to(torch.float32)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int64)
    result = chunk_gated_delta_rule_fi(
        q=q,
        k=k,
        v=v,
        g=torch.exp(fi_g),
        beta=fi_beta,
        initial_state=fi_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        state_checkpoints=state_checkpoints,
        checkpoint_cu_starts=checkpoint_cu_starts,
        checkpoint_every_n_tokens=checkpoint_every_n_tokens,
        use_cp=use_cp,
        backend="flashinfer",
    )
    # FlashInfer returns (output, state) when output_final_state=True,
    # or just output when output_final_state=False.
    # Unsqueeze back to 4D (1, L, H, D) to match fla output format
    if output_final_state:
        output, final_state = result
        return output.unsqueeze(0), final_state
    else:
        return result.unsqueeze(0), None
'''


class FakePlatform:
    """vllm.platforms.current_platform of a CUDA device of compute capability `cc`."""

    def __init__(self, cc: int = 90):
        self.cc = cc

    def is_cuda(self):
        return True

    def is_device_capability(self, cc):
        return cc == self.cc


def vllm_modules():
    def l2norm_fwd(x, eps: float = 1e-6, output_dtype: Optional[torch.dtype] = None):
        x.view(-1, x.shape[-1])      # as vLLM's l2norm_fwd: a strided split raises here
        return ref.l2norm(x, eps).to(output_dtype or x.dtype)
    return dict(l2norm=types.SimpleNamespace(l2norm_fwd=l2norm_fwd),
                ops=types.SimpleNamespace(chunk_gated_delta_rule=None))


def fake_flashinfer_package():
    """A `flashinfer` package of the fakes, for sys.modules (vLLM's wrapper imports it inside)."""
    import importlib.machinery
    pkg = types.ModuleType("flashinfer")
    pkg.__spec__ = importlib.machinery.ModuleSpec("flashinfer", None)
    pkg.gdn_prefill = types.ModuleType("flashinfer.gdn_prefill")
    pkg.gdn_prefill.__spec__ = importlib.machinery.ModuleSpec("flashinfer.gdn_prefill", None)
    pkg.gdn_prefill.chunk_gated_delta_rule = fi_chunk_gated_delta_rule
    return pkg


# ------------------------------------------------------------------ backends over the fakes
# (loadable as ``--backend tests.fastpath_fakes:<name>``; the devices widened to the CPU)
def _on_cpu(b):
    b.devices = ("cpu", "cuda")
    return b


def fake_flashinfer(variant=None):
    from harness.optimized.flashinfer_backend import FlashinferBackend
    return _on_cpu(FlashinferBackend(variant=variant, modules=flashinfer_modules()))


def fake_flashinfer_pool():
    return fake_flashinfer("pool")


def fake_flashinfer_mtp_buffer():
    return fake_flashinfer("mtp-buffer")


def fake_flashinfer_kmajor():
    return fake_flashinfer("kmajor")


def fake_sglang():
    from harness.optimized.sglang_backend import SglangBackend
    return _on_cpu(SglangBackend(variant="triton", modules=sglang_modules()))


def fake_vllm_flashinfer(layer_source: str = VLLM_LAYER_SOURCE, cc: int = 90, variant="flashinfer"):
    from harness.optimized.vllm_backend import VllmBackend
    return _on_cpu(VllmBackend(variant=variant, modules=vllm_modules(), layer_source=layer_source,
                               platform=FakePlatform(cc)))


# ------------------------------------------------------------------ planted conversion bugs
# (harness.faults.fastpath_mutants over the fakes)
def flashinfer_gate_unconverted():
    from harness.faults.fastpath_mutants import FiGateLogAsLinear
    return _on_cpu(FiGateLogAsLinear(modules=flashinfer_modules()))


def flashinfer_null_row_unshifted():
    from harness.faults.fastpath_mutants import FiNullRowUnshifted
    return _on_cpu(FiNullRowUnshifted(modules=flashinfer_modules()))


def flashinfer_chunk_zero_initial_state():
    from harness.faults.fastpath_mutants import FiChunkZeroInitialState
    return _on_cpu(FiChunkZeroInitialState(modules=flashinfer_modules()))


def sglang_verify_reads_column_0():
    from harness.faults.fastpath_mutants import SglangVerifyReadsColumn0
    return _on_cpu(SglangVerifyReadsColumn0(variant="triton", modules=sglang_modules()))


def vllm_wrapper_gate_not_exp():
    from harness.faults.fastpath_mutants import VllmFiWrapperGateNotExp
    return _on_cpu(VllmFiWrapperGateNotExp(modules=vllm_modules(), layer_source=VLLM_LAYER_SOURCE,
                                           platform=FakePlatform(90)))


# ------------------------------------------------------------------ vLLM 0.33's weight loaders
class FakeMergedColumnParallelLinear(torch.nn.Module):
    """vLLM 0.33's ``MergedColumnParallelLinear`` as its ``weight_loader(self, param,
    loaded_weight, loaded_shard_id=None)`` uses it: ``output_sizes`` (global), ``tp_rank``,
    ``tp_size``, ``param.output_dim``. Shard id None: the checkpoint tensor is fused on disk
    and each output size is loaded as its own shard; an int: that output size's rows, the
    rank's 1/tp slice of them, at the section's offset inside the rank's parameter."""

    def weight_loader(self, param, loaded_weight, loaded_shard_id=None):
        dim = param.output_dim
        if loaded_shard_id is None:
            at = 0
            for i, size in enumerate(self.output_sizes):
                self.weight_loader(param, loaded_weight.narrow(dim, at, size), i)
                at += size
            return
        size = self.output_sizes[loaded_shard_id] // self.tp_size
        offset = sum(self.output_sizes[:loaded_shard_id]) // self.tp_size
        param.data.narrow(dim, offset, size).copy_(loaded_weight.narrow(dim, self.tp_rank * size, size))


class FakeMergedTwoShards(FakeMergedColumnParallelLinear):
    """vllm #35504's kind of loader bug: a fused interleaved weight (one output size) loaded
    as two equal shards, each sliced per rank - in_proj_ba as the flat layout's [b | a]
    (and in_proj_qkvz likewise cut in halves)."""

    def weight_loader(self, param, loaded_weight, loaded_shard_id=None):
        if loaded_shard_id is None and len(self.output_sizes) == 1:
            self.output_sizes = [self.output_sizes[0] // 2] * 2
        return super().weight_loader(param, loaded_weight, loaded_shard_id)


def fake_mamba_v2_sharded_weight_loader(shard_spec, tp_size, tp_rank):
    """vLLM 0.33's ``mamba_v2_sharded_weight_loader(shard_spec, tp_size, tp_rank)`` -> loader(param,
    loaded_weight): per (full_dim, extra, duplicate_groups) section, the rank's (or rank 0's
    when duplicated) 1/tp rows, packed section after section along dim 0."""
    def loader(param, loaded_weight):
        at, src = 0, 0
        for full_dim, extra, duplicate in shard_spec:
            size = (full_dim + extra) // tp_size
            rank = 0 if duplicate else tp_rank
            take = min(size, full_dim - rank * size)
            param.data[at:at + take] = loaded_weight[src + rank * size:src + rank * size + take]
            at += size
            src += full_dim - extra
    return loader


def vllm_loaders(merged=FakeMergedColumnParallelLinear):
    return dict(merged=merged, mamba_v2=fake_mamba_v2_sharded_weight_loader, version="0.33.0 (fake loaders)")
