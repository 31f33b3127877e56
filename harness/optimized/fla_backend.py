"""`fla`: thin adapters over flash-linear-attention's kernels (fla-core 0.6.0).

What maps onto what (every fla function is called with keyword arguments only):

- chunk_gated_delta_rule -> fla.ops.gated_delta_rule.chunk_gated_delta_rule
  (state_v_first = state_layout == "vk", cu_seqlens as int64, initial state in fp32, the
  final state cast back to the initial state's dtype).
- fused_recurrent_gated_delta_rule -> fla's fused_recurrent_gated_delta_rule. fla knows
  per-sequence states only, so the adapter supplies the harness's state-pool semantics:
  it gathers the initial states from the pool by ssm_state_indices, skips PAD sequences
  (zero output rows, state untouched), runs fla, and scatters the final states back.
  For 2-D spec indices (a state after every token) fla is run one token position at a
  time: the adapter composes, the math is fla's.
- fused_sigmoid_gating_delta_rule_update -> the same kernel with use_gate_in_kernel
  (g = -exp(A_log) * softplus(a + dt_bias), softplus threshold 20) and
  use_beta_sigmoid_in_kernel (beta = sigmoid(b)): exactly our gating for the default
  beta=1, threshold=20 (fla has no other values).
- fused_gdn_gating -> fla's fused_gdn_gate (fp32 g) + fused_beta_sigmoid (fp32 beta).
- causal_conv1d_fn / causal_conv1d_update -> fla.modules.causal_conv1d's causal_conv1d
  / causal_conv1d_update. fla's conv state is per sequence ``[N, D, W]`` (the last W
  inputs, HF's convention); ours is a pool of ``(dim, L)`` slots holding the last W-1 in
  columns ``[0, W-1)``. fla never reads column 0 of its state, so the adapter builds
  ``[0 | slot[:, :W-1]]`` per sequence and writes fla's columns ``[1, W)`` back. fla's
  update takes one token per sequence: multi-token and spec-decode updates run one token
  position at a time, and the spec window (``[old[off+1:off+W-1], x_0..x_{L-1}]``) is
  read off fla's state after each token.
- rms_norm_gated -> fla.modules.norm.layernorm_gated.layer_norm_fwd (silu: any
  group_size, norm before or after the gate) or fla.modules.norm.fused_norm_gate's
  layer_norm_gated_fwd (sigmoid gate: whole-row groups, norm before the gate only).
  Other combinations raise NotImplementedError.

Not implemented (None): unpack_qkvz_ba (pure layout, no fla op) and
fused_recurrent_gated_delta_rule_packed_decode (fla has no packed single-token decode).

Devices: CUDA; on a machine without a GPU fla's Triton kernels run under
TRITON_INTERPRET=1 (set here before fla is imported, as the triton backend does). Two
interpreter caveats: Triton's autotuner needs a GPU driver to time configs, so on CPU the
adapter lets it keep the first config of each kernel (tile sizes / warps only, never the
math; see `_kernels`), and fla's chunked kernels do not run under the interpreter at all
(a loop index is a Python int there: `i_t.to(...)` fails in chunk_delta_h), so without a
GPU chunk_gated_delta_rule is None and the layer fills it from the reference.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from harness.batch import PAD_SLOT_ID
from ..errors import INDEX_DTYPES, InputError, check_tensor
from ..layouts.state import check_ssm_layout
from ..reference.conv import check_conv_args, check_conv_fn_args
from ..reference.delta_rule import check_pool_args
from ..reference.norm import check_norm_args
from .api import Backend, checkpoints_by_blocks, import_once
from .interpret import fast_interpreter, gpu_kernels, interpret_triton

interpret_triton()      # before triton.jit wraps fla's kernels (i.e. before fla is imported)
if os.environ.get("TRITON_INTERPRET") == "1":
    fast_interpreter()  # cached lookups in Triton's interpreter (harness/optimized/interpret.py)

_FLA: Dict[str, object] = {}
_FLA_ERROR: List[str] = []


def _fla() -> Dict[str, object]:
    """fla's entry points, imported once (raises ImportError with the reason)."""
    return import_once(_FLA, _FLA_ERROR, _load_fla)


