"""A deliberately broken Triton kernel - the recurrent state stored [K, V] in a [V, K]
pool (the NPU incident) - fails, and the report names the output and the location."""

from tests.triton_device import DEVICE

from harness.cases.case import Case
from harness.config import get_preset
from harness.optimized.triton_kernels import recurrent
from harness.judge.policy import Policy
from harness.run.runner import run_case

DIMS = get_preset("qwen3.5-27b").shrink(H=2, K=12, V=20)     # K != V: a transpose cannot hide


def state_stored_kv(t, layout):
    """The kernel's (slot, head, v, k) strides, with element (v, k) placed at k*V + v."""
    s = t.stride()
    V = t.shape[2] if layout == "vk" else t.shape[3]
    return (s[0], s[1], 1, V)


def test_transposed_state_kernel_fails_with_output_and_location(monkeypatch):
    monkeypatch.setattr(recurrent, "_vk_strides", state_stored_kv)
    policy = Policy()
    op = run_case(Case("op", "fused_recurrent_gated_delta_rule", DIMS, backend="triton", dtype="float32",
                       state_dtype="float32", variant="decode", device=DEVICE), policy, "test")
    assert op["status"] == "fail", op.get("error")
    bad = {m["output"]: m for m in op["metrics"] if not m["passed"]}
    assert {"o", "ssm_pool"} <= set(bad)                       # the output and the state pool are named
    assert not any(o.endswith("untouched") for o in bad)       # ... and only the slots it should write
    assert "ssm_pool" in op["diagnosis"] and "at [" in op["diagnosis"]
    assert len(bad["ssm_pool"]["max_abs_index"]) == 4     # [slot, head, v, k]

    layer = run_case(Case("layer", "decode_only", DIMS, "flat", 1, backend="triton", dtype="float32",
                          state_dtype="float32", variant="recurrent.dim_first.sharded", device=DEVICE), policy, "test")
    assert layer["status"] == "fail"
    bad = {m["output"]: m for m in layer["metrics"] if not m["passed"]}
    assert {"step0.core", "step0.out", "ssm_state"} <= set(bad)
    assert "conv_state" not in bad and "untouched.ssm" not in bad     # localised to the recurrent state
    assert bad["step0.core"]["first_divergent_token"] == 0 and bad["step0.core"]["worst_token"] is not None


def test_unbroken_kernel_passes_the_same_cases():
    policy = Policy()
    rec = run_case(Case("op", "fused_recurrent_gated_delta_rule", DIMS, backend="triton", dtype="float32",
                        state_dtype="float32", variant="decode", device=DEVICE), policy, "test")
    assert rec["status"] == "pass", rec.get("diagnosis") or rec.get("error")
