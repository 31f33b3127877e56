"""Triton's cache key, remembered per installation.

Triton names every kernel in its cache by ``triton_key()``: a sha256 of its own Python
sources and of libtriton.so (~500 MB). A process computes it at its first kernel - 1.1 s on
the 2-core CPU - so every worker of a run pays it, warm cache or not. It is a function of
those files alone, so it is kept beside the Triton cache under the path, size and mtime of
each file in the folders it reads (the check Python makes before it reuses a .pyc): a changed
or added file computes it again. Triton hands its own compile workers the parent's key the
same way (triton 3.9, ``_compile_warmup_pool``). ``GDN_TRITON_KEY_MEMO=0`` turns it off.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

# what triton_key reads, relative to the triton package: runtime/cache.py, these folders, _C/libtriton.*
READ_DIRS = ("compiler", "backends", "language", "_C")
MEMO_DIR = "gdn-harness-triton-key"

_installed = False


def signature(root: Path, version: str) -> str:
    """A digest of the version and of the path, size and mtime of every file triton_key reads
    (a superset: whole folders)."""
    h = hashlib.sha256(version.encode())
    files = [root / "runtime" / "cache.py"]
    for d in READ_DIRS:
        for dirpath, dirnames, names in os.walk(root / d):
            dirnames.sort()
            files += [Path(dirpath) / n for n in sorted(names) if not n.endswith(".pyc")]
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def memoised(compute: Callable[[], str], root: Path, version: str, cache_dir: Path) -> Callable[[], str]:
    """`compute` (triton_key) read from, or written to, a file under `cache_dir` named by
    `signature`; unreadable or unwritable memos fall back to computing."""
    @functools.lru_cache()
    def triton_key() -> str:
        try:
            memo = cache_dir / MEMO_DIR / signature(root, version)
        except OSError:
            return compute()
        try:
            key = memo.read_text()
            if key:
                return key
        except OSError:
            pass
        key = compute()
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(key)
            os.replace(tmp, memo)       # whole or absent: workers may write it at once
        except OSError:
            pass
        return key
    return triton_key


def _cache_dir() -> Optional[Path]:
    try:
        from triton import knobs
        d = knobs.cache.dir
    except (ImportError, AttributeError):     # a triton without knobs (< 3.4)
        d = os.environ.get("TRITON_CACHE_DIR")
    return Path(d) if d else None             # never the working directory


def install(load: bool = False) -> bool:
    """Put the memo in place of triton_key wherever triton's modules hold it (once per process;
    before anything imported triton, nothing unless `load`). True when installed."""
    global _installed
    if _installed or os.environ.get("GDN_TRITON_KEY_MEMO", "1") == "0":
        return _installed
    if not (load or "triton" in sys.modules):
        return False
    try:
        import triton
        from triton.runtime import cache
    except ImportError:
        return False
    original, cache_dir = getattr(cache, "triton_key", None), _cache_dir()
    if original is None or cache_dir is None:
        return False
    import triton.runtime.autotuner  # holds its own reference: replaced below too
    memo = memoised(original, Path(triton.__file__).parent, triton.__version__, cache_dir)
    for name, mod in list(sys.modules.items()):
        if name.startswith("triton") and getattr(mod, "triton_key", None) is original:
            mod.triton_key = memo
    _installed = True
    return True
