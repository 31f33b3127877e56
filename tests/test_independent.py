"""harness.reference against implementations written by other people.

Independent implementations used, conventions converted in the test:

* transformers ``models.qwen3_next.modeling_qwen3_next``: the pure-torch fallbacks
  ``torch_recurrent_gated_delta_rule``, ``torch_chunk_gated_delta_rule``,
  ``causal_conv1d_update`` (``torch_causal_conv1d_update`` in older releases), ``l2norm``
  and ``Qwen3NextRMSNormGated``, called by their public names. With fla installed, those
  names dispatch to fla's *Triton* kernels; the module is imported with fla hidden, so
  transformers binds them to its own torch implementations (no private attribute used).
* fla ``ops.gated_delta_rule.naive``: ``naive_recurrent_gated_delta_rule(q, k, v, beta, g)``
  (beta before g) and ``naive_chunk_gated_delta_rule(q, k, v, g, beta)``.

Conventions (read from the installed sources):

* transformers / fla: q, k, v ``[B, T, H, D]``; state ``[B, H, K, V]`` (ours: ``"vk"``
  ``[N, HV, V, K]``, or ``"kv"`` which is fla's). transformers expands q / k to the value
  heads with ``repeat_interleave(HV // H, dim=2)`` itself (same grouping as ours: value
  head hv reads q/k head hv // r) and always scales q by K^-0.5 after the optional
  l2norm; fla's naive functions need equal head counts (we expand q / k), take already
  normalised q / k and an explicit scale.
* Both hard-cast everything to fp32 (``.to(torch.float32)``), so they cannot run in
  fp64. Those comparisons feed fp32 inputs to them and the *same values* upcast to fp64
  to ours: input rounding is identical, and the only difference left is their fp32
  arithmetic. The error bound is norm-wise, ``max|ours - theirs| <= tol * max|theirs|``
  (element-wise relative error is meaningless on entries that cancel to ~0).
* transformers' conv state holds W columns (the last W raw inputs; the oldest column is
  never read), ours W-1 columns: ours == HF's last W-1 columns. HF's conv computes in
  weight.dtype, so it runs in fp64 and is compared at fp64 precision.
"""
from __future__ import annotations

import functools
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

from harness import reference as ref

F64 = torch.float64
F32 = torch.float32

