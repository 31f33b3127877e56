"""Diagnosis: a failing case is re-run through the reference under known fault hypotheses
and the one that reproduces the backend's outputs names the fault class.

Faults of the zoo serve as test subjects (their code is never used by the diagnosis);
the cases are cheap op samples and one reference-derived layer case.
"""
import json
import re
from pathlib import Path

from tests.triton_device import DEVICE

import pytest

from harness import diagnosis
from harness.cases.case import Case
from harness.faults.diagnosis_zoo import CATALOGUE_CLASSES
from harness.faults import catalogue
from harness.faults.catalogue import FAULTS
from harness.optimized.reference_backend import ReferenceBackend
from harness.judge.policy import Policy
from harness.report.results import summary_markdown
from harness.report.junit import failure_body, failure_message
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import parse_dims

DIMS = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")     # the smoke suite's op dims (r = 3, K != V)
POLICY = Policy()


@pytest.fixture(scope="module")
def backends():
    return BackendCache()


def _op_case(fault, op, variant, dtype="float32"):
    return Case(level="op", check=op, dims=DIMS, backend=FAULTS[fault].target, dtype=dtype, state_dtype="float32",
                variant=variant, device=DEVICE)


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
    assert rec["hypotheses"], (rec.get("diagnosis_error"), rec.get("diagnosis_coverage"), rec.get("diagnosis"))
    top = rec["hypotheses"][0]
    assert top["class"] == CATALOGUE_CLASSES[FAULTS[fault].diagnosis_class], rec["hypotheses"]
    assert top["matched"] and top["words"]
    assert top["words"] in rec["diagnosis"]


def test_layer_fault_named(backends):
    """A continued prefill starting from zeros, seen at layer level (oracle re-runs)."""
    case = Case(level="layer", check="chunked_prefill", dims=parse_dims("qwen3-next-80b-a3b:shrunk"),
                layout="flat", backend=FAULTS["chunk_zero_initial_state"].target, dtype="float32",
                state_dtype="float32", variant="recurrent.dim_first.sharded", device=DEVICE)
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    assert rec["hypotheses"][0]["class"] == "state_init_chunked", rec["hypotheses"]
    assert rec["hypotheses"][0]["hypothesis"] == "prefill_initial_state_zeroed"
    # op attribution: the chunk op differs on its own inputs, and swapping it fixes the layer
    att = rec["attribution"]
    assert att["op"] == "chunk_gated_delta_rule" and att["confirmed"] and att["step"] is not None, att
    assert "localised to op chunk_gated_delta_rule" in rec["diagnosis"]
    assert any("chunk_gated_delta_rule" in line for line in failure_body(rec).splitlines())


def test_gdn_core_attributed_to_a_stage(backends):
    """A fused gdn_core: its step compared with the oracle's from the same caches names the
    stage, the step and the entry; the divergence is a boundary at the fresh sequence."""
    case = Case(level="layer", check="fresh_1token_prefill", dims=parse_dims("qwen3-next-80b-a3b:shrunk"),
                layout="flat", backend=FAULTS["fresh_one_token_prefill_as_decode"].target, dtype="float32",
                state_dtype="float32", variant="recurrent.dim_first.sharded", device=DEVICE)
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    att = rec["attribution"]
    assert att["op"] == "gdn_core" and att["stage"] and att["step"] == 0 and "prefill" in att["entry"], att
    assert any(s["kind"] == "boundary" and s["where"]["edge"] == "sequence_start" for s in rec["signatures"])
    assert "localised to gdn_core" in rec["diagnosis"]


def test_passing_case_has_no_diagnosis(backends):
    rec = run_case(Case(level="op", check="fused_gdn_gating", dims=DIMS, backend="triton", dtype="float32",
                        state_dtype="float32", variant="contiguous", device=DEVICE), POLICY, "test", backends, diagnose=True)
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


class NormOnePercentHigh(ReferenceBackend):
    """A fault outside every known class: RMSNormGated's output 1 % too large."""
    name = "norm-one-percent-high"

    @staticmethod
    def rms_norm_gated(*args, **kwargs):
        return ReferenceBackend.rms_norm_gated(*args, **kwargs) * 1.01


def test_unknown_fault_said_so_after_a_complete_diagnosis(backends):
    case = Case(level="op", check="rms_norm_gated", dims=DIMS, backend=f"{__name__}:NormOnePercentHigh",
                dtype="float32", state_dtype="float32", variant="before-silu-whole", device=DEVICE)
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail" and rec["hypotheses"] == []
    assert rec["diagnosis_coverage"]["cut_short"] is False
    assert re.search(r"none of the \d+ known fault hypotheses reproduces it", rec["diagnosis"])
    assert "precision or nondeterminism" not in rec["diagnosis"]
    # the structure is named: a 1 % rescaling of the norm output, not precision
    assert any(s["kind"] == "scale" and s["op"] == "rms_norm_gated" for s in rec["signatures"]), rec["signatures"]
    assert "scaled by 1.01" in rec["diagnosis"] and "not precision" in rec["diagnosis"]


