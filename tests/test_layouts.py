"""Projection / checkpoint / state layout round trips and TP sharding rules."""
import pytest
import torch

from harness.config import GDNDims, get_preset
from harness.cases.inputs import make_weights
from harness.layouts.projection import pack_qkvz_ba, unpack_qkvz_ba
from harness.layouts.state import conv_convert, conv_dim_first_view, ssm_convert
from harness.layouts.tp import gather_conv_channels, shard_params, shard_sections
from harness.layouts.weights import GDNWeights, convert_checkpoint, detect_layout, from_checkpoint, to_checkpoint

DIMS = [GDNDims(hidden=40, H=4, HV=4 * r, K=6, V=10) for r in (1, 2, 3)]


@pytest.mark.parametrize("dims", DIMS, ids=lambda d: f"r{d.r}")
@pytest.mark.parametrize("layout", ["interleaved", "flat"])
def test_pack_unpack_roundtrip(dims, layout):
    g = torch.Generator().manual_seed(0)
    mixed_qkvz = torch.randn(5, dims.qkvz_dim, generator=g, dtype=torch.float64)
    mixed_ba = torch.randn(5, 2 * dims.HV, generator=g, dtype=torch.float64)
    parts = unpack_qkvz_ba(mixed_qkvz, mixed_ba, dims, layout)
    assert [tuple(p.shape) for p in parts] == [(5, dims.H, dims.K)] * 2 + [(5, dims.HV, dims.V)] * 2 + [(5, dims.HV)] * 2
    back = pack_qkvz_ba(*parts, dims, layout)
    assert torch.equal(back[0], mixed_qkvz) and torch.equal(back[1], mixed_ba)


def test_interleaved_group_order_is_q_k_v_z_per_key_head():
    dims = GDNDims(hidden=8, H=2, HV=4, K=1, V=1)          # group = [q, k, v v, z z]
    mixed = torch.arange(dims.qkvz_dim, dtype=torch.float64)[None]
    ba = torch.arange(8, dtype=torch.float64)[None]        # group = [b b, a a]
    q, k, v, z, b, a = unpack_qkvz_ba(mixed, ba, dims, "interleaved")
    assert q.flatten().tolist() == [0, 6] and k.flatten().tolist() == [1, 7]
    assert v.flatten().tolist() == [2, 3, 8, 9] and z.flatten().tolist() == [4, 5, 10, 11]
    assert b.flatten().tolist() == [0, 1, 4, 5] and a.flatten().tolist() == [2, 3, 6, 7]
    q, k, v, z, b, a = unpack_qkvz_ba(mixed, ba, dims, "flat")
    assert q.flatten().tolist() == [0, 1] and b.flatten().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dims", DIMS, ids=lambda d: f"r{d.r}")
def test_checkpoint_conversion_both_ways_is_a_permutation(dims):
    w = make_weights(dims, seed=1, conv_bias=True)
    ck_i = to_checkpoint(w, dims, "interleaved")
    ck_f = convert_checkpoint(ck_i, dims, "flat")
    assert detect_layout(ck_i) == "interleaved" and detect_layout(ck_f) == "flat"
    assert set(ck_f) >= {"in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight"}
    back = convert_checkpoint(ck_f, dims, "interleaved")
    assert all(torch.equal(back[k], ck_i[k]) for k in ck_i)
    w2 = from_checkpoint(ck_f, dims)
    assert all(torch.equal(getattr(w2, f), getattr(w, f)) for f in GDNWeights.__dataclass_fields__)


def test_state_layout_conversions():
    s = torch.randn(3, 2, 5, 7)
    kv = ssm_convert(s, "vk", "kv")
    assert kv.shape == (3, 2, 7, 5) and torch.equal(ssm_convert(kv, "kv", "vk"), s)
    c = torch.randn(4, 9, 3)
    tf = conv_convert(c, "dim_first", "token_first")
    assert tf.shape == (4, 3, 9) and torch.equal(conv_dim_first_view(tf, "token_first"), c)


@pytest.mark.parametrize("layout", ["interleaved", "flat"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_sharding_equals_selecting_the_ranks_heads(layout, tp):
    """Physical rules (one shard / per-section) == pack the rank's own heads with local dims."""
    dims = GDNDims(hidden=16, H=4, HV=8, K=3, V=5)
    w = make_weights(dims, seed=2, conv_bias=True)
    loc = dims.local(tp)
    for rank in range(tp):
        p = shard_params(w, dims, layout, tp, rank)
        hk = slice(rank * loc.key_dim, (rank + 1) * loc.key_dim)
        hv = slice(rank * loc.value_dim, (rank + 1) * loc.value_dim)
        hh = slice(rank * loc.HV, (rank + 1) * loc.HV)
        own = GDNWeights(w.wq[hk], w.wk[hk], w.wv[hv], w.wz[hv], w.wb[hh], w.wa[hh],
                         shard_sections(w.conv_weight, [dims.key_dim, dims.key_dim, dims.value_dim], tp, rank),
                         None, w.A_log[hh], w.dt_bias[hh], w.norm_weight, w.out_proj[:, hv])
        qkvz, ba = own.packed_in_proj(loc, layout)
        assert torch.equal(p.w_qkvz, qkvz) and torch.equal(p.w_ba, ba)
        assert torch.equal(p.out_proj, own.out_proj) and torch.equal(p.A_log, own.A_log)
        conv_q = p.conv_weight[:loc.key_dim]
        assert torch.equal(conv_q, w.conv_weight[hk])


def test_gather_conv_channels_inverts_section_sharding():
    dims = GDNDims(hidden=16, H=4, HV=8, K=3, V=5)
    x = torch.randn(2, dims.conv_dim)
    parts = [shard_sections(x, [dims.key_dim, dims.key_dim, dims.value_dim], 4, r, dim=1) for r in range(4)]
    assert torch.equal(gather_conv_channels(parts, dims, dim=1), x)


def test_replicated_ba_holds_the_full_matrix():
    dims = get_preset("qwen3.5-4b").shrink()
    w = make_weights(dims)
    p = shard_params(w, dims, "flat", 2, 1, ba="replicated")
    assert p.w_ba.shape == (2 * dims.HV, dims.hidden) and p.ba_heads == (dims.HV // 2, dims.HV // 2)


def test_backend_sharding_is_used_and_checked_against_full_weights():
    """A backend's own shard_params runs in process (issue 19 item 5, vllm #35504): a loader
    putting the wrong ba rows on each rank passes the oracle (which starts from the ranks'
    projections) but fails the full-weight TP=1 projection check; the harness's sharding passes."""
    from harness.cases.layercheck import run_layer_case
    from harness.optimized.reference_backend import ReferenceBackend

    class Loader(ReferenceBackend):
        @staticmethod
        def shard_params(w, dims, layout, tp=1, rank=0, ba="sharded"):
            p = shard_params(w, dims, layout, tp, rank, ba)
            p.w_ba = shard_sections(w.packed_in_proj(dims, layout)[1], [dims.HV] * 2, tp, rank)
            return p

    dims = get_preset("qwen3-next-80b-a3b").shrink(H=4)
    for backend, bad in ((ReferenceBackend(), set()), (Loader(), {"step0.proj_ba", "step1.proj_ba"})):
        pairs = run_layer_case(backend, backend, dims, "decode_only", "interleaved", 2, "float32", "float32", 0, "cpu")
        wrong = {c.output for c in pairs if (c.actual.double() - c.expected.double()).abs().max() > 1e-4}
        assert wrong == bad, wrong
