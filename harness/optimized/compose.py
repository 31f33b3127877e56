"""A GDN layer step run through a backend's ops, composed the way vLLM's layer does it.

Spec-decode tokens (and zero-draft decodes reading at an accepted offset) and non-spec
tokens are gathered apart; the conv runs as
causal_conv1d_update (spec window) and as causal_conv1d_fn (when the non-spec part has a
prefill) or causal_conv1d_update (decodes only); the delta rule as the fused recurrent
update (spec; decodes, by the chosen decode path) and the chunked kernel with gathered,
zeroed-where-fresh initial states (prefill); then RMSNormGated and out_proj. `ops` is
any object with the op methods (a backend with the reference filling its gaps).
"""
from __future__ import annotations

import itertools
from typing import Dict, List

import torch

from harness.layouts.projection import qkv_to_mixed, split_mixed_qkv
from harness.layouts.tp import RankParams, local_mixed_ba
from harness.layouts.transfer import as_device_tensor
from harness.reference.layer import migrate_spec_state
from harness.batch import PAD_SLOT_ID, CoreBatch, EntryPlan
from harness.config import NormConfig


# Batch metadata is built on the host and copied without waiting for the GPU, as an engine does.
def _tokens(entries: List[EntryPlan], device) -> torch.Tensor:
    return as_device_tensor([t for e in entries for t in range(e.bos, e.eos)], torch.long, device)


def _qsl(entries: List[EntryPlan], device) -> torch.Tensor:
    return as_device_tensor(list(itertools.accumulate([e.tokens for e in entries], initial=0)), torch.int32, device)


def _ids(values, device) -> torch.Tensor:
    return as_device_tensor(values, torch.int32, device)


def backend_step(ops, p: RankParams, mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor,
                 entries: List[EntryPlan], conv_state: torch.Tensor, ssm_state: torch.Tensor,
                 norm: NormConfig, ssm_state_layout: str = "vk", decode_path: str = "recurrent",
                 core_entry=None, num_spec: int = 0) -> Dict[str, torch.Tensor]:
    """One rank's step. conv_state is a ``[slots, dim, L]`` view (any strides), ssm_state
    the pool in `ssm_state_layout`; both are updated in place. Returns q..a (unpacked
    projections), core ``[T, HV, V]``, normed, out (partial on TP ranks)."""
    dev, T, loc = mixed_qkvz.device, mixed_qkvz.shape[0], p.local
    migrate_spec_state(entries, conv_state, ssm_state, p.conv_weight.shape[1])   # the engine's, not the backend's
    mixed_ba = local_mixed_ba(p, mixed_ba)
    q, k, v, z, b, a = ops.unpack_qkvz_ba(mixed_qkvz, mixed_ba, loc, p.layout)
    if core_entry is not None:
        core = core_entry(mixed_qkvz, mixed_ba, p, CoreBatch.from_plan(entries, num_spec, dev), conv_state,
                          ssm_state, norm)
    else:
        core = core_step(ops, p, qkv_to_mixed(q, k, v), a, b, entries, conv_state, ssm_state,
                     ssm_state_layout, decode_path, T, dev)
    normed = ops.rms_norm_gated(core.reshape(-1, loc.V), p.norm_weight, z.reshape(-1, loc.V), eps=norm.eps,
                                group_size=norm.group_size, norm_before_gate=norm.norm_before_gate,
                                activation=norm.activation).reshape(T, -1)
    return dict(q=q, k=k, v=v, z=z, b=b, a=a, core=core, normed=normed, out=normed @ p.out_proj.T)


