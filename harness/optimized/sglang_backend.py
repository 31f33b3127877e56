"""`sglang`: SGLang 0.5.23's GDN kernels through its own dispatcher.

SGLang dispatches decode / extend (prefill) / target_verify (spec) separately:
``GDNKernelDispatcher`` in ``sglang/srt/layers/attention/linear/gdn_backend.py`` picks a kernel
object per mode (``TritonGDNKernel``: SGLang's fla fork; ``FlashInferGDNKernel``: its FlashInfer
glue) and forwards the calls. That module imports SGLang's whole model-runner stack, so the
class is read from the installed source file and compiled as is (`source_functions`), with
SGLang's own kernel classes, backend enum and platform checks in its namespace; the kernel
modules themselves are imported normally. Every import is lazy (`_sglang()`).

Variants (``sglang@<variant>``) choose the dispatcher's backends:

- ``sglang`` (none): what 0.5.23 selects with default flags - Triton for decode, and for the
  prefill FlashInfer where ``flashinfer_gdn_prefill_default`` picks it (SM90 with an fp32 state
  pool, SM100 with CUDA >= 13 and a bf16 one, K = V = 128, FlashInfer importable; its
  conditions mirrored per call, as that function needs a ModelRunner), else Triton; verify as
  the dispatcher then routes it (FlashInfer when the FlashInfer kernel is in use and supports
  verify - SM90 / SM100 - else Triton);
- ``triton``: Triton everywhere (``--linear-attn-backend triton --linear-attn-prefill-backend triton``);
- ``flashinfer``: FlashInfer for decode and prefill, and verify where it supports it.

What maps onto what (harness op -> dispatcher entry point; SGLang's pool is ``[slots, HV, V, K]``,
PAD slot -1, the harness's own numbering):

- chunk_gated_delta_rule -> ``extend(q, k, v, g, beta, ssm_states, cache_indices,
  query_start_loc)``: the per-sequence initial states become a pool of N slots (slot n =
  sequence n) updated in place; g goes in log space (the FlashInfer kernel's ``exp(g)`` is
  SGLang's glue, judged with it). SGLang always normalises q / k (``use_qk_l2norm_in_kernel``
  False is not expressible).
- fused_sigmoid_gating_delta_rule_update, 1-D indices -> ``decode(q, k, v, a, b, A_log, dt_bias,
  ssm_states, cache_indices, query_start_loc)``; 2-D (spec) -> ``target_verify(...)`` reading
  slot ``[n, num_accepted-1]`` with ``disable_state_update`` and the intermediate-state buffer
  ``[N, T, HV, V, K]`` (row n, ``intermediate_state_indices = arange(N)``); the adapter then
  copies row n's step t into slot ``[n, t]`` (the commit SGLang's memory pool does after a
  verify).
- fused_recurrent_gated_delta_rule_packed_decode -> ``packed_decode`` when the decode kernel
  supports it (Triton's does).
- fused_gdn_gating -> ``sglang.kernels.ops.attention.linear.fused_gdn_gating``.

PAD rows: SGLang's Triton recurrent kernels skip only the state load / store of a row whose
slot is < 0 and still compute its output from a zero state, so PAD-row outputs are declared
unspecified. The conv, norm and unpack ops are the reference's (filled, and listed).
"""
from __future__ import annotations

import importlib.util
from typing import Dict, List, Optional

import torch

from harness.batch import PAD_SLOT_ID
from ..errors import InputError
from .api import Backend, import_once, package_modules, source_functions
from .flashinfer_backend import flat_tokens, spec_rows

DISPATCHER_MODULE = "sglang.srt.layers.attention.linear.gdn_backend"
MODULES = dict(triton="sglang.srt.layers.attention.linear.kernels.gdn_triton",
               utils="sglang.srt.layers.attention.linear.utils",
               common="sglang.srt.utils",
               gating="sglang.kernels.ops.attention.linear.fused_gdn_gating")
_CACHE: Dict[str, object] = {}
_ERROR: List[str] = []


def _sglang() -> Dict[str, object]:
    return import_once(_CACHE, _ERROR, _load)


def _load() -> Dict[str, object]:
    found = package_modules("sglang", MODULES)
    spec = importlib.util.find_spec(DISPATCHER_MODULE)
    with open(spec.origin, encoding="utf-8") as f:
        found["dispatcher_source"] = f.read()
    return found


