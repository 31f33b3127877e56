"""The Comparison seam: what an output is travels in fields, so renaming it changes no tolerance."""
import pytest
import torch

from harness.cases import opcheck
from harness.cases.comparison import Comparison
from harness.cases.opcheck import OpInfo, Sample, run_op_case, state_policy_key
from harness.config import GDNDims
from harness.errors import ConfigError
from harness.judge.policy import Policy

DIMS = GDNDims(hidden=32, H=2, HV=2, K=4, V=4, name="tiny")

POLICY = """version = 1
[[entry]]
op = "op.toy"
kind = "rel_rms"
value = 1e-3
reason = "test-local op's output"
[[entry]]
op = "op.toy.state"
kind = "rel_rms"
value = 1e-2
reason = "test-local op's recurrent state"
[[entry]]
op = "op.conv_state"
kind = "exact"
reason = "conv states are copies"
[[entry]]
op = "op.untouched"
kind = "exact"
reason = "slots no index names"
"""


def _toy_op(out_name: str, state_name: str, cache: str) -> OpInfo:
    """A test-local op: adds x into the slots `idx` of an in-place pool, returns 2 x."""
    def fn(x, idx, **pool):
        (name, p), = pool.items()
        p[idx] += x.to(p.dtype)
        return 2 * x

    def build(variant, dims, dt, st, layout, seed, device, sample=None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, generator=g, dtype=torch.float64).to(dt)
        pool = torch.randn(4, 3, generator=g, dtype=torch.float64).to(st)
        return Sample({"x": x, "idx": torch.tensor([2, 0]), state_name: pool}, (out_name,), (state_name,),
                      {state_name: [2, 0]})
    return OpInfo("toy", fn, ("v",), build, caches={state_name: cache})


class _Backend:
    ssm_state_layout = "vk"

    def __init__(self, info):
        self.toy = info.reference


def _pairs(monkeypatch, out_name, state_name, cache):
    info = _toy_op(out_name, state_name, cache)
    monkeypatch.setitem(opcheck.OP_INFOS, "toy", info)
    return run_op_case(_Backend(info), "toy", "v", DIMS, "float32", "float32", 0, "cpu")


def _tolerances(pairs, policy):
    """Per kind of comparison: (policy key, the tolerance the judge looks up)."""
    return {(c.kind, c.cache): (c.policy_key, policy.lookup(c.policy_key, "float32", "float32").describe())
            for c in pairs}


@pytest.mark.parametrize("cache", ["conv", "ssm"])
def test_renaming_an_output_keeps_its_tolerance(monkeypatch, tmp_path, cache):
    path = tmp_path / "tol.toml"
    path.write_text(POLICY)
    policy = Policy(path)
    # names that say the opposite of what the outputs are: "conv" in an ssm state's name, none in a conv state's
    plain = _pairs(monkeypatch, "y", "pool", cache)
    misleading = _pairs(monkeypatch, "conv_y", "conv_pool" if cache == "ssm" else "recurrent", cache)
    assert [c.output for c in plain] != [c.output for c in misleading]
    assert _tolerances(plain, policy) == _tolerances(misleading, policy)
    keys = {c.kind: c.policy_key for c in plain}
    assert keys == {"out": "op.toy", "state": "op.conv_state" if cache == "conv" else "op.toy.state",
                    "untouched": "op.untouched"}
    assert {c.quantity for c in misleading if c.kind != "out"} == {"conv_pool" if cache == "ssm" else "recurrent"}


def test_an_undeclared_state_cache_is_an_error(monkeypatch):
    info = _toy_op("y", "pool", "conv")
    info.caches = {}
    monkeypatch.setitem(opcheck.OP_INFOS, "toy", info)
    with pytest.raises(ConfigError, match="pool"):
        run_op_case(_Backend(info), "toy", "v", DIMS, "float32", "float32", 0, "cpu")


def test_state_policy_key_reads_the_declared_cache():
    assert state_policy_key("causal_conv1d_update", "conv") == "op.conv_state"
    assert state_policy_key("fused_recurrent_gated_delta_rule", "ssm") == "op.fused_recurrent_gated_delta_rule.state"
    # the packed decode's out= buffer: an output, no cache
    assert state_policy_key("fused_recurrent_gated_delta_rule_packed_decode", None) == \
        "op.fused_recurrent_gated_delta_rule_packed_decode"
    for info in opcheck.OP_INFOS.values():
        assert set(info.caches.values()) <= {"conv", "ssm"}


def test_comparison_fields():
    c = Comparison("step3.core", torch.zeros(1), torch.zeros(1), 0, "layer.core", step=3, quantity="core")
    assert c.quantity == "core" and Comparison("o", 1, 1, 0, "k").quantity == "o"
    with pytest.raises(ValueError):
        Comparison("x", 1, 1, None, "k", "state", cache="conv_state")


def test_tf32_layer_entries_only_for_a_declared_backend_in_fp32_on_cuda():
    """fla's chunked prefill runs TF32 dots on CUDA (8 u_tf32 at the op); an fp32 layer case
    there is judged under the ".tf32" entries, on the CPU (IEEE fp32) or without a prefill step under
    the 5e-5 ones."""
    from harness.cases.layercheck import TF32_KEYS, tf32_dots
    from harness.judge.policy import Policy
    from harness.optimized.reference_backend import ReferenceBackend
    from harness.optimized.triton_backend import TritonBackend
    from harness.cases.scenario import mix_scenario
    from harness.cases.suite import parse_dims
    assert TritonBackend.fp32_dots_cuda == "tf32" and ReferenceBackend.fp32_dots_cuda == "ieee"
    d = parse_dims("qwen3.5-27b:shrunk")

    def sc(dtype="float32", mix="mixed"):
        return mix_scenario(mix, d, dtype=dtype)
    assert tf32_dots(TritonBackend, sc(), "cuda") and tf32_dots(TritonBackend, sc(), "cuda:1")
    assert not tf32_dots(TritonBackend, sc(), "cpu") and not tf32_dots(TritonBackend, sc("bfloat16"), "cuda")
    assert not tf32_dots(ReferenceBackend, sc(), "cuda")
    assert not tf32_dots(TritonBackend, sc(mix="decode_only"), "cuda")     # no chunked prefill: IEEE bounds
    policy = Policy()
    for key in TF32_KEYS:
        assert policy.lookup(key + ".tf32", "float32", "float32").value == 0.004       # 8 u_tf32, as the op
        assert policy.lookup(key, "float32", "float32").value == 5e-05
        assert policy.lookup(key + ".tf32", "float32", "bfloat16").value == policy.lookup(key, "float32",
                                                                                            "bfloat16").value
