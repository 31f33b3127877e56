"""Triton recurrent delta-rule kernels == the reference (harness.reference.delta_rule).

Runs under the Triton interpreter where there is no GPU (shapes kept small for it).

Tolerances, all against the reference fed the very same inputs:
- fp32 compute: both sides do the same fp32 operations and differ only in summation order
  over K (<= 32 terms) and in exp / sqrt / log implementations (a few ulp), over <= 4
  tokens: ~1e-6 relative seen, asserted at 1e-5 (relative, and absolute for values near 0).
- fp16 outputs: the same fp32 value rounded to fp16 may land one ulp apart: rtol 2**-10.
- bf16 state pool: each stored token is one rounding of an fp32 value that agrees to
  ~1e-6, so at most one bf16 ulp apart: rtol 2**-7. (The state carried between tokens
  stays fp32 in both, so nothing compounds.)
- fp64: both compute in fp64: 1e-12.
"""
import torch

from tests.triton_device import DEVICE as DEV

import pytest

from harness.errors import InputError
from harness.reference import delta_rule as ref
from harness.optimized.triton_kernels import recurrent as tri

IN_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2 ** -10, atol=1e-5),
       torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def close(actual, expected, dtype=None):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu(), expected.cpu(), **TOL[dtype or actual.dtype])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def delta_inputs(lengths, H, r, K, V, dtype, seed=0, batched=False):
    """q, k, v, g, beta with model-like ranges (g <= 0, beta in (0, 1)); varlen unless batched."""
    G = gen(seed)
    HV = H * r
    B, T = (len(lengths), lengths[0]) if batched else (1, sum(lengths))
    q = torch.randn(B, T, H, K, generator=G)
    k = torch.randn(B, T, H, K, generator=G)
    v = torch.randn(B, T, HV, V, generator=G)
    g = -torch.rand(B, T, HV, generator=G) * 2.0
    beta = torch.rand(B, T, HV, generator=G)
    cu = None if batched else torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), device=DEV)
    cast = lambda x: x.to(DEV, dtype)
    return cast(q), cast(k), cast(v), cast(g), cast(beta), cu


def state(shape, dtype, seed):
    return (0.5 * torch.randn(*shape, generator=gen(seed))).to(DEV, dtype)


def state_shape(n, HV, K, V, layout):
    return (n, HV, V, K) if layout == "vk" else (n, HV, K, V)


# ---------------------------------------------------------------------------------------
# fused_recurrent_gated_delta_rule without a pool


# (K, V) pairs: K != V, and a non-power-of-two K or V each time.
DIMS = {1: (16, 24), 2: (12, 20), 3: (20, 12)}


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=str)
def test_varlen_matches_reference(dtype, layout, r):
    K, V = DIMS[r]
    H = 2 if r < 3 else 1
    lengths = [3, 1, 0, 4]                       # a length-1 and an empty sequence included
    q, k, v, g, beta, cu = delta_inputs(lengths, H, r, K, V, dtype, seed=r)
    h0 = state(state_shape(len(lengths), H * r, K, V, layout), torch.float32, 10 + r) if r != 3 else None
    kw = dict(scale=None if r == 1 else 0.7, initial_state=h0, cu_seqlens=cu,
              use_qk_l2norm_in_kernel=r != 2, state_layout=layout)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_r, s_r = ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    close(o, o_r)
    close(s, s_r, torch.float32)


@pytest.mark.parametrize("output_final_state", [True, False])
def test_batched_without_cu_seqlens(output_final_state):
    q, k, v, g, beta, _ = delta_inputs([3, 3], 2, 2, 16, 24, torch.float32, seed=5, batched=True)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=output_final_state,
                                                use_qk_l2norm_in_kernel=True)
    o_r, s_r = ref.recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=output_final_state,
                                              use_qk_l2norm_in_kernel=True)
    close(o, o_r)
    if output_final_state:
        close(s, s_r)                            # zeros start, new fp32 state
    else:
        assert s is None and s_r is None