def dispatcher_class(found: Dict[str, object]):
    """GDNKernelDispatcher compiled from SGLang's source, with SGLang's own names around it."""
    common = found["common"]
    ns = dict(TritonGDNKernel=found["triton"].TritonGDNKernel, is_cuda=common.is_cuda, is_xpu=common.is_xpu,
              rank0_log=lambda *a, **k: None, Optional=Optional, LinearAttnKernelBackend=found["utils"].LinearAttnKernelBackend)
    return source_functions(found["dispatcher_source"], ["GDNKernelDispatcher"], ns=ns,
                            tag=f"<SGLang {DISPATCHER_MODULE}>")["GDNKernelDispatcher"]


def _flashinfer_importable() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def default_prefill(K: int, V: int, state_dtype: torch.dtype) -> str:
    """flashinfer_gdn_prefill_default's choice (default flags: Triton decode, no deterministic
    mode, no dynamic chunking, a chunked-prefill size inside its limits)."""
    if not torch.cuda.is_available() or (K, V) != (128, 128) or not _flashinfer_importable():
        return "triton"
    major = torch.cuda.get_device_capability()[0]
    cuda_major = int((torch.version.cuda or "0").split(".")[0])
    if major == 9 and state_dtype == torch.float32:
        return "flashinfer"
    if major == 10 and cuda_major >= 13 and state_dtype == torch.bfloat16:
        return "flashinfer"
    return "triton"


