"""The reference ops as a backend: the harness's own baseline, at the backend's dtypes
(fp32 math for fp16 / bf16 / fp32 inputs, as kernels do)."""
from __future__ import annotations

from ..reference.ops import is_op, op_decl, op_decls
from .api import Backend


class ReferenceBackend(Backend):
    name = "reference"
    description = "pure-torch reference ops (harness.reference) run at the case dtypes"
    decode_paths = ("recurrent", "sigmoid_gating", "packed")

    def __getattr__(self, op: str):
        # an op declared after this module was imported (a test's throwaway op)
        if is_op(op):
            return op_decl(op).reference
        raise AttributeError(op)


# class attributes too (the base class declares the known ops None): every declared op
for _d in op_decls():
    setattr(ReferenceBackend, _d.name, staticmethod(_d.reference))
