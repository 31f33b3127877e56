"""A transformers Qwen3-Next / Qwen3.5 causal LM whose GDN layers run through a harness backend.

`load_model(dir, backend)` loads a local checkpoint with transformers, takes every
linear-attention layer's weights from the checkpoint in its own projection layout
(interleaved for Qwen3-Next, flat for Qwen3.5: from the architecture, checked against the
tensor names) and swaps the layer for `HarnessGDN`: the in_proj GEMMs, then `backend_step`
(the backend's ops composed as vLLM's layer composes them) per TP rank over a conv / ssm
state pool, the partial outputs summed. Full attention, MLP / MoE, embeddings and the LM
head stay transformers' own. `HarnessModel.generate` runs a greedy prefill, then decode
steps: GDN states carried in the pool (one slot per batch row), attention KV in
transformers' cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from harness.optimized.compose import backend_step
from ..config import GDNDims
from ..errors import ConfigError, HarnessError, InputError
from ..layouts.tp import all_ranks, reduce_partials
from ..layouts.weights import GDNWeights, detect_layout, from_checkpoint
from harness.batch import EntryPlan
from harness.config import NormConfig

# model_type -> the projection layout of its checkpoints
ARCH_LAYOUT = {"qwen3_next": "interleaved", "qwen3_5": "flat", "qwen3_5_text": "flat",
               "qwen3_5_moe": "flat", "qwen3_5_moe_text": "flat"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def model_layout(config) -> str:
    """The GDN projection layout of an architecture (model_type)."""
    for c in (config, text_config(config)):
        if getattr(c, "model_type", None) in ARCH_LAYOUT:
            return ARCH_LAYOUT[c.model_type]
    raise ConfigError("model_type", f"{getattr(config, 'model_type', None)!r} is not a GDN model the harness "
                      f"knows; known: {sorted(ARCH_LAYOUT)}")


def gdn_dims(config) -> GDNDims:
    c = text_config(config)
    return GDNDims(hidden=c.hidden_size, H=c.linear_num_key_heads, HV=c.linear_num_value_heads,
                   K=c.linear_key_head_dim, V=c.linear_value_head_dim, W=c.linear_conv_kernel_dim,
                   name=c.model_type)


def layer_weights(name: str, module: nn.Module, dims: GDNDims, layout: str) -> GDNWeights:
    """A transformers GDN module's checkpoint tensors (its own layout) -> canonical weights."""
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    found = detect_layout(sd)
    if found != layout:
        raise InputError(f"{name}.in_proj", "projection layout of the architecture", layout, found)
    return from_checkpoint(sd, dims, layout)


@dataclass
class StepBatch:
    """What the next forward holds per batch row: its real tokens (right-aligned; the rest
    is left padding) and whether the row starts a new sequence (state from zeros)."""
    real: List[int]
    fresh: List[bool]


class _Shared:
    step: Optional[StepBatch] = None


