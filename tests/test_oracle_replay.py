"""The fp64 oracle's CUDA-graph replay of repeated steps (harness/reference/replay.py) gives
bit-identical results to eager steps. GPU only: on a CPU machine each test is a named skip
(the oracle runs eagerly there, exercised by every other test); its control flow is checked on
the CPU against stand-ins for the torch.cuda calls."""
import contextlib
import types

import pytest
import torch

import harness.reference.layer as layer
from harness.cases.inputs import make_inputs
from harness.cases.scenario import mix_scenario
from harness.cases.suite import parse_dims
from harness.reference.replay import StepReplay
from harness.run.phases import Phases



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


@pytest.mark.gpu
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


@pytest.mark.gpu
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


@pytest.mark.gpu
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
    assert replay.replays == 5       # step 1 eager; step 2 captured (no kernel runs) then replayed; 3-6 replayed
    assert all(torch.equal(o.cpu(), r) for o, r in zip(outs, ref))


class _FakeCuda:
    """Stand-ins for the torch.cuda calls StepReplay makes, so its control flow runs on a CPU:
    a capture records the step's work (`record`) instead of running it, a replay runs it."""

    def __init__(self):
        self.capturing = []

    def install(self, monkeypatch):
        fake = self

        class Graph:
            work = None

            def replay(self):
                self.work()

        @contextlib.contextmanager
        def graph(g, stream=None):
            fake.capturing.append(g)
            try:
                yield
            finally:
                fake.capturing.pop()

        for name, value in dict(CUDAGraph=Graph, graph=graph, Stream=lambda device=None: None,
                                stream=lambda s: contextlib.nullcontext(), synchronize=lambda: None,
                                current_stream=lambda: types.SimpleNamespace(wait_stream=lambda s: None)).items():
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(StepReplay, "_on_side_stream", lambda self, fn, inputs: fn(*inputs))

    def record(self, work):
        if self.capturing:
            self.capturing[-1].work = work
        else:
            work()


def test_replay_control_flow_on_a_cpu(monkeypatch):
    """First step of a key eager, the second captured then replayed, later ones replayed; a new
    input shape is a new key; a capture that raises turns replay off and the step runs eagerly."""
    fake = _FakeCuda()
    fake.install(monkeypatch)
    state = torch.zeros(3, dtype=torch.float64)
    calls = []

    def step(x):
        out = torch.empty_like(state)

        def work():
            state.mul_(0.5).add_(x)
            out.copy_(state * 2)
        calls.append("capture" if fake.capturing else "eager")
        fake.record(work)
        return dict(out=out)

    replay = StepReplay("cuda", enabled=True)
    phases = Phases()        # a case's record counts the steps replayed while it ran
    want, outs, ref = torch.zeros(3, dtype=torch.float64), [], []
    for i in range(5):
        outs.append(replay("k", step, (torch.full((3,), float(i), dtype=torch.float64),))["out"])
        want = want * 0.5 + i
        ref.append(want * 2)
    assert calls == ["eager", "capture"] and replay.replays == 4
    assert phases.to_dict()["oracle_replays"] == 4 and Phases().to_dict()["oracle_replays"] == 0
    assert all(torch.equal(o, r) for o, r in zip(outs, ref)), "a replay returned another step's buffer"
    replay("k", step, (torch.zeros(4, dtype=torch.float64)[:3],))       # same shape and strides: replayed
    replay("k", step, (torch.zeros(6, dtype=torch.float64)[::2],))      # other strides: a new key, eager
    assert calls[2:] == ["eager"] and replay.replays == 5

    def unfit(x):
        if fake.capturing:
            raise RuntimeError("operation not permitted when stream is capturing")
        return dict(out=x * 3)
    assert torch.equal(replay("u", unfit, (torch.ones(2),))["out"], torch.full((2,), 3.0))
    assert torch.equal(replay("u", unfit, (torch.ones(2),))["out"], torch.full((2,), 3.0))
    assert not replay.on
