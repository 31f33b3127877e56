"""The Triton interpreter is chosen by where the work runs: on for CPU cases (also on a
machine with a GPU: `--device cpu`, --jobs workers, distributed ranks), off for GPU cases,
never over the user's own setting, and never switched in a process whose kernels are
already wrapped."""
import json
import os
import subprocess
import sys

import pytest

from harness.run import isolate
from harness.cases.case import Case
from harness.config import get_preset
from harness.optimized.interpret import KERNEL_MODULES, interpret_triton


def test_child_env_follows_the_device():
    assert interpret_triton("cpu", {}) == {"TRITON_INTERPRET": "1"}
    assert interpret_triton("cuda:1", {}) == {}
    assert interpret_triton("cpu", {"TRITON_INTERPRET": "0"}) == {"TRITON_INTERPRET": "0"}    # the user's choice


def _no_interpreter_set(monkeypatch):
    """Unset TRITON_INTERPRET for this test only: setenv first so that monkeypatch records
    and undoes it even where it was unset (a bare delenv of an unset variable records
    nothing, and the interpreter the test turns on leaked into the worker's later tests: on a
    GPU machine they then ran Triton interpreted)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("TRITON_INTERPRET")


def test_this_process_keeps_its_mode_once_kernels_are_wrapped(monkeypatch):
    _no_interpreter_set(monkeypatch)
    name = "harness.optimized.triton_kernels"
    monkeypatch.setitem(sys.modules, name, sys.modules.get(name, object()))
    assert interpret_triton("cpu") is None and "TRITON_INTERPRET" not in os.environ
    for m in KERNEL_MODULES:
        monkeypatch.delitem(sys.modules, m, raising=False)
    monkeypatch.setitem(sys.modules, "triton", sys.modules.get("triton", object()))   # torch imported it: no kernel
    assert interpret_triton("cpu") is os.environ and os.environ["TRITON_INTERPRET"] == "1"


def test_the_program_turns_it_on_for_a_cpu_run(tmp_path):
    # a fresh process that "has a GPU" (is_available patched) and runs `--device cpu`
    code = ("import sys, torch; torch.cuda.is_available = lambda: True\n"
            "from harness.cli import main\n"
            "main(['run', '--suite', 'no-such-suite', '--device', 'cpu'])\n"   # in process: left alone
            "import os; print('before', os.environ.get('TRITON_INTERPRET'))\n"
            "sys.argv = ['gdn-harness', 'run', '--suite', 'no-such-suite', '--device', 'cpu']\n"
            "import atexit; atexit.register(lambda: print('after', os.environ.get('TRITON_INTERPRET')))\n"
            "main()\n")      # the program ends the process (its exit handlers run)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    assert "before None" in out and "after 1" in out, out


def test_jobs_workers_of_cpu_cases_interpret(monkeypatch):
    seen = []
    _no_interpreter_set(monkeypatch)
    real = subprocess.Popen

    def spy(*args, **kwargs):
        seen.append(kwargs["env"].get("TRITON_INTERPRET"))
        return real(*args, **kwargs)
    monkeypatch.setattr(isolate.subprocess, "Popen", spy)
    dims = get_preset("qwen3-next-80b-a3b").shrink()
    cases = [Case("self", "tp_reduce", dims, "flat", 2, seed) for seed in (0, 1)]
    recs = []
    isolate.run_isolated(cases, "x", None, None, recs.append, jobs=2, timeout=120, pool=isolate.WorkerPool())
    assert seen == ["1", "1"] and all(r["status"] == "pass" for r in recs)


def test_an_interpreter_too_old_for_the_varlen_kernels_is_a_named_skip(monkeypatch):
    triton = pytest.importorskip("triton")
    from harness.optimized.triton_backend import interpreter_too_old
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert "triton 3.6.0's interpreter" in interpreter_too_old() and ">= 3.7" in interpreter_too_old()
    monkeypatch.setattr(triton, "__version__", "3.7.0+git1234")
    assert interpreter_too_old() is None


@pytest.mark.parametrize("debug, sanitized", [(None, False), ("1", True)])
def test_fast_interpreter_sanitizes_int_overflow_only_under_triton_debug(debug, sanitized):
    """Triton's interpreter checks every integer add / sub / mul for overflow; compiled kernels
    only under TRITON_DEBUG=1. The harness's interpreter follows the compiled rule (a fresh
    process: the patch is applied once per process)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_DEBUG"}
    if debug:
        env["TRITON_DEBUG"] = debug
    code = ("from harness.optimized.interpret import fast_interpreter; from triton.runtime import interpreter as i; "
            "assert fast_interpreter(); print(i.interpreter_builder.options.sanitize_overflow)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sanitized)


_NESTED = r'''
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch, triton, triton.language as tl
from harness.optimized.interpret import fast_interpreter
from harness.optimized.triton_kernels.common import _log1p
assert fast_interpreter()
from triton.runtime import interpreter as interp

@triton.jit
def helper(x):
    return tl.sum(x * x, 0) + tl.max(x, 0)

@triton.jit
def kernel(x, o, B: tl.constexpr):
    i = tl.program_id(0)
    v = tl.load(x + i * B + tl.arange(0, B))
    tl.store(o + i * B + tl.arange(0, B), _log1p(tl.exp(v)) + helper(v) + tl.sum(tl.where(v > 0, v, 0.0), 0))

torch.manual_seed(0)
x = torch.randn(3, 16)
outs = []
for _ in range(2):                  # a second launch after the first restored its patch
    o = torch.zeros(3, 16)
    kernel[(3,)](x, o, 16)
    outs.append(o.tolist())
print(json.dumps({"skip": interp._patch_lang.__module__ == "harness.optimized.interpret",
                  "shape_types": tl.core.block_type.__init__.__module__ == "harness.optimized.interpret",
                  "out": outs, "load_restored": tl.core.is_builtin(tl.load)}))
'''


def _off_and_on(code: str, switch: str, key: str, extra: bool) -> dict:
    """`code` (prints a JSON line last) run in a fresh process with the speed-up `switch` off ("0")
    and on ("1"): its JSON per setting, after the checks every speed-up shares: off means not
    installed; on, installed on the triton it was written against (3.9) unless `extra` (a triton
    laid out otherwise, which must keep its own way); the kernel's results bit for bit the same."""
    triton = pytest.importorskip("triton")
    runs = {}
    for on in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != switch}
        env[switch] = on
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[on] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"][key] is False
    if extra:
        assert runs["1"][key] is False
    elif triton.__version__.startswith("3.9."):
        assert runs["1"][key] is True
    assert runs["1"]["out"] == runs["0"]["out"]
    return runs


