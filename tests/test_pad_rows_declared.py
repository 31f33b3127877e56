"""A backend may declare its PAD-row outputs unspecified (vLLM's kernels never write them):
then only real rows are compared, the record and the report say so, and any other fault
still fails and is named."""

from tests.triton_device import DEVICE

import pytest

from harness.cases.case import Case
from harness.faults import catalogue
from harness.judge.policy import Policy
from harness.report.results import summary_markdown
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import parse_dims
from tests.test_diagnosis import QkHeadModHPadGarbage

DIMS = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")
POLICY = Policy()
WHY = "this test's kernels return before storing a PAD row"


class PadGarbageDeclared(catalogue.PadRowsUninitialised):
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = WHY


class HeadFaultPadGarbageDeclared(QkHeadModHPadGarbage):
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = WHY


@pytest.fixture(scope="module")
def backends():
    return BackendCache()


def _spec(cls):
    return f"{cls.__module__}:{cls.__name__}"


def _op(cls):
    return Case(level="op", check="fused_recurrent_gated_delta_rule", dims=DIMS, backend=_spec(cls),
                dtype="float32", state_dtype="float32", variant="decode", device=DEVICE)


def _layer(cls):
    return Case(level="layer", check="decode_only", dims=parse_dims("qwen3-next-80b-a3b:shrunk"), layout="flat",
                backend=_spec(cls), dtype="float32", state_dtype="float32", variant="recurrent.dim_first.sharded", device=DEVICE)


def test_undeclared_pad_garbage_fails(backends):
    rec = run_case(_op(catalogue.PadRowsUninitialised), POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "fail" and "pad_rows_not_compared" not in rec, rec["error"]


def test_declared_pad_rows_are_left_out_and_said(backends):
    rec = run_case(_op(PadGarbageDeclared), POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", rec.get("diagnosis") or rec["error"]
    assert rec["pad_rows_not_compared"] == dict(outputs=["o"], reason=WHY)
    assert {m["output"] for m in rec["metrics"]} >= {"o", "ssm_pool", "ssm_pool.untouched"}
    text = summary_markdown([rec], dict(suite="test"))
    assert "declares PAD-row outputs unspecified: PAD rows were not compared in 1 cases (outputs o)" in text
    assert WHY in text


def test_declared_layer_drops_pad_check_keeps_states(backends):
    rec = run_case(_layer(PadGarbageDeclared), POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", rec.get("diagnosis") or rec["error"]
    names = {m["output"] for m in rec["metrics"]}
    assert not any(n.endswith(".pad_rows") for n in names) and {"conv_state", "ssm_state"} <= names
    assert any(n.endswith(".out") for n in rec["pad_rows_not_compared"]["outputs"])


def test_declared_backend_still_fails_and_is_named_on_another_fault(backends):
    rec = run_case(_op(HeadFaultPadGarbageDeclared), POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail", rec["error"]
    top = rec["hypotheses"][0]
    assert top["matched"] and top["class"] == "gva_head_mapping" and not top.get("pad_rows"), rec["hypotheses"]
