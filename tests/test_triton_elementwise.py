"""Triton gating / conv / norm / unpack kernels against the reference ops on the same inputs.

Without a GPU the kernels run under the Triton interpreter (numpy), so shapes stay small.
"""
import torch

from tests.triton_device import CUDA, DEVICE

import pytest

pytest.importorskip("triton")

from harness.config import GDNDims
from harness.errors import ConfigError, InputError
from harness.layouts import projection as ref_proj
from harness.optimized.triton_kernels import conv as tk_conv
from harness.optimized.triton_kernels import gating as tk_gating
from harness.optimized.triton_kernels import norm as tk_norm
from harness.optimized.triton_kernels import unpack as tk_unpack
from harness.reference import conv as ref_conv
from harness.reference import gating as ref_gating
from harness.reference import norm as ref_norm

DEV = torch.device(DEVICE)

# bf16 goes through numpy's float32 emulation under the interpreter: only checked on a GPU
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not CUDA, reason="bf16 needs a GPU"))]

# Tolerances. fp32 / fp64: the kernels do the reference's operations in the same order; only
# the transcendental functions (exp / log, also inside silu / sigmoid / softplus) and, on a
# GPU, FMA contraction may round differently: a few ulps (fp32 2^-23 ~ 1.2e-7) relative
# (1e-6 also held on an H200). Half types: the fp32 results agree to that level, so the one
# rounding to fp16 / bf16 at the end differs by at most one ulp of the output (2^-10 / 2^-7).
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}


def close(actual, expected, dtype=None):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    rtol = RTOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol)


