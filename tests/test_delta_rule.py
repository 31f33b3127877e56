"""Chunked form == per-token recurrence in fp64, and the pool / spec / PAD semantics."""
import pytest
import torch

from harness.config import GDNDims
from harness.cases.inputs import make_delta_inputs
from harness.reference import chunk_gated_delta_rule, recurrent_gated_delta_rule


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("lengths", [[1, 63, 64, 65, 130], [1000]], ids=["varlen", "long"])
def test_chunked_equals_recurrent(r, lengths):
    dims = GDNDims(hidden=32, H=2, HV=2 * r, K=16, V=24)
    d = make_delta_inputs(dims, lengths, seed=r)
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    kw = dict(initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"], use_qk_l2norm_in_kernel=True)
    o_r, s_r = recurrent_gated_delta_rule(*args, **kw)
    o_c, s_c = chunk_gated_delta_rule(*args, **kw)
    assert rel(o_c, o_r) < 1e-10 and rel(s_c, s_r) < 1e-10


def test_chunked_equals_recurrent_without_initial_state_and_odd_chunk():
    dims = GDNDims(hidden=32, H=1, HV=3, K=8, V=5)
    d = make_delta_inputs(dims, [77, 3], seed=4, initial_state=False)
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    o_r, s_r = recurrent_gated_delta_rule(*args, cu_seqlens=d["cu_seqlens"], scale=0.3)
    o_c, s_c = chunk_gated_delta_rule(*args, cu_seqlens=d["cu_seqlens"], scale=0.3, chunk_size=16)
    assert rel(o_c, o_r) < 1e-10 and rel(s_c, s_r) < 1e-10


def test_batched_b_gt_1_equals_varlen():
    dims = GDNDims(hidden=32, H=2, HV=4, K=8, V=12)
    d = make_delta_inputs(dims, [20, 20], seed=1)
    o_v, s_v = recurrent_gated_delta_rule(d["q"], d["k"], d["v"], d["g"], d["beta"],
                                          initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"])
    fold = lambda x: x.reshape(2, 20, *x.shape[2:])
    o_b, s_b = recurrent_gated_delta_rule(*(fold(d[k]) for k in ("q", "k", "v", "g", "beta")),
                                          initial_state=d["initial_state"])
    assert torch.equal(o_b.reshape(o_v.shape), o_v) and torch.equal(s_b, s_v)


def test_pool_decode_pad_rows_skip_and_untouched_slots():
    dims = GDNDims(hidden=32, H=1, HV=2, K=4, V=6)
    d = make_delta_inputs(dims, [1, 1, 1], seed=2)
    pool = torch.randn(5, 2, 6, 4, dtype=torch.float64)
    before = pool.clone()
    o, _ = recurrent_gated_delta_rule(d["q"], d["k"], d["v"], d["g"], d["beta"], initial_state=pool,
                                      cu_seqlens=d["cu_seqlens"], ssm_state_indices=torch.tensor([3, -1, 0]),
                                      inplace_final_state=True)
    assert torch.equal(o[0, 1], torch.zeros_like(o[0, 1]))           # PAD row: zeros
    assert torch.equal(pool[[1, 2, 4]], before[[1, 2, 4]])           # untouched slots
    assert not torch.equal(pool[3], before[3]) and not torch.equal(pool[0], before[0])


def test_not_inplace_leaves_pool_alone():
    dims = GDNDims(hidden=32, H=1, HV=1, K=4, V=6)
    d = make_delta_inputs(dims, [1], seed=3)
    pool = torch.randn(2, 1, 6, 4, dtype=torch.float64)
    before = pool.clone()
    _, new = recurrent_gated_delta_rule(d["q"], d["k"], d["v"], d["g"], d["beta"], initial_state=pool,
                                        ssm_state_indices=torch.tensor([1]), inplace_final_state=False)
    assert torch.equal(pool, before) and not torch.equal(new[1], before[1])


@pytest.mark.parametrize("block", [64, 100])
def test_checkpoints_are_the_states_at_block_ends(block):
    """chunk_gated_delta_rule_checkpoints: sequence n's checkpoint j is its state after
    (j+1) * block tokens (the per-token recurrence's), outputs and finals as the chunk op."""
    from harness.reference import chunk_gated_delta_rule_checkpoints
    dims = GDNDims(hidden=8, H=1, HV=2, K=4, V=6)
    lens = [2 * block, block + 1, 63]
    d = make_delta_inputs(dims, lens, seed=3)
    args = [d[n] for n in ("q", "k", "v", "g", "beta")]
    ck = torch.zeros(sum(L // block for L in lens), 2, 6, 4, dtype=torch.float64)
    o, final = chunk_gated_delta_rule_checkpoints(*args, ck, block, initial_state=d["initial_state"],
                                                  cu_seqlens=d["cu_seqlens"], use_qk_l2norm_in_kernel=True)
    want_o, want_f = recurrent_gated_delta_rule(*args, initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"],
                                                use_qk_l2norm_in_kernel=True)
    assert torch.allclose(o, want_o, rtol=0, atol=1e-10) and torch.allclose(final, want_f, rtol=0, atol=1e-10)
    c, cu = 0, d["cu_seqlens"].tolist()
    for n, L in enumerate(lens):
        for j in range(L // block):
            end = cu[n] + (j + 1) * block
            _, s = recurrent_gated_delta_rule(*(t[:, cu[n]:end] for t in args), initial_state=d["initial_state"][n:n + 1],
                                              use_qk_l2norm_in_kernel=True)
            assert torch.allclose(ck[c], s[0], rtol=0, atol=1e-10)
            c += 1
    assert c == ck.shape[0]
