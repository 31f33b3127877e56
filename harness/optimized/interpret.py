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
    off with GDN_NESTED_PATCH_SKIP=0). The shape types every op builds reuse what depends on
    the shape alone (`_cheap_shape_types`, off with GDN_FAST_SHAPE_TYPES=0). And
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
    if os.environ.get("GDN_NESTED_PATCH_SKIP", "1") != "0":
        try:
            _skip_repatching_in_device_calls(interp, tl)
        except Exception:   # noqa: BLE001 - an interpreter laid out otherwise: helper calls patch as before
            pass
    if os.environ.get("GDN_FAST_SHAPE_TYPES", "1") != "0":
        try:
            _cheap_shape_types(tl)
        except Exception:   # noqa: BLE001 - a triton.language laid out otherwise: types built as before
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


def _cheap_shape_types(tl) -> bool:
    """Every interpreted op builds a result `block_type` and `tensor`, each with a shape
    `tl.tuple` whose type lists a `constexpr_type` per dimension and, for the block type, checks
    the shape (powers of two, numel cap) and formats a name: ~30 % of a smoke layer case's CPU
    time, the same work again for every op of every program. For shapes of plain ints, what
    depends on the shape alone (the checked numel, the tuple's type, the name's shape part) is
    computed once per shape; each object still gets a shape tuple of its own. A shape compared
    with a list of ints (every broadcast) compares the lists. Any other shape
    goes the original way. Installed only when, on probe shapes, both ways build objects that
    agree attribute by attribute and raise the same errors. True when installed."""
    core = tl.core
    from triton._utils import validate_block_shape

    Tuple, tuple_type, constexpr_type, constexpr = core.tuple, core.tuple_type, core.constexpr_type, core.constexpr
    real_block_init, real_tensor_init = core.block_type.__init__, core.tensor.__init__
    # dims (ints) -> (numel, the shape tuple's type, the shape as str, the dims and numel as
    # constexprs: nothing sets a constexpr's value after its __init__, so tensors may share them)
    infos: dict = {(): (1, tuple_type([], None), "[]", (), constexpr(1))}

    def info(dims):
        hit = infos.get(dims)
        if hit is None:
            numel = validate_block_shape(dims)     # raises for a bad shape: nothing cached
            tt = tuple_type([constexpr_type(d) for d in dims], None)
            hit = infos[dims] = (numel, tt, str([str(d) for d in dims]), tuple(constexpr(d) for d in dims),
                                 constexpr(numel))
        return hit

    def ints(vals) -> bool:
        for d in vals:
            if type(d) is not int:
                return False
        return True

    def int_dims(shape):
        vals = shape if type(shape) is list else shape.values if type(shape) is Tuple else None
        return tuple(vals) if vals and ints(vals) else None

    def new_tuple(values, tt):
        t = Tuple.__new__(Tuple)
        t.values, t.type = values, tt
        return t

    def block_init(self, element_ty, shape):
        dims = int_dims(shape)
        if dims is None:
            return real_block_init(self, element_ty, shape)
        numel, tt, text = info(dims)[:3]
        self.element_ty = element_ty
        self.shape = new_tuple(list(dims), tt)
        self.numel = numel
        self.name = f"<{text}, {element_ty}>"

    def tensor_init(self, handle, type):
        shape = type.shape if type.is_block() else None
        dims = () if shape is None else int_dims(shape)
        if dims is None:
            return real_tensor_init(self, handle, type)
        _, tt, _, consts, numel = info(dims)
        self.handle = handle
        self.numel = numel
        self.type = type
        self.dtype = type.scalar
        self.shape = new_tuple(list(consts), tt)

    real_eq = Tuple.__eq__

    def tuple_eq(self, other):
        # a shape against a list of ints (the broadcast's `lhs_shape != ret_shape`): the original
        # builds a tl.tuple of `other` first
        if type(other) is list and other and self.values and ints(other) and ints(self.values):
            return constexpr(self.values == other)
        return real_eq(self, other)

    if not _same_objects(core, real_block_init, block_init, real_tensor_init, tensor_init):
        return False
    for a, b in (([16, 8], [16, 8]), ([16, 8], [16, 1]), ([4], [4, 1]), ([2], [])):
        for other in (b, core.tuple(b), tuple(b)):
            want, got = real_eq(core.tuple(a), other), tuple_eq(core.tuple(a), other)
            if type(want) is not type(got) or want.value is not got.value:
                return False
    core.block_type.__init__, core.tensor.__init__, Tuple.__eq__ = block_init, tensor_init, tuple_eq
    return True


def _same_objects(core, real_block_init, block_init, real_tensor_init, tensor_init) -> bool:
    """Whether both ways build equal block types and tensors on probe shapes, and raise alike."""
    def state(obj):
        out = {}
        for k, v in vars(obj).items():
            if isinstance(v, core.tuple):
                v = ("tuple", [state(x) if isinstance(x, core.base_value) else x for x in v.values],
                     [repr(t) for t in v.type.types], v.type.fields)
            elif isinstance(v, core.constexpr):
                v = ("constexpr", v.value, repr(v.type))
            elif isinstance(v, core.base_type):
                v = ("type", str(v), v.__class__)
            out[k] = v
        return out

    def build(init, cls, *args):
        """(the object, its state), or (None, the error) where `init` raised."""
        obj = cls.__new__(cls)
        try:
            init(obj, *args)
        except Exception as e:      # noqa: BLE001 - the error is part of what must agree
            return None, ("raised", type(e), str(e))
        return obj, state(obj)

    shapes = ([16], [1, 32], [4, 8, 2], core.tuple([2, 64]), [3], [0], [2 ** 21, 2 ** 20], [True, 2])
    for elem in (core.float32, core.int64, core.pointer_type(core.float16)):
        types = [elem]                          # a tensor of each type the real init builds
        for shape in shapes:
            ty, real = build(real_block_init, core.block_type, elem, shape)
            if real != build(block_init, core.block_type, elem, shape)[1]:
                return False
            if ty is not None:
                types.append(ty)
        for t in types:
            if build(real_tensor_init, core.tensor, None, t)[1] != build(tensor_init, core.tensor, None, t)[1]:
                return False
    return True
