"""Finding backends: built-in names, the entry-point group, ``package.module:attr`` or
``path/to/file.py:attr``.

A registered name may carry a variant after ``@`` (``vllm@flashinfer``, ``flashinfer@kmajor``):
the backend class gets ``variant=`` and lists what it takes in ``Backend.variants``. ``@`` and
not ``:``, since ``vllm:triton`` already means attribute ``triton`` of module ``vllm``."""
from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Dict, Optional

from ..errors import HarnessError
from .api import Backend

ENTRY_POINT_GROUP = "gdn_harness.backends"
BUILTIN: Dict[str, str] = {
    "reference": "harness.optimized.reference_backend:ReferenceBackend",
    "triton": "harness.optimized.triton_backend:TritonBackend",
    "fla": "harness.optimized.fla_backend:FlaBackend",
    "vllm": "harness.optimized.vllm_backend:VllmBackend",
    "flashinfer": "harness.optimized.flashinfer_backend:FlashinferBackend",
    "sglang": "harness.optimized.sglang_backend:SglangBackend",
}
VARIANT_SEP = "@"


class BackendLoadError(HarnessError):
    """The backend could not be imported or built (bisect-check: untestable)."""


def plugin_names() -> Dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_names() -> Dict[str, str]:
    return {**BUILTIN, **plugin_names()}


def _import_file(path: str):
    """A one-file backend given as ``path/to/file.py:attr`` (imported once per process)."""
    import importlib.util
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"no such file: {path}")
    name = "gdn_harness_plugin_" + "".join(c if c.isalnum() else "_" for c in full)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, full)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def _resolve(target: str):
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise HarnessError(f"--backend {target!r}: expected a registered name or 'package.module:attr'")
    if os.getcwd() not in sys.path:      # like `python -m`: local plugin modules resolve
        sys.path.append(os.getcwd())
    try:
        obj = _import_file(module) if module.endswith(".py") else importlib.import_module(module)
    except Exception as e:   # import errors of a kernel package are the backend's, not ours
        raise BackendLoadError(f"backend {target!r}: importing {module} failed: {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendLoadError(f"backend {target!r}: {module} has no attribute {attr!r}") from None
    return obj


def load_backend(name: str) -> Backend:
    """A Backend instance for a registered name, a plugin, or ``package.module:attr``
    (a Backend subclass, instance, or a factory returning one)."""
    return _build(name, *_locate(name))


def check_backend(name: str) -> None:
    """What `load_backend` refuses, without building a Backend class (its construction may load
    kernels and make a CUDA context: 3.4 s of a run's start on an H200, 2026-12-07; the workers
    build it): an unknown name or variant, a module that does not import, a missing attribute,
    an object that is no Backend (a factory is called: its product is what is checked)."""
    obj, variant, target = _locate(name)
    if not (isinstance(obj, Backend) or isinstance(obj, type) and issubclass(obj, Backend)):
        _build(name, obj, variant, target)


def _locate(name: str):
    """(the object `name` resolves to, its variant or None, the ``module:attr`` it names)."""
    base, sep, variant = name.partition(VARIANT_SEP)
    names = backend_names()
    if sep and base not in names:
        raise HarnessError(f"backend {name!r}: a variant ('{VARIANT_SEP}...') follows a registered name; "
                           f"known: {sorted(names)}")
    target = names.get(base, name)
    if ":" not in target:
        raise HarnessError(f"unknown backend {name!r}; known: {sorted(names)} "
                           f"(or give package.module:attr)")
    try:
        obj = _resolve(target)
    except BackendLoadError as e:
        head, _, tail = name.partition(":")
        if head in names:       # `vllm:triton` as issue texts write it: the variant is `vllm@triton`
            raise BackendLoadError(f"{e} (a registered backend's variant follows '{VARIANT_SEP}': "
                                   f"'{head}{VARIANT_SEP}{tail}')") from e.__cause__
        raise
    if sep:
        known = getattr(obj, "variants", {}) if isinstance(obj, type) else {}
        if variant not in known:
            raise HarnessError(f"backend {base!r} has no variant {variant!r}; it has {sorted(known) or 'none'}")
        return obj, variant, target
    return obj, None, target


def _build(name: str, obj, variant: Optional[str], target: str) -> Backend:
    if variant is not None:
        obj = obj(variant=variant)
    elif isinstance(obj, type) and issubclass(obj, Backend):
        obj = obj()
    elif callable(obj) and not isinstance(obj, Backend):
        obj = obj()
    if not isinstance(obj, Backend):
        raise BackendLoadError(f"backend {name!r}: {target} is {type(obj).__name__}, not a harness Backend")
    return obj
