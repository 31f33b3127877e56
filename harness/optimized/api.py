"""The Backend interface: what a fast path under test declares and implements.

A backend implements any subset of `OPS` (the ops declared in harness.reference.ops);
method and argument names mirror vLLM's kernel functions, and each op has exactly the
semantics of the reference function declared with it (harness.reference,
docs/semantics.md), so adapters stay thin. Ops a
backend lacks are skipped at op level and filled in by the reference at layer level
(the report lists them). An optional whole-core entry, `gdn_core`, takes the packed
projections, batch metadata and caches, as fused ROCm / XPU paths do.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from harness.batch import CoreBatch  # noqa: F401 - part of the plugin API (docs/backends.md)
from ..errors import InputError
from ..reference.ops import is_op, op_names


def __getattr__(name: str):
    # `OPS`: the declared ops' names, read live from the op table (harness.reference.ops)
    if name == "OPS":
        return op_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# How a layer runs its decodes; a backend lists the paths it implements.
DECODE_PATHS = {
    "recurrent": ("fused_gdn_gating", "fused_recurrent_gated_delta_rule"),
    "sigmoid_gating": ("fused_sigmoid_gating_delta_rule_update",),
    "packed": ("fused_recurrent_gated_delta_rule_packed_decode",),
}


# The domain of the gate g a delta-rule kernel takes: "log" (the harness's: the decay is
# exp(g); vLLM's / fla's Triton kernels), "linear" (the decay itself, alpha = exp(g):
# FlashInfer's chunk_gated_delta_rule), "log2" (the decay is 2**g), or "in_kernel" (raw a / b,
# the kernel computes the gate: FlashInfer's decode / MTP, the sigmoid-gating updates).
GATE_DOMAINS = ("log", "linear", "log2", "in_kernel")


def checkpoints_by_blocks(chunk: Callable) -> Callable:
    """`chunk_gated_delta_rule_checkpoints` from a chunk kernel that cannot write checkpoints
    (fla's): the prefill runs block by block - round r is every sequence's r-th block of
    `checkpoint_every` tokens (or its tail) in one varlen call - the state handed on in fp32,
    and a whole block's final state is its checkpoint, stored in the checkpoints' dtype."""
    def chunk_gated_delta_rule_checkpoints(q, k, v, g, beta, state_checkpoints, checkpoint_every: int, scale=None,
                                           initial_state=None, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
                                           state_layout="vk"):
        B, T = q.shape[:2]
        if cu_seqlens is None:
            q, k, v, g, beta = (t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g, beta))
            cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=q.device)
        cu = [int(c) for c in cu_seqlens.tolist()]
        N, E = len(cu) - 1, checkpoint_every
        HV, K, V = v.shape[2], q.shape[-1], v.shape[-1]
        state_shape = (HV, V, K) if state_layout == "vk" else (HV, K, V)
        state = (initial_state.float().clone() if initial_state is not None
                 else torch.zeros(N, *state_shape, dtype=torch.float32, device=q.device))
        pieces = [[(a, min(a + E, eos)) for a in range(bos, eos, E)] for bos, eos in zip(cu, cu[1:])]
        first_ck = [0]
        for bos, eos in zip(cu, cu[1:]):
            first_ck.append(first_ck[-1] + (eos - bos) // E)
        o = torch.zeros_like(v)
        for r in range(max((len(p) for p in pieces), default=0)):
            seqs = [n for n in range(N) if r < len(pieces[n])]
            rows = torch.tensor([t for n in seqs for t in range(*pieces[n][r])], dtype=torch.long, device=q.device)
            lens = [0] + [pieces[n][r][1] - pieces[n][r][0] for n in seqs]
            cu_r = torch.tensor(lens, device=q.device).cumsum(0).to(torch.int32)
            sel = torch.tensor(seqs, dtype=torch.long, device=q.device)
            o_r, fin = chunk(*(t[:, rows] for t in (q, k, v, g, beta)), scale=scale, initial_state=state[sel],
                             output_final_state=True, cu_seqlens=cu_r, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                             state_layout=state_layout)
            o[:, rows] = o_r.to(o.dtype)
            state[sel] = fin.float()
            for i, n in enumerate(seqs):
                if lens[i + 1] == E:
                    state_checkpoints[first_ck[n] + r] = fin[i].to(state_checkpoints.dtype)
        final = state.to(initial_state.dtype if initial_state is not None else torch.float32)
        return o.reshape(B, T, *v.shape[2:]), final
    return chunk_gated_delta_rule_checkpoints


def gate_to(domain: str, g: torch.Tensor) -> torch.Tensor:
    """The harness's log-space gate `g` in a kernel's `domain` (fp32, as kernels take it)."""
    g = g.float()
    if domain == "log":
        return g
    if domain == "linear":
        return torch.exp(g)
    if domain == "log2":
        return g * (1.0 / math.log(2.0))
    raise InputError("gate domain", "one of", "log / linear / log2", domain)


class Backend:
    """Base class. Subclasses set the declarations and define the ops they implement."""

    name: str = "unnamed"
    description: str = ""
    devices: Tuple[str, ...] = ("cpu", "cuda")
    dtypes: Tuple[str, ...] = ("float32", "float16", "bfloat16")
    state_dtypes: Tuple[str, ...] = ("float32", "bfloat16")
    ssm_state_layout: str = "vk"            # "vk" [N, HV, V, K] or "kv" [N, HV, K, V]
    conv_state_layouts: Tuple[str, ...] = ("dim_first", "token_first")
    decode_paths: Tuple[str, ...] = ("recurrent",)
    # What a PAD row's output holds: "zeros" (DESIGN's contract), or "unspecified" for a
    # backend whose kernels never write them (its reason in pad_row_outputs_reason). Then only
    # real rows are compared, and the report says so; states are checked as ever.
    pad_row_outputs: str = "zeros"
    pad_row_outputs_reason: str = ""
    # op -> the gate domain (GATE_DOMAINS) of the kernel behind it; ops not named take the
    # harness's log-space g. The adapter converts (`gate_to`); a wrong conversion is a fault
    # the harness must see (all-NaN or over-decayed outputs), never a tolerance.
    gate_domains: Dict[str, str] = {}
    # What fp32 dots in the chunked kernels compute on CUDA: "ieee", or "tf32" (Triton's tl.dot
    # default on tensor cores, fla's chunk_fwd). An fp32 layer case on CUDA is then judged under
    # the policy's ".tf32" layer entries; the CPU interpreter computes IEEE fp32 either way.
    fp32_dots_cuda: str = "ieee"
    # Variants a backend takes after "@" in its name (``vllm@flashinfer``): variant -> what it
    # selects; the constructor gets ``variant=``. Empty: the backend has none.
    variants: Dict[str, str] = {}

    # Ops: None (or no attribute) means "not implemented". Subclasses override with the
    # reference's signature; the ops named here are the ones declared in harness.reference.ops.
    unpack_qkvz_ba = None
    causal_conv1d_fn = None
    causal_conv1d_update = None
    fused_gdn_gating = None
    chunk_gated_delta_rule = None
    chunk_gated_delta_rule_checkpoints = None
    fused_recurrent_gated_delta_rule = None
    fused_sigmoid_gating_delta_rule_update = None
    fused_recurrent_gated_delta_rule_packed_decode = None
    rms_norm_gated = None
    # gdn_core(mixed_qkvz, mixed_ba, params: RankParams, batch: CoreBatch, conv_state, ssm_state,
    #          norm: NormConfig) -> core [T, HV, V]; caches updated in place.
    gdn_core = None
    # shard_params(weights: GDNWeights, dims, layout, tp, rank, ba) -> RankParams: the backend's
    # own weight loading / TP sharding (as layouts.tp.shard_params); None: the harness's (vLLM's).
    shard_params = None
    # True: the decode and spec-verify steps' ops can be captured in a CUDA graph (no host
    # syncs, no Python decisions on tensor values); checked by harness.tools.cudagraph (GPU only).
    cuda_graphs = False

    variant: Optional[str] = None

    def take_variant(self, variant: Optional[str]) -> None:
        """Check `variant` against `variants` and name the instance ``<name>@<variant>``."""
        if variant is not None and variant not in self.variants:
            raise InputError(f"{self.name} variant", "one of", sorted(self.variants), variant)
        self.variant = variant
        if variant:
            self.name = f"{self.name}@{variant}"

    def unavailable(self, device: str) -> Optional[str]:
        """Why this backend cannot run on `device` (missing package, no GPU, ...), or None."""
        kind = torch.device(device).type
        if kind not in self.devices:
            return f"the backend runs on {list(self.devices)}, not {kind}"   # the record names the backend
        if kind == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def implements(self, op: str) -> bool:
        return getattr(self, op, None) is not None

    def implemented_ops(self) -> List[str]:
        return [op for op in op_names() if self.implements(op)]

    def describe(self) -> Dict:
        return dict(name=self.name, description=self.description, devices=list(self.devices),
                    dtypes=list(self.dtypes), state_dtypes=list(self.state_dtypes),
                    ssm_state_layout=self.ssm_state_layout, decode_paths=list(self.decode_paths),
                    ops=self.implemented_ops(), gdn_core=self.gdn_core is not None,
                    pad_row_outputs=self.pad_row_outputs, gate_domains=dict(self.gate_domains),
                    fp32_dots_cuda=self.fp32_dots_cuda,
                    variants=dict(self.variants))


@dataclass
class FilledOps:
    """A backend's ops with the reference filling the gaps; records what was filled."""
    backend: Backend
    reference: Backend
    filled: List[str] = field(default_factory=list)

    def __getattr__(self, op: str):
        if not is_op(op):
            raise AttributeError(op)
        if self.backend.implements(op):
            return getattr(self.backend, op)
        if op not in self.filled:
            self.filled.append(op)
        return getattr(self.reference, op)


def import_once(cache: Dict[str, object], errors: List[str], load: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """An adapter's lazy imports: `load()`'s entries, kept in `cache` after the first call.
    A failure (ImportError, or a kernel package failing at import) is kept in `errors` and
    raised as ImportError("<type>: <message>") on this and every later call."""
    if cache:
        return cache
    if errors:
        raise ImportError(errors[0])
    try:
        found = load()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        raise ImportError(errors[0]) from e
    cache.update(found)
    return cache


def package_modules(package: str, modules: Dict[str, str]) -> Dict[str, object]:
    """A kernel package's `modules` (key -> dotted path), imported, and its ``version``: what an
    adapter's `import_once` loader returns."""
    import importlib
    pkg = importlib.import_module(package)
    found = {key: importlib.import_module(path) for key, path in modules.items()}
    return dict(found, version=getattr(pkg, "__version__", "?"))


def source_functions(source: str, names, cls: Optional[str] = None, ns: Optional[Dict[str, object]] = None,
                     tag: str = "<source>") -> Dict[str, object]:
    """Functions `names` defined at the top of `source` (or in its class `cls`), compiled as plain
    functions (decorators and annotations dropped) in namespace `ns` (torch added): a kernel
    package's own glue run without importing the module around it (its config / distributed
    stack). A name `source` lacks raises KeyError naming it."""
    tree = ast.parse(source)
    body = tree.body
    if cls is not None:
        found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        if not found:
            raise KeyError(f"{tag} defines no class {cls}")
        body = found[0].body
    defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {d.name for d in defs}
    if missing:
        raise KeyError(f"{tag} defines no {sorted(missing)}")
    for d in ast.walk(ast.Module(body=defs, type_ignores=[])):
        if isinstance(d, (ast.FunctionDef, ast.ClassDef)):
            d.decorator_list = []
        if isinstance(d, ast.FunctionDef):
            d.returns = None
            for a in d.args.args + d.args.kwonlyargs + d.args.posonlyargs + [d.args.vararg, d.args.kwarg]:
                if a is not None:
                    a.annotation = None
    space: Dict[str, object] = {"torch": torch, **(ns or {})}
    exec(compile(ast.Module(body=defs, type_ignores=[]), tag, "exec"), space)
    return {name: space[name] for name in names}