def _load_fla() -> Dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Triton is not supported on current platform" on CPU
        import fla
        from fla.modules.causal_conv1d import causal_conv1d, causal_conv1d_update
        from fla.modules.norm.fused_norm_gate import layer_norm_gated_fwd
        from fla.modules.norm.layernorm_gated import layer_norm_fwd
        from fla.ops.common.gate import fused_beta_sigmoid
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
        from fla.ops.gated_delta_rule.gate import fused_gdn_gate
    return dict(version=getattr(fla, "__version__", "?"), chunk=chunk_gated_delta_rule,
                recurrent=fused_recurrent_gated_delta_rule, conv=causal_conv1d, conv_update=causal_conv1d_update,
                norm_group=layer_norm_fwd, norm_gated=layer_norm_gated_fwd, gate=fused_gdn_gate,
                beta_sigmoid=fused_beta_sigmoid)


def _interpreted(device: torch.device) -> bool:
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def _kernels(device: torch.device):
    """Around every fla call. On CPU under TRITON_INTERPRET=1, Triton's autotuner would
    time each config through a GPU driver that does not exist and fail; there it keeps
    the first config of each kernel instead (tile sizes / warps, never the math). On a
    GPU fla's autotuning runs untouched."""
    if not _interpreted(device):
        yield
        return
    from triton.runtime.autotuner import Autotuner
    original = Autotuner.prune_configs

    def first_config(self, kwargs):
        return original(self, kwargs)[:1]

    Autotuner.prune_configs = first_config
    try:
        yield
    finally:
        Autotuner.prune_configs = original


def _conv_activation(activation) -> Optional[str]:
    if activation in (None, False):
        return None
    if activation in ("silu", "swish", True):
        return "silu"
    raise InputError("activation", "one of", "silu / swish / None", activation)


def _spans(B: int, T: int, cu_seqlens: Optional[torch.Tensor]) -> List[Tuple[int, int]]:
    """Token ranges of the sequences in the flattened ``[B*T]`` token axis."""
    if cu_seqlens is None:
        return [(n * T, (n + 1) * T) for n in range(B)]
    if B != 1:
        raise InputError("q", "batch size with cu_seqlens", 1, B)
    cu = [int(c) for c in cu_seqlens.tolist()]
    if not cu or cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
        raise InputError("cu_seqlens", f"non-decreasing offsets from 0 to T={T}", f"[0, ..., {T}]", cu)
    return list(zip(cu, cu[1:]))