def test_budget_cut_short_is_said_not_taken_for_a_finding(backends, monkeypatch):
    case = _op_case("gemma_norm_weight", "rms_norm_gated", "before-silu-whole")
    full = run_case(case, POLICY, "test", backends, diagnose=True)
    assert full["diagnosis_coverage"]["cut_short"] is False
    assert full["diagnosis_coverage"]["tried"] == full["diagnosis_coverage"]["total"]
    monkeypatch.setenv("GDN_DIAGNOSE_BUDGET_S", "-1")      # spent before the first hypothesis
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail" and rec["metrics"] == full["metrics"]
    assert rec["hypotheses"] == [] and rec["diagnosis_coverage"]["cut_short"] is True
    assert rec["diagnosis_coverage"]["tried"] == 0
    assert "diagnosis incomplete" in rec["diagnosis"] and "--diagnose-budget" in rec["diagnosis"]


def test_reports_show_hypotheses(backends):
    rec = run_case(_op_case("dt_bias_after_softplus", "fused_gdn_gating", "contiguous"), POLICY, "test", backends,
                   diagnose=True)
    assert rec["hypotheses"][0]["hypothesis"] == "dt_bias_after_softplus"
    md = summary_markdown([rec], dict(suite="test", command="x"))
    assert "## Diagnosis" in md and "dt_bias_after_softplus" in md
    assert "dt_bias_after_softplus" in failure_body(rec) and "likely cause: gating math" in failure_message(rec)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "harness" / "report" / "results.schema.json").read_text())
    item = schema["$defs"]["case"]["properties"]["hypotheses"]
    jsonschema.Draft202012Validator(dict(item, **{"$defs": schema["$defs"]})).validate(
        json.loads(json.dumps(rec["hypotheses"], default=str)))


def test_reports_show_signatures(backends):
    """A fault no hypothesis knows: its structure and op reach summary.md, junit, the
    repro printout and the schema-valid `signatures` list."""
    case = Case(level="op", check="rms_norm_gated", dims=DIMS, backend=f"{__name__}:NormOnePercentHigh",
                dtype="float32", state_dtype="float32", variant="before-silu-whole", device=DEVICE)
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    md = summary_markdown([rec], dict(suite="test", command="x"))
    assert "## Diagnosis" in md and "scaled by 1.01" in md
    assert "localised / structure of the difference" in failure_body(rec) and "scale (exact)" in failure_body(rec)
    from harness.report.html import render_html
    assert "scaled by 1.01" in render_html([rec], dict(suite="test", command="x"))
    from harness.diagnosis.cli import print_hypotheses
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_hypotheses(rec)
    assert "scaled by 1.01" in buf.getvalue()
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "harness" / "report" / "results.schema.json").read_text())
    item = schema["$defs"]["case"]["properties"]["signatures"]
    jsonschema.Draft202012Validator(dict(item, **{"$defs": schema["$defs"]})).validate(
        json.loads(json.dumps(rec["signatures"], default=str)))


# ------------------------------------------------------------------ composed faults (test-local)
class QkHeadModHPadGarbage(catalogue.QkHeadModH):
    """Two faults at once, as vLLM's kernels with a planted head-mapping bug look: q / k head
    hv % H, and PAD rows left as torch.empty garbage (NaN)."""
    name = "qk_head_mod_h_pad_garbage"
    mutations = catalogue.QkHeadModH.mutations + catalogue.PadRowsUninitialised.mutations
    append = catalogue.PadRowsUninitialised.append


class SpecStateOffsetOffByOne(catalogue.SpecConvOffsetOffByOne):
    """The ssm side of the accepted-token offset: the spec recurrent reads its state from slot
    [num_accepted] (clamped to the row) instead of [num_accepted - 1]."""
    name = "spec_state_offset_off_by_one"
    module = "recurrent"
    mutations = (("i_read = tl.load(num_acc + i_n).to(tl.int64) - 1",
                  "i_read = tl.minimum(tl.load(num_acc + i_n).to(tl.int64), L - 1)"),)


def _local_case(cls, op, variant):
    spec = FAULTS[cls.name].target if cls.name in FAULTS else f"{__name__}:{cls.__name__}"
    return Case(level="op", check=op, dims=DIMS, backend=spec, dtype="float32", state_dtype="float32", variant=variant, device=DEVICE)


def test_fault_named_beside_pad_garbage(backends):
    """PAD rows of NaN do not hide a second fault: both are named."""
    rec = run_case(_local_case(QkHeadModHPadGarbage, "fused_recurrent_gated_delta_rule", "decode"), POLICY, "test",
                   backends, diagnose=True)
    assert rec["status"] == "fail"
    top = rec["hypotheses"][0]
    assert top["matched"] and top["pad_rows"] and top["class"] == "gva_head_mapping", rec["hypotheses"]
    assert top["hypothesis"] == "pad_rows_garbage+qk_heads_tiled"
    assert "likely cause [PAD rows] + [GVA head mapping]" in rec["diagnosis"]
    assert "[PAD rows] + [GVA head mapping]" in failure_body(rec)