class HarnessGDN(nn.Module):
    """A GDN layer run through a backend's ops, with its own state pools (per TP rank)."""

    def __init__(self, name: str, weights: GDNWeights, dims: GDNDims, layout: str, backend, ops,
                 norm: NormConfig, shared: _Shared, tp: int = 1, decode_path: str = "recurrent",
                 dtype: torch.dtype = torch.float32, state_dtype: torch.dtype = torch.float32, device="cpu"):
        super().__init__()
        self.name, self.dims, self.layout, self.norm, self.shared = name, dims, layout, norm, shared
        self.ops, self.decode_path = ops, decode_path
        self.core_entry = getattr(backend, "gdn_core", None)
        self.ssm_layout = backend.ssm_state_layout
        self.ranks = []
        for p in all_ranks(weights, dims, layout, tp):
            moved = p.to(device=device, dtype=dtype)
            # A_log / dt_bias keep the dtype they were loaded in; the gating upcasts them itself
            moved.A_log, moved.dt_bias = p.A_log.to(device), p.dt_bias.to(device)
            self.ranks.append(moved)
        self.dtype, self.state_dtype, self.device = dtype, state_dtype, torch.device(device)
        self.conv: List[torch.Tensor] = []
        self.ssm: List[torch.Tensor] = []

    def _ensure_slots(self, n: int) -> None:
        """Pools of >= n slots; kept across batches, so fresh rows meet stale slots as in vLLM."""
        if self.conv and self.conv[0].shape[0] >= n:
            return
        self.conv, self.ssm = [], []
        for p in self.ranks:
            loc = p.local
            self.conv.append(torch.zeros(n, loc.conv_dim, loc.W - 1, dtype=self.dtype, device=self.device))
            shape = (n, loc.HV, loc.V, loc.K) if self.ssm_layout == "vk" else (n, loc.HV, loc.K, loc.V)
            self.ssm.append(torch.zeros(shape, dtype=self.state_dtype, device=self.device))

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        B, T, hid = hidden_states.shape
        step = self.shared.step or StepBatch([T] * B, [True] * B)   # a plain forward: fresh prefills
        if len(step.real) != B or any(not 1 <= n <= T for n in step.real):
            raise InputError(f"{self.name}: step.real", f"{B} rows of 1..{T} real tokens", B, step.real)
        idx = torch.tensor([b * T + t for b in range(B) for t in range(T - step.real[b], T)],
                           device=hidden_states.device)
        x = hidden_states.reshape(B * T, hid)[idx].to(self.dtype)
        entries, bos = [], 0
        for b, (n, fresh) in enumerate(zip(step.real, step.fresh)):
            kind = "prefill" if fresh or n > 1 else "decode"
            entries.append(EntryPlan(kind=kind, seq=b, bos=bos, eos=bos + n, conv_slot=b, ssm_slots=[b],
                                     has_initial_state=not fresh, num_accepted=1))
            bos += n
        self._ensure_slots(B)
        partials = [backend_step(self.ops, p, x @ p.w_qkvz.T, x @ p.w_ba.T, entries, conv, ssm, self.norm,
                                 self.ssm_layout, self.decode_path, self.core_entry, 0)["out"]
                    for p, conv, ssm in zip(self.ranks, self.conv, self.ssm)]
        out = hidden_states.new_zeros(B * T, hid)
        out[idx] = reduce_partials(partials).to(out.dtype)
        return out.view(B, T, hid)


def gdn_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """name -> module for every linear-attention (GDN) layer of a transformers model."""
    return {name: m for name, m in model.named_modules()
            if name.endswith("linear_attn") and hasattr(m, "A_log")}


