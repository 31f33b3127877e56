"""Phases (harness/run/phases.py): a backend call on a GPU is timed by CUDA events around it,
read when the case's timer next synchronises - no wait for the GPU per call; a call that
compiled is synchronised and timed whole. Stand-ins for the CUDA calls run it on a CPU."""
import harness.run.phases as phases


class _Event:
    recorded = 0

    def __init__(self, **_):
        self.t = None

    def record(self):
        _Event.recorded += 1
        self.t = _Event.recorded * 0.125          # seconds: each record 125 ms after the last

    def elapsed_time(self, end):                  # ms, as torch.cuda.Event's
        return (end.t - self.t) * 1e3


def _gpu_phases(monkeypatch):
    waits = []
    monkeypatch.setattr(phases, "sync", lambda device: waits.append(device))
    monkeypatch.setattr(phases.Phases, "_events", lambda self: (_Event(), _Event()))
    return phases.Phases("cuda"), waits


def test_backend_calls_on_a_gpu_do_not_wait_and_are_read_at_the_next_sync(monkeypatch):
    p, waits = _gpu_phases(monkeypatch)
    assert p.call(lambda x: x + 1, 1) == 2
    assert p.call(lambda: None) is None
    assert waits == [] and "backend" not in p.seconds        # nothing waited for, nothing read yet
    assert abs(p.inner_seconds() - 0.25) < 1e-9                # two spans of 125 ms, read after one wait
    assert waits == ["cuda"]


def test_a_call_that_compiles_is_waited_for_and_timed_whole(monkeypatch):
    p, waits = _gpu_phases(monkeypatch)
    monkeypatch.setattr(phases, "compile_started", lambda **kw: None)

    def compiling():
        phases._compiles += 1

    p.call(compiling)
    assert waits == ["cuda"] and "compile" in p.seconds and p.compiles == 1
    assert p.to_dict()["compiles"] == 1 and "backend_s" not in p.to_dict()


def test_cpu_calls_are_timed_by_the_wall():
    p = phases.Phases("cpu")
    p.call(lambda: sum(range(1000)))
    assert p.seconds["backend"] >= 0.0 and p.inner_seconds() == p.seconds["backend"]
