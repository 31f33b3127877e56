"""The held-out fault set: separate from the public zoo, each fault buildable and carrying
what a right diagnosis names, and the scoring of a diagnosed case (one cheap op case)."""
from tests.triton_device import DEVICE

from harness.cases.case import Case
from harness.diagnosis import CLASSES
from harness.diagnosis.signatures import KINDS
from harness.faults.diagnosis_zoo import score_heldout
from harness.faults.catalogue import FAULTS
from harness.faults.heldout import HELDOUT_FAULTS
from harness.optimized.api import OPS
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import parse_dims


def test_heldout_set_is_separate_and_well_formed():
    assert len(HELDOUT_FAULTS) >= 15
    assert FAULTS and not set(HELDOUT_FAULTS) & set(FAULTS)     # the public zoo grows; the held-out set stays apart
    for f in HELDOUT_FAULTS.values():
        assert f.held_out and f.expect_ops and f.expect, f.name
        assert set(f.expect_ops) <= set(OPS) | {"gdn_core"}, f.name
        edges = {e for e in f.expect if not e.startswith("boundary:")}
        assert edges <= set(CLASSES) | set(KINDS) | {"none"}, f.name
        assert f.make().name == f.name


def test_heldout_case_is_scored():
    """Norm mean square over the row block: an op case fails, its diagnosis names the op,
    and the scoring reads it against the fault's expectation."""
    f = HELDOUT_FAULTS["norm_rstd_over_block"]
    case = Case(level="op", check="rms_norm_gated", dims=parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"),
                backend=f.target, dtype="float32", state_dtype="float32", variant="before-silu-whole", device=DEVICE)
    rec = run_case(case, Policy(), "test", BackendCache(), diagnose=True)
    assert rec["status"] == "fail"
    s = score_heldout(f, rec)
    assert s["localised"] and s["has_op"] and s["op"] == "rms_norm_gated"
    assert "precision or nondeterminism" not in rec["diagnosis"]
    assert s["named"] == any(x["kind"] == "norm_shape" for x in rec["signatures"][:2])
