"""The `vllm` backend (harness.optimized.vllm_backend) and its source mutants.

Without vLLM: the backend and every mutant load and say why they cannot run, and the
adapter's own conventions are checked (slot translation to vLLM's null block, the
null-block pool copy keeping each slot's memory order). With vLLM importable (its
sources on sys.path, as scripts/vllm_validate.sh arranges): the Qwen layer's unpack,
compiled from vLLM's source file, equals the reference for both layouts, and a mutant's
unpack does not. The kernels themselves are validated on a GPU (docs/findings.md).
"""
import importlib.util

import pytest
import torch

from harness.config import GDNDims
from harness.faults import vllm_mutants
from harness.layouts.projection import unpack_qkvz_ba
from harness.optimized import vllm_backend
from harness.optimized.registry import load_backend

HAS_VLLM = importlib.util.find_spec("vllm") is not None
DIMS = GDNDims(hidden=32, H=2, HV=6, K=8, V=12, W=4, name="vllm-test")     # r = 3, K != V


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_loads_and_says_why_without_vllm(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_CACHE", {})
    monkeypatch.setattr(vllm_backend, "_ERROR", [])
    for be in [load_backend("vllm")] + [m() for m in vllm_mutants.MUTANTS]:
        for device in ("cuda", "cpu"):
            why = be.unavailable(device)
            assert why and why.startswith("vLLM is not importable: ")
        d = be.describe()
        assert d["ssm_state_layout"] == "vk" and set(d["decode_paths"]) == {"recurrent", "sigmoid_gating", "packed"}
        assert be.conv_state_layouts == ("dim_first", "token_first")


def test_slots_translate_to_vllm_null_block():
    idx = torch.tensor([[3, -1, 0], [-1, -1, 7]], dtype=torch.int32)
    assert vllm_backend._vllm_slots(idx).tolist() == [[4, 0, 1], [0, 0, 8]]
    assert vllm_backend._vllm_slots(torch.tensor([5, 0]), pad_slot_id=5).tolist() == [0, 1]


@pytest.mark.parametrize("token_first", [False, True])
def test_null_block_pool_keeps_memory_order(token_first):
    pool = torch.randn(5, 7, 3)                                  # [slots, dim, L]
    if token_first:
        pool = pool.transpose(1, 2).contiguous().transpose(1, 2)
    buf = vllm_backend._with_null_block(pool)
    assert buf.shape == (6, 7, 3) and torch.equal(buf[1:], pool) and not buf[0].any()
    assert (buf.stride(1) == 1) == token_first                   # same per-slot order as the pool


@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM's sources importable")
@pytest.mark.parametrize("layout", ["interleaved", "flat"])
def test_layer_unpack_from_vllm_source(layout):
    be = load_backend("vllm")
    g = torch.Generator().manual_seed(0)
    mq = torch.randn(5, DIMS.qkvz_dim, generator=g)
    mb = torch.randn(5, 2 * DIMS.HV, generator=g)
    want = unpack_qkvz_ba(mq, mb, DIMS, layout)
    assert all(torch.equal(a, b) for a, b in zip(be.unpack_qkvz_ba(mq, mb, DIMS, layout), want))
    bad = vllm_mutants.VllmInterleavedUnpackOnFlat().unpack_qkvz_ba(mq, mb, DIMS, layout)
    assert all(torch.equal(a, b) for a, b in zip(bad, want)) == (layout == "interleaved")