# fp32 delta rule (transformers / fla) vs ours in fp64. Inputs are O(1), keys are unit
# vectors, beta in (0, 1) and g < 0, so the state stays O(1); each token adds a few fp32
# roundings (u = 2^-24 ~ 6e-8) over K- and V-long dot products, accumulated over T <= 150
# tokens and (for the chunked form) a 64x64 triangular solve. Observed errors are
# ~1e-7 .. 1e-6 relative; 1e-5 leaves an order of magnitude of margin while still
# catching any convention slip (wrong scale, transposed state, wrong head grouping,
# decay applied after the update), which shows up at 1e-2 or worse.
TOL_FP32 = 1e-5
# fp64 against fp64 (conv, l2norm, gating): the only differences are op order.
TOL_FP64 = 1e-12


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.to(F64), expected.to(F64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert torch.isfinite(a).all() and torch.isfinite(e).all()
    scale = e.abs().max().item()
    return (a - e).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_close(actual, expected, tol, what):
    err = max_rel_err(actual, expected)
    assert err <= tol, f"{what}: max|diff| / max|expected| = {err:.3e} > {tol:.1e}"


# --------------------------------------------------------------------------- imports

_HF_MODELING = "transformers.models.qwen3_next.modeling_qwen3_next"


@functools.lru_cache(maxsize=None)
def _hf_module():
    """transformers' qwen3_next modeling module as transformers builds it when fla is not
    installed: its public GDN functions are then its own pure-torch implementations (the
    documented "torch only path" of its kernel fallback), whatever wrapper a release puts
    around them. fla is hidden from this one import only (sys.modules), so nothing in
    transformers' internals is touched; the module other code imported stays as it was."""
    transformers = pytest.importorskip("transformers")
    names = [n for n in sys.modules if n == _HF_MODELING or n == "fla" or n.startswith("fla.")]
    saved = {n: sys.modules.pop(n) for n in names}
    sys.modules["fla"] = None  # `import fla` raises ImportError while this is set
    try:
        mod = importlib.import_module(_HF_MODELING)
    except ImportError as e:
        pytest.skip(f"transformers {transformers.__version__}: {_HF_MODELING} not importable: {e}")
    finally:
        sys.modules.pop(_HF_MODELING, None)
        del sys.modules["fla"]
        sys.modules.update(saved)
    return mod


def _hf_torch_fn(*names):
    """transformers' public GDN function `names[0]` (or an older spelling), torch path."""
    mod = _hf_module()
    for name in names:
        fn = getattr(mod, name, None)
        if fn is not None:
            return fn
    import transformers
    pytest.skip(f"transformers {transformers.__version__} qwen3_next has none of {names}")


def _fla_naive():
    try:
        import fla.ops.gated_delta_rule.naive as naive
    except Exception as e:  # noqa: BLE001 - ImportError, or triton / driver errors at import time
        pytest.skip(f"fla not importable: {type(e).__name__}: {e}")
    return naive


# --------------------------------------------------------------------------- inputs

def _unit(x: torch.Tensor) -> torch.Tensor:
    """FLA / transformers l2norm: x * rsqrt(sum x^2 + 1e-6), over the last dim."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def gdn_inputs(seed, B, T, H, HV, K, V, prenorm_qk, with_state):
    """fp32 inputs (q, k, v, g, beta, state0 [B, HV, V, K] or None)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=F32)
    k = torch.randn(B, T, H, K, generator=gen, dtype=F32)
    if prenorm_qk:
        q, k = _unit(q), _unit(k)
    v = torch.randn(B, T, HV, V, generator=gen, dtype=F32)
    # decays from ~0.993 (slow heads) to ~0.37 per token: g = -exp(U(-5, 0))
    g = -torch.exp(torch.rand(B, T, HV, generator=gen, dtype=F32) * -5.0)
    beta = torch.sigmoid(torch.randn(B, T, HV, generator=gen, dtype=F32))
    s0 = 0.5 * torch.randn(B, HV, V, K, generator=gen, dtype=F32) if with_state else None
    return q, k, v, g, beta, s0


def _expand(q, k, r):
    """q / k expanded to the value heads (repeat_interleave, our hv // r grouping): older
    transformers (5.17) expects equal head counts, newer ones expand only when unequal."""
    return q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)


def _d(*ts):
    return [None if t is None else t.to(F64) for t in ts]


def _kv(s_vk):  # ours "vk" [.., V, K] -> transformers / fla [.., K, V]
    return None if s_vk is None else s_vk.transpose(-1, -2).contiguous()


# ------------------------------------------------------------- 1. recurrent delta rule

@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("l2norm_in_kernel", [False, True])
def test_recurrent_vs_transformers(r, with_state, l2norm_in_kernel):
    hf = _hf_torch_fn("torch_recurrent_gated_delta_rule")
    B, T, H, K, V = 2, 37, 2, 16, 24
    HV = H * r
    q, k, v, g, beta, s0 = gdn_inputs(1 + r + 2 * with_state + 4 * l2norm_in_kernel, B, T, H, HV, K, V,
                                      prenorm_qk=not l2norm_in_kernel, with_state=with_state)
    o_hf, s_hf = hf(*_expand(q, k, r), v, g, beta, initial_state=_kv(s0), output_final_state=True,
                    use_qk_l2norm_in_kernel=l2norm_in_kernel)
    qd, kd, vd, gd, bd, s0d = _d(q, k, v, g, beta, s0)
    o, s = ref.recurrent_gated_delta_rule(qd, kd, vd, gd, bd, initial_state=s0d, output_final_state=True,
                                          use_qk_l2norm_in_kernel=l2norm_in_kernel, state_layout="vk")
    assert o.dtype == F64 and s.dtype == F64
    assert s.shape == (B, HV, V, K) and s_hf.shape == (B, HV, K, V)
    assert_close(o, o_hf, TOL_FP32, "output")
    assert_close(s.transpose(-1, -2), s_hf, TOL_FP32, "final state ([V,K] -> [K,V])")


