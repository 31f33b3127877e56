"""Triton runs CPU tensors only in its interpreter, and triton.jit reads TRITON_INTERPRET
when it wraps a kernel: the mode is chosen once per process, before the kernels' modules are
imported (torch may import triton itself earlier; that wraps none of them)."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import MutableMapping, Optional

# modules whose import wraps Triton kernels in the mode of that moment
KERNEL_MODULES = ("harness.optimized.triton_kernels", "fla", "vllm")


def gpu_kernels() -> bool:
    """This process wraps Triton kernels for the GPU (a GPU, and no interpreter)."""
    import torch
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def interpret_triton(device: Optional[str] = None,
                     env: Optional[MutableMapping[str, str]] = None) -> Optional[MutableMapping[str, str]]:
    """Set TRITON_INTERPRET=1 (unless the user set it) where the Triton work runs on the CPU:
    `device` "cpu", or, with no device named, a machine without a GPU. `env`: a child
    process's environment; default this process's, left alone once kernels are wrapped
    (they keep the mode they were wrapped in)."""
    if env is None:
        if os.environ.get("TRITON_INTERPRET") != "1" and any(m in sys.modules for m in KERNEL_MODULES):
            return None
        env = os.environ
    if device is None:
        import torch
        on_cpu = not torch.cuda.is_available()
    else:
        on_cpu = device.split(":")[0] == "cpu"
    if on_cpu:
        env.setdefault("TRITON_INTERPRET", "1")
    return env


_FAST = False


def fast_interpreter() -> bool:
    """Cache what Triton's interpreter recomputes on every launch and every call of a
    @triton.jit helper (profiled on the smoke suite: ~20 % of its CPU time): the builtins
    of triton.language found by inspect.getmembers, and the numpy dtype of a Triton dtype
    (a dict built per call). Same results, same patching; only the lookups are cached. And
    integer-overflow sanitising off unless TRITON_DEBUG=1, as for compiled kernels.
    A no-op without triton or once applied; True when the interpreter is patched."""
    global _FAST
    if _FAST:
        return True
    try:
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except Exception:       # noqa: BLE001 - no triton, or one without the interpreter
        return False
    if not all(hasattr(interp, n) for n in ("_patch_builtin", "_patch_attr", "_get_np_dtype")):
        return False        # a triton whose interpreter is laid out differently: leave it alone
    import inspect

    builtins: dict = {}
    patch_attr, get_np_dtype = interp._patch_attr, interp._get_np_dtype

    def _patch_builtin(pkg, builder, scope):
        # the package's builtins as first seen (unpatched: a launch patches before any
        # helper call); a member already replaced by an enclosing launch's patch is no
        # longer a builtin, so the original skipped it too
        members = builtins.get(id(pkg))
        if members is None:
            members = builtins[id(pkg)] = (pkg, [(n, m) for n, m in inspect.getmembers(pkg)
                                                 if tl.core.is_builtin(m)])
        for name, member in members[1]:
            if getattr(pkg, name, None) is member:
                patch_attr(pkg, name, member, builder, scope)

    np_dtypes: dict = {}

    def _get_np_dtype(tt_dtype):
        key = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        try:
            return np_dtypes[key]
        except KeyError:
            out = np_dtypes[key] = get_np_dtype(key)
            return out
        except TypeError:   # an unhashable dtype
            return get_np_dtype(tt_dtype)

    interp._patch_builtin = _patch_builtin
    interp._get_np_dtype = _get_np_dtype
    builder = getattr(interp, "interpreter_builder", None)
    if (os.environ.get("TRITON_DEBUG") != "1" and builder is not None
            and getattr(builder.options, "sanitize_overflow", False)):
        # int overflow checks on every integer add / sub / mul (~24 % of a smoke layer case's
        # interpreter time): compiled kernels check only under TRITON_DEBUG=1, so do we
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    _FAST = True
    return True
