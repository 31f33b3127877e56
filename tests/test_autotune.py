"""Autotune policy (harness/run/autotune.py) on a fake autotuned Triton kernel whose config
BLOCK=8 is wrong: pinned runs the pinned config and benchmarks nothing, sweep runs every
config and fails the case naming the bad one, records say which config ran; the per-phase
breakdown (harness/run/phases.py) is in every record."""
from tests.triton_device import DEVICE

import json

import pytest
import torch
import triton
import triton.language as tl

from harness.run import autotune
from harness.tools.bench import suite_breakdown, suite_breakdown_markdown
from harness.cases.case import Case
from harness.config import get_preset
from harness.optimized.triton_backend import TritonBackend
from harness.run.phases import PHASES, Phases
from harness.judge.policy import Policy
from harness.reference.gating import fused_gdn_gating
from harness.run.runner import run_case

DIMS = get_preset("qwen3.5-27b").shrink(H=2, K=12, V=20)
CONFIGS = [triton.Config({"BLOCK": 4}), triton.Config({"BLOCK": 8}), triton.Config({"BLOCK": 16})]
KERNEL = f"{__name__}._copy"


@triton.autotune(configs=CONFIGS, key=["n"])
@triton.jit
def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    if BLOCK == 8:
        x = x + 1.0          # the bug that lives in one config
    tl.store(y_ptr + offs, x, mask=offs < n)