@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_recurrent_vs_fla_naive(r, with_state, scale):
    naive = _fla_naive()
    B, T, H, K, V = 2, 37, 2, 16, 24
    HV = H * r
    # raw q / k: ours normalises in-kernel, fla's naive gets them normalised here
    q, k, v, g, beta, s0 = gdn_inputs(11 + r + 2 * with_state, B, T, H, HV, K, V,
                                      prenorm_qk=False, with_state=with_state)
    qn, kn = (_unit(x).repeat_interleave(r, dim=2) for x in (q, k))
    o_fla, s_fla = naive.naive_recurrent_gated_delta_rule(
        qn, kn, v, beta, g, scale=scale, initial_state=_kv(s0), output_final_state=True)  # beta before g
    qd, kd, vd, gd, bd = _d(q, k, v, g, beta)
    s0_kv = None if s0 is None else _kv(s0).to(F64)
    o, s = ref.recurrent_gated_delta_rule(qd, kd, vd, gd, bd, scale=scale, initial_state=s0_kv,
                                          use_qk_l2norm_in_kernel=True, state_layout="kv")
    assert s.shape == s_fla.shape == (B, HV, K, V)
    assert_close(o, o_fla, TOL_FP32, "output")
    assert_close(s, s_fla, TOL_FP32, "final state (kv layout)")


# --------------------------------------------------------------- 2. chunked delta rule

@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_vs_transformers(r, with_state):
    hf = _hf_torch_fn("torch_chunk_gated_delta_rule")
    B, T, H, K, V = 1, 150, 2, 16, 24   # 150 = 2 full chunks of 64 + 22
    HV = H * r
    q, k, v, g, beta, s0 = gdn_inputs(21 + r + 2 * with_state, B, T, H, HV, K, V,
                                      prenorm_qk=False, with_state=with_state)
    o_hf, s_hf = hf(*_expand(q, k, r), v, g, beta, chunk_size=64, initial_state=_kv(s0),
                    output_final_state=True, use_qk_l2norm_in_kernel=True)
    qd, kd, vd, gd, bd, s0d = _d(q, k, v, g, beta, s0)
    o, s = ref.chunk_gated_delta_rule(qd, kd, vd, gd, bd, initial_state=s0d, use_qk_l2norm_in_kernel=True,
                                      state_layout="vk", chunk_size=64)
    assert_close(o, o_hf, TOL_FP32, "output")
    assert_close(s.transpose(-1, -2), s_hf, TOL_FP32, "final state ([V,K] -> [K,V])")


@pytest.mark.parametrize("r", [1, 2])
def test_chunk_vs_fla_naive(r):
    naive = _fla_naive()
    B, T, H, K, V = 1, 150, 2, 16, 24
    HV = H * r
    q, k, v, g, beta, s0 = gdn_inputs(31 + r, B, T, H, HV, K, V, prenorm_qk=True, with_state=True)
    qe, ke = (x.repeat_interleave(r, dim=2) for x in (q, k))
    o_fla, s_fla = naive.naive_chunk_gated_delta_rule(qe, ke, v, g, beta, chunk_size=64, scale=None,
                                                      initial_state=_kv(s0), output_final_state=True)
    qd, kd, vd, gd, bd = _d(q, k, v, g, beta)
    o, s = ref.chunk_gated_delta_rule(qd, kd, vd, gd, bd, initial_state=_kv(s0).to(F64), state_layout="kv")
    assert_close(o, o_fla, TOL_FP32, "output")
    assert_close(s, s_fla, TOL_FP32, "final state (kv layout)")


