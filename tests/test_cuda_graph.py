"""CUDA-graph capture / replay of a backend's decode and spec-verify steps (issue 19 item 2).
GPU only: on a CPU machine every test here is a named skip (the CPU-checkable parts are in
tests/test_cuda_graph_zoo.py). On a GPU:

    .venv/bin/python -m pytest tests/test_cuda_graph.py -q -rs                       # triton
    GDN_GRAPH_BACKEND=vllm .venv/bin/python -m pytest tests/test_cuda_graph.py -q -rs
"""
import os

import pytest
import torch

from harness.config import get_preset
from harness.tools.cudagraph import CAPTURES, check_backend, failing, graph_replay_pairs, main, why_not
from harness.faults.catalogue import GRAPH_FAULTS

pytestmark = pytest.mark.gpu
BACKEND = os.environ.get("GDN_GRAPH_BACKEND", "triton")
DIMS = get_preset("qwen3-next-80b-a3b")


def _backend():
    from harness.optimized.api import FilledOps
    from harness.optimized.registry import load_backend
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device (this machine has none)")
    try:
        be = load_backend(BACKEND)
    except Exception as e:  # noqa: BLE001 - backend not installed here
        pytest.skip(f"backend {BACKEND} does not load: {e}")
    why = why_not(be, "cuda") or be.unavailable("cuda")
    if why:
        pytest.skip(why)
    return be, FilledOps(be, load_backend("reference"))


@pytest.mark.parametrize("step, capture_real", CAPTURES)
def test_graph_replay_equals_eager(step, capture_real):
    be, ops = _backend()
    assert failing(graph_replay_pairs(be, ops, DIMS, capture_real=capture_real, step=step)) == []


@pytest.mark.parametrize("fault", sorted(GRAPH_FAULTS))
def test_graph_faults_are_killed(fault):
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device (this machine has none)")
    runs = check_backend(GRAPH_FAULTS[fault].make, DIMS)
    assert any(bad for _, _, bad in runs), f"{fault} passed every capture: {runs}"


def test_zoo_command_kills_every_graph_fault(capsys):
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device (this machine has none)")
    assert main(["--zoo"]) == 0
    out = capsys.readouterr().out
    assert f"CUDA-graph kill score {len(GRAPH_FAULTS)}/{len(GRAPH_FAULTS)}; base passes: True" in out