def test_layer_fault_named_beside_pad_garbage(backends):
    """The same at layer level (a decode mix with PAD rows, oracle re-runs)."""
    case = Case(level="layer", check="decode_only", dims=parse_dims("qwen3-next-80b-a3b:shrunk"), layout="flat",
                backend=f"{__name__}:QkHeadModHPadGarbage", dtype="float32", state_dtype="float32",
                variant="recurrent.dim_first.sharded", device=DEVICE)
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    top = rec["hypotheses"][0]
    assert rec["status"] == "fail" and top["matched"] and top["pad_rows"], rec["hypotheses"]
    assert top["class"] == "gva_head_mapping" and "[PAD rows] + [GVA head mapping]" in rec["diagnosis"]


@pytest.mark.parametrize("cls,op,variant,name", [
    (catalogue.SpecConvOffsetOffByOne, "causal_conv1d_update", "spec-token_first", "conv_accepted_plus_one"),
    (SpecStateOffsetOffByOne, "fused_recurrent_gated_delta_rule", "spec", "ssm_accepted_plus_one"),
], ids=["conv", "ssm"])
def test_spec_accepted_offset_named(cls, op, variant, name, backends):
    rec = run_case(_local_case(cls, op, variant), POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    top = rec["hypotheses"][0]
    assert top["matched"] and top["class"] == "spec_accepted_offset" and top["hypothesis"] == name, rec["hypotheses"]


class SoftplusInvertedInRecurrent(catalogue.SoftplusThresholdInverted):
    """softplus_threshold_inverted in the recurrent kernel's own gating (the packed decode's, as
    in vLLM's fused_recurrent): g = -exp(A_log) * x for ordinary x, positive for x < 0."""
    name = "softplus_inverted_in_recurrent"
    module = "recurrent"
    mutations = (("big = bx > thr", "big = bx < thr"),)


def test_overflow_reproduced_by_hypothesis(backends):
    """Inf / NaN outputs match a hypothesis whose re-run (in the kernels' fp32) overflows at the same places."""
    rec = run_case(_local_case(SoftplusInvertedInRecurrent, "fused_recurrent_gated_delta_rule_packed_decode", "decode"),
                   POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail" and "inf" in rec["diagnosis"]
    top = rec["hypotheses"][0]
    assert top["matched"] and top["hypothesis"] == "softplus_linear", rec["hypotheses"]


def test_rank_takes_non_finite_errors():
    """record() writes an infinite / NaN error as a string; ranking must still order it last."""
    from harness.diagnosis.core import rank
    recs = [dict(matched=False, fixed=1, rel_rms="inf"), dict(matched=False, fixed=1, rel_rms=0.5),
            dict(matched=True, fixed=2, rel_rms="nan")]
    assert [r["rel_rms"] for r in rank(recs)] == ["nan", 0.5, "inf"]


def _gate_fault_drift_case():
    return Case(level="layer", check="drift_48", dims=parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"),
                backend=FAULTS["gate_log_as_linear"].target, dtype="float32", state_dtype="float32", layout="flat",
                device="cpu", variant="recurrent.token_first.sharded")


def test_attribution_stops_its_run_at_the_first_divergent_call(monkeypatch):
    """The per-call comparison stops the layer run once a call differs (the rest of that run is
    not needed); only the confirming swap runs every step."""
    import time
    from harness.diagnosis import attribution
    from harness.cases.scenario import case_scenario
    case = _gate_fault_drift_case()
    steps, calls = len(case_scenario(case).plan()), []
    real = attribution.backend_step
    monkeypatch.setattr(attribution, "backend_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    att = attribution.attribute_layer(case, BackendCache().get(case.backend), POLICY, time.perf_counter() + 600)
    assert att["op"] == "chunk_gated_delta_rule" and att["step"] == 0 and att["confirmed"]
    assert len(calls) == 1 + steps          # step 0 checked, then one swap run


def test_attribution_keeps_to_its_budget_and_says_so():
    """Past its deadline the attribution stops between steps and says what it did not try;
    it never lists untried ops as ruled out."""
    import time
    from harness.diagnosis import attribution
    from harness.diagnosis.analysis import attribution_words
    case = _gate_fault_drift_case()
    att = attribution.attribute_layer(case, BackendCache().get(case.backend), POLICY, time.perf_counter() - 1)
    assert att["op"] is None and att["ruled_out"] == [] and "budget ran out at step 0" in att["cut_short"]
    assert "incomplete" in attribution_words(att) and "raise --diagnose-budget" in attribution_words(att)
