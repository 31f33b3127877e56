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


# ------------------------------------------------------------------ weight loading (issue 19 item 5)
from harness.layouts.tp import shard_params  # noqa: E402 - imports of the weight-loading section, kept with it
from harness.cases.inputs import make_weights  # noqa: E402 - as above
from tests import fastpath_fakes as ff  # noqa: E402 - as above

TP_DIMS = GDNDims(hidden=32, H=4, HV=12, K=8, V=12, W=4, name="vllm-tp-test")   # two key heads per rank at TP 2


@pytest.mark.parametrize("layout", ["interleaved", "flat"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("ba", ["sharded", "replicated"])
def test_vllm_loaders_shard_as_the_harness_rules(layout, tp, ba):
    """vLLM's loaders (stand-ins with their signatures) give every rank the harness's shards."""
    w = make_weights(TP_DIMS, 0)
    for rank in range(tp):
        got = vllm_backend.vllm_shard_params(ff.vllm_loaders(), w, TP_DIMS, layout, tp, rank, ba)
        want = shard_params(w, TP_DIMS, layout, tp, rank, ba)
        for name in ("w_qkvz", "w_ba", "conv_weight", "A_log", "dt_bias", "out_proj", "norm_weight"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (name, rank)
        assert got.ba_heads == want.ba_heads


@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM's sources importable")
@pytest.mark.parametrize("layout", ["interleaved", "flat"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vllm_own_loaders_shard_as_the_harness_rules(layout, tp):
    """vLLM's own MergedColumnParallelLinear.weight_loader and mamba_v2_sharded_weight_loader
    (the latter compiled from mamba_mixer2's text, whose import needs the flash-attn extension
    on CUDA) give every rank the harness's shards."""
    loaders = vllm_backend._vllm_loaders()
    w = make_weights(TP_DIMS, 0)
    for rank in range(tp):
        got = vllm_backend.vllm_shard_params(loaders, w, TP_DIMS, layout, tp, rank, "sharded")
        want = shard_params(w, TP_DIMS, layout, tp, rank, "sharded")
        for name in ("w_qkvz", "w_ba", "conv_weight"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (name, rank)


def test_backend_shards_with_the_loaders_it_is_given():
    w = make_weights(TP_DIMS, 0)
    be = vllm_backend.VllmBackend(loaders=ff.vllm_loaders(ff.FakeMergedTwoShards))
    assert "MergedColumnParallelLinear" in be.describe()["weight_loading"]
    good = shard_params(w, TP_DIMS, "interleaved", 2, 1)
    bad = be.shard_params(w, TP_DIMS, "interleaved", 2, 1)
    assert not torch.equal(bad.w_ba, good.w_ba) and torch.equal(bad.conv_weight, good.conv_weight)


def test_a_loader_bug_fails_the_full_weight_projection_check():
    """The layer check runs on the backend's shards and compares every rank's projections with
    the full-weight TP=1 GEMM: vLLM's loaders pass, a #35504-style loader fails there."""
    from harness.cases.layercheck import run_layer_case
    from harness.optimized.api import FilledOps
    from harness.optimized.reference_backend import ReferenceBackend

    def failing(loaders):
        be = ReferenceBackend()
        be.shard_params = vllm_backend.VllmBackend(loaders=loaders).shard_params
        pairs = run_layer_case(be, FilledOps(be, ReferenceBackend()), TP_DIMS, "decode_only", "interleaved", 2,
                               "float32", "float32", 0, "cpu")
        return sorted({c.output.split(".", 1)[1] for c in pairs if c.policy_key == "tp.projections"
                       and not torch.allclose(c.actual.double(), c.expected.double())})

    assert failing(ff.vllm_loaders()) == []
    assert "proj_ba" in failing(ff.vllm_loaders(ff.FakeMergedTwoShards))


def test_without_vllm_loaders_the_harness_sharding_is_used_and_said(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_LOADERS", {})
    monkeypatch.setattr(vllm_backend, "_LOADER_ERROR", [])
    monkeypatch.setattr(vllm_backend, "LOADER_MODULES", dict(linear="vllm_no_such_module.linear"))
    be = vllm_backend.VllmBackend()
    loaders, why = be.weight_loaders()
    assert loaders is None and "not importable" in why and "harness's TP sharding" in why
    assert be.describe()["weight_loading"] == why
    w = make_weights(TP_DIMS, 0)
    got, want = be.shard_params(w, TP_DIMS, "flat", 2, 0), shard_params(w, TP_DIMS, "flat", 2, 0)
    assert torch.equal(got.w_qkvz, want.w_qkvz) and torch.equal(got.conv_weight, want.conv_weight)
    if not HAS_VLLM:
        assert be.unavailable("cpu").startswith("vLLM is not importable: ")