class SglangBackend(Backend):
    name = "sglang"
    description = ("SGLang 0.5.23's GDN kernels (Triton fla fork / FlashInfer glue) through its "
                   "GDNKernelDispatcher: extend, decode, target_verify, packed decode, gating")
    devices = ("cuda",)
    dtypes = ("bfloat16", "float16")                 # SGLang's chunk kernel asserts q.dtype != float32
    state_dtypes = ("float32", "bfloat16")
    ssm_state_layout = "vk"
    conv_state_layouts = ("dim_first", "token_first")
    decode_paths = ("recurrent", "sigmoid_gating", "packed")   # recurrent: the reference decode
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = (
        "SGLang 0.5.23's Triton recurrent kernels skip only the state load / store of a row whose slot is < 0; "
        "its output is computed from a zero state (the model runner drops padded rows)")
    variants = {"triton": "Triton for decode, prefill and verify",
                "flashinfer": "FlashInfer for decode and prefill (and verify where supported)"}

    def __init__(self, variant: Optional[str] = None, modules: Optional[Dict[str, object]] = None):
        self.take_variant(variant)
        self._mods = dict(modules or {})
        self._dispatchers: Dict[tuple, object] = {}

    def _found(self) -> Dict[str, object]:
        return self._mods if self._mods else _sglang()

    def unavailable(self, device: str) -> Optional[str]:
        try:
            self._found()
        except ImportError as e:
            return f"SGLang is not importable: {e}"
        if self.variant == "flashinfer" and not _flashinfer_importable():
            return "FlashInfer is not importable (sglang@flashinfer)"
        return super().unavailable(device)

    def describe(self) -> Dict:
        d = super().describe()
        if _CACHE:
            d.update(sglang_version=_CACHE.get("version"))
        return d

    def dispatcher(self, K: int, V: int, state_dtype: torch.dtype):
        if self.variant:
            decode = prefill = self.variant
        else:
            decode, prefill = "triton", default_prefill(K, V, state_dtype)
        key = (decode, prefill)
        if key not in self._dispatchers:
            found = self._found()
            enum = found["utils"].LinearAttnKernelBackend
            self._dispatchers[key] = dispatcher_class(found)(enum(decode), enum(prefill))
        return self._dispatchers[key]

    # ------------------------------------------------------------------ gating
    def fused_gdn_gating(self, A_log, a, b, dt_bias, beta: float = 1.0, threshold: float = 20.0):
        HV = A_log.shape[0]
        g, bt = self._found()["gating"].fused_gdn_gating(A_log, a.reshape(-1, HV), b.reshape(-1, HV), dt_bias,
                                                         beta, threshold)
        return g.reshape(a.shape), bt.reshape(b.shape)

    # ------------------------------------------------------------------ prefill
    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        if state_layout != "vk":
            raise InputError("state_layout", "SGLang's state layout", "vk", state_layout)
        if not use_qk_l2norm_in_kernel or scale not in (None, q.shape[-1] ** -0.5) or chunk_size != 64:
            raise NotImplementedError("SGLang's extend always L2-normalises q / k, scales by K^-0.5, chunks by 64")
        flat, cu, spans = flat_tokens(q, cu_seqlens)
        N, HV, V, K = len(spans), v.shape[2], v.shape[3], q.shape[3]
        dtype = initial_state.dtype if initial_state is not None else torch.float32
        pool = (initial_state.clone().contiguous() if initial_state is not None
                else torch.zeros(N, HV, V, K, dtype=dtype, device=q.device))
        one = lambda t: flat(t)[None]
        res = self.dispatcher(K, V, dtype).extend(
            one(q), one(k), one(v), one(g), one(beta), ssm_states=pool,
            cache_indices=torch.arange(N, dtype=torch.int32, device=q.device), query_start_loc=cu.to(torch.int32))
        o = res[0] if isinstance(res, tuple) else res
        return o.reshape(v.shape), (pool if output_final_state else None)

    # ------------------------------------------------------------------ decode / spec
    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, beta: float = 1.0,
                                               threshold: float = 20.0, scale=None, initial_state=None,
                                               inplace_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                               num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                                               state_layout="vk", pad_slot_id: int = PAD_SLOT_ID):
        if beta != 1.0 or threshold != 20.0 or not use_qk_l2norm_in_kernel or scale not in (None, q.shape[-1] ** -0.5):
            raise NotImplementedError("SGLang's decode / verify: softplus beta 1, threshold 20, q/k L2 norm, "
                                      "scale K^-0.5 built in")
        if ssm_state_indices is None:
            raise NotImplementedError("SGLang's decode runs on a state pool (ssm_state_indices)")
        if state_layout != "vk":
            raise InputError("state_layout", "SGLang's state layout", "vk", state_layout)
        flat, cu, spans = flat_tokens(q, cu_seqlens)
        HV, V, K = v.shape[2], v.shape[3], q.shape[3]
        pool = initial_state if inplace_final_state else initial_state.clone()
        one = lambda t: flat(t)[None]
        qsl = cu.to(torch.int32)
        disp = self.dispatcher(K, V, pool.dtype)
        pad = lambda s: -1 if s == pad_slot_id or s < 0 else s
        ids = lambda xs: torch.tensor(xs, dtype=torch.int32, device=q.device)
        a2, b2 = a.reshape(-1, HV), b.reshape(-1, HV)
        if ssm_state_indices.dim() == 1:
            o = disp.decode(one(q), one(k), one(v), a2, b2, A_log=A_log, dt_bias=dt_bias, ssm_states=pool,
                            cache_indices=ids([pad(s) for s in ssm_state_indices.tolist()]), query_start_loc=qsl)
            return o.reshape(v.shape), pool
        rows = spec_rows(ssm_state_indices, num_accepted_tokens, spans)
        steps = max((e - b_ for b_, e in spans), default=1)
        buf = torch.zeros(len(rows), steps, HV, V, K, dtype=pool.dtype, device=q.device)
        o = disp.target_verify(A_log, dt_bias, one(q), one(k), one(v), a2, b2, ssm_states=pool,
                               cache_indices=ids([pad(r) for r, _ in rows]), query_start_loc=qsl,
                               intermediate_states_buffer=buf, intermediate_state_indices=ids(list(range(len(rows)))),
                               cache_steps=steps, retrieve_parent_token=None)
        for n, (r, w) in enumerate(rows):
            if pad(r) < 0:
                continue
            for t, s in enumerate(w):
                if pad(s) >= 0:
                    pool[s] = buf[n, t]
        return o.reshape(v.shape), pool

    def fused_recurrent_gated_delta_rule_packed_decode(self, mixed_qkv, a, b, A_log, dt_bias, scale, initial_state,
                                                       out, ssm_state_indices, use_qk_l2norm_in_kernel=True,
                                                       state_layout="vk", pad_slot_id: int = PAD_SLOT_ID):
        if state_layout != "vk" or not use_qk_l2norm_in_kernel:
            raise NotImplementedError("SGLang's packed decode: vk state, q/k L2 norm built in")
        HV, V, K = out.shape[2], out.shape[3], initial_state.shape[-1]
        disp = self.dispatcher(K, V, initial_state.dtype)
        if not disp.supports_packed_decode:
            raise NotImplementedError(f"SGLang's {type(disp.decode_kernel).__name__} has no packed decode")
        idx = torch.where(ssm_state_indices == pad_slot_id, torch.full_like(ssm_state_indices, -1), ssm_state_indices)
        res = disp.packed_decode(mixed_qkv, a, b, A_log=A_log, dt_bias=dt_bias,
                                 scale=K ** -0.5 if scale is None else scale, ssm_states=initial_state,
                                 cache_indices=idx.to(torch.int32), num_v_heads=HV, head_v_dim=V)
        out.copy_(res.transpose(0, 1).to(out.dtype))
        return out