class HarnessModel:
    """A transformers GDN model with its linear-attention layers on a harness backend."""

    def __init__(self, hf_model: nn.Module, backend: str = "reference", device: str = "cpu",
                 tp: int = 1, decode_path: str = "recurrent", state_dtype: str = "float32"):
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.layout = model_layout(self.config)
        self.dims = gdn_dims(self.config)
        self.device = torch.device(device)
        self.dtype = next(hf_model.parameters()).dtype
        self.tp, self.decode_path, self.state_dtype = tp, decode_path, DTYPES[state_dtype]
        tc = text_config(self.config)
        if getattr(tc, "hidden_act", "silu") != "silu":
            raise ConfigError("hidden_act", f"the GDN conv activation must be silu, got {tc.hidden_act!r}")
        self.norm = NormConfig(norm_before_gate=True, activation="silu", eps=tc.rms_norm_eps)
        self.original = gdn_modules(hf_model)
        if not self.original:
            raise ConfigError("model", "no linear-attention (GDN) layers found")
        self.weights = {n: layer_weights(n, m, self.dims, self.layout) for n, m in self.original.items()}
        self.shared = _Shared()
        self.backend_name: Optional[str] = None
        if backend is not None:
            self.set_backend(backend)

    def set_backend(self, name: Optional[str]) -> None:
        """Route every GDN layer through backend `name` (fresh state pools); None restores
        transformers' own layers."""
        if name is None:
            self._swap(self.original)
            self.backend_name = None
            return
        from ..optimized.api import FilledOps
        from ..optimized.reference_backend import ReferenceBackend
        from ..optimized.registry import load_backend
        backend = load_backend(name)
        dtype_name = {v: k for k, v in DTYPES.items()}[self.dtype]
        if dtype_name not in backend.dtypes:
            raise ConfigError("dtype", f"backend {name!r} runs {list(backend.dtypes)}, not {dtype_name}")
        if self.decode_path not in backend.decode_paths:
            raise ConfigError("decode_path", f"backend {name!r} implements {list(backend.decode_paths)}, "
                              f"not {self.decode_path!r}")
        why = backend.unavailable(str(self.device))     # after the caller's own mistakes
        if why:
            raise HarnessError(f"backend {name!r}: {why}")
        ops = FilledOps(backend, ReferenceBackend())
        self._swap({n: HarnessGDN(n, w, self.dims, self.layout, backend, ops, self.norm, self.shared, self.tp,
                                  self.decode_path, self.dtype, self.state_dtype, self.device)
                    for n, w in self.weights.items()})
        self.backend_name, self._ops = name, ops

    @property
    def filled(self) -> List[str]:
        """Ops the backend lacks, filled from the reference so far."""
        return list(self._ops.filled) if self.backend_name else []

    def _swap(self, modules: Dict[str, nn.Module]) -> None:
        for name, m in modules.items():
            parent, _, attr = name.rpartition(".")
            setattr(self.hf.get_submodule(parent), attr, m)

    def _forward(self, ids, mask, pos, step: StepBatch, cache, use_cache: bool, keep: int):
        self.shared.step = step
        try:
            return self.hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=use_cache, logits_to_keep=keep)
        finally:
            self.shared.step = None

    def _left_pad(self, seqs: List[List[int]]):
        if not seqs or any(not s for s in seqs):
            raise InputError("token ids", "non-empty sequences", ">= 1 token each", [len(s) for s in seqs])
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, L - len(s):] = torch.tensor(s)
            mask[b, L - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device)

    @torch.no_grad()
    def logits(self, seqs: List[List[int]]) -> List[torch.Tensor]:
        """Fresh prefills of `seqs` (one batch, left-padded): fp32 logits ``[len, vocab]`` each."""
        ids, mask, pos = self._left_pad(seqs)
        out = self._forward(ids, mask, pos, StepBatch([len(s) for s in seqs], [True] * len(seqs)), None, False, 0)
        L = ids.shape[1]
        return [out.logits[b, L - len(s):].float() for b, s in enumerate(seqs)]

    @torch.no_grad()
    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 stop: Optional[Callable[[int, List[int]], bool]] = None,
                 scores: Optional[List[torch.Tensor]] = None) -> List[List[int]]:
        """Greedy continuations of `prompts` (one batch): a prefill, then one decode step per
        token. A row ends when stop(row, its new tokens) is true or at max_new_tokens.
        `scores`, if given, receives each step's next-token logits ``[B, vocab]``."""
        ids, mask, pos = self._left_pad(prompts)
        B = len(prompts)
        out = self._forward(ids, mask, pos, StepBatch([len(p) for p in prompts], [True] * B), None, True, 1)
        cache, gen, done = out.past_key_values, [[] for _ in range(B)], [max_new_tokens < 1] * B
        for t in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            if scores is not None:
                scores.append(out.logits[:, -1].float())
            for b in range(B):
                if not done[b]:
                    gen[b].append(int(nxt[b]))
                    done[b] = len(gen[b]) >= max_new_tokens or bool(stop and stop(b, gen[b]))
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            pos = pos[:, -1:] + 1
            out = self._forward(nxt[:, None], mask, pos, StepBatch([1] * B, [False] * B), cache, True, 1)
            cache = out.past_key_values
        return gen


def load_model(model_dir, backend: Optional[str] = "reference", device: str = "cpu", dtype: str = "float32",
               tp: int = 1, decode_path: str = "recurrent", state_dtype: str = "float32",
               attn_implementation: Optional[str] = None) -> HarnessModel:
    """Load a local Qwen3-Next / Qwen3.5 checkpoint (config.json + safetensors) with transformers
    and route its GDN layers through `backend` (None: transformers' own layers)."""
    from . import set_offline
    set_offline()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError("--model", f"{path} is not a model directory (no config.json)")
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"one of {list(DTYPES)}, got {dtype!r}")
    if state_dtype not in DTYPES:
        raise ConfigError("state_dtype", f"one of {list(DTYPES)}, got {state_dtype!r}")
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model_layout(config)          # refuse a non-GDN architecture before loading weights
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True, **kw)
    return HarnessModel(hf.to(device), backend, device, tp, decode_path, state_dtype)