def same_bytes(a, b):
    """Bit-identical (tells -0.0 from 0.0, unlike ==)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def randn(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEV)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def strided(t, gen_):
    """A non-contiguous copy of `t`: every other column of a wider buffer."""
    buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    buf[..., ::2] = t
    out = buf[..., ::2]
    assert not out.is_contiguous()
    return out


# --------------------------------------------------------------------------------- gating

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed", "3d"])
def test_gating(dtype, layout):
    g = gen(1)
    T, HV = 7, 6
    A_log = randn(HV, gen=g)
    dt_bias = randn(HV, gen=g)
    a = randn(T, HV, gen=g, scale=8.0, dtype=dtype)
    a[0, :3] = torch.tensor([19.0, 21.0, 40.0], dtype=dtype)   # both sides of the threshold
    a[1, :2] = torch.tensor([-30.0, -60.0], dtype=dtype)       # softplus underflow range
    b = randn(T, HV, gen=g, scale=4.0, dtype=dtype)
    if layout == "strided":
        a, b = strided(a, g), strided(b, g)
    elif layout == "transposed":
        a, b = a.T.contiguous().T, b.T.contiguous().T
    elif layout == "3d":
        a, b = a[None], b[None]
    for beta, threshold in ((1.0, 20.0), (2.0, 15.0)):
        g_k, beta_k = tk_gating.fused_gdn_gating(A_log.to(dtype), a, b, dt_bias.to(dtype), beta, threshold)
        g_r, beta_r = ref_gating.fused_gdn_gating(A_log.to(dtype), a, b, dt_bias.to(dtype), beta, threshold)
        close(g_k, g_r)
        close(beta_k, beta_r)
        assert g_k.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_gating_errors_match_reference():
    A = torch.zeros(4, device=DEV)
    for args in [(A, torch.zeros(3, 5, device=DEV), torch.zeros(3, 5, device=DEV), A),
                 (A, torch.zeros(3, 4, device=DEV), torch.zeros(3, 5, device=DEV), A),
                 (A, torch.zeros(3, 4, device=DEV), torch.zeros(3, 4, device=DEV), torch.zeros(5, device=DEV))]:
        with pytest.raises(InputError) as e_ref:
            ref_gating.fused_gdn_gating(*args)
        with pytest.raises(InputError) as e_k:
            tk_gating.fused_gdn_gating(*args)
        assert str(e_k.value) == str(e_ref.value)


# ----------------------------------------------------------------------------------- conv

def make_state(num_slots, dim, L_state, dtype, token_first, g):
    """conv state [num_slots, dim, L_state]; token-first = the transposed view of [slots, L, dim]."""
    if token_first:
        st = randn(num_slots, L_state, dim, gen=g, dtype=dtype).transpose(1, 2)
        assert st.stride(1) == 1
        return st
    return randn(num_slots, dim, L_state, gen=g, dtype=dtype)


def run_update_both(x, state, w, **kw):
    st_k, st_r = state.clone(), state.clone()
    assert st_k.stride() == state.stride()
    out_k = tk_conv.causal_conv1d_update(x, st_k, w, **kw)
    out_r = ref_conv.causal_conv1d_update(x, st_r, w, **kw)
    # conv state contents are copies of inputs / old columns: exactly equal, bit for bit
    assert same_bytes(st_k, st_r)
    return out_k, out_r, st_k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("form", ["2d", "3d", "varlen"])
def test_conv_update_nonspec(dtype, W, form):
    g = gen(2)
    dim, slots = 12, 7
    L_state = W - 1 + 2                                     # extra columns must stay untouched
    w = randn(dim, W, gen=g)
    bias = randn(dim, gen=g)
    idx = torch.tensor([4, -1, 0, 6, 2], dtype=torch.int32, device=DEV)
    B = idx.numel()
    qsl = None
    if form == "2d":
        x, lens = randn(B, dim, gen=g, dtype=dtype), [1] * B
    elif form == "3d":
        seqlen = W + 1                                      # seqlen > W-1
        x, lens = randn(B, dim, seqlen, gen=g, dtype=dtype), [seqlen] * B
    else:
        lens = [W + 2, 2, 1, 0, 3]                          # > W-1, < W-1, empty
        qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
        x = randn(sum(lens) + 2, dim, gen=g, dtype=dtype)   # 2 trailing tokens of no sequence
    for token_first in (True, False):
        state = make_state(slots, dim, L_state, dtype, token_first, g)
        for b, act in ((bias, "silu"), (None, None)):
            xx = strided(x, g) if token_first else x           # non-contiguous x as well
            out_k, out_r, st_k = run_update_both(xx, state, w, bias=b, activation=act,
                                                 conv_state_indices=idx, query_start_loc=qsl)
            close(out_k, out_r)
            # PAD (-1) and unreferenced slots (1, 3, 5), and columns >= W-1: untouched
            for s in (1, 3, 5):
                assert same_bytes(st_k[s], state[s])
            assert same_bytes(st_k[:, :, W - 1:], state[:, :, W - 1:])
            pad_rows = out_k[1] if qsl is None else out_k[qsl[1]:qsl[2]]
            assert same_bytes(pad_rows, torch.zeros_like(pad_rows))
            if qsl is not None:
                assert same_bytes(out_k[sum(lens):], torch.zeros_like(out_k[sum(lens):]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("form", ["3d", "varlen"])
def test_conv_update_spec_every_num_accepted(dtype, W, form):
    g = gen(3)
    dim, S = 10, 3
    L = S + 1
    L_state = W - 1 + S + 1                                 # one spare column, never written
    w = randn(dim, W, gen=g)
    bias = randn(dim, gen=g)
    # sequence i accepts i+1 tokens (every value in 1..L); then a PAD row
    n_acc = list(range(1, L + 1)) + [1]
    B = len(n_acc)
    block_table = torch.arange(B * (S + 1), device=DEV).reshape(B, S + 1).to(torch.int32)
    block_table[-1] = -1
    idx = block_table[:, 0]                                 # vLLM passes this strided column
    assert not idx.is_contiguous()
    slots = B * (S + 1)
    num_accepted = torch.tensor(n_acc, dtype=torch.int32, device=DEV)
    if form == "3d":
        x, qsl = randn(B, dim, L, gen=g, dtype=dtype), None
        lens = [L] * B
    else:
        # varlen: full-length sequences plus a shorter one (num_accepted <= its length)
        lens = [L] * (B - 1) + [2]
        x = randn(sum(lens), dim, gen=g, dtype=dtype)
        qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
    state = make_state(slots, dim, L_state, dtype, True, g)
    out_k, out_r, st_k = run_update_both(x, state, w, bias=bias, activation="silu",
                                         conv_state_indices=idx, num_accepted_tokens=num_accepted,
                                         query_start_loc=qsl)
    close(out_k, out_r)
    # independent check of the window: [old[off+1 : off+W-1], x_0 .. x_{L-1}] at [0, W-2+L)
    for i in range(B - 1):
        off, slot = n_acc[i] - 1, int(idx[i])
        xi = x[i].T if form == "3d" else x[int(qsl[i]):int(qsl[i + 1])]
        want = torch.cat([state[slot, :, off + 1:off + W - 1], xi.T.to(state.dtype)], dim=1)
        assert same_bytes(st_k[slot, :, :want.shape[1]], want)
        assert same_bytes(st_k[slot, :, want.shape[1]:], state[slot, :, want.shape[1]:])
    untouched = [s for s in range(slots) if s not in idx[:-1].tolist()]
    assert same_bytes(st_k[untouched], state[untouched])
    pad_rows = out_k[-1] if form == "3d" else out_k[sum(lens[:-1]):]
    assert same_bytes(pad_rows, torch.zeros_like(pad_rows))


def test_conv_update_spec_varlen_short_sequences():
    """num_accepted in 1..L_i for a sequence shorter than the spec width (L_i < num_spec+1)."""
    g = gen(4)
    dim, W, S = 6, 4, 3
    w = randn(dim, W, gen=g)
    for n_acc in (1, 2):
        lens = [2, 4]
        x = randn(sum(lens), dim, gen=g)
        qsl = torch.tensor([0, 2, 6], device=DEV)
        state = make_state(3, dim, W - 1 + S, torch.float32, False, g)
        num_accepted = torch.tensor([n_acc, 4], device=DEV)
        out_k, out_r, _ = run_update_both(x, state, w, activation="silu",
                                          conv_state_indices=torch.tensor([2, 0], device=DEV),
                                          num_accepted_tokens=num_accepted, query_start_loc=qsl)
        close(out_k, out_r)


def test_conv_update_mixed_dtypes_and_fp64():
    g = gen(5)
    dim, W = 9, 4
    w = randn(dim, W, gen=g, dtype=torch.float16)
    x = randn(3, dim, 2, gen=g)
    for st_dtype, x_dtype in ((torch.float16, torch.float32), (torch.float32, torch.float16),
                              (torch.float64, torch.float64)):
        state = make_state(3, dim, W - 1, st_dtype, True, g)
        out_k, out_r, _ = run_update_both(x.to(x_dtype), state, w, bias=randn(dim, gen=g), activation=True)
        close(out_k, out_r, torch.float64 if x_dtype == torch.float64 else x_dtype)


def test_conv_update_other_pad_slot_id():
    """pad_slot_id is compared as given (vLLM's newest NULL_BLOCK_ID is 0), with default indices too."""
    g = gen(12)
    dim, W = 5, 3
    w = randn(dim, W, gen=g)
    x = randn(3, dim, gen=g)
    state = make_state(3, dim, W - 1, torch.float32, False, g)
    out_k, out_r, st_k = run_update_both(x, state, w, activation="silu", pad_slot_id=0)
    close(out_k, out_r)
    assert same_bytes(st_k[0], state[0]) and same_bytes(out_k[0], torch.zeros_like(out_k[0]))


def test_conv_update_errors_match_reference():
    dim, W = 4, 4
    w = torch.zeros(dim, W, device=DEV)
    x = torch.zeros(2, dim, 3, device=DEV)
    cases = [
        dict(conv_state_indices=torch.tensor([0, 5], device=DEV)),                      # slot range
        dict(num_accepted_tokens=torch.tensor([1, 4], device=DEV)),                     # > L
        dict(num_accepted_tokens=torch.tensor([0, 1], device=DEV)),                     # < 1
        dict(activation="relu"),
        dict(query_start_loc=torch.tensor([0, 2, 1], device=DEV)),
    ]
    for kw in cases:
        xx = x if "query_start_loc" not in kw else torch.zeros(3, dim, device=DEV)
        st_r, st_k = torch.zeros(3, dim, W + 1, device=DEV), torch.zeros(3, dim, W + 1, device=DEV)
        with pytest.raises(InputError) as e_ref:
            ref_conv.causal_conv1d_update(xx, st_r, w, **kw)
        with pytest.raises(InputError) as e_k:
            tk_conv.causal_conv1d_update(xx, st_k, w, **kw)
        assert str(e_k.value) == str(e_ref.value)
    # too short a state for W-2+seqlen columns
    with pytest.raises(InputError) as e_k:
        tk_conv.causal_conv1d_update(x, torch.zeros(2, dim, W, device=DEV), w,
                                     num_accepted_tokens=torch.tensor([1, 1], device=DEV))
    assert "W-2+seqlen" in str(e_k.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("W", [2, 4])
def test_conv_fn_varlen(dtype, W):
    g = gen(6)
    dim, slots = 12, 8
    w = randn(dim, W, gen=g)
    bias = randn(dim, gen=g)
    # > one token block (64), > W-1, == 1, empty, < W-1, PAD
    lens = [70, 5, 1, 0, 2, 3, 4]
    cache = torch.tensor([3, 0, 6, 1, 5, -1, 2], device=DEV)
    has_init = torch.tensor([True, False, True, True, True, True, False], device=DEV)
    qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
    x_tok = randn(sum(lens), dim, gen=g, dtype=dtype)
    for token_first, x in ((True, x_tok.T), (False, x_tok.T.contiguous())):   # vLLM: channel-last view
        state = make_state(slots, dim, W - 1 + 2, dtype, token_first, g)
        for b, hi, act in ((bias, has_init, "silu"), (None, None, None)):
            st_k, st_r = state.clone(), state.clone()
            out_k = tk_conv.causal_conv1d_fn(x, w, b, st_k, qsl, cache, hi, activation=act)
            out_r = ref_conv.causal_conv1d_fn(x, w, b, st_r, qsl, cache, hi, activation=act)
            close(out_k, out_r)
            assert same_bytes(st_k, st_r)
            for s in (1, 4, 7):                                 # empty seq, PAD's, unreferenced
                assert same_bytes(st_k[s], state[s])
            assert same_bytes(st_k[:, :, W - 1:], state[:, :, W - 1:])
            pad = out_k[:, int(qsl[5]):int(qsl[6])]
            assert same_bytes(pad, torch.zeros_like(pad))


def test_conv_fn_defaults_and_errors():
    g = gen(7)
    dim, W = 5, 3
    w = randn(dim, W, gen=g)
    x = randn(dim, 6, gen=g)
    qsl = torch.tensor([0, 4, 6], dtype=torch.int32, device=DEV)
    state = make_state(2, dim, W - 1, torch.float32, True, g)
    st_k, st_r = state.clone(), state.clone()
    close(tk_conv.causal_conv1d_fn(x, w, None, st_k, qsl), ref_conv.causal_conv1d_fn(x, w, None, st_r, qsl))
    assert same_bytes(st_k, st_r)
    for args, kw in [((qsl,), dict(cache_indices=torch.tensor([0, 2], device=DEV))),
                     ((torch.tensor([0, 4, 5], device=DEV),), {}),
                     ((qsl,), dict(has_initial_state=torch.tensor([1, 0], device=DEV)))]:
        with pytest.raises(InputError) as e_ref:
            ref_conv.causal_conv1d_fn(x, w, None, state.clone(), *args, **kw)
        with pytest.raises(InputError) as e_k:
            tk_conv.causal_conv1d_fn(x, w, None, state.clone(), *args, **kw)
        assert str(e_k.value) == str(e_ref.value)


# ----------------------------------------------------------------------------------- norm

@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_rms_norm_gated(dtype, norm_before_gate, activation):
    g = gen(8)
    T, HV, V = 5, 3, 24
    x = randn(T, HV, V, gen=g, dtype=dtype, scale=3.0)
    z = randn(T, HV, V, gen=g, dtype=dtype, scale=3.0)
    w = randn(V, gen=g, dtype=dtype)
    for group_size in (None, 8):
        kw = dict(eps=1e-6, group_size=group_size, norm_before_gate=norm_before_gate, activation=activation)
        close(tk_norm.rms_norm_gated(x, w, z, **kw), ref_norm.rms_norm_gated(x, w, z, **kw))
    # per-head rows as the layer calls it (x.reshape(-1, V)), non-contiguous x / z, no z, out_dtype
    x2, z2 = strided(x.reshape(-1, V), g), strided(z.reshape(-1, V), g)
    close(tk_norm.rms_norm_gated(x2, w, z2, norm_before_gate=norm_before_gate, activation=activation),
          ref_norm.rms_norm_gated(x2, w, z2, norm_before_gate=norm_before_gate, activation=activation))
    close(tk_norm.rms_norm_gated(x, w), ref_norm.rms_norm_gated(x, w))
    out = tk_norm.rms_norm_gated(x, w, z, activation=activation, out_dtype=torch.float32)
    close(out, ref_norm.rms_norm_gated(x, w, z, activation=activation, out_dtype=torch.float32),
          torch.float64 if dtype == torch.float64 else torch.float32)


def test_rms_norm_gated_swish_and_errors():
    g = gen(9)
    x, z, w = randn(4, 16, gen=g), randn(4, 16, gen=g), randn(16, gen=g)
    close(tk_norm.rms_norm_gated(x, w, z, activation="swish"), ref_norm.rms_norm_gated(x, w, z, activation="silu"))
    for args, kw, exc in [((x, randn(8, gen=g)), {}, InputError),
                          ((x, w, z[:, :8]), {}, InputError),
                          ((x, w, z), dict(group_size=5), InputError),
                          ((x, w, z), dict(activation="relu"), ConfigError)]:
        with pytest.raises(exc) as e_ref:
            ref_norm.rms_norm_gated(*args, **kw)
        with pytest.raises(exc) as e_k:
            tk_norm.rms_norm_gated(*args, **kw)
        assert str(e_k.value) == str(e_ref.value)


# --------------------------------------------------------------------------------- unpack

@pytest.mark.parametrize("r", [1, 3])
@pytest.mark.parametrize("layout", ["interleaved", "flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_unpack_matches_reference_exactly(r, layout, dtype):
    # pure copies: bf16 is safe here even under the interpreter
    g = gen(10)
    dims = GDNDims(hidden=16, H=2, HV=2 * r, K=6, V=10)     # K != V
    T = 5
    qkvz = randn(T, dims.qkvz_dim, gen=g, dtype=dtype)
    ba = randn(T, 2 * dims.HV, gen=g, dtype=torch.float32)   # its own dtype
    for mq, mb in ((qkvz, ba), (strided(qkvz, g), strided(ba, g)),
                   (qkvz.reshape(1, T, -1), ba.reshape(1, T, -1)), (qkvz[2], ba[2])):
        got = tk_unpack.unpack_qkvz_ba(mq, mb, dims, layout)
        want = ref_proj.unpack_qkvz_ba(mq, mb, dims, layout)
        for a, b in zip(got, want):
            assert a.is_contiguous() and same_bytes(a, b)


def test_unpack_errors_match_reference():
    dims = GDNDims(hidden=16, H=2, HV=4, K=3, V=5)
    good_qkvz, good_ba = torch.zeros(3, dims.qkvz_dim, device=DEV), torch.zeros(3, 2 * dims.HV, device=DEV)
    cases = [((good_qkvz, good_ba, dims, "weird"), ConfigError),
             ((good_qkvz[:, :-1], good_ba, dims, "interleaved"), InputError),
             ((good_qkvz, good_ba[:, :-1], dims, "interleaved"), InputError),
             ((good_qkvz, torch.zeros(4, 2 * dims.HV, device=DEV), dims, "interleaved"), InputError),
             ((good_qkvz, torch.zeros(3, 2 * dims.HV, device=DEV)[0], dims, "flat"), InputError)]
    for args, exc in cases:
        with pytest.raises(exc) as e_ref:
            ref_proj.unpack_qkvz_ba(*args)
        with pytest.raises(exc) as e_k:
            tk_unpack.unpack_qkvz_ba(*args)
        assert str(e_k.value) == str(e_ref.value)


# ------------------------------------------------------------------- real sizes, GPU only

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_real_sizes_gpu():
    """Qwen3-Next TP1 sizes: many channel blocks, long prefill (many token blocks), spec decode."""
    g = gen(11)
    dims = GDNDims(hidden=2048, H=16, HV=32, K=128, V=128)
    dim, W, S = dims.conv_dim, 4, 3
    w, slots = randn(dim, W, gen=g, dtype=torch.bfloat16), 64
    state = make_state(slots, dim, W - 1 + S, torch.bfloat16, True, g)
    lens = [1000, 1, 2, 300, 0, 77]
    qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
    x = randn(sum(lens), dim, gen=g, dtype=torch.bfloat16)
    cache = torch.tensor([5, 9, -1, 40, 3, 63], device=DEV)
    has_init = torch.tensor([True, True, True, False, True, True], device=DEV)
    st_k, st_r = state.clone(), state.clone()
    close(tk_conv.causal_conv1d_fn(x.T, w, None, st_k, qsl, cache, has_init),
          ref_conv.causal_conv1d_fn(x.T, w, None, st_r, qsl, cache, has_init))
    assert same_bytes(st_k, st_r)
    # spec decode over 48 sequences, every num_accepted, then plain decode
    B = 48
    n_acc = torch.arange(B, device=DEV) % (S + 1) + 1
    xs = randn(B * (S + 1), dim, gen=g, dtype=torch.bfloat16)
    qsl = torch.arange(B + 1, device=DEV) * (S + 1)
    idx = torch.randperm(slots, generator=g)[:B].to(DEV)
    out_k, out_r, _ = run_update_both(xs, state, w, activation="silu", conv_state_indices=idx,
                                      num_accepted_tokens=n_acc, query_start_loc=qsl)
    close(out_k, out_r)
    out_k, out_r, _ = run_update_both(xs[:B], state, w, activation="silu", conv_state_indices=idx)
    close(out_k, out_r)
    # gating, norm and unpack at full size
    T = 513
    a, b = randn(T, dims.HV, gen=g, dtype=torch.bfloat16, scale=5), randn(T, dims.HV, gen=g, dtype=torch.bfloat16)
    A_log, dt_bias = randn(dims.HV, gen=g), randn(dims.HV, gen=g)
    for k_, r_ in zip(tk_gating.fused_gdn_gating(A_log, a, b, dt_bias), ref_gating.fused_gdn_gating(A_log, a, b, dt_bias)):
        close(k_, r_)
    o, z = randn(T * dims.HV, dims.V, gen=g, dtype=torch.bfloat16), randn(T * dims.HV, dims.V, gen=g, dtype=torch.bfloat16)
    nw = randn(dims.V, gen=g)
    close(tk_norm.rms_norm_gated(o, nw, z), ref_norm.rms_norm_gated(o, nw, z))
    qkvz, ba = randn(T, dims.qkvz_dim, gen=g, dtype=torch.bfloat16), randn(T, 2 * dims.HV, gen=g, dtype=torch.bfloat16)
    for k_, r_ in zip(tk_unpack.unpack_qkvz_ba(qkvz, ba, dims, "interleaved"),
                      ref_proj.unpack_qkvz_ba(qkvz, ba, dims, "interleaved")):
        assert same_bytes(k_, r_.contiguous())


def test_conv_zero_draft_reads_at_the_accepted_offset():
    from tests.test_hand_computed import zero_draft_conv_case
    zero_draft_conv_case(tk_conv.causal_conv1d_update, DEVICE)
