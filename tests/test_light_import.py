"""import_skipping_inits: a kernel module imported without its heavy parent package's __init__,
and the parent importable in full afterwards (the triton backend's fla import on the GPU)."""
import subprocess
import sys

import pytest

from harness.optimized.triton_backend import import_skipping_inits


def test_submodule_without_parent_init_then_parent_in_full(tmp_path, monkeypatch):
    pkg = tmp_path / "heavypkg"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("import heavypkg.marker\nFULL = True\n")
    (pkg / "ops" / "kernel.py").write_text("VALUE = 3\n")
    (pkg / "marker.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        mod = import_skipping_inits("heavypkg.ops.kernel", ("heavypkg.ops",))
        assert mod.VALUE == 3
        assert "heavypkg.marker" not in sys.modules          # ops/__init__ did not run
        assert "heavypkg.ops" not in sys.modules              # the stand-in is gone
        import heavypkg.ops.kernel
        assert heavypkg.ops.FULL and heavypkg.ops.kernel.VALUE == 3     # the real package, as if never stubbed
    finally:
        for name in [n for n in sys.modules if n.startswith("heavypkg")]:
            del sys.modules[name]


def test_fla_chunk_imports_without_dynamo_and_compile_disable_comes_back():
    """fla's dispatch wraps ops in torch.compiler.disable at import (which imports torch._dynamo,
    seconds per worker); under compile_disable_as_identity the chunk module imports without it,
    and without fla.modules.norm's layernorm (torch.distributed.tensor, sympy)."""
    code = """
import sys, torch
from harness.optimized.triton_backend import FLA_CHUNK, FLA_SKIPPED_INITS, compile_disable_as_identity, import_skipping_inits
real = torch.compiler.disable
with compile_disable_as_identity():
    mod = import_skipping_inits(FLA_CHUNK, FLA_SKIPPED_INITS)
assert callable(mod.chunk_gated_delta_rule)
assert "torch._dynamo" not in sys.modules, "torch._dynamo imported"
assert "torch.distributed.tensor" not in sys.modules, "torch.distributed.tensor imported (fla.modules.norm's layernorm)"
assert torch.compiler.disable is real
print("ok")
"""
    pytest.importorskip("fla")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]
