"""Source mutation of kernel modules: a fault planted *inside* a kernel's source.

`mutate(module, [(old, new), ...])` reads the source of a module (one of
`harness.optimized.triton_kernels`, or any harness module such as
`harness.reference.delta_rule`), applies exact textual replacements - each `old` must
occur exactly once, so a replacement can never silently miss or hit twice after the
kernel is edited - and executes the result as a fresh module:

* a unique module name in the original's package, so relative imports
  (``from ...errors import ...``, ``from .common import _log1p``) resolve as they do in
  the original, and Triton's kernel caches never mix the mutant with the original;
* the mutated source registered in `linecache` under a pseudo file name, so
  `inspect.getsource` works: ``@triton.jit`` parses the kernel source (also under
  TRITON_INTERPRET=1, whose AST rewriter reads it), and tracebacks show mutant lines;
* registered in `sys.modules` (Triton looks kernels' globals up there).

The original module is never touched; mutants are cached per (module, replacements).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import linecache
import sys
import threading
from types import ModuleType
from typing import Dict, Sequence, Tuple

Replacement = Tuple[str, str]

_CACHE: Dict[str, ModuleType] = {}
_LOCK = threading.Lock()


class MutationError(RuntimeError):
    """A replacement's target does not occur exactly once in the module source."""


def apply_replacements(src: str, replacements: Sequence[Replacement], where: str = "source") -> str:
    """`src` with every (old, new) applied in order; each `old` must occur exactly once
    in the text as it stands when its turn comes."""
    for i, (old, new) in enumerate(replacements):
        if not old:
            raise MutationError(f"{where}: replacement {i} has an empty target")
        n = src.count(old)
        if n != 1:
            raise MutationError(f"{where}: replacement {i} target occurs {n} times (must be exactly once): {old!r}")
        src = src.replace(old, new)
    return src


def mutate(module: str | ModuleType, replacements: Sequence[Replacement], append: str = "",
           tag: str = "mutant") -> ModuleType:
    """A fresh module: `module`'s source with `replacements` applied and `append` added at
    the end (helpers the replacements call). `tag` names the mutant (module name, file name)."""
    orig = importlib.import_module(module) if isinstance(module, str) else module
    src = inspect.getsource(orig)
    mutated = apply_replacements(src, replacements, where=orig.__name__)
    if append:
        mutated = mutated.rstrip("\n") + "\n\n\n" + append.strip("\n") + "\n"
    digest = hashlib.sha1(f"{orig.__name__}\0{mutated}".encode()).hexdigest()[:12]
    with _LOCK:
        if digest in _CACHE:
            return _CACHE[digest]
        package = orig.__package__ or orig.__name__.rpartition(".")[0]
        short = orig.__name__.rpartition(".")[2]
        safe_tag = "".join(c if c.isalnum() else "_" for c in tag)
        name = f"{package}._mutant_{short}_{safe_tag}_{digest}"
        filename = f"<gdn-fault {safe_tag}: mutant of {orig.__file__}>"
        lines = mutated.splitlines(keepends=True)
        linecache.cache[filename] = (len(mutated), None, lines, filename)
        spec = importlib.util.spec_from_loader(name, loader=None, origin=filename)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = filename
        mod.__package__ = package
        mod.__mutant_of__ = orig.__name__
        mod.__mutations__ = tuple(replacements)
        sys.modules[name] = mod
        try:
            exec(compile(mutated, filename, "exec"), mod.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _CACHE[digest] = mod
        return mod


def kernel_module(name: str) -> str:
    """Full module name of a kernel module of harness/optimized/triton_kernels (``"recurrent"``)."""
    return f"harness.optimized.triton_kernels.{name}"