def _long(values: List[int], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _pooled(run, per_token: Dict[str, torch.Tensor], B: int, T: int, HV: int, V: int, out_dtype,
            spans, pool: torch.Tensor, idx: torch.Tensor, num_accepted: Optional[torch.Tensor],
            inplace: bool, pad_slot_id: int):
    """The state-pool semantics of harness.reference.recurrent_gated_delta_rule around
    `run(sub, h0, cu) -> (o [1, n, HV, V], final fp32 [m, HV, ...])`, which is one call of
    fla's fused recurrent kernel on the token tensors `sub` (name -> ``[1, n, ...]``), the
    fp32 initial states `h0` and the offsets `cu` of m sequences. `idx`: the checked
    indices as ``[N, S]`` (`check_pool_args`).

    1-D indices ``[N]``: sequence n reads and writes slot ``idx[n]``; one fla call for all.
    2-D indices ``[N, S]``: it reads ``idx[n, num_accepted[n]-1]`` (column 0 without
    num_accepted_tokens) and the state after its token t goes to ``idx[n, t]`` (not where
    that is PAD). fla emits only the final state of a call, so this runs fla one token
    position at a time, carrying the fp32 states from call to call. A PAD read slot skips
    the sequence: zero output rows, no state touched.
    """
    dev = pool.device
    rows = idx.tolist()
    S = idx.shape[1]
    pool_out = pool if inplace else pool.clone()
    o = torch.zeros(B * T, HV, V, dtype=out_dtype, device=dev)

    active, read_slots = [], []
    for n, row in enumerate(rows):
        col = int(num_accepted[n]) - 1 if num_accepted is not None else 0
        if not 0 <= col < S:
            raise InputError(f"num_accepted_tokens[{n}]", f"in [1, {S}]", S, col + 1)
        slot = row[col]
        if slot == pad_slot_id or slot < 0:
            continue
        if slot >= pool.shape[0] or max(row) >= pool.shape[0]:
            raise InputError(f"ssm_state_indices[{n}]", "slots in", f"[0, {pool.shape[0]})", row)
        active.append(n)
        read_slots.append(slot)
    if not active:
        return o.reshape(B, T, HV, V), pool_out
    # All reads happen before any write (as in a kernel that runs the sequences in parallel).
    h = pool_out.index_select(0, _long(read_slots, dev)).float().contiguous()

    def sub(tok: List[int]):
        t = _long(tok, dev)
        return t, {name: x.index_select(0, t)[None] for name, x in per_token.items()}

    if S == 1:
        tok = [i for n in active for i in range(*spans[n])]
        lens = [spans[n][1] - spans[n][0] for n in active]
        cu = _long([0] + torch.tensor(lens).cumsum(0).tolist(), dev)
        t, x = sub(tok)
        o_sub, final = run(x, h, cu)
        o[t] = o_sub[0].to(out_dtype)
        pool_out[_long(read_slots, dev)] = final.to(pool_out.dtype)
        return o.reshape(B, T, HV, V), pool_out

    lens = [spans[n][1] - spans[n][0] for n in active]
    for j, n in enumerate(active):
        if lens[j] > S:
            raise InputError("ssm_state_indices", f"columns for {lens[j]} tokens of sequence {n}", lens[j], S)
    for step in range(max(lens)):
        sel = [j for j in range(len(active)) if lens[j] > step]
        t, x = sub([spans[active[j]][0] + step for j in sel])
        sel_t = _long(sel, dev)
        o_sub, final = run(x, h.index_select(0, sel_t).contiguous(), torch.arange(len(sel) + 1, device=dev))
        o[t] = o_sub[0].to(out_dtype)
        h[sel_t] = final
        for i, j in enumerate(sel):
            slot = rows[active[j]][step]
            if slot >= 0:
                pool_out[slot] = final[i].to(pool_out.dtype)
    return o.reshape(B, T, HV, V), pool_out


class FlaBackend(Backend):
    name = "fla"
    description = ("flash-linear-attention (fla-core) kernels behind thin adapters; the state pool, PAD and "
                   "spec-decode bookkeeping composed around them")
    devices = ("cpu", "cuda")
    ssm_state_layout = "vk"                  # fla's state_v_first=True: vLLM's [N, HV, V, K]
    conv_state_layouts = ("dim_first", "token_first")   # the adapter gathers / scatters through views
    decode_paths = ("recurrent", "sigmoid_gating")
    fp32_dots_cuda = "tf32"                  # fla 0.6's chunk_fwd: tl.dot without allow_tf32=False

    def __init__(self):
        # fla's chunked kernels cannot run under the Triton interpreter (module docstring).
        if not gpu_kernels():
            self.chunk_gated_delta_rule = None
        else:                   # fla writes no checkpoints: block by block over its chunk kernel
            self.chunk_gated_delta_rule_checkpoints = checkpoints_by_blocks(self.chunk_gated_delta_rule)

    def unavailable(self, device: str) -> Optional[str]:
        why = super().unavailable(device)
        if why:
            return why
        try:
            _fla()
        except ImportError as e:
            return f"fla is not importable: {e}"
        if torch.device(device).type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "fla's Triton kernels on CPU need TRITON_INTERPRET=1 set before triton / fla are imported"
        return None

    # ------------------------------------------------------------------ gating
    def fused_gdn_gating(self, A_log, a, b, dt_bias, beta: float = 1.0, threshold: float = 20.0):
        if beta != 1.0 or threshold != 20.0:
            raise NotImplementedError(f"fla's gate has softplus beta=1, threshold=20 built in "
                                      f"(asked beta={beta}, threshold={threshold})")
        f = _fla()
        with _kernels(a.device):
            g = f["gate"](g=a, A_log=A_log, dt_bias=dt_bias, output_dtype=torch.float32)
            bt = f["beta_sigmoid"](x=b)
        return g, bt

    # ------------------------------------------------------------------ delta rule
    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        check_ssm_layout(state_layout)
        f = _fla()
        with _kernels(q.device):
            o, final = f["chunk"](
                q=q, k=k, v=v, g=g, beta=beta, scale=scale,
                initial_state=None if initial_state is None else initial_state.float(),
                output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                state_v_first=state_layout == "vk",
                cu_seqlens=None if cu_seqlens is None else cu_seqlens.long(), chunk_size=chunk_size)
        if final is not None and initial_state is not None:
            final = final.to(initial_state.dtype)
        return o, final

    def _recurrent(self, call, q, k, v, per_token_extra, scale, initial_state, output_final_state, cu_seqlens,
                   ssm_state_indices, num_accepted_tokens, inplace_final_state, state_layout, pad_slot_id):
        """Shared by the plain and the sigmoid-gating update: `call(x, h0, cu, final)` runs
        fla's fused recurrent kernel on token tensors x (name -> [1 or B, n, ...])."""
        check_ssm_layout(state_layout)
        check_tensor("q", q, shape=(None, None, None, None))
        check_tensor("v", v, shape=(q.shape[0], q.shape[1], None, None))
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        if ssm_state_indices is None:
            # fla's own semantics: one initial / final state per sequence.
            x = dict(q=q, k=k, v=v, **per_token_extra)
            o, final = call(x, None if initial_state is None else initial_state.float(),
                            None if cu_seqlens is None else cu_seqlens.long(), output_final_state)
            if final is not None and initial_state is not None:
                final = final.to(initial_state.dtype)
            return o, final if output_final_state else None
        state_shape = (HV, V, K) if state_layout == "vk" else (HV, K, V)
        spans = _spans(B, T, cu_seqlens)
        idx = check_pool_args(initial_state, state_shape, ssm_state_indices, num_accepted_tokens, len(spans))
        per_token = dict(q=q.reshape(B * T, H, K), k=k.reshape(B * T, H, K), v=v.reshape(B * T, HV, V),
                         **{n: t.reshape(B * T, *t.shape[2:]) for n, t in per_token_extra.items()})
        return _pooled(lambda x, h0, cu: call(x, h0, cu, True), per_token, B, T, HV, V, v.dtype, spans,
                       initial_state, idx, num_accepted_tokens, inplace_final_state, pad_slot_id)

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None,
                                         output_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                         num_accepted_tokens=None, inplace_final_state=False,
                                         use_qk_l2norm_in_kernel=False, state_layout="vk",
                                         pad_slot_id=PAD_SLOT_ID):
        f = _fla()
        check_tensor("g", g, shape=tuple(v.shape[:3]))
        check_tensor("beta", beta, shape=tuple(v.shape[:3]))

        def call(x, h0, cu, final):
            with _kernels(q.device):
                return f["recurrent"](q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"], scale=scale,
                                      initial_state=h0, output_final_state=final,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                      state_v_first=state_layout == "vk", cu_seqlens=cu)
        return self._recurrent(call, q, k, v, dict(g=g, beta=beta), scale, initial_state, output_final_state,
                               cu_seqlens, ssm_state_indices, num_accepted_tokens, inplace_final_state,
                               state_layout, pad_slot_id)

    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, beta: float = 1.0,
                                               threshold: float = 20.0, scale=None, initial_state=None,
                                               inplace_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                               num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                                               state_layout="vk"):
        if beta != 1.0 or threshold != 20.0:
            raise NotImplementedError(f"fla's in-kernel gate has softplus beta=1, threshold=20 built in "
                                      f"(asked beta={beta}, threshold={threshold})")
        f = _fla()
        HV = v.shape[2]
        check_tensor("a", a, shape=(q.shape[0] * q.shape[1], HV))
        check_tensor("b", b, shape=(q.shape[0] * q.shape[1], HV))
        shape = (*q.shape[:2], HV)

        def call(x, h0, cu, final):
            # g carries the raw a (fla adds dt_bias, applies -exp(A_log) * softplus in the kernel);
            # beta carries the raw b (sigmoid in the kernel).
            with _kernels(q.device):
                return f["recurrent"](q=x["q"], k=x["k"], v=x["v"], g=x["a"], beta=x["b"], scale=scale,
                                      initial_state=h0, output_final_state=final,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                      use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                                      use_beta_sigmoid_in_kernel=True,
                                      state_v_first=state_layout == "vk", cu_seqlens=cu)
        return self._recurrent(call, q, k, v, dict(a=a.reshape(shape), b=b.reshape(shape)), scale, initial_state,
                               True, cu_seqlens, ssm_state_indices, num_accepted_tokens, inplace_final_state,
                               state_layout, PAD_SLOT_ID)

    # ------------------------------------------------------------------ conv
    def causal_conv1d_fn(self, x, weight, bias, conv_states, query_start_loc, cache_indices=None,
                         has_initial_state=None, activation="silu", pad_slot_id: int = PAD_SLOT_ID):
        f = _fla()
        dim, total, W, qsl, N = check_conv_fn_args(x, weight, bias, conv_states, query_start_loc, cache_indices,
                                                   has_initial_state)
        slots = [int(s) for s in cache_indices.tolist()] if cache_indices is not None else list(range(N))
        init_flags = ([bool(h) for h in has_initial_state.tolist()] if has_initial_state is not None
                      else [False] * N)
        for i, s in enumerate(slots):
            if s != pad_slot_id and not 0 <= s < conv_states.shape[0]:
                raise InputError(f"cache_indices[{i}]", "slot in", f"[0, {conv_states.shape[0]})", s)
        dev = x.device
        # fla's per-sequence state [N, D, W]: column 0 is never read, columns 1..W-1 are the
        # W-1 prior inputs, oldest first: [0 | slot[:, :W-1]], or zeros without initial state.
        init = torch.zeros(N, dim, W, dtype=conv_states.dtype, device=dev)
        load = [i for i in range(N) if slots[i] != pad_slot_id and init_flags[i]]
        if load:
            init[_long(load, dev), :, 1:] = conv_states[_long([slots[i] for i in load], dev), :, :W - 1]
        with _kernels(dev):
            y, final = f["conv"](x=x.T[None], weight=weight, bias=bias, initial_state=init, output_final_state=True,
                                 activation=_conv_activation(activation), cu_seqlens=query_start_loc.long())
        out = y[0].T                                       # [dim, total], x.dtype
        store = []
        for i in range(N):
            bos, eos = qsl[i], qsl[i + 1]
            if slots[i] == pad_slot_id:
                out[:, bos:eos] = 0                        # PAD: skipped (fla ran it on zeros)
            elif eos > bos:
                store.append(i)
        if store:
            conv_states[_long([slots[i] for i in store], dev), :, :W - 1] = \
                final[_long(store, dev), :, 1:].to(conv_states.dtype)
        return out

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                             num_accepted_tokens=None, query_start_loc=None, pad_slot_id: int = PAD_SLOT_ID):
        f = _fla()
        dev = x.device
        if query_start_loc is not None:
            check_tensor("x", x, shape=(None, None))
            check_tensor("query_start_loc", query_start_loc, shape=(None,), dtype=INDEX_DTYPES)
            qsl = [int(c) for c in query_start_loc.tolist()]
            spans = list(zip(qsl, qsl[1:]))
            dim = x.shape[1]
            tokens = lambda i: x[spans[i][0]:spans[i][1]]
        else:
            if x.dim() not in (2, 3):
                raise InputError("x", "shape", "[B, dim] or [B, dim, seqlen]", tuple(x.shape))
            dim = x.shape[1]
            xs = x if x.dim() == 3 else x.unsqueeze(-1)
            spans = [None] * x.shape[0]
            tokens = lambda i: xs[i].T
        Bn = len(spans)
        W = check_conv_args(dim, weight, bias, conv_state, "conv_state")
        L_state = conv_state.shape[2]
        if conv_state_indices is not None:
            check_tensor("conv_state_indices", conv_state_indices, shape=(Bn,), dtype=INDEX_DTYPES)
        if num_accepted_tokens is not None:
            check_tensor("num_accepted_tokens", num_accepted_tokens, shape=(Bn,), dtype=INDEX_DTYPES)
        slots = [int(s) for s in conv_state_indices.tolist()] if conv_state_indices is not None else list(range(Bn))
        spec = num_accepted_tokens is not None
        act = _conv_activation(activation)
        out = torch.zeros(x.shape, dtype=x.dtype, device=dev)          # PAD rows stay zero
        xs_tok = [tokens(i) for i in range(Bn)]
        seqs, offs = [], []
        for i in range(Bn):
            L = xs_tok[i].shape[0]
            if slots[i] == pad_slot_id or L == 0:
                continue
            if not 0 <= slots[i] < conv_state.shape[0]:
                raise InputError(f"conv_state_indices[{i}]", "slot in", f"[0, {conv_state.shape[0]})", slots[i])
            off = int(num_accepted_tokens[i]) - 1 if spec else 0
            if spec and (not 0 <= off < L or off + W - 1 > L_state or W - 2 + L > L_state):
                raise InputError(f"num_accepted_tokens[{i}]", f"in [1, {L}] with the window in the state",
                                 f"state length >= {max(off + W - 1, W - 2 + L)}", off + 1)
            seqs.append(i)
            offs.append(off)
        if not seqs:
            return out
        lens = [xs_tok[i].shape[0] for i in seqs]
        # fla's cache [m, D, W]: [0 | the W-1 prior inputs]; fla shifts it by one per token.
        cache = torch.zeros(len(seqs), dim, W, dtype=conv_state.dtype, device=dev)
        for j, i in enumerate(seqs):
            cache[j, :, 1:] = conv_state[slots[i], :, offs[j]:offs[j] + W - 1]
        new_cols = (W - 2 + max(lens)) if spec else W - 1
        new = torch.zeros(len(seqs), dim, new_cols, dtype=conv_state.dtype, device=dev)
        for step in range(max(lens)):
            sel = [j for j in range(len(seqs)) if lens[j] > step]
            sel_t = _long(sel, dev)
            xt = torch.stack([xs_tok[seqs[j]][step] for j in sel]).contiguous()      # [m', dim]
            with _kernels(dev):
                y, c = f["conv_update"](x=xt, cache=cache.index_select(0, sel_t).contiguous(), weight=weight,
                                        bias=bias, activation=act)
            cache[sel_t] = c
            for r, j in enumerate(sel):
                i = seqs[j]
                if query_start_loc is not None:
                    out[spans[i][0] + step] = y[r]
                elif x.dim() == 3:
                    out[i, :, step] = y[r]
                else:
                    out[i] = y[r]
            if spec:
                # The spec window [old[off+1 : off+W-1], x_0 .. x_{L-1}], read off fla's state:
                # columns 1..W-1 after token 0, then the newest column after each later token.
                if step == 0:
                    new[sel_t, :, :W - 1] = c[:, :, 1:]
                else:
                    new[sel_t, :, W - 2 + step] = c[:, :, W - 1]
        for j, i in enumerate(seqs):
            if spec:
                conv_state[slots[i], :, :W - 2 + lens[j]] = new[j, :, :W - 2 + lens[j]]
            else:
                conv_state[slots[i], :, :W - 1] = cache[j, :, 1:]
        return out

    # ------------------------------------------------------------------ norm
    def rms_norm_gated(self, x, weight, z=None, eps: float = 1e-6, group_size=None, norm_before_gate: bool = True,
                       activation: str = "silu", out_dtype=None):
        f = _fla()
        N, gs = check_norm_args(x, weight, z, group_size)
        x2 = x.reshape(-1, N).contiguous()
        z2 = None if z is None else z.reshape(-1, N).contiguous()
        dtype = out_dtype or x.dtype
        if z is None or activation in ("silu", "swish"):
            # layernorm_gated: silu gate, per-group rms, norm before or after the gate.
            y = torch.empty(x2.shape, dtype=dtype, device=x.device)
            with _kernels(x.device):
                f["norm_group"](x=x2, weight=weight.contiguous(), bias=None, eps=eps, z=z2, out=y,
                                group_size=None if gs == N else gs, norm_before_gate=norm_before_gate,
                                is_rms_norm=True)
        elif activation == "sigmoid" and norm_before_gate and gs == N:
            with _kernels(x.device):
                y = f["norm_gated"](x=x2, g=z2, weight=weight.contiguous(), bias=None, activation="sigmoid",
                                    eps=eps, out_dtype=dtype, is_rms_norm=True)[0]
        else:
            raise NotImplementedError(
                f"fla has no gated RMSNorm with activation={activation!r}, group_size={group_size}, "
                f"norm_before_gate={norm_before_gate} (its sigmoid gate is whole-row, norm before gate only)")
        return y.reshape(x.shape)
