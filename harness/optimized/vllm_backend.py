"""`vllm`: thin adapters over an installed vLLM's GDN kernels (vLLM 0.33).

Validated on vLLM 0.33.0's own sources on an H200 (docs/findings.md). Every vLLM import is
lazy (`load_vllm()`), so this module imports without vLLM and `unavailable()` then says
"vLLM is not importable: <error>". The adapters only convert conventions; what vLLM
computes (including what it leaves in PAD rows) reaches the harness untouched.

What is called, as vLLM 0.33's Qwen GDN layer (qwen_gdn_linear_attn.py) calls it:

- unpack_qkvz_ba: ``QwenGatedDeltaNetAttention.prepare_gdn_attention_core_inputs`` and
  ``rearrange_mixed_qkv``, read from the installed source file and compiled as plain
  functions (the class itself needs vLLM's whole config / distributed stack; the method
  is wrapped in torch.compile, which the harness need not exercise).
- fused_gdn_gating: 0.33 has no stand-alone Qwen gating kernel; prefill gating is fused
  into ``fused_post_conv_prep`` (fla ops ``fused_gdn_prefill_post_conv``), whose gating
  branch is run here on a 1x1-head dummy q/k/v (the g / beta it returns are exactly the
  layer's).
- chunk_gated_delta_rule: the prefill vLLM 0.33 selects on this device, by vLLM's own
  ``_resolve_gdn_prefill_backend`` (compiled from the layer file, run with the case's head
  dims and vLLM's ``current_platform``): "flashinfer" (SM90; SM10x / SM12x with K = 128 and
  CUDA >= 13) runs vLLM's wrapper ``fi_chunk_gated_delta_rule`` from the same file (q / k
  L2-normalised outside the kernel by vLLM's ``l2norm_fwd``, ``g=torch.exp(g)``: FlashInfer
  takes the linear-space gate, the state cast to fp32) over FlashInfer's
  ``gdn_prefill.chunk_gated_delta_rule``, so a bug of the wrapper is judged with the kernel;
  "triton" runs fla ops' ``chunk_gated_delta_rule``. Variants force one: ``vllm@triton``,
  ``vllm@flashinfer`` (a case where vLLM would fall back skips, naming what it would run).
- fused_recurrent_gated_delta_rule, fused_sigmoid_gating_delta_rule_update,
  fused_recurrent_gated_delta_rule_packed_decode:
  ``vllm.third_party.flash_linear_attention.ops``; state ``[N, HV, V, K]``.
- causal_conv1d_fn / causal_conv1d_update: ``vllm.model_executor.layers.mamba.ops.causal_conv1d``
  (conv state ``(..., dim, W-1)``, either memory order: vLLM keeps both layouts).
- rms_norm_gated: fla ops ``layernorm_guard.layer_norm_fwd`` (what the layer's
  ``_rms_norm_gated_cuda`` calls).

Weight loading (issue 19 item 5, vllm #35504): `shard_params` loads every rank's weights
with vLLM's own loaders where vLLM has them - ``MergedColumnParallelLinear.weight_loader``
for in_proj_qkvz / in_proj_ba (output sizes as the layer's ``create_qkvz_proj`` /
``create_ba_proj``: one fused shard on the interleaved layout, per-section shards on the
flat one) and ``mamba_v2_sharded_weight_loader`` for conv1d (per q | k | v section).
A_log / dt_bias (vLLM's ``sharded_weight_loader(0)``, a plain row slice), out_proj
(RowParallel) and the replicated norm weight stay the harness's sharding, as does the
replicated-ba variant. Without vLLM's loader modules (not installed, or failing at import)
the harness's sharding is used and `describe()` says why; the kernels' own import failure
makes the backend `unavailable`.

Slots: vLLM 0.33 reserves pool slot 0 as the null block (``NULL_BLOCK_ID = 0``: padded
rows carry it; the recurrent kernels skip ``slot <= 0``). The harness numbers slots from 0
with PAD = -1, so harness slot s is vLLM slot s + 1 of a pool with a null block in front
(a copy; written back slot for slot, so untouched slots stay byte-identical) and PAD is 0.

`VllmBackend(modules=...)` takes replacement kernel modules (mutation checks).
"""
from __future__ import annotations