def test_fp64_computes_in_fp64():
    q, k, v, g, beta, cu = delta_inputs([2, 3], 1, 2, 12, 20, torch.float64, seed=6)
    h0 = state(state_shape(2, 2, 12, 20, "vk"), torch.float64, 7)
    kw = dict(initial_state=h0, cu_seqlens=cu, use_qk_l2norm_in_kernel=True, scale=0.3)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_r, s_r = ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    close(o, o_r)
    close(s, s_r)


# ---------------------------------------------------------------------------------------
# state pools


def untouched(pool_after, pool_before, written):
    keep = [i for i in range(pool_before.shape[0]) if i not in set(written)]
    assert torch.equal(pool_after[keep], pool_before[keep])      # byte-identical


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pool_1d(pool_dtype, layout, inplace):
    H, r, K, V = 1, 2, 16, 20
    lengths = [1, 3, 1, 2]
    q, k, v, g, beta, cu = delta_inputs(lengths, H, r, K, V, torch.float32, seed=11)
    pool = state(state_shape(7, H * r, K, V, layout), pool_dtype, 12)
    idx = torch.tensor([2, -1, 5, 0], device=DEV)                 # sequence 1 is PAD
    before = pool.clone()
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, inplace_final_state=inplace, state_layout=layout,
              use_qk_l2norm_in_kernel=True)
    p_ref = pool.clone()
    o_r, s_r = ref.recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p_ref, **kw)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool, **kw)
    close(o, o_r)
    assert torch.equal(o[0, 1:4], torch.zeros_like(o[0, 1:4]))    # PAD rows exactly zero
    close(s, s_r, pool_dtype)
    untouched(s, before, [2, 5, 0])
    if inplace:
        assert s is pool
    else:
        assert s is not pool and torch.equal(pool, before)


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=str)
def test_pool_2d_spec(dtype, pool_dtype, layout):
    """Spec decode: read idx[n, num_accepted-1], write the state after token t to idx[n, t]."""
    H, r, K, V = 1, 3, 12, 16
    # every num_accepted value 1..4; lengths 1..4; PAD write columns; one PAD read slot.
    num_acc = torch.tensor([1, 2, 3, 4, 2, 1], device=DEV)
    lengths = [4, 2, 1, 3, 2, 1]
    idx = torch.tensor([[0, 1, 2, 3],
                        [4, 5, -1, -1],
                        [6, -1, 7, -1],
                        [8, -1, 9, 10],
                        [11, -1, 12, 13],                          # read slot idx[4, 1] = -1: PAD
                        [14, -1, -1, -1]], device=DEV)
    q, k, v, g, beta, cu = delta_inputs(lengths, H, r, K, V, dtype, seed=21)
    pool = state(state_shape(16, H * r, K, V, layout), pool_dtype, 22)
    before = pool.clone()
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=num_acc, inplace_final_state=True,
              state_layout=layout, use_qk_l2norm_in_kernel=True)
    p_ref = pool.clone()
    o_r, _ = ref.recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p_ref, **kw)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool, **kw)
    assert s is pool
    close(o, o_r)
    assert torch.equal(o[0, 10:12], torch.zeros_like(o[0, 10:12]))  # the PAD sequence's rows
    close(pool, p_ref, pool_dtype)
    written = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 14]                    # 7: token 2 of a 1-token seq
    untouched(pool, before, written)


def test_pool_single_column_is_1d_and_pad_slot_id():
    """[N, 1] indices behave as 1-D (final state only); pad_slot_id marks a read slot as PAD."""
    H, r, K, V = 1, 1, 8, 12
    lengths = [3, 2, 1]
    q, k, v, g, beta, cu = delta_inputs(lengths, H, r, K, V, torch.float32, seed=31)
    pool = state(state_shape(5, 1, K, V, "vk"), torch.float32, 32)
    idx = torch.tensor([[3], [0], [4]], device=DEV)                 # slot 0 is PAD with pad_slot_id=0
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, inplace_final_state=True, pad_slot_id=0)
    before, p_ref = pool.clone(), pool.clone()
    o_r, _ = ref.recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p_ref, **kw)
    o, _ = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool, **kw)
    close(o, o_r)
    close(pool, p_ref)
    assert torch.equal(o[0, 3:5], torch.zeros_like(o[0, 3:5]))
    untouched(pool, before, [3, 4])


