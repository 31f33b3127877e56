"""The oracle's invariants (harness.cases.selfcheck), expanded over layouts x TP {1, 2, 4, 8}.

Each check returns (name, actual, expected) pairs; every pair must pass the policy
entry ``self.<check>`` and the test reports the worst pair when one does not.
"""
import pytest

from harness.judge.compare import compare
from harness.config import GDNDims, get_preset
from harness.judge.policy import Policy
from harness.cases.case import Case
from harness.cases.selfcheck import CHECKS

POLICY = Policy()
DIMS_TP8 = GDNDims(hidden=48, H=8, HV=16, K=6, V=10, name="h8-r2")   # TP up to 8
DIMS_R3 = get_preset("qwen3.5-27b").shrink(H=2, K=12, V=20)          # r = 3, K != V


def assert_check(case: Case):
    tol = POLICY.lookup(f"self.{case.check}", "float64", "float64")
    failures = []
    pairs = CHECKS[case.check][0](case)
    assert pairs, "a check must compare something"
    assert {c.policy_key for c in pairs} == {f"self.{case.check}"}
    for c in pairs:
        m = compare(c.output, c.actual, c.expected, tol, c.token_dim)
        if not m.passed:
            failures.append(f"{c.output}: rel_rms={m.rel_rms:.3g} max_abs={m.max_abs:.3g} at {m.max_abs_index}")
    assert not failures, f"{case.id} ({tol.describe()}):\n" + "\n".join(failures)


@pytest.mark.parametrize("layout", ["interleaved", "flat"])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_tp_ranks_reduced_equal_tp1(layout, tp):
    assert_check(Case("self", "tp_reduce", DIMS_TP8, layout, tp, seed=tp))


@pytest.mark.parametrize("tp", [1, 2])
def test_lora_arrangement_equals_folded_flat(tp):
    assert_check(Case("self", "lora_arrangement", DIMS_R3 if tp == 1 else DIMS_TP8, "flat", tp, seed=3))


@pytest.mark.parametrize("check", ["chunked_prefill_split", "spec_one_accepted", "untouched_slots",
                                   "fresh_prefill_stale_slot"])
@pytest.mark.parametrize("layout", ["interleaved", "flat"])
def test_cache_invariants(check, layout):
    assert_check(Case("self", check, DIMS_R3, layout, 1, seed=5))


@pytest.mark.parametrize("check", ["layout_convert", "batch_independence", "chunked_vs_recurrent"])
def test_oracle_consistency(check):
    assert_check(Case("self", check, DIMS_R3, "flat", 1, seed=6))