import importlib
import importlib.util
from types import SimpleNamespace
from typing import Dict, List, Literal, Optional

import torch

from harness.batch import NULL_BLOCK_ID, PAD_SLOT_ID
from ..errors import InputError
from .api import DECODE_PATHS, Backend, import_once, package_modules, source_functions


MODULES = dict(
    ops="vllm.third_party.flash_linear_attention.ops",
    recurrent="vllm.third_party.flash_linear_attention.ops.fused_recurrent",
    sigmoid="vllm.third_party.flash_linear_attention.ops.fused_sigmoid_gating",
    post_conv="vllm.third_party.flash_linear_attention.ops.fused_gdn_prefill_post_conv",
    layernorm="vllm.third_party.flash_linear_attention.ops.layernorm_guard",
    conv="vllm.model_executor.layers.mamba.ops.causal_conv1d",
)
LAYER_MODULE = "vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn"
LAYER_METHODS = ("prepare_gdn_attention_core_inputs", "rearrange_mixed_qkv")
LAYER_FUNCTIONS = ("_resolve_gdn_prefill_backend", "fi_chunk_gated_delta_rule")
PREFILL_BACKENDS = ("triton", "flashinfer")      # what the adapter can run of vLLM's prefills

LOADER_MODULES = dict(linear="vllm.model_executor.layers.linear")
# mamba_v2_sharded_weight_loader is taken from its file's text: importing mamba_mixer2 pulls in
# vLLM's attention backends and model loader, which on a CUDA platform import the flash-attn
# extension (v1/attention/backends/fa_utils.py) - absent where vLLM's sources are carried
# (H100, 2026-12-05: "vllm.vllm_flash_attn requires the CUDA flash attention extensions")
MIXER2_MODULE = "vllm.model_executor.layers.mamba.mamba_mixer2"

_CACHE: Dict[str, object] = {}
_ERROR: List[str] = []
_LOADERS: Dict[str, object] = {}
_LOADER_ERROR: List[str] = []


def load_vllm() -> Dict[str, object]:
    """vLLM's version and kernel modules (None where this vLLM lacks one); raises ImportError."""
    return import_once(_CACHE, _ERROR, _load_vllm)


def _load_vllm() -> Dict[str, object]:
    return dict(package_modules("vllm", MODULES), layer_source=_layer_source())


def _vllm_loaders() -> Dict[str, object]:
    """vLLM's weight loaders: ``merged`` (MergedColumnParallelLinear) and ``mamba_v2``
    (mamba_v2_sharded_weight_loader); raises ImportError (kept) when vLLM's modules do not import."""
    def load():
        m = package_modules("vllm", LOADER_MODULES)
        text = _module_source(MIXER2_MODULE)
        if text is None:
            raise ImportError(f"{MIXER2_MODULE} is not found")
        mamba_v2 = source_functions(text, ("mamba_v2_sharded_weight_loader",), tag=f"<vLLM {MIXER2_MODULE}>")
        return dict(merged=m["linear"].MergedColumnParallelLinear,
                    mamba_v2=mamba_v2["mamba_v2_sharded_weight_loader"], version=m["version"])
    return import_once(_LOADERS, _LOADER_ERROR, load)


