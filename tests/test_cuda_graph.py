"""CUDA-graph capture / replay of a backend's decode step (issue 19 item 2). GPU only: on
a CPU machine every test here is a named skip. On a GPU:

    GDN_GRAPH_BACKEND=vllm .venv/bin/python -m pytest tests/test_cuda_graph.py -q -rs
"""
import os

import pytest
import torch

from harness.config import get_preset
from harness.tools.cudagraph import graph_replay_pairs, why_not

BACKEND = os.environ.get("GDN_GRAPH_BACKEND", "vllm")


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


class _FrozenSize:
    """A decode step whose batch size is read once (at capture) and frozen: the rows it
    processes are the real rows of the first call (vLLM's num_actual_tokens taken on the host)."""
    def __init__(self, ops):
        self._ops, self._n = ops, None

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def fused_recurrent_gated_delta_rule(self, q, k, v, g, beta, cu_seqlens=None, ssm_state_indices=None, **kw):
        if self._n is None:
            self._n = int((ssm_state_indices >= 0).sum())       # host read at warm-up, frozen after
        n = self._n
        o, s = self._ops.fused_recurrent_gated_delta_rule(q[:, :n], k[:, :n], v[:, :n], g[:, :n], beta[:, :n],
                                                          cu_seqlens=cu_seqlens[:n + 1],
                                                          ssm_state_indices=ssm_state_indices[:n], **kw)
        full = torch.zeros(*q.shape[:2], *o.shape[2:], dtype=o.dtype, device=o.device)
        full[:, :n] = o
        return full, s


class _HostBranch:
    """A host-side branch on the batch's contents: without PAD rows (as at capture) the
    slot index is taken as the row number; the graph keeps that branch for every replay."""
    def __init__(self, ops):
        self._ops, self._plain = ops, None

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def fused_recurrent_gated_delta_rule(self, *a, ssm_state_indices=None, **kw):
        if self._plain is None:
            self._plain = bool((ssm_state_indices >= 0).all())
        if self._plain:
            ssm_state_indices = torch.arange(ssm_state_indices.shape[0], dtype=ssm_state_indices.dtype,
                                             device=ssm_state_indices.device)
        return self._ops.fused_recurrent_gated_delta_rule(*a, ssm_state_indices=ssm_state_indices, **kw)


def _failing(pairs):
    return [n for n, a, b, _, _ in pairs if not torch.equal(a, b)]


@pytest.mark.parametrize("capture_real", [8, 2])
def test_graph_replay_equals_eager(capture_real):
    be, ops = _backend()
    pairs = graph_replay_pairs(be, ops, get_preset("qwen3-next-80b-a3b"), capture_real=capture_real)
    assert _failing(pairs) == []


@pytest.mark.parametrize("fault, capture_real", [(_FrozenSize, 2), (_HostBranch, 8)])
def test_graph_faults_are_caught(fault, capture_real):
    be, ops = _backend()
    pairs = graph_replay_pairs(be, fault(ops), get_preset("qwen3-next-80b-a3b"), capture_real=capture_real)
    assert _failing(pairs), f"{fault.__name__} passed the graph-replay check"


def test_without_cuda_the_check_says_why():
    from harness.optimized.reference_backend import ReferenceBackend
    reason = why_not(ReferenceBackend(), "cpu")
    assert reason and ("CUDA" in reason or "cuda_graphs" in reason)
