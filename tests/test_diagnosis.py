"""Diagnosis: a failing case is re-run through the reference under known fault hypotheses
and the one that reproduces the backend's outputs names the fault class.

Faults of the zoo serve as test subjects (their code is never used by the diagnosis);
the cases are cheap op samples and one reference-derived layer case.
"""
import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from harness import diagnosis  # noqa: E402
from harness.cases import Case  # noqa: E402
from harness.diagnosis.zoo import CATALOGUE_CLASSES  # noqa: E402
from harness.faults.catalogue import FAULTS  # noqa: E402
from harness.policy import Policy  # noqa: E402
from harness.report import summary_markdown  # noqa: E402
from harness.report_junit import failure_body, failure_message  # noqa: E402
from harness.runner import BackendCache, run_case  # noqa: E402
from harness.suite import parse_dims  # noqa: E402

DIMS = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")     # the smoke suite's op dims (r = 3, K != V)
POLICY = Policy()


@pytest.fixture(scope="module")
def backends():
    return BackendCache()


def _op_case(fault, op, variant, dtype="float32"):
    return Case(level="op", check=op, dims=DIMS, backend=FAULTS[fault].target, dtype=dtype, state_dtype="float32",
                variant=variant)


# (fault, op, variant): cheap samples, one per kind of hypothesis (projection, gating, norm,
# conv, recurrent state, head mapping, chunked prefill, signature-only PAD rows, shape error)
CASES = [
    ("ba_view_from_qkvz_groups", "unpack_qkvz_ba", "flat-contiguous"),
    ("softplus_threshold_inverted", "fused_gdn_gating", "contiguous"),
    ("gemma_norm_weight", "rms_norm_gated", "before-silu-whole"),
    ("conv_state_not_updated_on_decode", "causal_conv1d_update", "decode-dim_first"),
    ("state_stored_transposed", "fused_recurrent_gated_delta_rule", "decode"),
    ("qk_head_mod_h", "fused_recurrent_gated_delta_rule", "decode"),
    ("varlen_state_leak", "chunk_gated_delta_rule", "varlen"),
    ("pad_rows_uninitialised", "fused_recurrent_gated_delta_rule", "decode"),
    ("final_state_squeeze_batch_of_one", "chunk_gated_delta_rule", "long"),
]


@pytest.mark.parametrize("fault,op,variant", CASES, ids=[c[0] for c in CASES])
def test_op_fault_named(fault, op, variant, backends):
    rec = run_case(_op_case(fault, op, variant), POLICY, "test", backends, diagnose=True)
    assert rec["status"] in ("fail", "error"), rec.get("error")
    top = rec["hypotheses"][0]
    assert top["class"] == CATALOGUE_CLASSES[FAULTS[fault].diagnosis_class], rec["hypotheses"]
    assert top["matched"] and top["words"]
    assert top["words"] in rec["diagnosis"]


def test_layer_fault_named(backends):
    """A continued prefill starting from zeros, seen at layer level (oracle re-runs)."""
    case = Case(level="layer", check="chunked_prefill", dims=parse_dims("qwen3-next-80b-a3b:shrunk"),
                layout="flat", backend=FAULTS["chunk_zero_initial_state"].target, dtype="float32",
                state_dtype="float32", variant="recurrent.dim_first.sharded")
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    assert rec["hypotheses"][0]["class"] == "state_init_chunked", rec["hypotheses"]
    assert rec["hypotheses"][0]["hypothesis"] == "prefill_initial_state_zeroed"


def test_passing_case_has_no_diagnosis(backends):
    rec = run_case(Case(level="op", check="fused_gdn_gating", dims=DIMS, backend="triton", dtype="float32",
                        state_dtype="float32", variant="contiguous"), POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "pass"
    assert rec["diagnosis"] is None and "hypotheses" not in rec


def test_no_diagnose_and_crash_keep_the_verdict(backends, monkeypatch):
    case = _op_case("gemma_norm_weight", "rms_norm_gated", "before-silu-whole")
    off = run_case(case, POLICY, "test", backends, diagnose=False)
    assert off["status"] == "fail" and "hypotheses" not in off
    monkeypatch.setenv("GDN_DIAGNOSE", "0")
    assert "hypotheses" not in run_case(case, POLICY, "test", backends)
    monkeypatch.delenv("GDN_DIAGNOSE")

    def boom(*a, **k):
        raise RuntimeError("hypothesis exploded")
    monkeypatch.setattr(diagnosis, "diagnose", boom)
    rec = run_case(case, POLICY, "test", backends)
    assert rec["status"] == "fail" and rec["metrics"] == off["metrics"]
    assert rec["hypotheses"] == [] and "hypothesis exploded" in rec["diagnosis_error"]


def test_reports_show_hypotheses(backends):
    rec = run_case(_op_case("dt_bias_after_softplus", "fused_gdn_gating", "contiguous"), POLICY, "test", backends,
                   diagnose=True)
    assert rec["hypotheses"][0]["hypothesis"] == "dt_bias_after_softplus"
    md = summary_markdown([rec], dict(suite="test", command="x"))
    assert "## Diagnosis" in md and "dt_bias_after_softplus" in md
    assert "dt_bias_after_softplus" in failure_body(rec) and "likely cause: gating math" in failure_message(rec)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "harness" / "results.schema.json").read_text())
    item = schema["$defs"]["case"]["properties"]["hypotheses"]
    jsonschema.Draft202012Validator(dict(item, **{"$defs": schema["$defs"]})).validate(
        json.loads(json.dumps(rec["hypotheses"], default=str)))
