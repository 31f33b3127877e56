"""The fp64 oracle's CUDA-graph replay of repeated steps (harness/reference/replay.py) gives
bit-identical results to eager steps. GPU only: on a CPU machine each test is a named skip
(the oracle runs eagerly there, exercised by every other test)."""
import pytest
import torch

import harness.reference.layer as layer
from harness.cases.inputs import make_inputs
from harness.cases.scenario import mix_scenario
from harness.cases.suite import parse_dims
from harness.reference.replay import StepReplay

pytestmark = pytest.mark.gpu


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device (this machine has none)")


def _dims():
    return parse_dims("qwen3-next-80b-a3b:shrunk:H=4,K=32,V=48,hidden=128")


def _oracle(sc, monkeypatch, graphs: bool, tp=None):
    monkeypatch.setenv("GDN_ORACLE_GRAPHS", "1" if graphs else "0")
    made = []

    class Recording(StepReplay):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(layer, "StepReplay", Recording)
    inp = make_inputs(sc)
    res = layer.run_oracle(sc, inp.weights, inp.hidden, inp.conv_pool, inp.ssm_pool, tp=tp, device="cuda")
    torch.cuda.synchronize()
    return res, sum(r.replays for r in made)


@pytest.mark.parametrize("mix, tp", [("drift_12", 1), ("spec_zero_draft_migrate", 1), ("multi_step", 2),
                                     ("drift_6", 2)])
def test_replayed_oracle_is_bit_identical_to_eager(mix, tp, monkeypatch):
    _cuda()
    sc = mix_scenario(mix, _dims(), None, layout="flat", tp=tp, seed=3, dtype="bfloat16", state_dtype="float32")
    eager, n0 = _oracle(sc, monkeypatch, graphs=False)
    graphed, n1 = _oracle(sc, monkeypatch, graphs=True)
    assert n0 == 0
    if mix.startswith("drift_"):
        assert n1 > 0, "the drift lane's repeated decode steps were not replayed"
    for s, (a, b) in enumerate(zip(graphed.steps, eager.steps)):
        for k in a:
            assert torch.equal(a[k], b[k]), f"step {s} {k}"
    assert torch.equal(graphed.conv_pool, eager.conv_pool) and torch.equal(graphed.ssm_pool, eager.ssm_pool)


def test_a_step_that_cannot_be_captured_runs_eagerly():
    _cuda()
    x = torch.arange(4.0, device="cuda")
    state = torch.zeros(4, device="cuda")

    def step(inp):      # a host read of a GPU value: not capturable
        state.add_(inp * float(inp.sum()))
        return dict(out=state.clone())

    replay = StepReplay("cuda", enabled=True)
    outs = [replay("k", step, (x,))["out"] for _ in range(4)]
    torch.cuda.synchronize()
    assert not replay.on and replay.replays == 0
    assert [o.tolist() for o in outs] == [[6.0 * i * (n + 1) for i in range(4)] for n in range(4)]


def test_replayed_steps_see_fresh_inputs_and_carry_state():
    _cuda()
    state = torch.zeros(3, device="cuda", dtype=torch.float64)

    def step(inp):
        state.mul_(0.5).add_(inp)
        return dict(out=state * 2)

    replay = StepReplay("cuda", enabled=True)
    ins = [torch.full((3,), float(i), device="cuda", dtype=torch.float64) for i in range(6)]
    outs = [replay("k", step, (x,))["out"] for x in ins]
    want, ref = torch.zeros(3, dtype=torch.float64), []
    for i in range(6):
        want = want * 0.5 + i
        ref.append(want * 2)
    assert replay.replays == 4
    assert all(torch.equal(o.cpu(), r) for o, r in zip(outs, ref))