@pytest.mark.parametrize("form", ["recurrent", "chunk"])
def test_varlen_vs_transformers_per_sequence(form):
    """Ours with cu_seqlens (B=1, sequences back to back) == transformers run on each sequence."""
    hf = _hf_torch_fn(f"torch_{form}_gated_delta_rule")
    ours = getattr(ref, f"{form}_gated_delta_rule")
    lens = [37, 1, 0, 70] if form == "chunk" else [13, 1, 0, 9]
    H, HV, K, V = 1, 2, 16, 24
    T = sum(lens)
    q, k, v, g, beta, _ = gdn_inputs(41, 1, T, H, HV, K, V, prenorm_qk=False, with_state=False)
    s0 = 0.5 * torch.randn(len(lens), HV, V, K, generator=torch.Generator().manual_seed(42), dtype=F32)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    qd, kd, vd, gd, bd, s0d = _d(q, k, v, g, beta, s0)
    o, s = ours(qd, kd, vd, gd, bd, initial_state=s0d, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    assert s.shape == (len(lens), HV, V, K)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if a == b:   # empty sequence: state passes through, nothing written
            assert torch.equal(s[n], s0d[n])
            continue
        sl = slice(a, b)
        o_hf, s_hf = hf(*_expand(q[:, sl], k[:, sl], HV // H), v[:, sl], g[:, sl], beta[:, sl], initial_state=_kv(s0[n:n + 1]),
                        output_final_state=True, use_qk_l2norm_in_kernel=True)
        assert_close(o[:, sl], o_hf, TOL_FP32, f"output of sequence {n}")
        assert_close(s[n].transpose(-1, -2), s_hf[0], TOL_FP32, f"final state of sequence {n}")


# -------------------------------------------------------------------------- 3. conv

@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("activation", ["silu", None])
def test_conv_update_vs_transformers(W, activation):
    hf_update = _hf_torch_fn("torch_causal_conv1d_update", "causal_conv1d_update")
    gen = torch.Generator().manual_seed(50 + W)
    B, dim, extra = 3, 12, 2
    weight = torch.randn(dim, W, generator=gen, dtype=F64)
    bias = torch.randn(dim, generator=gen, dtype=F64)
    hf_state = torch.randn(B, dim, W, generator=gen, dtype=F64)      # HF: last W raw inputs
    # ours: a pool with more slots than sequences, longer rows (spec-decode room) than W-1
    slots = torch.tensor([3, 0, 4])
    pool = torch.randn(6, dim, W - 1 + extra, generator=gen, dtype=F64)
    pool[slots, :, :W - 1] = hf_state[:, :, 1:]
    untouched = [i for i in range(pool.shape[0]) if i not in slots.tolist()]
    before = pool.clone()
    for step, L in enumerate([1, 1, 3, 1, W + 1, 2, 1]):
        x = torch.randn(B, dim, L, generator=gen, dtype=F64)
        y_hf = hf_update(x, hf_state, weight, bias, activation)         # updates hf_state in place
        x_ours = x[..., 0] if L == 1 else x                              # decode form [B, dim]
        y = ref.causal_conv1d_update(x_ours, pool, weight, bias, activation=activation,
                                     conv_state_indices=slots)
        assert_close(y if L > 1 else y[..., None], y_hf, TOL_FP64, f"output at step {step} (L={L})")
        # state is pure data movement: exact
        assert torch.equal(pool[slots, :, :W - 1], hf_state[:, :, 1:]), f"state at step {step}"
    assert torch.equal(pool[untouched], before[untouched]), "other slots modified"
    assert torch.equal(pool[:, :, W - 1:], before[:, :, W - 1:]), "columns past W-1 modified outside spec decode"


@pytest.mark.parametrize("activation", ["silu", None])
def test_conv_fn_prefill_vs_torch_conv1d(activation):
    gen = torch.Generator().manual_seed(60)
    dim, W = 10, 4
    lens = [7, 1, 2, 0, 20]
    has_init = torch.tensor([False, True, False, True, True])
    slots = torch.tensor([2, 0, 4, 1, 3])
    weight = torch.randn(dim, W, generator=gen, dtype=F64)
    bias = torch.randn(dim, generator=gen, dtype=F64)
    x = torch.randn(dim, sum(lens), generator=gen, dtype=F64)
    qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    pool = torch.randn(5, dim, W - 1 + 1, generator=gen, dtype=F64)
    before = pool.clone()
    y = ref.causal_conv1d_fn(x, weight, bias, pool, qsl, cache_indices=slots, has_initial_state=has_init,
                             activation=activation)
    act = F.silu if activation == "silu" else (lambda t: t)
    for i, (a, b) in enumerate(zip(qsl[:-1].tolist(), qsl[1:].tolist())):
        s = int(slots[i])
        if a == b:
            assert torch.equal(pool[s], before[s]), f"empty sequence {i} touched its state"
            continue
        xs = x[:, a:b]
        if has_init[i]:
            full = torch.cat([before[s, :, :W - 1], xs], dim=1)
            exp = F.conv1d(full[None], weight[:, None, :], bias, padding=0, groups=dim)[0]
        else:
            full = torch.cat([xs.new_zeros(dim, W - 1), xs], dim=1)
            exp = F.conv1d(xs[None], weight[:, None, :], bias, padding=W - 1, groups=dim)[0, :, :b - a]
        assert_close(y[:, a:b], act(exp), TOL_FP64, f"output of sequence {i}")
        assert torch.equal(pool[s, :, :W - 1], full[:, -(W - 1):]), f"final conv state of sequence {i}"
        assert torch.equal(pool[s, :, W - 1:], before[s, :, W - 1:]), f"column W-1.. of slot {s} touched"


# ------------------------------------------------------------------ 4. RMSNormGated

@pytest.mark.parametrize("grouped", [False, True])
def test_rms_norm_gated_vs_transformers_fp32(grouped):
    """HF casts x to fp32 and rounds the normalised x back to x.dtype before the weight:
    with fp32 input that rounding is a no-op, so the only difference left is fp32 arithmetic
    (a mean over 32 squares, rsqrt, three products, silu): a few ulps, < 1e-6 relative."""
    mod = _hf_module()
    gen = torch.Generator().manual_seed(70)
    T, HV, V = 9, 4, 32
    x = 3 * torch.randn(T, HV * V, generator=gen, dtype=F32)
    z = 2 * torch.randn(T, HV * V, generator=gen, dtype=F32)
    w = torch.randn(V, generator=gen, dtype=F32)
    norm = mod.Qwen3NextRMSNormGated(V, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w)
    # HF applies it per value head: [T*HV, V]
    y_hf = norm(x.reshape(-1, V), z.reshape(-1, V)).reshape(T, HV * V)
    if grouped:   # ours over the whole [T, HV*V] row in groups of V, weight tiled per head
        y = ref.rms_norm_gated(x.to(F64), w.repeat(HV).to(F64), z.to(F64), eps=1e-6, group_size=V)
    else:
        y = ref.rms_norm_gated(x.reshape(-1, V).to(F64), w.to(F64), z.reshape(-1, V).to(F64),
                               eps=1e-6).reshape(T, HV * V)
    assert y.dtype == F64 and y_hf.dtype == F32
    assert_close(y, y_hf, 1e-6, "RMSNormGated")
    # element-wise too: every entry within a few fp32 ulps of HF
    torch.testing.assert_close(y, y_hf.to(F64), rtol=1e-6, atol=1e-6)


def test_rms_norm_gated_vs_transformers_bf16():
    """bf16: a tolerance is needed. HF rounds to bf16 three times (the normalised x, weight * x
    computed in bf16, the final cast); we compute in fp32 and round once. Each rounding is
    <= u = 2^-8 relative, and there are only products after the normalisation (no
    cancellation), so the two agree element-wise to <= 4u = 2^-6 relative (observed ~0.01)."""
    mod = _hf_module()
    gen = torch.Generator().manual_seed(71)
    T, V = 16, 64
    x = (3 * torch.randn(T, V, generator=gen)).to(torch.bfloat16)
    z = (2 * torch.randn(T, V, generator=gen)).to(torch.bfloat16)
    w = torch.randn(V, generator=gen).to(torch.bfloat16)
    norm = mod.Qwen3NextRMSNormGated(V, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(w)
    y_hf = norm(x, z)
    y = ref.rms_norm_gated(x, w, z, eps=1e-6)
    assert y.dtype == y_hf.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_hf.float(), rtol=4 * 2 ** -8, atol=1e-6)


# ----------------------------------------------------------------------- 5. gating

def _gating_inputs(dtype):
    gen = torch.Generator().manual_seed(80)
    HV = 4
    A_log = torch.tensor([-2.0, 0.0, 0.7, 2.3], dtype=dtype)
    dt_bias = torch.tensor([0.0, 10.0, -3.0, 19.5], dtype=dtype)
    # a + dt_bias on both sides of softplus's threshold (20), far below and far above
    targets = torch.tensor([-100.0, -30.0, -5.0, -1e-3, 0.0, 1.0, 5.0, 19.0, 19.99, 20.0, 20.01,
                            20.5, 25.0, 50.0, 88.0, 100.0, 1000.0], dtype=dtype)
    a = targets[:, None] - dt_bias[None, :]
    a = torch.cat([a, 4 * torch.randn(7, HV, generator=gen, dtype=dtype)])
    b = 4 * torch.randn(a.shape, generator=gen, dtype=dtype)
    return A_log, a, b, dt_bias


def test_gating_vs_transformers_formula_fp32():
    A_log, a, b, dt_bias = _gating_inputs(F32)
    g_hf = -A_log.float().exp() * F.softplus(a.float() + dt_bias)   # Qwen3NextGatedDeltaNet.forward
    beta_hf = b.sigmoid()
    g, beta = ref.fused_gdn_gating(A_log, a, b, dt_bias)
    assert g.dtype == beta.dtype == F32
    # ours evaluates in fp64 and rounds once (batch-invariant on CPU): within 1 fp32 ulp of the
    # fp64 formula, and of HF's fp32 formula up to HF's own fp32 error on tiny gates (x << 0)
    g_64 = (-A_log.double().exp() * F.softplus(a.double() + dt_bias.double())).float()
    torch.testing.assert_close(g, g_64, rtol=1.2e-7, atol=0)
    torch.testing.assert_close(g, g_hf, rtol=2.4e-7, atol=1e-7 * g_hf.abs().max().item())
    torch.testing.assert_close(beta, beta_hf, rtol=2.4e-7, atol=0)
    above = (a + dt_bias) > 20
    assert above.any() and (~above).any()
    assert torch.equal(g[above], (-A_log.exp() * (a + dt_bias))[above]), "softplus(x) must be x above 20"


def test_gating_vs_softplus_fp64():
    A_log, a, b, dt_bias = _gating_inputs(F64)
    g_ref = -A_log.exp() * F.softplus(a + dt_bias)   # the HF formula without the fp32 cast
    g, beta = ref.fused_gdn_gating(A_log, a, b, dt_bias)
    assert g.dtype == beta.dtype == F64
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref, rtol=TOL_FP64, atol=0)
    torch.testing.assert_close(beta, torch.sigmoid(b), rtol=TOL_FP64, atol=0)
    x = torch.cat([a.flatten(), torch.tensor([9.99, 10.0, 10.01, 11.0])]).to(F64)
    for beta_sp, thr in [(1.0, 20.0), (2.0, 20.0), (0.5, 5.0)]:
        torch.testing.assert_close(ref.softplus(x, beta=beta_sp, threshold=thr),
                                   F.softplus(x, beta=beta_sp, threshold=thr), rtol=TOL_FP64, atol=0)


def test_l2norm_vs_transformers_fp64():
    hf_l2norm = _hf_module().l2norm
    x = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(90), dtype=F64)
    x[0, 0] = 0.0          # eps keeps a zero vector finite (0)
    x[1, 1] *= 1e-4        # eps matters: norm^2 ~ 1.6e-7 < 1e-6
    torch.testing.assert_close(ref.l2norm(x, eps=1e-6), hf_l2norm(x, dim=-1, eps=1e-6), rtol=TOL_FP64, atol=0)