def _merged_layer(cls, output_sizes: List[int], hidden: int, tp: int, rank: int):
    """A MergedColumnParallelLinear as its weight_loader sees it, built without __init__ (which
    needs vLLM's TP group): the attributes the loader reads, for rank `rank` of `tp`."""
    layer = cls.__new__(cls)
    if isinstance(layer, torch.nn.Module):
        torch.nn.Module.__init__(layer)
    per = [n // tp for n in output_sizes]
    for k, v in dict(output_sizes=list(output_sizes), tp_rank=rank, tp_size=tp, input_size=hidden,
                     output_size=sum(output_sizes), output_size_per_partition=sum(per),
                     output_partition_sizes=per, disable_tp=False, quant_method=None, quant_config=None,
                     params_dtype=None, gather_output=False, skip_bias_add=False, return_bias=True,
                     bias=None).items():
        try:
            setattr(layer, k, v)
        except (AttributeError, TypeError):      # a property in this vLLM: its own value stands
            pass
    return layer


def _column_param(rows: int, w: torch.Tensor) -> torch.nn.Parameter:
    """A rank's [rows, hidden] weight as vLLM creates it (output_dim 0, input_dim 1), NaN until loaded."""
    p = torch.nn.Parameter(torch.full((rows, w.shape[1]), float("nan"), dtype=w.dtype, device=w.device),
                           requires_grad=False)
    p.output_dim, p.input_dim = 0, 1
    return p


def vllm_shard_params(loaders: Dict[str, object], w, dims, layout: str, tp: int = 1, rank: int = 0,
                      ba: str = "sharded"):
    """`harness.layouts.tp.shard_params` with in_proj_qkvz / in_proj_ba / conv1d loaded by
    vLLM's loaders (`loaders`: `_vllm_loaders()` or a stand-in with their signatures)."""
    from ..layouts.tp import shard_params
    p = shard_params(w, dims, layout, tp, rank, ba)          # A_log, dt_bias, out_proj, norm: the harness's
    kd, vd, HV, hid = dims.key_dim, dims.value_dim, dims.HV, w.wq.shape[1]
    merged = loaders["merged"]
    qkvz_sizes = [2 * kd + 2 * vd] if layout == "interleaved" else [kd, kd, vd, vd]
    lay = _merged_layer(merged, qkvz_sizes, hid, tp, rank)
    param = _column_param(sum(qkvz_sizes) // tp, w.wq)
    if layout == "interleaved":          # one fused checkpoint tensor, loaded without a shard id
        merged.weight_loader(lay, param, w.packed_in_proj(dims, layout)[0])
    else:                                # Qwen3.5's separate in_proj_qkv / in_proj_z, shard by shard
        for i, part in enumerate((w.wq, w.wk, w.wv, w.wz)):
            merged.weight_loader(lay, param, part, i)
    p.w_qkvz = param.data
    if ba == "sharded":
        ba_sizes = [2 * HV] if layout == "interleaved" else [HV, HV]
        lay = _merged_layer(merged, ba_sizes, hid, tp, rank)
        param = _column_param(2 * HV // tp, w.wb)
        if layout == "interleaved":
            merged.weight_loader(lay, param, w.packed_in_proj(dims, layout)[1])
        else:
            for i, part in enumerate((w.wb, w.wa)):
                merged.weight_loader(lay, param, part, i)
        p.w_ba = param.data
    conv = torch.nn.Parameter(torch.full((w.conv_weight.shape[0] // tp, 1, w.conv_weight.shape[1]), float("nan"),
                                         dtype=w.conv_weight.dtype, device=w.conv_weight.device), requires_grad=False)
    loader = loaders["mamba_v2"]([(kd, 0, False), (kd, 0, False), (vd, 0, False)], tp, rank)
    loader(conv, w.conv_weight.unsqueeze(1))          # vLLM's conv1d weight is [conv_dim, 1, W]
    p.conv_weight = conv.data.squeeze(1)
    return p


def _layer_source() -> Optional[str]:
    """The text of vLLM's Qwen GDN layer file (found without importing it), or None."""
    return _module_source(LAYER_MODULE)


def _module_source(name: str) -> Optional[str]:
    """The text of module `name`'s file, found without importing it; None when there is none."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def layer_functions(source: str) -> Dict[str, object]:
    """`LAYER_METHODS` of class QwenGatedDeltaNetAttention in `source`, compiled as plain
    functions (decorators dropped) over torch; call them with a namespace as ``self``."""
    return source_functions(source, LAYER_METHODS, cls="QwenGatedDeltaNetAttention", tag=f"<vLLM {LAYER_MODULE}>")


class _QuietLogger:
    """vLLM's logger inside the compiled glue: its warnings are not the harness's output."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def _ids(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def _check_vk(state_layout: str) -> None:
    # vLLM's kernels hold the state [N, HV, V, K]; this backend declares "vk".
    if state_layout != "vk":
        raise InputError("state_layout", "vLLM's state layout", "vk", state_layout)


def _vllm_slots(idx: torch.Tensor, pad_slot_id: int = PAD_SLOT_ID) -> torch.Tensor:
    """Harness slots -> vLLM's: s + 1, PAD -> NULL_BLOCK_ID."""
    pad = (idx == pad_slot_id) | (idx < 0)
    return torch.where(pad, torch.full_like(idx, NULL_BLOCK_ID), idx + 1).to(torch.int32)


def _with_null_block(pool: torch.Tensor) -> torch.Tensor:
    """A copy of `pool` with a zero null block in front, each slot in `pool`'s memory order."""
    order = sorted(range(1, pool.dim()), key=lambda d: -pool.stride(d))
    shape = (pool.shape[0] + 1, *(pool.shape[d] for d in order))
    buf = torch.zeros(shape, dtype=pool.dtype, device=pool.device)
    inverse = [0] + [1 + order.index(d) for d in range(1, pool.dim())]
    buf = buf.permute(*inverse)
    buf[1:] = pool
    return buf


class VllmBackend(Backend):
    name = "vllm"
    description = ("vLLM 0.33's GDN kernels (fla ops, mamba causal_conv1d, fused post-conv gating, "
                   "gated norm, the Qwen layer's unpack) behind thin adapters")
    devices = ("cuda",)                          # vLLM's Triton kernels need a GPU
    ssm_state_layout = "vk"
    conv_state_layouts = ("dim_first", "token_first")
    decode_paths = ("recurrent", "sigmoid_gating", "packed")
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = (
        "vLLM 0.33's causal_conv1d kernels and fused_recurrent_gated_delta_rule_fwd_kernel return before "
        "storing a row whose slot is the null block / PAD_SLOT_ID, so those rows of their torch.empty outputs "
        "hold whatever was there; vLLM drops padded tokens' outputs (CUDA-graph padding)")

    variants = {"triton": "force vLLM's Triton (fla) prefill",
                "flashinfer": "force vLLM's FlashInfer prefill (fi_chunk_gated_delta_rule)"}
    gate_domains = {"chunk_gated_delta_rule": "log"}    # the wrapper takes log-space g; exp(g) is its own

    def __init__(self, variant: Optional[str] = None, modules: Optional[Dict[str, object]] = None,
                 layer_source: Optional[str] = None, platform=None, loaders: Optional[Dict[str, object]] = None):
        """`modules` / `layer_source` / `platform` / `loaders` replace vLLM's kernel modules (keys of
        MODULES, plus "l2norm" for the wrapper), the layer file's text,
        ``vllm.platforms.current_platform`` or its weight loaders (keys "merged", "mamba_v2");
        without vLLM the declarations stay and every case skips."""
        self.take_variant(variant)
        self._loaders = loaders
        self._mods: Dict[str, object] = {}
        self._layer = None
        self._glue: Dict[str, object] = {}
        self._platform = platform
        self._source: Optional[str] = None
        try:
            found = load_vllm() if modules is None or layer_source is None else {}
        except ImportError:
            return
        self._mods = {k: v for k, v in found.items() if k in MODULES}
        self._mods.update(modules or {})
        src = layer_source if layer_source is not None else found.get("layer_source")
        try:
            self._layer = layer_functions(src) if src else None
        except KeyError:        # a layer file without the Qwen class: the unpack is the reference's
            self._layer = None
        self._source = src
        if self._layer is None:
            self.unpack_qkvz_ba = None
        self.decode_paths = tuple(p for p in self.decode_paths if all(self.implements(o) for o in DECODE_PATHS[p]))

    def weight_loaders(self):
        """(vLLM's weight loaders or None, why not): the stand-ins given, else vLLM's own."""
        if self._loaders is not None:
            return self._loaders, None
        try:
            return _vllm_loaders(), None
        except ImportError as e:
            return None, f"vLLM's weight loaders are not importable ({e}): the harness's TP sharding is used"

    def shard_params(self, w, dims, layout, tp=1, rank=0, ba="sharded"):
        """Every rank's weights as vLLM's loaders shard them (module docstring); the harness's
        sharding where the loaders do not import."""
        from ..layouts.tp import shard_params
        loaders, _ = self.weight_loaders()
        if loaders is None:
            return shard_params(w, dims, layout, tp, rank, ba)
        return vllm_shard_params(loaders, w, dims, layout, tp, rank, ba)

    def _m(self, key: str):
        return self._mods[key] if self._mods else load_vllm()[key]

    def unavailable(self, device: str) -> Optional[str]:
        if not self._mods:
            try:
                load_vllm()
            except ImportError as e:
                return f"vLLM is not importable: {e}"
        if self.variant == "flashinfer" and importlib.util.find_spec("flashinfer") is None:
            return "FlashInfer is not importable (vLLM's FlashInfer prefill)"
        return super().unavailable(device)

    def _glue_fns(self) -> Dict[str, object]:
        """vLLM's prefill selection and FlashInfer wrapper, compiled from the layer file."""
        if not self._glue:
            if self._platform is None:
                from vllm.platforms import current_platform
                self._platform = current_platform
            ns = dict(current_platform=self._platform, Literal=Literal, logger=_QuietLogger(),
                      l2norm_fwd=self._m("l2norm").l2norm_fwd if "l2norm" in self._mods
                      else importlib.import_module(MODULES["ops"] + ".chunk").l2norm_fwd,
                      xpu_gdn_kernel_available=lambda: False, rocm_aiter_ops=None)
            self._glue = source_functions(self._source, LAYER_FUNCTIONS, ns=ns, tag=f"<vLLM {LAYER_MODULE}>")
        return self._glue

    def prefill_backend(self, K: int, V: int, dtype=torch.bfloat16) -> str:
        """What vLLM 0.33's _resolve_gdn_prefill_backend selects here for head dims K, V
        (``gdn_prefill_backend`` = this backend's variant, or "auto")."""
        cfg = SimpleNamespace(
            additional_config={"gdn_prefill_backend": self.variant or "auto"},
            model_config=SimpleNamespace(dtype=dtype, hf_text_config=SimpleNamespace(
                linear_key_head_dim=K, linear_value_head_dim=V)))
        return self._glue_fns()["_resolve_gdn_prefill_backend"](cfg)[1]

    def describe(self) -> Dict:
        d = super().describe()
        loaders, why = self.weight_loaders()
        d.update(weight_loading="vLLM's MergedColumnParallelLinear.weight_loader (in_proj_qkvz, in_proj_ba), "
                 "mamba_v2_sharded_weight_loader (conv1d); A_log, dt_bias, out_proj, norm: the harness's"
                 if loaders is not None else why)
        if _CACHE:
            d.update(vllm_version=_CACHE.get("version"),
                     vllm_modules={k: getattr(m, "__name__", "?") for k, m in self._mods.items()})
        if self._layer is not None and torch.cuda.is_available():
            try:
                d.update(prefill_backend_k128=self.prefill_backend(128, 128))
            except Exception as e:  # noqa: BLE001 - describing never fails a run
                d.update(prefill_backend_k128=f"unresolved: {type(e).__name__}: {e}")
        return d

    # ------------------------------------------------------------------ projections
    def unpack_qkvz_ba(self, mixed_qkvz, mixed_ba, dims, layout):
        # `dims` are the rank's own: vLLM's tp_size divisions are done already (tp_size=1).
        me = SimpleNamespace(num_k_heads=dims.H, num_v_heads=dims.HV, head_k_dim=dims.K, head_v_dim=dims.V,
                             tp_size=1, key_dim=dims.H * dims.K, value_dim=dims.HV * dims.V,
                             gqa_interleaved_layout=layout == "interleaved")
        T = mixed_qkvz.shape[0]
        mixed_qkv, z, b, a = self._layer["prepare_gdn_attention_core_inputs"](me, mixed_qkvz, mixed_ba, T)
        q, k, v = self._layer["rearrange_mixed_qkv"](me, mixed_qkv)
        return q[0], k[0], v[0], z, b, a

    # ------------------------------------------------------------------ gating
    def fused_gdn_gating(self, A_log, a, b, dt_bias, beta: float = 1.0, threshold: float = 20.0):
        # vLLM 0.33's prefill gating lives in fused_post_conv_prep (softplus threshold 20,
        # beta 1 hard-wired): run its gating branch with a 1x1-head dummy q / k / v.
        if beta != 1.0 or threshold != 20.0:
            raise NotImplementedError("vLLM 0.33's fused gating has beta=1, threshold=20 built in")
        HV = A_log.shape[0]
        a2, b2 = a.reshape(-1, HV), b.reshape(-1, HV)
        dummy = torch.zeros(a2.shape[0], 2 + HV, dtype=a.dtype, device=a.device)
        *_, g, bt = self._m("post_conv").fused_post_conv_prep(
            conv_output=dummy, a=a2, b=b2, A_log=A_log, dt_bias=dt_bias, num_k_heads=1, head_k_dim=1,
            head_v_dim=1, apply_l2norm=True, output_g_exp=False)
        return g.reshape(a.shape), bt.reshape(b.shape)

    # ------------------------------------------------------------------ delta rule
    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        # vLLM's chunk size is fixed (FLA_CHUNK_SIZE = 64). The fp32 final state is cast
        # back to the state dtype, as vLLM's layer does (`ssm_state[idx] = final.to(...)`).
        _check_vk(state_layout)
        if q.dtype == torch.float32:
            raise NotImplementedError("vLLM's chunk_gated_delta_rule asserts q.dtype != float32")
        chosen = self.prefill_backend(q.shape[-1], v.shape[-1], q.dtype)
        if chosen not in PREFILL_BACKENDS or (self.variant and chosen != self.variant):
            raise NotImplementedError(f"vLLM 0.33 would run its {chosen!r} GDN prefill here "
                                      f"(gdn_prefill_backend={self.variant or 'auto'})")
        if chosen == "flashinfer":
            if q.shape[-1] != 128 or v.shape[-1] != 128:
                # vLLM 0.33 picks FlashInfer's prefill on SM90 for any head_k_dim (its SM10x / 12x
                # branches require 128); FlashInfer's SM90 kernel then raises (docs/findings.md).
                raise NotImplementedError(
                    f"vLLM 0.33 selects FlashInfer's GDN prefill on SM90 for head dims K={q.shape[-1]}, "
                    f"V={v.shape[-1]}, whose SM90 kernel supports 128 only: vLLM cannot serve these dims "
                    "(docs/findings.md; vllm@triton judges the Triton prefill)")
            if importlib.util.find_spec("flashinfer") is None:
                raise NotImplementedError("vLLM 0.33 runs FlashInfer's GDN prefill here and FlashInfer is not "
                                          "importable (vllm@triton judges the Triton prefill alone)")
            return self._fi_chunk(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                  use_qk_l2norm_in_kernel)
        o, final = self._m("ops").chunk_gated_delta_rule(
            q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        if final is not None and initial_state is not None:
            final = final.to(initial_state.dtype)
        return o, final

    def _fi_chunk(self, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm):
        """vLLM's fi_chunk_gated_delta_rule, as its layer calls it (varlen ``[1, T, ...]``, an
        initial state per sequence; its final state is fp32, cast back as the layer does)."""
        K, shape = q.shape[-1], v.shape
        if scale not in (None, K ** -0.5):
            raise NotImplementedError("vLLM's FlashInfer prefill wrapper passes no scale (FlashInfer's K^-0.5)")
        B, T = q.shape[:2]
        if cu_seqlens is None and B > 1:
            q, k, v, g, beta = (t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g, beta))
            cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=q.device)
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        h0 = initial_state if initial_state is not None else torch.zeros(
            N, v.shape[2], v.shape[3], K, dtype=torch.float32, device=q.device)
        # vLLM's layer hands the wrapper contiguous q / k / v (rearrange_mixed_qkv); the
        # wrapper's l2norm_fwd .view()s them, so a strided split would fail there, not in vLLM.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, final = self._glue_fns()["fi_chunk_gated_delta_rule"](
            q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm)
        if final is not None and initial_state is not None:
            final = final.to(initial_state.dtype)
        return o.reshape(shape), final

    def _pool_call(self, call, initial_state, inplace_final_state, ssm_state_indices, pad_slot_id):
        """Run `call(pool, indices)` (vLLM's in-place update) on the pool with a null block in
        front; write the slots back (inplace) or return the updated copy."""
        pool = _with_null_block(initial_state).contiguous()
        o, _ = call(pool, _vllm_slots(ssm_state_indices, pad_slot_id))
        if inplace_final_state:
            initial_state.copy_(pool[1:])
            return o, initial_state
        return o, pool[1:]

    def _per_sequence(self, call, q, v, initial_state, output_final_state, cu_seqlens):
        """One initial / final state per sequence: vLLM's recurrent kernels read h0 at row
        ``bos`` without indices (wrong for T > 1, docs/findings.md) and have no per-sequence
        final state, so each sequence gets its own pool slot, read through 1-D indices, and
        its final state is the per-token state buffer's row eos-1 (inplace=False).
        `call(flat, pool, inplace, cu_seqlens, indices)` runs the kernel on its token tensors
        passed through `flat` (a ``[B, T, ...]`` batch becomes one ``[1, B*T, ...]`` varlen run)."""
        B, T = q.shape[:2]
        flat = (lambda t: t.reshape(1, B * T, *t.shape[2:])) if cu_seqlens is None and B > 1 else (lambda t: t)
        if cu_seqlens is None:
            cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=q.device)
        offs = [int(c) for c in cu_seqlens.tolist()]
        N = len(offs) - 1
        dtype = initial_state.dtype if initial_state is not None else torch.float32
        pool = torch.zeros(N + 1, v.shape[2], v.shape[3], q.shape[3], dtype=dtype, device=q.device)
        if initial_state is not None:
            pool[1:] = initial_state
        o, per_token = call(flat, pool, False, cu_seqlens, _ids(list(range(1, N + 1)), q.device))
        if not output_final_state:
            return o.reshape(v.shape), None
        final = torch.stack([per_token[offs[n + 1] - 1] if offs[n + 1] > offs[n] else pool[n + 1] for n in range(N)])
        return o.reshape(v.shape), final

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None,
                                         output_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                         num_accepted_tokens=None, inplace_final_state=False,
                                         use_qk_l2norm_in_kernel=False, state_layout="vk",
                                         pad_slot_id=PAD_SLOT_ID):
        _check_vk(state_layout)
        fn = self._m("recurrent").fused_recurrent_gated_delta_rule

        def run(q, k, v, g, beta, h0, inplace, cu, idx):
            return fn(q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=h0, inplace_final_state=inplace,
                      cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=num_accepted_tokens,
                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        if ssm_state_indices is None:
            return self._per_sequence(lambda f, *args: run(f(q), f(k), f(v), f(g), f(beta), *args),
                                      q, v, initial_state, output_final_state, cu_seqlens)
        return self._pool_call(lambda pool, idx: run(q, k, v, g, beta, pool, True, cu_seqlens, idx),
                               initial_state, inplace_final_state, ssm_state_indices, pad_slot_id)

    def fused_sigmoid_gating_delta_rule_update(self, A_log, a, b, dt_bias, q, k, v, beta: float = 1.0,
                                               threshold: float = 20.0, scale=None, initial_state=None,
                                               inplace_final_state=True, cu_seqlens=None, ssm_state_indices=None,
                                               num_accepted_tokens=None, use_qk_l2norm_in_kernel=False,
                                               state_layout="vk", pad_slot_id=PAD_SLOT_ID):
        # a, b [T, HV] are indexed at bos * HV (vLLM's layer passes them 2-D).
        _check_vk(state_layout)
        fn = self._m("sigmoid").fused_sigmoid_gating_delta_rule_update
        HV = v.shape[2]

        def run(h0, inplace, cu, idx, q=q, k=k, v=v):
            return fn(A_log=A_log, a=a.reshape(-1, HV), b=b.reshape(-1, HV), dt_bias=dt_bias, q=q, k=k, v=v,
                      beta=beta, threshold=threshold, scale=scale, initial_state=h0, inplace_final_state=inplace,
                      cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=num_accepted_tokens,
                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        if ssm_state_indices is None:
            return self._per_sequence(lambda f, *args: run(*args, f(q), f(k), f(v)), q, v, initial_state, True,
                                      cu_seqlens)
        return self._pool_call(lambda pool, idx: run(pool, True, cu_seqlens, idx),
                               initial_state, inplace_final_state, ssm_state_indices, pad_slot_id)

    def fused_recurrent_gated_delta_rule_packed_decode(self, mixed_qkv, a, b, A_log, dt_bias, scale, initial_state,
                                                       out, ssm_state_indices, use_qk_l2norm_in_kernel=True,
                                                       state_layout="vk", pad_slot_id=PAD_SLOT_ID):
        # vLLM's layer passes scale = head_k_dim ** -0.5 (the reference's default for None).
        _check_vk(state_layout)
        if scale is None:
            scale = initial_state.shape[-1] ** -0.5
        fn = self._m("recurrent").fused_recurrent_gated_delta_rule_packed_decode
        self._pool_call(lambda pool, idx: fn(mixed_qkv=mixed_qkv, a=a, b=b, A_log=A_log, dt_bias=dt_bias,
                                             scale=scale, initial_state=pool, out=out, ssm_state_indices=idx,
                                             use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel),
                        initial_state, True, ssm_state_indices, pad_slot_id)
        return out

    # ------------------------------------------------------------------ conv
    def causal_conv1d_fn(self, x, weight, bias, conv_states, query_start_loc, cache_indices=None,
                         has_initial_state=None, activation="silu", pad_slot_id: int = PAD_SLOT_ID):
        # x is the [dim, T] view of a token-major buffer, as vLLM's layer passes it. vLLM's
        # kernel dereferences cache_indices and has_initial_state unconditionally: the
        # reference's defaults (slot i, no initial state) are made explicit.
        N = query_start_loc.shape[0] - 1
        if cache_indices is None:
            cache_indices = _ids(list(range(N)), x.device)
        if has_initial_state is None:
            has_initial_state = torch.zeros(N, dtype=torch.bool, device=x.device)
        pool = _with_null_block(conv_states)
        out = self._m("conv").causal_conv1d_fn(
            x, weight, bias, conv_states=pool, query_start_loc=query_start_loc,
            cache_indices=_vllm_slots(cache_indices, pad_slot_id), has_initial_state=has_initial_state,
            activation=activation)
        conv_states.copy_(pool[1:])
        return out

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None, conv_state_indices=None,
                             num_accepted_tokens=None, query_start_loc=None, pad_slot_id: int = PAD_SLOT_ID):
        # vLLM updates x in place and returns it. Varlen (spec) input: vLLM's layer passes
        # max_query_len = num_spec + 1, the conv window being W - 1 + num_spec columns.
        B = (query_start_loc.shape[0] - 1) if query_start_loc is not None else x.shape[0]
        if conv_state_indices is None:
            conv_state_indices = _ids(list(range(B)), x.device)
        kwargs = dict(num_accepted_tokens=num_accepted_tokens)
        if query_start_loc is not None:
            W = weight.shape[-1]
            lens = query_start_loc.diff().tolist()
            mql = conv_state.shape[-1] - (W - 1) + 1 if num_accepted_tokens is not None else max(lens, default=1)
            kwargs.update(query_start_loc=query_start_loc, max_query_len=int(mql))
        pool = _with_null_block(conv_state)
        out = self._m("conv").causal_conv1d_update(
            x, pool, weight, bias, activation, conv_state_indices=_vllm_slots(conv_state_indices, pad_slot_id),
            **kwargs)
        conv_state.copy_(pool[1:])
        return out

    # ------------------------------------------------------------------ norm
    def rms_norm_gated(self, x, weight, z=None, eps: float = 1e-6, group_size=None, norm_before_gate: bool = True,
                       activation: str = "silu", out_dtype=None):
        # layer_norm_fwd, as the layer's _rms_norm_gated_cuda calls it (2-D, last dim
        # contiguous; one store in the out buffer's dtype).
        N = x.shape[-1]
        x2 = x.reshape(-1, N).contiguous()
        z2 = None if z is None else z.reshape(-1, N).contiguous()
        y = torch.empty(x2.shape, dtype=out_dtype or x.dtype, device=x.device)
        self._m("layernorm").layer_norm_fwd(x2, weight.contiguous(), None, eps, z=z2, out=y,
                                            group_size=N if group_size is None else group_size,
                                            norm_before_gate=norm_before_gate, is_rms_norm=True,
                                            activation=activation)
        return y.reshape(x.shape)