_BEFORE_INSTALL = "from harness.optimized.interpret import fast_interpreter"


@pytest.mark.parametrize("extra", [False, True])
def test_helper_calls_skip_repatching_only_where_it_is_known_safe(extra):
    """Each @triton.jit helper call (tl.sum, tl.max, our _log1p) re-patches triton.language in the
    interpreter; the harness skips that while every group the patch sets is still patched. The
    kernel's results are bit-identical with the skip off (GDN_NESTED_PATCH_SKIP=0), a launch still
    restores triton.language after it, and a patch that sets an attribute this code does not know
    (`extra`: a newer interpreter) leaves the skip out."""
    code = _NESTED
    if extra:       # the interpreter's own patch sets one attribute more
        code = code.replace(_BEFORE_INSTALL, "from triton.runtime import interpreter as _i\n"
                            "_core = _i._patch_lang_core\n"
                            "_i._patch_lang_core = lambda lang, scope: (_core(lang, scope),"
                            " scope.set_attr(lang, 'device_assert', print))\n" + _BEFORE_INSTALL)
    runs = _off_and_on(code, "GDN_NESTED_PATCH_SKIP", "skip", extra)
    assert runs["1"]["out"][0] == runs["1"]["out"][1]
    assert runs["0"]["load_restored"] and runs["1"]["load_restored"]


@pytest.mark.parametrize("extra", [False, True])
def test_shape_types_built_once_per_shape_give_the_same_kernels(extra):
    """The interpreter's block types and tensors reuse what depends on their shape alone
    (GDN_FAST_SHAPE_TYPES): the kernel's results are bit-identical with it off, and a triton whose
    block_type sets an attribute more (`extra`) fails the install's probe and keeps its own."""
    code = _NESTED
    if extra:
        code = code.replace(_BEFORE_INSTALL, "_init = tl.core.block_type.__init__\n"
                            "def _more(self, *a): _init(self, *a); self.layout = None\n"
                            "tl.core.block_type.__init__ = _more\n" + _BEFORE_INSTALL)
    _off_and_on(code, "GDN_FAST_SHAPE_TYPES", "shape_types", extra)
