"""harness/run/triton_key.py: Triton's cache key remembered under the stat of the files it reads."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.run.triton_key import MEMO_DIR, memoised, signature


def _tree(root: Path) -> Path:
    for rel in ("runtime/cache.py", "compiler/compiler.py", "backends/nvidia/driver.py", "language/core.py",
                "_C/libtriton.so"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


def _counting(value="key-1"):
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


def test_computed_once_then_read_by_a_new_process(tmp_path):
    root, cache = _tree(tmp_path / "triton"), tmp_path / "cache"
    compute, calls = _counting()
    assert memoised(compute, root, "3.6.0", cache)() == "key-1"
    assert memoised(compute, root, "3.6.0", cache)() == "key-1"     # a fresh memo: as a new worker
    assert len(calls) == 1
    assert len(list((cache / MEMO_DIR).iterdir())) == 1


@pytest.mark.parametrize("change", ["touch", "grow", "add", "version"])
def test_any_change_to_what_it_reads_computes_it_again(tmp_path, change):
    root, cache = _tree(tmp_path / "triton"), tmp_path / "cache"
    memoised(_counting("old")[0], root, "3.6.0", cache)()
    lib, version = root / "_C" / "libtriton.so", "3.6.0"
    if change == "touch":
        st = lib.stat()
        os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "grow":
        lib.write_text("a rebuilt library")
    elif change == "add":
        (root / "language" / "extra.py").write_text("x = 1")
    else:
        version = "3.6.1"
    compute, calls = _counting("new")
    assert memoised(compute, root, version, cache)() == "new"
    assert calls == [1]


def test_signature_ignores_bytecode_and_other_folders(tmp_path):
    root = _tree(tmp_path / "triton")
    before = signature(root, "v")
    (root / "language" / "__pycache__").mkdir()
    (root / "language" / "__pycache__" / "core.cpython-312.pyc").write_text("bytecode")
    (root / "tools").mkdir()
    (root / "tools" / "other.py").write_text("not read by triton_key")
    assert signature(root, "v") == before


def test_an_unwritable_cache_still_gives_the_key(tmp_path):
    root = _tree(tmp_path / "triton")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    compute, calls = _counting()
    assert memoised(compute, root, "v", blocker)() == "key-1"
    assert calls == [1]


def test_installed_it_gives_triton_its_own_key(tmp_path):
    """In a fresh process on the installed triton: the memo replaces triton_key in every triton
    module that holds it and returns what triton computes; GDN_TRITON_KEY_MEMO=0 leaves it."""
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import sys, triton
        from triton.runtime import cache
        original = cache.triton_key
        from harness.run import triton_key
        installed = triton_key.install()
        holders = [n for n, m in sys.modules.items() if n.startswith("triton") and
                   getattr(m, "triton_key", None) is not None]
        same = all(sys.modules[n].triton_key is cache.triton_key for n in holders)
        print(installed, same, cache.triton_key() == original(), cache.triton_key is original)
    """)
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "tc"))
    env.pop("GDN_TRITON_KEY_MEMO", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "False"], out.stderr
    assert len(list((tmp_path / "tc" / MEMO_DIR).iterdir())) == 1
    env["GDN_TRITON_KEY_MEMO"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stderr
