"""The seeded inputs: draws kept per process give the very values a fresh draw gives, and a caller's
in-place write never reaches the next case; an op case's oracle sees the backend's inputs as they
were before the backend wrote into them."""
import torch

from harness.cases import inputs
from harness.cases.inputs import make_delta_inputs, make_inputs, make_weights
from harness.cases.opcheck import run_op_case
from harness.cases.scenario import mix_scenario
from harness.config import GDNDims
from harness.optimized.registry import load_backend

DIMS = GDNDims(hidden=32, H=2, HV=4, K=8, V=12, W=4, name="tiny")


def _fresh(fn):
    inputs._draws.clear()
    return fn()


def test_kept_draws_equal_fresh_ones_and_stay_unwritten():
    sc = mix_scenario("mixed", DIMS, None, layout="flat", tp=1, seed=3, dtype="float32", state_dtype="float32")
    first = _fresh(lambda: make_inputs(sc))
    first.ssm_pool.fill_(7.0)                       # a backend writing into its pool in place
    first.weights.wq.zero_()
    again = make_inputs(sc)                         # from the kept draws
    fresh = _fresh(lambda: make_inputs(sc))
    assert torch.equal(again.ssm_pool, fresh.ssm_pool) and not torch.equal(again.ssm_pool, first.ssm_pool)
    assert torch.equal(again.weights.wq, fresh.weights.wq)
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, fresh.hidden))


def test_kept_draws_are_shared_across_dtypes_only():
    inputs._draws.clear()
    d64 = make_delta_inputs(DIMS, [3, 5], seed=1)
    d16 = make_delta_inputs(DIMS, [3, 5], seed=1, dtype=torch.float16)
    assert torch.equal(d16["q"], d64["q"].to(torch.float16))
    assert not torch.equal(make_delta_inputs(DIMS, [3, 5], seed=2)["q"], d64["q"])
    assert make_delta_inputs(DIMS, [3, 6], seed=1)["q"].shape[1] == 9
    assert not torch.equal(make_weights(DIMS, 1).wq, make_weights(DIMS, 2).wq)
    assert sum(n for _, n in inputs._draws.values()) <= inputs.kept_bytes()


def test_kept_draws_stay_inside_their_byte_budget(monkeypatch):
    inputs._draws.clear()
    one = sum(t.numel() * t.element_size() for t in inputs._tensors(make_weights(DIMS, 0)))
    monkeypatch.setenv("GDN_DRAWS_KEPT_MB", repr(2 * one / 2**20))
    for seed in range(1, 4):
        make_weights(DIMS, seed)
    assert [k[2] for k in inputs._draws] == [2, 3]          # the oldest went first
    monkeypatch.setenv("GDN_DRAWS_KEPT_MB", repr((one - 1) / 2**20))
    inputs._draws.clear()
    assert torch.equal(make_weights(DIMS, 5).wq, make_weights(DIMS, 5).wq) and not inputs._draws


class _WritesItsInputs:
    """The reference backend, except that its recurrent op scribbles over q and its state before
    running: the oracle must still see the inputs as the case built them."""

    def __init__(self):
        self._ref = load_backend("reference")

    def __getattr__(self, name):
        return getattr(self._ref, name)

    def fused_recurrent_gated_delta_rule(self, **kw):
        out = self._ref.fused_recurrent_gated_delta_rule(**kw)
        kw["q"].fill_(float("nan"))
        return out


def test_op_oracle_inputs_are_copies_taken_before_the_backend_runs():
    pairs = run_op_case(_WritesItsInputs(), "fused_recurrent_gated_delta_rule", "decode", DIMS, "float32",
                        "float32", 0, "cpu")
    assert pairs and all(not torch.isnan(p.expected).any() for p in pairs)
