"""`flashinfer`: thin adapters over FlashInfer's GDN kernels (flashinfer-python 0.7.2.post1).

Read from 0.7.2.post1's sources (``flashinfer/gdn_prefill.py``, ``flashinfer/gdn_decode.py``);
every import is lazy (`_fi()`), so without FlashInfer (or without a GPU) the backend loads
and `unavailable()` says why. What maps onto what, and what the adapter converts:

- chunk_gated_delta_rule -> ``gdn_prefill.chunk_gated_delta_rule`` (packed THD: q / k / v
  ``[T, H, D]``, ``cu_seqlens`` required; the state ``[N, HV, V, K]``, V-major, with K == V).
  **Gate domain: linear** - FlashInfer takes the decay alpha = exp(g), fp32 ``[T, HV]``;
  the adapter passes ``gate_to("linear", g)`` and beta in fp32. The initial state goes in
  its own dtype and the final state comes back in it (``output_state`` allocated in the
  initial state's dtype: FlashInfer's fp32 / bf16 / fp16 state stores are what is judged).
  ``use_qk_l2norm_in_kernel`` is FlashInfer's own flag (it normalises outside the kernel and
  rounds q / k back to the input dtype). Variant ``pool``: the same call through
  ``state_indices`` on a state pool (sequence n in pool row ``N-1-n``, read and written in
  place; ``output_state is initial_state``).
- fused_sigmoid_gating_delta_rule_update (the decode / spec path with the gating in the
  kernel; **gate domain: in_kernel**, raw a / b with A_log / dt_bias, softplus beta 1,
  threshold 20 built in) on the state pool with ``ssm_state_indices``:
  one-token rows -> ``gdn_decode.gated_delta_rule_decode_pretranspose`` (pool mode,
  ``initial_state_indices`` / ``output_state_indices``); multi-token rows -> the same entry
  point, which routes an fp32 pool to ``gated_delta_rule_mtp`` and a bf16 pool (K = V = 128)
  to the bf16 MTP kernel; spec rows (2-D indices: read slot ``[n, num_accepted-1]``, the
  state after token t to slot ``[n, t]``) -> ``gated_delta_rule_mtp`` with
  ``ssm_state_indices`` (per-token scatter, ``disable_state_update=False``, fp32 pool), or,
  for a bf16 pool and in variant ``mtp-buffer`` (SGLang's way), with the batch-row indexed
  ``intermediate_states_buffer [B, T, HV, V, K]`` and ``disable_state_update=True``, the
  adapter then copying row n's step t to slot ``[n, t]``. ``disable_state_update`` is always
  passed explicitly (its default flips in 0.8.0).
  Slots: FlashInfer's bf16 path redirects index -1 to pool row 0 (a "sacrificial null
  buffer" the caller keeps free), the fp32 path skips -1 rows. The harness numbers slots
  from 0 (slot 0 may be live), so the kernels get a copy of the pool with a null row in
  front (harness slot s is row s + 1; PAD stays -1, FlashInfer's own sentinel) and the
  slots are written back row for row.
- Variant ``kmajor``: the decode through ``gdn_decode.gated_delta_rule_decode`` (K-major
  ``[B, HV, K, V]`` fp32 state, no pool, T = 1): the backend declares ``ssm_state_layout =
  "kv"``; the adapter gathers the rows' states, runs the kernel, scatters them back (PAD rows
  run on a scratch zero state that is dropped); the chunked prefill (V-major) gets its states
  transposed in and out.

Not implemented: the conv, gating, norm and unpack ops (FlashInfer has no GDN kernels for
them: the layer fills them from the reference and the report lists them), and
fused_recurrent_gated_delta_rule (FlashInfer's decode takes raw a / b, not g / beta): the
layer's ``recurrent`` decode path therefore runs the reference decode around FlashInfer's
chunked prefill, so every batch mix judges the prefill.

Shape limits are FlashInfer's: the chunked prefill needs K == V; the decode K, V >= 128
(fp32 state), the bf16 state K = V = 128. Cases outside them skip with the reason.

`FlashinferBackend(modules={"prefill": ..., "decode": ...})` takes replacement modules (the
CPU tests' fake FlashInfer with 0.7.2.post1's signatures; mutation checks).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from harness.batch import PAD_SLOT_ID
from ..errors import InputError
from .api import Backend, gate_to, import_once, package_modules
from .vllm_backend import _with_null_block

MODULES = dict(prefill="flashinfer.gdn_prefill", decode="flashinfer.gdn_decode")
_CACHE: Dict[str, object] = {}
_ERROR: List[str] = []


def _fi() -> Dict[str, object]:
    return import_once(_CACHE, _ERROR, _load)


def _load() -> Dict[str, object]:
    return package_modules("flashinfer", MODULES)


def flat_tokens(q, cu_seqlens):
    """(flatten, cu_seqlens, spans): `flatten` maps a ``[B, T, ...]`` token tensor to the packed
    ``[B*T, ...]`` form; cu_seqlens made explicit for a ``[B, T]`` batch (B sequences of T)."""
    B, T = q.shape[:2]
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=q.device)
    elif B != 1:
        raise InputError("q", "batch size with cu_seqlens", 1, B)
    cu = [int(c) for c in cu_seqlens.tolist()]
    return (lambda t: t.reshape(B * T, *t.shape[2:])), cu_seqlens, list(zip(cu, cu[1:]))


def spec_rows(idx: torch.Tensor, num_accepted, spans):
    """(read slot, write slots) per row of a pool call: 1-D indices read and write ``idx[n]``;
    2-D ones read ``idx[n, num_accepted[n]-1]`` (column 0 without it) and write the state
    after token t to ``idx[n, t]``."""
    rows = idx.tolist()
    if idx.dim() == 1:
        return [(s, [s]) for s in rows]
    out = []
    for n, row in enumerate(rows):
        col = int(num_accepted[n]) - 1 if num_accepted is not None else 0
        if not 0 <= col < len(row):
            raise InputError(f"num_accepted_tokens[{n}]", f"in [1, {len(row)}]", len(row), col + 1)
        L = spans[n][1] - spans[n][0]
        if L > len(row):
            raise InputError("ssm_state_indices", f"columns for {L} tokens of sequence {n}", L, len(row))
        out.append((row[col], row[:L]))
    return out


class FlashinferBackend(Backend):
    name = "flashinfer"
    description = ("FlashInfer 0.7.2's GDN kernels: CuTe DSL chunked prefill (linear-space gate), pretranspose / "
                   "MTP decode on the state pool (gating in the kernel)")
    devices = ("cuda",)
    dtypes = ("bfloat16", "float16")                 # every GDN entry point asserts fp16 / bf16 q
    state_dtypes = ("float32", "bfloat16")
    ssm_state_layout = "vk"
    conv_state_layouts = ("dim_first", "token_first")   # the conv is the reference's
    decode_paths = ("recurrent", "sigmoid_gating")   # recurrent: the reference decode around FlashInfer's prefill
    gate_domains = {"chunk_gated_delta_rule": "linear", "fused_sigmoid_gating_delta_rule_update": "in_kernel"}
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = (
        "FlashInfer 0.7.2's gated_delta_rule_decode_pretranspose: with a bf16 state an index of -1 is redirected "
        "to pool row 0 (a null buffer) and that row's output is 'computed but undefined'; the fp32 path writes "
        "zeros; the K-major decode has no indices (its PAD rows run on a scratch state)")
    variants = {"pool": "chunked prefill through state_indices on a state pool",
                "mtp-buffer": "spec verify through the batch-row intermediate_states_buffer (SGLang's way)",
                "kmajor": "decode through gated_delta_rule_decode, K-major [B, HV, K, V] fp32 state"}

    def __init__(self, variant: Optional[str] = None, modules: Optional[Dict[str, object]] = None):
        self.take_variant(variant)
        self._mods = dict(modules or {})
        if variant == "kmajor":
            self.ssm_state_layout = "kv"
            self.state_dtypes = ("float32",)

    def _m(self, key: str):
        return self._mods[key] if key in self._mods else _fi()[key]

    def unavailable(self, device: str) -> Optional[str]:
        if not self._mods:
            try:
                _fi()
            except ImportError as e:
                return f"FlashInfer is not importable: {e}"
        return super().unavailable(device)

    def describe(self) -> Dict:
        d = super().describe()
        if _CACHE:
            d.update(flashinfer_version=_CACHE.get("version"))
        return d

    # ------------------------------------------------------------------ prefill
    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        if state_layout != self.ssm_state_layout:
            raise InputError("state_layout", "the backend's state layout", self.ssm_state_layout, state_layout)
        K, V = q.shape[-1], v.shape[-1]
        if K != V:
            raise NotImplementedError(f"FlashInfer's GDN prefill state is [.., head_size, head_size]: K={K} != V={V}")
        if chunk_size != 64:
            raise NotImplementedError(f"FlashInfer's chunk size is 64, not {chunk_size}")
        flat, cu, spans = flat_tokens(q, cu_seqlens)
        N, HV = len(spans), v.shape[2]
        h0 = initial_state
        if h0 is not None and state_layout == "kv":            # the prefill kernel is V-major
            h0 = h0.transpose(-1, -2).contiguous()
        dtype = h0.dtype if h0 is not None else torch.float32
        kw = dict(q=flat(q).contiguous(), k=flat(k).contiguous(), v=flat(v).contiguous(),
                  g=gate_to(self.gate_domains["chunk_gated_delta_rule"], flat(g)).contiguous(),
                  beta=flat(beta).float().contiguous(), scale=scale, output_final_state=True, cu_seqlens=cu,
                  use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        fn = self._m("prefill").chunk_gated_delta_rule
        if self.variant == "pool":
            # sequence n lives in pool row N-1-n (a permutation, so an index mix-up shows)
            pool = torch.zeros(N, HV, V, K, dtype=dtype, device=q.device)
            if h0 is not None:
                pool[torch.arange(N - 1, -1, -1, device=q.device)] = h0
            rows = torch.arange(N - 1, -1, -1, dtype=torch.int32, device=q.device)
            o, out = fn(**kw, initial_state=pool, output_state=pool, state_indices=rows)
            final = out[rows.long()]
        else:
            final = torch.empty(N, HV, V, K, dtype=dtype, device=q.device)
            o, final = fn(**kw, initial_state=h0, output_state=final)
        if state_layout == "kv":
            final = final.transpose(-1, -2).contiguous()
        return o.reshape(v.shape), (final if output_final_state else None)

    def chunk_gated_delta_rule_checkpoints(self, q, k, v, g, beta, state_checkpoints, checkpoint_every: int,
                                           scale=None, initial_state=None, cu_seqlens=None,
                                           use_qk_l2norm_in_kernel=False, state_layout="vk"):
        """The API op (reference: `chunk_gated_delta_rule_checkpoints`) over FlashInfer's
        checkpointing prefill: blocks that are not a multiple of its 64-token chunk are not
        offered (skipped with the reason)."""
        if checkpoint_every % 64:
            raise NotImplementedError(f"FlashInfer checkpoints every multiple of 64 tokens, not {checkpoint_every}")
        h0 = None if initial_state is None else (
            initial_state.transpose(-1, -2).contiguous() if state_layout == "kv" else initial_state)
        o, final, ckpt, _ = self.checkpointed_prefill(q, k, v, g, beta, checkpoint_every, scale, h0, cu_seqlens,
                                                      use_qk_l2norm_in_kernel)
        if state_layout == "kv":
            final, ckpt = final.transpose(-1, -2), ckpt.transpose(-1, -2)
        state_checkpoints.copy_(ckpt)
        return o, final.to(initial_state.dtype if initial_state is not None else final.dtype)

    def checkpointed_prefill(self, q, k, v, g, beta, every_n: int, scale=None, initial_state=None,
                             cu_seqlens=None, use_qk_l2norm_in_kernel=False):
        """The prefill with FlashInfer's state checkpoints (``checkpoint_every_n_tokens``, a
        multiple of 64; vLLM's align mode, SGLang's 64-token grid): (o, final, checkpoints, starts)
        where ``checkpoints[starts[n] + c]`` is sequence n's state after its first ``(c+1)*every_n``
        tokens (``len_n // every_n`` of them), in the initial state's dtype (state ``[.., V, K]``)."""
        if every_n <= 0 or every_n % 64:
            raise InputError("every_n", "a positive multiple of FlashInfer's 64-token chunk", "64 * m", every_n)
        flat, cu, spans = flat_tokens(q, cu_seqlens)
        N, HV, V, K = len(spans), v.shape[2], v.shape[3], q.shape[3]
        counts = [(e - b) // every_n for b, e in spans]
        starts = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device=q.device)
        dtype = initial_state.dtype if initial_state is not None else torch.float32
        ckpt = torch.zeros(int(starts[-1]), HV, V, K, dtype=dtype, device=q.device)
        final = torch.empty(N, HV, V, K, dtype=dtype, device=q.device)
        o, final = self._m("prefill").chunk_gated_delta_rule(
            q=flat(q).contiguous(), k=flat(k).contiguous(), v=flat(v).contiguous(),
            g=gate_to(self.gate_domains["chunk_gated_delta_rule"], flat(g)).contiguous(),
            beta=flat(beta).float().contiguous(), scale=scale, initial_state=initial_state, output_final_state=True,
            cu_seqlens=cu, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, output_state=final,
            state_checkpoints=ckpt, checkpoint_cu_starts=starts, checkpoint_every_n_tokens=every_n)
        return o.reshape(v.shape), final, ckpt, starts

    # ------------------------------------------------------------------ decode / spec
    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, beta: float = 1.0,
                                               threshold: float = 20.0, scale=None, initial_state=None,
                                               inplace_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                               num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                                               state_layout="vk", pad_slot_id: int = PAD_SLOT_ID):
        if beta != 1.0 or threshold != 20.0:
            raise NotImplementedError("FlashInfer's in-kernel gate has softplus beta=1, threshold=20 built in")
        if ssm_state_indices is None:
            raise NotImplementedError("FlashInfer's decode runs on a state pool (ssm_state_indices)")
        if state_layout != self.ssm_state_layout:
            raise InputError("state_layout", "the backend's state layout", self.ssm_state_layout, state_layout)
        K, V, HV = q.shape[-1], v.shape[-1], v.shape[2]
        st = initial_state.dtype
        if st == torch.bfloat16 and (K, V) != (128, 128):
            raise NotImplementedError(f"FlashInfer's bf16-state decode needs K = V = 128 (K={K}, V={V})")
        if st == torch.float32 and (K < 128 or V < 128):
            raise NotImplementedError(f"FlashInfer's fp32-state decode needs K, V >= 128 (K={K}, V={V})")
        flat, _, spans = flat_tokens(q, cu_seqlens)
        rows = spec_rows(ssm_state_indices, num_accepted_tokens, spans)
        tok = dict(q=flat(q), k=flat(k), v=flat(v), a=a.reshape(-1, HV), b=b.reshape(-1, HV))
        # A_log: fp32 only (vLLM's layer keeps it fp32; a bf16 / fp16 one goes in exactly);
        # dt_bias: bf16 / fp32 only (an fp16 one goes in as fp32, exactly)
        gates = dict(A_log=A_log.float(), dt_bias=dt_bias if dt_bias.dtype in (torch.bfloat16, torch.float32)
                     else dt_bias.float(), scale=scale, use_qk_l2norm=use_qk_l2norm_in_kernel)
        pool = _with_null_block(initial_state).contiguous()       # harness slot s = row s + 1
        o = torch.zeros(tok["v"].shape, dtype=v.dtype, device=v.device)
        spec = ssm_state_indices.dim() == 2
        by_len: Dict[int, List[int]] = {}
        for n, (bos, eos) in enumerate(spans):
            if eos > bos:
                by_len.setdefault(eos - bos, []).append(n)
        for L, seqs in by_len.items():
            sel = torch.tensor([t for n in seqs for t in range(*spans[n])], dtype=torch.long, device=q.device)
            x = {name: t.index_select(0, sel).reshape(len(seqs), L, *t.shape[1:]) for name, t in tok.items()}
            read = [self._row(rows[n][0], pad_slot_id) for n in seqs]
            write = [[self._row(s, pad_slot_id) for s in rows[n][1]] for n in seqs]
            out = self._decode_group(x, gates, pool, read, write, spec, L)
            o[sel] = out.reshape(len(seqs) * L, HV, V).to(o.dtype)
        if inplace_final_state:
            initial_state.copy_(pool[1:])
            return o.reshape(v.shape), initial_state
        return o.reshape(v.shape), pool[1:].clone()

    @staticmethod
    def _row(slot: int, pad_slot_id: int) -> int:
        return -1 if slot == pad_slot_id or slot < 0 else slot + 1

    def _ids(self, values, device, dtype=torch.int32):
        return torch.tensor(values, dtype=dtype, device=device)

    def _decode_group(self, x, gates, pool, read, write, spec, L):
        """One FlashInfer call for rows of L tokens; `read` / `write`: null-block pool rows."""
        dec = self._m("decode")
        dev = pool.device
        q, k, v, a, b = x["q"], x["k"], x["v"], x["a"], x["b"]
        if self.variant == "kmajor":
            return self._kmajor(dec, x, gates, pool, read, write, L)
        if not spec or L == 1:
            # decode (or a spec row of one token): read `read`, write the last state to write[-1]
            out_idx = [w[-1] for w in write]
            o, _ = dec.gated_delta_rule_decode_pretranspose(
                q=q, k=k, v=v, state=None, a=a, b=b, initial_state=pool,
                initial_state_indices=self._ids(read, dev),
                output_state_indices=None if out_idx == read else self._ids(out_idx, dev), **gates)
            return o
        cols = [w + [-1] * (L - len(w)) for w in write]
        if pool.dtype == torch.float32 and self.variant != "mtp-buffer":
            o, _ = dec.gated_delta_rule_mtp(
                q=q, k=k, v=v, initial_state=pool, initial_state_indices=self._ids(read, dev), a=a, b=b,
                ssm_state_indices=self._ids(cols, dev), disable_state_update=False, **gates)
            return o
        # the batch-row intermediate-state buffer, state untouched; the adapter commits each step
        buf = torch.zeros(len(read), L, *pool.shape[1:], dtype=pool.dtype, device=dev)
        if pool.dtype == torch.float32:
            o, _ = dec.gated_delta_rule_mtp(
                q=q, k=k, v=v, initial_state=pool, initial_state_indices=self._ids(read, dev), a=a, b=b,
                intermediate_states_buffer=buf, disable_state_update=True, **gates)
        else:
            o, _ = dec.gated_delta_rule_decode_pretranspose(
                q=q, k=k, v=v, state=None, a=a, b=b, initial_state=pool,
                initial_state_indices=self._ids(read, dev), intermediate_states_buffer=buf,
                disable_state_update=True, **gates)
        for i, (r, w) in enumerate(zip(read, write)):
            if r < 0:
                continue
            for t, s in enumerate(w):
                if s >= 0:
                    pool[s] = buf[i, t]
        return o

    def _kmajor(self, dec, x, gates, pool, read, write, L):
        """gated_delta_rule_decode on the gathered K-major states (pool rows are [HV, K, V])."""
        if L != 1 or any(len(w) != 1 for w in write):
            raise NotImplementedError("FlashInfer's K-major gated_delta_rule_decode takes one token per row, no spec")
        idx = torch.tensor([max(r, 0) for r in read], dtype=torch.long, device=pool.device)
        state = pool.index_select(0, idx).contiguous()
        live = torch.tensor([r >= 0 for r in read], device=pool.device)
        state[~live] = 0                                   # PAD rows: a scratch zero state, dropped below
        o, state = dec.gated_delta_rule_decode(q=x["q"], k=x["k"], v=x["v"], state=state, a=x["a"], b=x["b"],
                                               **gates)
        for i, w in enumerate(write):
            if read[i] >= 0 and w[0] >= 0:
                pool[w[0]] = state[i]
        return o