def test_several_v_blocks_and_strided_pool(monkeypatch):
    """V split over 3 tiles (last one partial), a pool that is a transposed view (writes go through)."""
    monkeypatch.setattr(tri, "BV_MAX", 8)
    H, r, K, V = 2, 1, 12, 20
    lengths = [2, 3]
    q, k, v, g, beta, cu = delta_inputs(lengths, H, r, K, V, torch.float32, seed=41)
    storage = state((4, H * r, K, V), torch.float32, 42)            # kv storage, used as vk
    pool = storage.transpose(-1, -2)
    idx = torch.tensor([[1, 0, -1], [2, 3, 0]], device=DEV)
    num_acc = torch.tensor([2, 1], device=DEV)
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=num_acc, inplace_final_state=True)
    p_ref = pool.clone()
    o_r, _ = ref.recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p_ref, **kw)
    o, s = tri.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool, **kw)
    close(o, o_r)
    close(storage.transpose(-1, -2), p_ref)
    assert s is pool


def test_bad_indices_raise_like_reference():
    q, k, v, g, beta, cu = delta_inputs([2, 1], 1, 1, 8, 8, torch.float32, seed=51)
    q3, k3, v3, g3, b3, cu3 = delta_inputs([3, 1], 1, 1, 8, 8, torch.float32, seed=53)
    pool = state((4, 1, 8, 8), torch.float32, 52)
    t = lambda *x: torch.tensor(x, device=DEV)
    two = t([0, 1], [2, 3])
    cases = [
        ((q, k, v, g, beta, cu), dict(ssm_state_indices=two, num_accepted_tokens=t(1, 3))),   # read col 2
        ((q, k, v, g, beta, cu), dict(ssm_state_indices=t([0, 9], [2, 3]))),                  # slot 9 of 4
        ((q, k, v, g, beta, cu), dict(ssm_state_indices=t(0, 2), num_accepted_tokens=t(2, 1))),  # 1-D
        ((q3, k3, v3, g3, b3, cu3), dict(ssm_state_indices=two)),                    # 3 tokens, 2 columns
    ]
    for args, kw in cases:
        for fn in (ref.recurrent_gated_delta_rule, tri.fused_recurrent_gated_delta_rule):
            with pytest.raises(InputError):
                fn(*args[:5], initial_state=pool.clone(), cu_seqlens=args[5], **kw)
    for fn in (ref.recurrent_gated_delta_rule, tri.fused_recurrent_gated_delta_rule):
        with pytest.raises(InputError):                                          # indices, no pool
            fn(q, k, v, g, beta, cu_seqlens=cu, ssm_state_indices=two)


# ---------------------------------------------------------------------------------------
# gating fused in


def gating_params(HV, seed):
    G = gen(seed)
    A_log = torch.log(torch.empty(HV).uniform_(1.0, 16.0, generator=G)).to(DEV)
    dt_bias = (0.5 * torch.randn(HV, generator=G)).to(DEV)
    return A_log, dt_bias


def gate_ab(T, HV, dtype, seed):
    G = gen(seed)
    a = 4.0 * torch.randn(T, HV, generator=G)
    a[0, 0], a[-1, -1] = 30.0, -25.0                    # softplus threshold branch; log1p of a tiny value
    b = 2.0 * torch.randn(T, HV, generator=G)
    return a.to(DEV, dtype), b.to(DEV, dtype)


