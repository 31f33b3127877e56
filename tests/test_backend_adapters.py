"""The fla backend adapter (harness.optimized.fla_backend).

fla: every implemented op against the reference op, through the harness's own op cases
(opcheck.run_op_case, judged by suites/tolerances.toml, as `gdn-harness run` judges them)
and through direct checks of what the adapter itself adds: the state pool (gather,
scatter, PAD, spec per-token slots, the non-inplace copy), the conv-state bookkeeping and
the norm dispatch. Without a GPU fla's kernels run under TRITON_INTERPRET=1 (numpy), so
shapes stay tiny and bf16 is left to a GPU; fla's chunked kernels do not run under the
interpreter at all, so chunk_gated_delta_rule is only checked on a GPU.

vllm: tests/test_vllm_backend.py (validated against vLLM 0.33.0's own kernels, docs/findings.md).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before fla's kernels are jitted

import pytest

from harness.config import GDNDims
from harness.judge.compare import compare
from harness.cases.opcheck import OP_INFOS, run_op_case
from harness.optimized.api import checkpoints_by_blocks
from harness.optimized.reference_backend import ReferenceBackend
from harness.optimized.registry import load_backend
from harness.judge.policy import Policy
from harness.reference import conv as ref_conv
from harness.reference import delta_rule as ref_dr
from harness.reference import gating as ref_gating
from harness.reference import norm as ref_norm

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _fla_or_skip():
    be = load_backend("fla")
    why = be.unavailable(DEV)
    if why:
        pytest.skip(f"fla backend cannot run here: {why}")
    return be


# ---------------------------------------------------------------- fla: the harness's op cases
DIMS = GDNDims(hidden=32, H=2, HV=4, K=8, V=12, W=4, name="adapter-test")    # r = 2, K != V
DTYPES = ["float32", "float16"] + (["bfloat16"] if CUDA else [])
OP_CASES = [(op, variant) for op, info in OP_INFOS.items() for variant in info.variants]
# fla has no gated RMSNorm with a sigmoid gate after the norm or per group (the adapter raises).
FLA_NORM_UNSUPPORTED = {"before-sigmoid-group", "after-sigmoid-whole", "after-sigmoid-group"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,variant", OP_CASES, ids=[f"{o}-{v}" for o, v in OP_CASES])
def test_fla_op_cases(op, variant, dtype):
    be = _fla_or_skip()
    if not be.implements(op):
        if op == "chunk_gated_delta_rule" and not CUDA:
            pytest.skip("fla's chunked kernels do not run under the Triton interpreter "
                        "(a loop index is a Python int there: `i_t.to` fails in chunk_delta_h)")
        pytest.skip(f"fla backend does not implement {op}")
    if op == "rms_norm_gated" and variant in FLA_NORM_UNSUPPORTED:
        with pytest.raises(NotImplementedError, match="fla has no gated RMSNorm"):
            run_op_case(be, op, variant, DIMS, dtype, "float32", 0, DEV)
        return
    policy = Policy()
    pairs = run_op_case(be, op, variant, DIMS, dtype, "float32", 0, DEV)
    assert pairs
    for c in pairs:
        m = compare(c.output, c.actual, c.expected, policy.lookup(c.policy_key, dtype, "float32"), c.token_dim)
        assert m.passed, f"{op}[{variant}] {c.output}: rel_rms {m.rel_rms:.3g} vs {m.tolerance}, max |diff| {m.max_abs:.3g}"


# ---------------------------------------------------------------- fla: direct adapter checks
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _delta(lengths, H=2, r=2, K=8, V=12, dtype=torch.float32, seed=0, batched=False):
    G = _gen(seed)
    HV = H * r
    B, T = (len(lengths), lengths[0]) if batched else (1, sum(lengths))
    q, k = torch.randn(B, T, H, K, generator=G), torch.randn(B, T, H, K, generator=G)
    v = torch.randn(B, T, HV, V, generator=G)
    g = -torch.rand(B, T, HV, generator=G) * 2.0
    beta = torch.rand(B, T, HV, generator=G)
    cu = None if batched else torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    to = lambda x: x.to(DEV, dtype)
    return to(q), to(k), to(v), g.to(DEV), to(beta), None if cu is None else cu.to(DEV)


def _pool(slots, HV=4, V=12, K=8, dtype=torch.float32, seed=5, layout="vk"):
    shape = (slots, HV, V, K) if layout == "vk" else (slots, HV, K, V)
    return (0.3 * torch.randn(*shape, generator=_gen(seed))).to(DEV, dtype)


def _close(a, b, rtol=2e-5, atol=2e-5):
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol)


def _ref(fn, *args, **kw):
    """The reference on fp64 copies (tensors upcast, index tensors kept)."""
    up = lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
    return fn(*[up(a) for a in args], **{k: up(v) for k, v in kw.items()})


def test_fla_recurrent_pool_not_inplace_and_pad():
    be = _fla_or_skip()
    q, k, v, g, beta, cu = _delta([1, 1, 1, 1])
    pool = _pool(9)
    before = pool.clone()
    idx = torch.tensor([6, -1, 2, 8], dtype=torch.int32, device=DEV)
    o, out_pool = be.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool, cu_seqlens=cu,
                                                      ssm_state_indices=idx, inplace_final_state=False,
                                                      use_qk_l2norm_in_kernel=True)
    o_ref, pool_ref = _ref(ref_dr.recurrent_gated_delta_rule, q, k, v, g, beta, initial_state=pool, cu_seqlens=cu,
                           ssm_state_indices=idx, inplace_final_state=False, use_qk_l2norm_in_kernel=True)
    assert torch.equal(pool, before), "inplace_final_state=False must leave the pool alone"
    assert out_pool is not pool
    assert torch.count_nonzero(o[0, 1]) == 0, "a PAD sequence's output rows are zero"
    _close(o, o_ref)
    _close(out_pool, pool_ref)


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_fla_recurrent_spec_batched_pad_columns(layout):
    """2-D spec indices without cu_seqlens (B sequences of T tokens), a PAD write column,
    every accepted count, both state layouts: one fla call per token position."""
    be = _fla_or_skip()
    q, k, v, g, beta, _ = _delta([3, 3, 3], batched=True, seed=1)
    pool = _pool(10, layout=layout, seed=2)
    idx = torch.tensor([[2, -1, 4], [0, 9, 5], [8, 1, 3]], dtype=torch.int32, device=DEV)
    acc = torch.tensor([1, 2, 3], dtype=torch.int32, device=DEV)
    kw = dict(initial_state=pool.clone(), ssm_state_indices=idx, num_accepted_tokens=acc, inplace_final_state=True,
              use_qk_l2norm_in_kernel=True, state_layout=layout)
    o, got = be.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_ref, want = _ref(ref_dr.recurrent_gated_delta_rule, q, k, v, g, beta, **{**kw, "initial_state": pool.clone()})
    assert got is kw["initial_state"], "inplace_final_state=True updates and returns the pool"
    _close(o, o_ref)
    _close(got, want)


def test_fla_recurrent_bf16_pool():
    be = _fla_or_skip()
    q, k, v, g, beta, cu = _delta([1, 1, 1], seed=3)
    pool = _pool(6, dtype=torch.bfloat16, seed=4)
    idx = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEV)
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, inplace_final_state=True, use_qk_l2norm_in_kernel=True)
    o, got = be.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool.clone(), **kw)
    o_ref, want = _ref(ref_dr.recurrent_gated_delta_rule, q, k, v, g, beta, initial_state=pool.clone(), **kw)
    assert got.dtype == torch.bfloat16
    _close(o, o_ref, rtol=1e-2, atol=1e-2)       # the bf16 initial state is exact; fp32 math
    _close(got, want.to(torch.bfloat16), rtol=2 ** -7, atol=1e-3)   # one bf16 rounding each side


def test_fla_recurrent_per_sequence_states():
    be = _fla_or_skip()
    q, k, v, g, beta, cu = _delta([2, 0, 3], seed=6)
    h0 = _pool(3, seed=7)
    o, final = be.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, cu_seqlens=cu,
                                                   use_qk_l2norm_in_kernel=True)
    o_ref, f_ref = _ref(ref_dr.recurrent_gated_delta_rule, q, k, v, g, beta, initial_state=h0, cu_seqlens=cu,
                        use_qk_l2norm_in_kernel=True)
    _close(o, o_ref)
    _close(final, f_ref)
    assert final.dtype == h0.dtype
    o2, none = be.fused_recurrent_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, output_final_state=False)
    assert none is None and o2.shape == v.shape


def test_fla_sigmoid_gating_spec():
    be = _fla_or_skip()
    q, k, v, _, _, cu = _delta([3, 2], seed=8)
    G = _gen(9)
    T, HV = q.shape[1], v.shape[2]
    A_log = torch.log(torch.rand(HV, generator=G) * 15 + 1).to(DEV)
    dt_bias = (0.1 * torch.randn(HV, generator=G)).to(DEV)
    a, b = (2 * torch.randn(T, HV, generator=G)).to(DEV), torch.randn(T, HV, generator=G).to(DEV)
    a[0] = 25.0                                       # a + dt_bias above the softplus threshold
    pool = _pool(7, seed=10)
    idx = torch.tensor([[1, 3, 5], [2, 6, -1]], dtype=torch.int32, device=DEV)
    acc = torch.tensor([2, 1], dtype=torch.int32, device=DEV)
    kw = dict(cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=acc, use_qk_l2norm_in_kernel=True)
    o, got = be.fused_sigmoid_gating_delta_rule_update(A_log, a, b, dt_bias, q, k, v, initial_state=pool.clone(), **kw)
    o_ref, want = _ref(ref_dr.fused_sigmoid_gating_delta_rule_update, A_log, a, b, dt_bias, q, k, v,
                       initial_state=pool.clone(), **kw)
    _close(o, o_ref)
    _close(got, want)
    with pytest.raises(NotImplementedError, match="threshold=20"):
        be.fused_sigmoid_gating_delta_rule_update(A_log, a, b, dt_bias, q, k, v, threshold=10.0,
                                                  initial_state=pool.clone(), **kw)


def test_fla_gating_values_and_unsupported():
    be = _fla_or_skip()
    G = _gen(11)
    A_log = torch.log(torch.rand(4, generator=G) * 15 + 1).to(DEV)
    dt_bias = (0.1 * torch.randn(4, generator=G)).to(DEV)
    a, b = (3 * torch.randn(2, 5, 4, generator=G)).to(DEV), torch.randn(2, 5, 4, generator=G).to(DEV)
    g, beta = be.fused_gdn_gating(A_log, a, b, dt_bias)
    g_ref, beta_ref = _ref(ref_gating.fused_gdn_gating, A_log, a, b, dt_bias)
    assert g.shape == a.shape and g.dtype == torch.float32 and beta.dtype == torch.float32
    _close(g, g_ref, rtol=1e-5, atol=1e-6)
    _close(beta, beta_ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(NotImplementedError):
        be.fused_gdn_gating(A_log, a, b, dt_bias, beta=2.0)


def _conv_inputs(lengths, dim=20, W=4, slots=8, L=None, dtype=torch.float32, seed=12, token_first=False):
    G = _gen(seed)
    x = torch.randn(sum(lengths), dim, generator=G).to(DEV, dtype)
    w = (0.5 * torch.randn(dim, W, generator=G)).to(DEV, dtype)
    bias = (0.1 * torch.randn(dim, generator=G)).to(DEV, dtype)
    pool = torch.randn(slots, dim, L or W - 1, generator=G)
    pool = (pool.transpose(1, 2).contiguous().to(DEV, dtype).transpose(1, 2) if token_first
            else pool.to(DEV, dtype))
    qsl = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    return x, w, bias, pool, qsl


def test_fla_conv_fn_defaults_and_empty_sequence():
    """cache_indices / has_initial_state left to their defaults (slot i, zeros), a
    zero-length sequence (state untouched), a 1-token sequence (state shifted)."""
    be = _fla_or_skip()
    x, w, bias, pool, qsl = _conv_inputs([2, 0, 1, 6], slots=4, token_first=True)
    got, want = pool.clone(), pool.clone()
    y = be.causal_conv1d_fn(x.T, w, bias, got, qsl, activation=None)
    y_ref = ref_conv.causal_conv1d_fn(x.T, w, bias, want, qsl, activation=None)
    _close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(got, want), "conv states hold raw inputs: exact"
    hist = torch.tensor([True, True, True, False], device=DEV)
    got, want = pool.clone(), pool.clone()
    y = be.causal_conv1d_fn(x.T, w, None, got, qsl, cache_indices=torch.tensor([3, 1, -1, 0], device=DEV,
                                                                                dtype=torch.int32),
                            has_initial_state=hist)
    y_ref = ref_conv.causal_conv1d_fn(x.T, w, None, want, qsl, cache_indices=torch.tensor([3, 1, -1, 0], device=DEV,
                                                                                         dtype=torch.int32),
                                      has_initial_state=hist)
    _close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(y[:, 2:3]) == 0, "PAD sequence: zero output"
    assert torch.equal(got, want)


def test_fla_conv_update_varlen_spec_uneven():
    """Spec conv update with sequences of different lengths (the window is W-2+L_i columns
    per sequence) and a PAD entry."""
    be = _fla_or_skip()
    W, S = 4, 4
    x, w, bias, pool, qsl = _conv_inputs([4, 2, 3, 1], slots=6, L=W - 1 + S - 1, seed=13)
    idx = torch.tensor([5, 0, -1, 2], dtype=torch.int32, device=DEV)
    acc = torch.tensor([3, 2, 1, 1], dtype=torch.int32, device=DEV)
    got, want = pool.clone(), pool.clone()
    y = be.causal_conv1d_update(x, got, w, bias, "silu", conv_state_indices=idx, num_accepted_tokens=acc,
                                query_start_loc=qsl)
    y_ref = ref_conv.causal_conv1d_update(x, want, w, bias, "silu", conv_state_indices=idx, num_accepted_tokens=acc,
                                          query_start_loc=qsl)
    _close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(got, want)


def test_fla_norm_out_dtype_and_no_gate():
    be = _fla_or_skip()
    G = _gen(14)
    x, z = torch.randn(6, 12, generator=G).to(DEV), torch.randn(6, 12, generator=G).to(DEV)
    w = (1 + 0.1 * torch.randn(12, generator=G)).to(DEV)
    y = be.rms_norm_gated(x, w, z, group_size=6, norm_before_gate=False, out_dtype=torch.float16)
    assert y.dtype == torch.float16
    _close(y, _ref(ref_norm.rms_norm_gated, x, w, z, group_size=6, norm_before_gate=False,
                   out_dtype=torch.float16), rtol=2 ** -10, atol=1e-4)
    _close(be.rms_norm_gated(x, w, None, activation="sigmoid"), _ref(ref_norm.rms_norm_gated, x, w, None),
           rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="fla's chunked kernels need a GPU (they do not run under the Triton interpreter)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fla_chunk_final_state_dtype(dtype):
    be = _fla_or_skip()
    q, k, v, g, beta, cu = _delta([1, 70, 5], dtype=dtype, seed=15)
    h0 = _pool(3, dtype=torch.bfloat16, seed=16)
    o, final = be.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, cu_seqlens=cu,
                                         use_qk_l2norm_in_kernel=True)
    o_ref, f_ref = _ref(ref_dr.chunk_gated_delta_rule, q, k, v, g, beta, initial_state=h0, cu_seqlens=cu,
                        use_qk_l2norm_in_kernel=True)
    assert final.dtype == torch.bfloat16 and o.dtype == dtype
    _close(o, o_ref, rtol=3e-2, atol=3e-2)
    _close(final, f_ref, rtol=3e-2, atol=3e-2)


class BlockwiseCheckpoints(ReferenceBackend):
    """The reference's chunk kernel with checkpoints composed block by block (as triton / fla
    get them over fla's chunk on a GPU)."""
    name = "blockwise_checkpoints"
    chunk_gated_delta_rule_checkpoints = staticmethod(checkpoints_by_blocks(ref_dr.chunk_gated_delta_rule))


@pytest.mark.parametrize("variant", ["block128", "block800", "block1088"])
@pytest.mark.parametrize("dtype,state_dtype", [("float32", "float32"), ("float16", "float32"),
                                               ("float32", "bfloat16")])
def test_checkpoints_composed_block_by_block_pass(variant, dtype, state_dtype):
    """Round r runs every sequence's r-th block in one varlen call, the state handed on in
    fp32: outputs, final states, every checkpoint and the exact end check as the op's."""
    from harness.cases.case import Case
    from harness.cases.suite import parse_dims
    from harness.judge.policy import Policy
    from harness.run.runner import run_case
    rec = run_case(Case(level="op", check="chunk_gated_delta_rule_checkpoints",
                        dims=parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"), backend=f"{__name__}:BlockwiseCheckpoints",
                        dtype=dtype, state_dtype=state_dtype, variant=variant, device="cpu"), Policy(), "test",
                   diagnose=False)
    assert rec["status"] == "pass", (rec.get("error"), [m["output"] for m in rec["metrics"] if not m["passed"]])
    assert {m["output"] for m in rec["metrics"]} >= {"o", "final_state", "state_checkpoints", "checkpoint_end"}