def core_step(ops, p, mixed_qkv, a, b, entries, conv_state, ssm_state, layout, decode_path, T, dev):
    loc = p.local
    core = torch.zeros(T, loc.HV, loc.V, dtype=mixed_qkv.dtype, device=dev)
    # zero-draft decodes after accepted drafts read at an offset: the spec path's calls
    spec = [e for e in entries if e.spec_read]
    rest = [e for e in entries if not e.spec_read]
    dl = dict(use_qk_l2norm_in_kernel=True, state_layout=layout)
    if spec:
        tok, qsl = _tokens(spec, dev), _qsl(spec, dev)
        acc = _ids([e.num_accepted for e in spec], dev)
        x = ops.causal_conv1d_update(mixed_qkv[tok], conv_state, p.conv_weight, p.conv_bias, "silu",
                                     conv_state_indices=_ids([e.conv_slot for e in spec], dev),
                                     num_accepted_tokens=acc, query_start_loc=qsl)
        q, k, v = split_mixed_qkv(x, loc)
        slots = _ids([e.ssm_slots for e in spec], dev)
        if decode_path == "sigmoid_gating":
            o, _ = ops.fused_sigmoid_gating_delta_rule_update(
                p.A_log, a[tok], b[tok], p.dt_bias, q[None], k[None], v[None], initial_state=ssm_state,
                inplace_final_state=True, cu_seqlens=qsl, ssm_state_indices=slots, num_accepted_tokens=acc, **dl)
        else:
            g, beta = ops.fused_gdn_gating(p.A_log, a[tok], b[tok], p.dt_bias)
            o, _ = ops.fused_recurrent_gated_delta_rule(
                q[None], k[None], v[None], g[None], beta[None], initial_state=ssm_state, inplace_final_state=True,
                cu_seqlens=qsl, ssm_state_indices=slots, num_accepted_tokens=acc, **dl)
        core[tok] = o[0].to(core.dtype)
    if rest:
        core[_tokens(rest, dev)] = _non_spec(ops, p, mixed_qkv, a, b, rest, conv_state, ssm_state,
                                             dl, decode_path, dev).to(core.dtype)
    return core


def _non_spec(ops, p, mixed_qkv, a, b, rest, conv_state, ssm_state, dl, decode_path, dev):
    loc = p.local
    tok, qsl = _tokens(rest, dev), _qsl(rest, dev)
    slots = [e.conv_slot for e in rest]
    x = mixed_qkv[tok]
    prefill = any(e.kind == "prefill" for e in rest)
    if prefill:
        # Decodes ride along as 1-token sequences with history (vLLM's mixed batches).
        has_init = as_device_tensor([e.has_initial_state for e in rest], torch.bool, dev)
        x = ops.causal_conv1d_fn(x.T, p.conv_weight, p.conv_bias, conv_state, qsl,
                                 cache_indices=_ids(slots, dev), has_initial_state=has_init, activation="silu").T
    else:
        x = ops.causal_conv1d_update(x, conv_state, p.conv_weight, p.conv_bias, "silu",
                                     conv_state_indices=_ids(slots, dev))
    q, k, v = split_mixed_qkv(x, loc)
    if prefill:
        g, beta = ops.fused_gdn_gating(p.A_log, a[tok], b[tok], p.dt_bias)
        live = [i for i, s in enumerate(slots) if s != PAD_SLOT_ID]
        init = torch.zeros(len(rest), *ssm_state.shape[1:], dtype=ssm_state.dtype, device=dev)
        for i in live:
            if rest[i].has_initial_state:
                init[i] = ssm_state[slots[i]]
        o, final = ops.chunk_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None], initial_state=init,
                                              output_final_state=True, cu_seqlens=qsl, **dl)
        for i in live:
            ssm_state[slots[i]] = final[i].to(ssm_state.dtype)
        return o[0]
    idx = _ids(slots, dev)
    if decode_path == "packed":
        out = torch.empty(len(rest), 1, loc.HV, loc.V, dtype=mixed_qkv.dtype, device=dev)
        ops.fused_recurrent_gated_delta_rule_packed_decode(
            x, a[tok], b[tok], p.A_log, p.dt_bias, None, ssm_state, out, idx, **dl)
        return out[:, 0]
    if decode_path == "sigmoid_gating":
        o, _ = ops.fused_sigmoid_gating_delta_rule_update(
            p.A_log, a[tok], b[tok], p.dt_bias, q[None], k[None], v[None], initial_state=ssm_state,
            inplace_final_state=True, cu_seqlens=qsl, ssm_state_indices=idx, **dl)
        return o[0]
    g, beta = ops.fused_gdn_gating(p.A_log, a[tok], b[tok], p.dt_bias)
    o, _ = ops.fused_recurrent_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None],
                                                initial_state=ssm_state, inplace_final_state=True, cu_seqlens=qsl,
                                                ssm_state_indices=idx, **dl)
    return o[0]