@pytest.mark.parametrize("mode", ["none", "1d", "2d"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=str)
def test_sigmoid_gating_matches_reference(dtype, layout, mode):
    H, r, K, V = 1, 2, 16, 12
    HV = H * r
    lengths = [1, 3, 2] if mode != "1d" else [1, 1, 2]
    q, k, v, _, _, cu = delta_inputs(lengths, H, r, K, V, dtype, seed=61)
    a, b = gate_ab(sum(lengths), HV, dtype, 62)
    A_log, dt_bias = gating_params(HV, 63)
    kw = dict(cu_seqlens=cu, use_qk_l2norm_in_kernel=True, state_layout=layout)
    if mode == "none":
        pool = state(state_shape(3, HV, K, V, layout), torch.float32, 64)
        extra = dict(beta=0.5, threshold=10.0)          # non-default softplus parameters
    elif mode == "1d":
        pool = state(state_shape(5, HV, K, V, layout), torch.bfloat16, 64)
        extra = dict(ssm_state_indices=torch.tensor([4, -1, 1], device=DEV))
    else:
        pool = state(state_shape(8, HV, K, V, layout), torch.float32, 64)
        extra = dict(ssm_state_indices=torch.tensor([[0, 1, 2], [3, 4, 5], [-1, 6, 7]], device=DEV),
                     num_accepted_tokens=torch.tensor([2, 3, 1], device=DEV))
    p_ref, before = pool.clone(), pool.clone()
    o_r, s_r = ref.fused_sigmoid_gating_delta_rule_update(A_log, a, b, dt_bias, q, k, v, initial_state=p_ref,
                                                          **kw, **extra)
    o, s = tri.fused_sigmoid_gating_delta_rule_update(A_log, a, b, dt_bias, q, k, v, initial_state=pool,
                                                      **kw, **extra)
    close(o, o_r)
    close(s, s_r, pool.dtype)
    if mode == "1d":
        assert s is pool and torch.equal(o[0, 1], torch.zeros_like(o[0, 1]))
        untouched(pool, before, [4, 1])
    if mode == "2d":
        assert torch.equal(o[0, 4:], torch.zeros_like(o[0, 4:]))    # read slot idx[2, 0] = -1
        untouched(pool, before, [0, 1, 3, 4, 5])


# ---------------------------------------------------------------------------------------
# packed decode


@pytest.mark.parametrize("l2norm", [True, False])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=str)
def test_packed_decode(dtype, pool_dtype, layout, l2norm):
    H, r, K, V = 2, 2, 12, 16
    HV, B = H * r, 4
    G = gen(71)
    dim = 2 * H * K + HV * V
    # a row-strided view, as vLLM hands the conv output
    mixed = torch.randn(B, dim + 5, generator=G).to(DEV, dtype)[:, 2:2 + dim]
    a, b = gate_ab(B, HV, dtype, 72)
    A_log, dt_bias = gating_params(HV, 73)
    pool = state(state_shape(6, HV, K, V, layout), pool_dtype, 74)
    idx = torch.tensor([3, -1, 0, 5], device=DEV)
    out = torch.full((B, 1, HV, V), float("nan"), dtype=dtype, device=DEV)
    out_r = out.clone()
    before, p_ref = pool.clone(), pool.clone()
    args = (mixed, a, b, A_log, dt_bias, None)
    ref.fused_recurrent_gated_delta_rule_packed_decode(*args, p_ref, out_r, idx, l2norm, layout)
    res = tri.fused_recurrent_gated_delta_rule_packed_decode(*args, pool, out, idx, l2norm, layout)
    assert res is out
    close(out, out_r)
    assert torch.equal(out[1], torch.zeros_like(out[1]))               # PAD row written as zeros
    close(pool, p_ref, pool_dtype)
    untouched(pool, before, [3, 0, 5])


def test_packed_decode_out_dtype_differs():
    """fp16 mixed_qkv, fp32 out: o rounds to fp16 first, as in the reference."""
    H, r, K, V = 1, 1, 8, 12
    mixed = torch.randn(3, 2 * H * K + r * V, generator=gen(81)).to(DEV, torch.float16)
    a, b = gate_ab(3, r, torch.float32, 82)
    A_log, dt_bias = gating_params(r, 83)
    pool = state((3, 1, V, K), torch.float32, 84)
    idx = torch.tensor([2, 0, -1], device=DEV)
    out = torch.full((3, 1, 1, V), float("nan"), device=DEV)
    out_r, p_ref = out.clone(), pool.clone()
    ref.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias, 0.5, p_ref, out_r, idx)
    tri.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias, 0.5, pool, out, idx)
    close(out, out_r, torch.float16)
    close(pool, p_ref)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
