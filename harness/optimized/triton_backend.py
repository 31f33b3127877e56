"""`triton`: the project's own Triton kernels for the serving fast paths.

Fused gating, the interleaved unpack, both conv paths (varlen prefill; decode / spec with
state indices and the accepted-token window), the fused recurrent update, the
sigmoid-gating update and the packed single-token decode (pool indices, spec slots),
RMSNormGated. The chunked prefill delta rule delegates to fla's kernel when fla is
installed and a GPU is present; otherwise the layer fills it from the reference.
On a machine without a GPU the kernels run under TRITON_INTERPRET=1 (fp32 / fp16).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Optional

import torch

from .api import Backend, checkpoints_by_blocks
from .interpret import fast_interpreter, gpu_kernels, interpret_triton

interpret_triton()      # before triton.jit wraps the kernels below
if os.environ.get("TRITON_INTERPRET") == "1":
    fast_interpreter()  # cached lookups in Triton's interpreter (harness/optimized/interpret.py)

from .triton_kernels import conv, gating, norm, recurrent, unpack  # noqa: E402 - after interpret_triton()


def import_skipping_inits(module: str, packages):
    """Import `module` without running the __init__ of `packages` (fla.ops' imports every fla op
    and torch's inductor: seconds per worker process). Afterwards the stand-ins and what was
    imported beneath them leave sys.modules (the caller keeps the module it got), so a later
    plain `import fla.ops` builds the real package as if this never ran."""
    import importlib
    import sys
    import types
    before = set(sys.modules)
    added = []
    for name in packages:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        stub = types.ModuleType(name)
        stub.__path__, stub.__spec__, stub.__package__ = list(spec.submodule_search_locations), spec, name
        sys.modules[name] = stub
        added.append(name)
    try:
        return importlib.import_module(module)
    finally:
        for name in set(sys.modules) - before:
            if any(name == p or name.startswith(p + ".") for p in added):
                del sys.modules[name]
        for name in added:
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], child, None) is not None:
                delattr(sys.modules[parent], child)


@contextmanager
def compile_disable_as_identity():
    """fla wraps each dispatched op in ``torch.compiler.disable`` at import, which imports
    torch._dynamo (~2 s per worker process); the harness never compiles fla's ops, so the
    wrapping is a no-op here and the ops are taken unwrapped while this is in force."""
    real = torch.compiler.disable
    torch.compiler.disable = lambda fn=None, recursive=True, **kw: fn if fn is not None else (lambda f: f)
    try:
        yield
    finally:
        torch.compiler.disable = real


# fla's chunk kernel, imported without the __init__ of: fla.ops (every fla op), fla.modules, and
# fla.modules.norm (its layernorm imports torch.distributed.tensor and sympy: 1.1 s of the 1.2 s
# import on a 2-core CPU, ~3 s of a GPU worker's first case; the chunk kernel needs l2norm alone)
FLA_CHUNK = "fla.ops.gated_delta_rule.chunk"
FLA_SKIPPED_INITS = ("fla.ops", "fla.modules", "fla.modules.norm")


def _fla_chunk():
    """fla's chunk kernel as a function of the reference's signature, or None."""
    if not gpu_kernels():
        return None     # fla's chunk kernel is for the GPU; on the CPU the layer fills it from the reference
    try:
        with compile_disable_as_identity():
            fla_chunk = import_skipping_inits(FLA_CHUNK, FLA_SKIPPED_INITS).chunk_gated_delta_rule
    except Exception:  # noqa: BLE001 - fla absent or its import fails on this device: the layer fills chunk from the reference
        return None

    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False, state_layout="vk", chunk_size=64):
        o, final = fla_chunk(q=q, k=k, v=v, g=g, beta=beta.to(q.dtype), scale=scale,
                             initial_state=None if initial_state is None else initial_state.float(),
                             output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                             state_v_first=state_layout == "vk",
                             cu_seqlens=None if cu_seqlens is None else cu_seqlens.long())
        if final is not None and initial_state is not None:
            final = final.to(initial_state.dtype)
        return o, final
    return chunk_gated_delta_rule


class TritonBackend(Backend):
    name = "triton"
    description = "gdn-harness's own Triton kernels (chunked prefill via fla when installed)"
    decode_paths = ("recurrent", "sigmoid_gating", "packed")
    cuda_graphs = True      # value checks skipped and sizes from shapes under capture (triton_kernels.common)
    fp32_dots_cuda = "tf32"  # the chunked prefill is fla's chunk_fwd: tl.dot without allow_tf32=False

    unpack_qkvz_ba = staticmethod(unpack.unpack_qkvz_ba)
    causal_conv1d_fn = staticmethod(conv.causal_conv1d_fn)
    causal_conv1d_update = staticmethod(conv.causal_conv1d_update)
    fused_gdn_gating = staticmethod(gating.fused_gdn_gating)
    fused_recurrent_gated_delta_rule = staticmethod(recurrent.fused_recurrent_gated_delta_rule)
    fused_sigmoid_gating_delta_rule_update = staticmethod(recurrent.fused_sigmoid_gating_delta_rule_update)
    fused_recurrent_gated_delta_rule_packed_decode = staticmethod(
        recurrent.fused_recurrent_gated_delta_rule_packed_decode)
    rms_norm_gated = staticmethod(norm.rms_norm_gated)

    def __init__(self):
        self.chunk_gated_delta_rule = _fla_chunk()
        if self.chunk_gated_delta_rule is not None:      # fla writes no checkpoints: block by block
            self.chunk_gated_delta_rule_checkpoints = checkpoints_by_blocks(self.chunk_gated_delta_rule)

    def unavailable(self, device: str) -> Optional[str]:
        why = super().unavailable(device)
        if why:
            return why
        if torch.device(device).type != "cpu":
            return None
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton on CPU needs TRITON_INTERPRET=1 set before the kernels are imported"
        return interpreter_too_old()


# Seen: triton 3.6's interpreter fails `for t in range(0, L)` with L loaded from memory (the
# varlen kernels) with "only 0-dimensional arrays can be converted to Python scalars"; 3.7 runs it.
INTERPRETER_MIN = (3, 7)


def interpreter_too_old() -> Optional[str]:
    import triton
    version = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
    if version < INTERPRETER_MIN:
        return (f"triton {triton.__version__}'s interpreter cannot loop over a bound loaded from memory "
                f"(the varlen kernels); CPU runs need triton >= {'.'.join(map(str, INTERPRETER_MIN))}")
    return None