def copy(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    _copy[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, x.numel())
    return y


def gating_through_copy(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
    g, bt = fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
    return copy(g.contiguous()), bt


@pytest.fixture
def pins(tmp_path, monkeypatch):
    """A pins file naming config `index` for the fake kernel at every key the case uses."""
    def write(index):
        path = tmp_path / f"pins{index}.json"
        keys = {repr((n, "torch.float32", "torch.float32")): autotune.config_dict(CONFIGS[index]) for n in range(1, 4096)}
        path.write_text(json.dumps(dict(schema=autotune.PINS_SCHEMA, kernels={KERNEL: keys})))
        monkeypatch.setenv("GDN_AUTOTUNE_PINS", str(path))
        return path
    monkeypatch.setattr(TritonBackend, "fused_gdn_gating", staticmethod(gating_through_copy))
    _copy.cache.clear()
    return write


def gating_case():
    return Case("op", "fused_gdn_gating", DIMS, backend="triton", dtype="float32", state_dtype="float32",
                device=DEVICE)


def test_pinned_runs_the_pinned_config_and_records_it(pins, monkeypatch):
    monkeypatch.setenv("GDN_AUTOTUNE", "pinned")
    pins(0)
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    assert rec["status"] == "pass", rec.get("diagnosis") or rec.get("error")
    (ran,) = rec["autotune"]["configs"]
    assert rec["autotune"]["policy"] == "pinned"
    assert ran["kernel"] == KERNEL and ran["source"] == "pinned" and ran["config"]["kwargs"] == {"BLOCK": 4}
    assert rec["phases"]["autotuned"] == 0          # nothing benchmarked

    autotune._pins_cache.clear()
    pins(1)                                           # pinned to the broken config: the case sees it
    _copy.cache.clear()
    bad = run_case(gating_case(), Policy(), "test", diagnose=False)
    assert bad["status"] == "fail" and bad["autotune"]["configs"][0]["config"]["kwargs"] == {"BLOCK": 8}


def test_a_missing_pin_says_so(pins, monkeypatch, tmp_path):
    monkeypatch.setenv("GDN_AUTOTUNE", "pinned")
    monkeypatch.setenv("GDN_AUTOTUNE_PINS", str(tmp_path / "none.json"))
    # no GPU to time configs under the interpreter: keep one, as fla's adapter does there
    monkeypatch.setattr(triton.runtime.autotuner.Autotuner, "prune_configs", lambda self, kw: self.configs[:1])
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    assert [c["source"] for c in rec["autotune"]["configs"]] == ["native (no pin)"]


def test_sweep_runs_every_config_and_fails_on_the_bad_one(pins, monkeypatch):
    monkeypatch.setenv("GDN_AUTOTUNE", "sweep")
    pins(0)
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    sweep = rec["autotune"]["sweep"]
    assert [s["index"] for s in sweep] == [0, 1, 2]
    assert [s["configs"][0]["config"]["kwargs"]["BLOCK"] for s in sweep] == [4, 8, 16]
    assert [s["status"] for s in sweep] == ["pass", "fail", "pass"]
    assert rec["status"] == "fail" and rec["diagnosis"].startswith("autotune config index 1 (fail)")
    assert rec["phases"]["sweep_s"] > 0 and [c["source"] for c in rec["autotune"]["configs"]] == ["pinned"]
    assert {c.kwargs["BLOCK"] for c in _copy.cache.values()} == {4}    # the sweep leaves the pinned configs


def test_sweep_of_a_good_kernel_passes(pins, monkeypatch):
    monkeypatch.setenv("GDN_AUTOTUNE", "sweep")
    pins(0)
    monkeypatch.setattr(TritonBackend, "fused_gdn_gating",
                        staticmethod(lambda *a, **k: fused_gdn_gating(*a, **k)))
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    assert rec["status"] == "pass" and "sweep" not in rec["autotune"]   # no autotuned kernel: nothing to sweep


def test_pins_from_records_round_trip(pins, monkeypatch, tmp_path):
    monkeypatch.setenv("GDN_AUTOTUNE", "sweep")
    pins(2)
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    doc = autotune.pins_from_records([rec], "cpu", triton.__version__)
    assert doc["schema"] == autotune.PINS_SCHEMA
    (keys,) = doc["kernels"].values()
    assert list(keys.values()) == [autotune.config_dict(CONFIGS[2])]


def test_bad_policy_is_refused(monkeypatch):
    monkeypatch.setenv("GDN_AUTOTUNE", "fastest")
    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="GDN_AUTOTUNE='fastest'"):
        autotune.policy()


def test_phases_in_records_and_the_breakdown(pins, monkeypatch):
    monkeypatch.setenv("GDN_AUTOTUNE", "pinned")
    pins(0)
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    ph = rec["phases"]
    assert ph["backend_s"] > 0 and ph["oracle_s"] >= 0 and ph["compare_s"] > 0
    assert set(k[:-2] for k in ph if k.endswith("_s")) <= set(PHASES)
    assert sum(v for k, v in ph.items() if k.endswith("_s")) <= rec["duration_s"] + 1e-3
    b = suite_breakdown([rec, rec])
    assert b["phases_s"]["backend"] == pytest.approx(2 * ph["backend_s"], abs=0.02)
    md = "\n".join(suite_breakdown_markdown([dict(cache="cold", jobs=1, wall_s=1.0, breakdown=b)]))
    assert "| cold --jobs 1 (pinned) |" in md and rec["id"] in md


def test_a_call_that_compiles_counts_as_compile(monkeypatch):
    from harness.run import phases as ph_mod
    p = Phases("cpu")

    def compiles():
        ph_mod._compiles += 1
    p.call(compiles)
    p.call(lambda: None)
    assert p.compiles == 1 and set(p.seconds) == {"compile", "backend"}


def test_compile_lock_is_held_during_a_compile_and_released_after(tmp_path, monkeypatch):
    """Workers sharing a Triton cache compile a specialisation once: while one holds its
    lock another cannot take it; the post-compile hook (or the end of the backend call)
    lets it go."""
    from harness.run import phases as ph_mod
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GDN_COMPILE_LOCK", raising=False)
    info = dict(fn=type("Fn", (), dict(module="m", name="kern"))(), repr="kern[num_warps=4](x: *fp32)")
    path = autotune.lock_path("compile", "m.kern:kern[num_warps=4](x: *fp32)")
    ph_mod.compile_started(**info)
    assert autotune.acquire(path, 0.1) is None             # another worker waits
    ph_mod.release_compile_lock()
    other = autotune.acquire(path, 0.1)
    assert other is not None
    autotune.release(other)
    p = Phases("cpu")                                      # a compile whose post hook never came
    p.call(lambda: ph_mod.compile_started(**info))
    other = autotune.acquire(path, 0.1)
    assert other is not None and p.compiles == 1
    autotune.release(other)


def test_a_suite_names_its_autotune_policy(tmp_path):
    from harness.errors import ConfigError
    from harness.cases.suite import load_suite
    assert load_suite("autotune")["autotune"] == "sweep"
    bad = tmp_path / "bad.toml"
    bad.write_text('autotune = "fastest"\n[[group]]\nlevel = "self"\nchecks = ["tp_reduce"]\n'
                   'dims = ["qwen3-next-80b-a3b:shrunk"]\n')
    with pytest.raises(ConfigError, match="fastest"):
        load_suite(str(bad))


def test_a_key_without_a_pin_takes_the_nearest_pinned_key(pins, monkeypatch, tmp_path):
    """Unpinned sizes of a pinned kernel run the nearest key's pin (no benchmark to wait for);
    a different dtype is not 'near' and tunes natively."""
    monkeypatch.setenv("GDN_AUTOTUNE", "pinned")
    path = tmp_path / "near.json"
    far, near = repr((10 ** 9, "torch.float32", "torch.float32")), repr((100, "torch.float32", "torch.float32"))
    other_dtype = repr((64, "torch.float16", "torch.float16"))
    path.write_text(json.dumps(dict(schema=autotune.PINS_SCHEMA, kernels={KERNEL: {
        far: autotune.config_dict(CONFIGS[1]), near: autotune.config_dict(CONFIGS[2]),
        other_dtype: autotune.config_dict(CONFIGS[0])}})))
    monkeypatch.setenv("GDN_AUTOTUNE_PINS", str(path))
    rec = run_case(gating_case(), Policy(), "test", diagnose=False)
    (ran,) = rec["autotune"]["configs"]
    assert rec["status"] == "pass" and ran["config"]["kwargs"] == {"BLOCK": 16}
    assert ran["source"] == f"pinned (nearest key {near})"
    assert rec["phases"]["autotuned"] == 0
