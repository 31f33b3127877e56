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
    (a dict built per call). Same results, same patching; only the lookups are cached. A
    helper call skips re-patching what is still patched (`_skip_repatching_in_device_calls`,
    off with GDN_NESTED_PATCH_SKIP=0). And integer-overflow sanitising off unless
    TRITON_DEBUG=1, as for compiled kernels.
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
    if os.environ.get("GDN_NESTED_PATCH_SKIP", "1") != "0":
        try:
            _skip_repatching_in_device_calls(interp, tl)
        except Exception:   # noqa: BLE001 - an interpreter laid out otherwise: helper calls patch as before
            pass
    builder = getattr(interp, "interpreter_builder", None)
    if (os.environ.get("TRITON_DEBUG") != "1" and builder is not None
            and getattr(builder.options, "sanitize_overflow", False)):
        # int overflow checks on every integer add / sub / mul (~24 % of a smoke layer case's
        # interpreter time): compiled kernels check only under TRITON_DEBUG=1, so do we
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    _FAST = True
    return True


def _skip_repatching_in_device_calls(interp, tl) -> bool:
    """Every call of a @triton.jit helper (tl.sum, tl.max, our own) re-patches triton.language
    for the interpreter, as the launch already did: ~half of a reduction's interpreted time.
    A helper call now skips that when every group of attributes the patch would set is still
    the value a patch set last (one sentinel per group: a patch sets or restores a group whole).
    Any doubt - a sentinel replaced since, an attribute this code does not know - patches as
    before. Launches patch and restore as before. True when installed."""
    names = ("_patch_lang", "_LangPatchScope", "InterpretedFunction")
    if not all(hasattr(interp, n) for n in names) or not hasattr(interp._LangPatchScope, "set_attr"):
        return False
    import inspect

    core = tl.core
    last_set: dict = {}             # (id(obj), name) -> the value a patch scope set last
    real_set_attr = interp._LangPatchScope.set_attr

    def set_attr(self, obj, name, value):
        real_set_attr(self, obj, name, value)
        last_set[(id(obj), name)] = value

    def sentinels(lang) -> list:
        """One attribute per group `_patch_lang` sets for `lang`."""
        out = [(lang, "load"), (lang.tensor, "__add__"), (lang.tensor, "__bool__"), (lang.dtype, "to_ir"),
               (lang.condition, "__bool__"), (lang, "multiple_of"), (tl, "reduce"), (core, "reduce"),
               (core.tensor_descriptor_base, "load")]
        return out + [(tl.math, "exp")] if lang is tl else out

    def groups_known(changes) -> bool:
        """Whether a real patch set exactly the groups `sentinels` stands for (else: never skip)."""
        builtin_pkgs = (tl, core, core.tensor, tl.math, core.tensor_descriptor_base)
        explicit = {(id(core.tensor), n) for n in ("__index__", "__bool__", "__repr__", "__str__", "T")}
        explicit |= {(id(core.dtype), "to_ir"), (id(core.condition), "__bool__")}
        explicit |= {(id(m), n) for m in (tl, core) for n in ("range", "static_range", "static_assert", "static_print",
                                                              "multiple_of", "max_contiguous", "max_constancy",
                                                              "reduce", "associative_scan")}
        for obj, name, original in changes:
            if (id(obj), name) in explicit:
                continue
            if not (any(obj is p for p in builtin_pkgs) and core.is_builtin(original)):
                return False
        touched = {(id(obj), name) for obj, name, _ in changes}
        return all((id(o), n) in touched for lang in (tl, core) for o, n in sentinels(lang))

    ns = {"tl": tl, "core": core}
    exec("def probe():\n    pass", ns)         # a helper whose globals hold both languages
    scope = interp._patch_lang(ns["probe"])
    try:
        known = groups_known(list(scope._changes))
    finally:
        scope.restore()
    if not known:
        return False

    real_patch_lang, real_call = interp._patch_lang, interp.InterpretedFunction.__call__
    langs_of: dict = {}
    depth = [0]

    watched = {id(lang): sentinels(lang) for lang in (tl, core)}

    def patched(lang) -> bool:
        return all(getattr(obj, name, None) is last_set.get((id(obj), name), _UNSET)
                   for obj, name in watched[id(lang)])

    def _patch_lang(fn):
        if depth[0]:
            hit = langs_of.get(id(fn))
            if hit is None or hit[0] is not fn:
                hit = langs_of[id(fn)] = (fn, [v for v in fn.__globals__.values()
                                               if inspect.ismodule(v) and (v is tl or v is core)])
            if hit[1] and all(patched(lang) for lang in hit[1]):
                return interp._LangPatchScope()
        return real_patch_lang(fn)

    def device_call(self, *args, **kwargs):
        depth[0] += 1
        try:
            return real_call(self, *args, **kwargs)
        finally:
            depth[0] -= 1

    interp._LangPatchScope.set_attr = set_attr
    interp._patch_lang = _patch_lang
    interp.InterpretedFunction.__call__ = device_call
    return True


_UNSET = object()
