"""The production fast-path backends (`flashinfer`, `sglang`, vLLM's FlashInfer prefill) on CPU.

Without the packages: every backend and variant loads, says why it cannot run, and the
``name@variant`` syntax does not collide with ``package.module:attr``. With fake kernel modules
of the packages' exact signatures (tests/fastpath_fakes.py, computed with the reference ops):
the adapters' conversions (gate domain, layouts, the null row in front of FlashInfer's pool, the
spec bookkeeping, vLLM's own wrapper) pass the op cases against the oracle, a layer composes
them, and each planted conversion bug fails. The kernels themselves are judged on a GPU
(scripts/device_fastpaths.sh).
"""
import importlib.util
import sys

import pytest
import torch

from harness.cases.case import Case
from harness.config import GDNDims
from harness.errors import HarnessError
from harness.optimized import api
from harness.optimized.registry import BackendLoadError, load_backend
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from tests import fastpath_fakes as ff

FAKES = "tests.fastpath_fakes:"
SMALL = GDNDims(hidden=32, H=1, HV=2, K=16, V=16, W=4, name="kv16")        # FlashInfer's prefill: K == V
DECODE = GDNDims(hidden=64, H=1, HV=2, K=128, V=128, W=4, name="kv128")    # its decode: K, V >= 128
KV128 = DECODE                       # FlashInfer's SM90 prefill (vLLM's selection there): K == V == 128
POLICY = Policy()
SIGMOID = "fused_sigmoid_gating_delta_rule_update"
CHUNK = "chunk_gated_delta_rule"


@pytest.fixture(scope="module")
def backends():
    return BackendCache()


@pytest.fixture
def fake_flashinfer_package(monkeypatch):
    """vLLM's wrapper imports flashinfer.gdn_prefill inside: the fake package stands in."""
    pkg = ff.fake_flashinfer_package()
    monkeypatch.setitem(sys.modules, "flashinfer", pkg)
    monkeypatch.setitem(sys.modules, "flashinfer.gdn_prefill", pkg.gdn_prefill)


def _op(backend, op, variant, dims, dtype="bfloat16", state_dtype="float32", backends=None, diagnose=False):
    case = Case(level="op", check=op, dims=dims, backend=FAKES + backend, dtype=dtype, state_dtype=state_dtype,
                variant=variant, device="cpu")
    return run_case(case, POLICY, "test", backends, diagnose=diagnose)


def _failed(rec):
    return [m["output"] for m in rec["metrics"] if not m["passed"]]


# ------------------------------------------------------------------ without the packages
@pytest.mark.parametrize("name", ["flashinfer", "flashinfer@pool", "flashinfer@mtp-buffer", "flashinfer@kmajor",
                                  "sglang", "sglang@triton", "sglang@flashinfer", "vllm@triton", "vllm@flashinfer"])
def test_loads_and_says_why(name):
    pkg = {"flashinfer": "flashinfer", "sglang": "sglang", "vllm": "vllm"}[name.split("@")[0]]
    if importlib.util.find_spec(pkg) is not None:
        pytest.skip(f"{pkg} is installed here")
    be = load_backend(name)
    assert be.name == name
    why = be.unavailable("cuda")
    assert why and "not importable" in why
    d = be.describe()
    assert d["variants"] == be.variants and d["gate_domains"] == be.gate_domains


def test_variant_syntax():
    assert load_backend("flashinfer@kmajor").ssm_state_layout == "kv"
    with pytest.raises(HarnessError, match="no variant 'nope'"):
        load_backend("flashinfer@nope")
    with pytest.raises(HarnessError, match="follows a registered name"):
        load_backend("nosuch@x")
    with pytest.raises(HarnessError, match="no variant"):
        load_backend("reference@x")                         # a backend without variants
    if importlib.util.find_spec("vllm") is None:           # ':' stays package.module:attr
        with pytest.raises(BackendLoadError, match="importing vllm failed"):
            load_backend("vllm:triton")


def test_gate_domains():
    g = -torch.rand(5, 3, dtype=torch.float64)
    assert torch.equal(api.gate_to("log", g), g.float())
    assert torch.allclose(api.gate_to("linear", g), torch.exp(g).float())
    assert torch.allclose(torch.exp2(api.gate_to("log2", g)), torch.exp(g).float())
    with pytest.raises(HarnessError):
        api.gate_to("in_kernel", g)
    assert load_backend("flashinfer").gate_domains[CHUNK] == "linear"
    assert load_backend("vllm@flashinfer").gate_domains[CHUNK] == "log"     # the wrapper takes g; exp is its own


# ------------------------------------------------------------------ FlashInfer adapters over the fake
@pytest.mark.parametrize("backend,dtype,state_dtype", [
    ("fake_flashinfer", "bfloat16", "float32"), ("fake_flashinfer", "float16", "bfloat16"),
    ("fake_flashinfer_pool", "bfloat16", "bfloat16"), ("fake_flashinfer_kmajor", "bfloat16", "float32")])
@pytest.mark.parametrize("variant", ["varlen", "long"])
def test_flashinfer_chunk(backend, dtype, state_dtype, variant, backends):
    rec = _op(backend, CHUNK, variant, SMALL, dtype, state_dtype, backends)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))


def test_flashinfer_checkpoints():
    """Checkpoint c of sequence n is its state after (c+1)*64 tokens: the per-token oracle's."""
    from harness.cases.inputs import make_delta_inputs
    from harness import reference as ref
    lens = [130, 64, 5]
    d = make_delta_inputs(SMALL, lens, seed=3)
    x = {n: d[n].to(torch.bfloat16) for n in ("q", "k", "v")}
    x["q"], x["k"] = (ref.l2norm(x[n]).to(torch.bfloat16) for n in ("q", "k"))     # normalised once, both sides
    g, beta, h0 = d["g"].float(), d["beta"].float(), d["initial_state"].float()
    cu = d["cu_seqlens"].to(torch.int32)
    _, final, ckpt, starts = ff.fake_flashinfer().checkpointed_prefill(
        x["q"], x["k"], x["v"], g, beta, 64, initial_state=h0, cu_seqlens=cu)
    assert starts.tolist() == [0, 2, 3, 3] and ckpt.shape[0] == 3
    offs = [0, 130, 194, 199]
    for n, c, end in [(0, 0, 64), (0, 1, 128), (1, 0, 64)]:
        sl = slice(offs[n], offs[n] + end)
        _, want = ref.recurrent_gated_delta_rule(
            x["q"][:, sl].double(), x["k"][:, sl].double(), x["v"][:, sl].double(), g[:, sl].double(),
            beta[:, sl].double(), initial_state=h0[n:n + 1].double())
        got = ckpt[int(starts[n]) + c].double()
        assert (got - want[0]).norm() <= 1e-4 * want[0].norm()
    with pytest.raises(HarnessError, match="multiple of FlashInfer's 64"):
        ff.fake_flashinfer().checkpointed_prefill(x["q"], x["k"], x["v"], g, beta, 100, cu_seqlens=cu)


@pytest.mark.parametrize("variant", ["block128", "block800"])
def test_flashinfer_checkpoint_op(variant, backends):
    """The API's checkpoint op over FlashInfer's checkpointing prefill: a 128-token block is
    judged against the oracle; an 800-token block (not a multiple of its 64-token chunk) skips."""
    rec = _op("fake_flashinfer", "chunk_gated_delta_rule_checkpoints", variant, SMALL, "bfloat16", "float32", backends)
    if variant == "block128":
        assert rec["status"] == "pass", (rec.get("error"), _failed(rec))
    else:
        assert rec["status"] == "skip" and "multiple of 64" in (rec.get("skip_reason") or rec.get("error") or ""), rec


@pytest.mark.parametrize("backend,state_dtype", [
    ("fake_flashinfer", "float32"), ("fake_flashinfer", "bfloat16"), ("fake_flashinfer_mtp_buffer", "float32"),
    ("fake_flashinfer_mtp_buffer", "bfloat16")])
@pytest.mark.parametrize("variant", ["decode", "spec"])
def test_flashinfer_decode_and_mtp(backend, state_dtype, variant, backends):
    rec = _op(backend, SIGMOID, variant, DECODE, "bfloat16", state_dtype, backends)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))
    assert "ssm_pool.untouched" in [m["output"] for m in rec["metrics"]]


def test_flashinfer_kmajor_decode(backends):
    assert _op("fake_flashinfer_kmajor", SIGMOID, "decode", DECODE, backends=backends)["status"] == "pass"
    rec = _op("fake_flashinfer_kmajor", SIGMOID, "spec", DECODE, backends=backends)
    assert rec["status"] == "skip" and "one token per row" in rec["error"]


def test_flashinfer_limits_skip(backends):
    rec = _op("fake_flashinfer", SIGMOID, "decode", SMALL, backends=backends)
    assert rec["status"] == "skip" and "K, V >= 128" in rec["error"]
    odd = GDNDims(hidden=32, H=1, HV=2, K=16, V=24, W=4, name="k16v24")
    rec = _op("fake_flashinfer", CHUNK, "varlen", odd, backends=backends)
    assert rec["status"] == "skip" and "K=16 != V=24" in rec["error"]


@pytest.mark.parametrize("path,state_dtype", [("sigmoid_gating", "float32"), ("recurrent", "bfloat16")])
def test_flashinfer_layer(path, state_dtype, backends):
    case = Case(level="layer", check="mixed", dims=DECODE, backend=FAKES + "fake_flashinfer", layout="flat", tp=1,
                dtype="bfloat16", state_dtype=state_dtype, variant=f"{path}.token_first.sharded", device="cpu")
    rec = run_case(case, POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))
    assert CHUNK not in rec["filled_ops"]
    assert ("fused_recurrent_gated_delta_rule" in rec["filled_ops"]) == (path == "recurrent")


# ------------------------------------------------------------------ SGLang adapters over the fake
@pytest.mark.parametrize("op,variant", [(CHUNK, "varlen"), (CHUNK, "long"), (SIGMOID, "decode"), (SIGMOID, "spec"),
                                        ("fused_recurrent_gated_delta_rule_packed_decode", "decode"),
                                        ("fused_gdn_gating", "contiguous")])
def test_sglang_ops(op, variant, backends):
    rec = _op("fake_sglang", op, variant, SMALL, backends=backends)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))


def test_sglang_layer(backends):
    case = Case(level="layer", check="spec_only_3", dims=SMALL, backend=FAKES + "fake_sglang", layout="interleaved",
                tp=1, dtype="bfloat16", state_dtype="bfloat16", variant="sigmoid_gating.token_first.sharded",
                device="cpu")
    rec = run_case(case, POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))


# ------------------------------------------------------------------ vLLM's FlashInfer prefill
def test_vllm_prefill_selection():
    assert ff.fake_vllm_flashinfer(cc=90, variant=None).prefill_backend(128, 128) == "flashinfer"
    assert ff.fake_vllm_flashinfer(cc=80, variant=None).prefill_backend(128, 128) == "triton"
    assert ff.fake_vllm_flashinfer(cc=90, variant="triton").prefill_backend(128, 128) == "triton"


@pytest.mark.parametrize("variant,dtype,state_dtype", [("varlen", "bfloat16", "float32"),
                                                       ("long", "float16", "bfloat16")])
def test_vllm_flashinfer_chunk(variant, dtype, state_dtype, fake_flashinfer_package, backends):
    rec = _op("fake_vllm_flashinfer", CHUNK, variant, KV128, dtype, state_dtype, backends)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))


def test_vllm_flashinfer_prefill_head_dim_64_says_vllm_cannot_serve(fake_flashinfer_package):
    """vLLM 0.33 selects FlashInfer's prefill on SM90 for any head dim; its SM90 kernel takes 128 only."""
    be = ff.fake_vllm_flashinfer(cc=90, variant=None)
    q = torch.zeros(1, 4, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="supports 128 only"):
        be.chunk_gated_delta_rule(q, q, q.repeat(1, 1, 2, 1), torch.zeros(1, 4, 2), torch.zeros(1, 4, 2),
                                  cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))


def test_vllm_flashinfer_prefill_takes_strided_splits(fake_flashinfer_package):
    """The layer composition splits q / k / v out of one buffer; vLLM's own layer makes them
    contiguous before its wrapper (whose l2norm_fwd .view()s them), so the adapter does too."""
    be = ff.fake_vllm_flashinfer(cc=90, variant=None)
    mixed = torch.randn(1, 4, 6 * 128, dtype=torch.bfloat16)          # H = 2 key heads, HV = 2
    q, k, v = (t.unflatten(-1, (2, 128)) for t in mixed.split([256, 256, 256], dim=-1))
    assert not q.is_contiguous()
    o, final = be.chunk_gated_delta_rule(q, k, v, -torch.rand(1, 4, 2), torch.rand(1, 4, 2),
                                         cu_seqlens=torch.tensor([0, 4], dtype=torch.int32),
                                         use_qk_l2norm_in_kernel=True)
    assert o.shape == v.shape and torch.isfinite(o.float()).all()


def test_vllm_forced_flashinfer_skips_where_vllm_falls_back(fake_flashinfer_package):
    be = ff.fake_vllm_flashinfer(cc=80)
    with pytest.raises(NotImplementedError, match="would run its 'triton'"):
        q = torch.zeros(1, 4, 1, 16, dtype=torch.bfloat16)
        be.chunk_gated_delta_rule(q, q, torch.zeros(1, 4, 2, 16, dtype=torch.bfloat16), torch.zeros(1, 4, 2),
                                  torch.zeros(1, 4, 2), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))


# ------------------------------------------------------------------ planted conversion bugs fail
@pytest.mark.parametrize("backend,op,variant,dims,state_dtype,outputs", [
    ("flashinfer_gate_unconverted", CHUNK, "varlen", SMALL, "float32", {"o", "final_state"}),
    ("flashinfer_null_row_unshifted", SIGMOID, "decode", DECODE, "bfloat16", {"ssm_pool.untouched"}),
    ("flashinfer_null_row_unshifted", SIGMOID, "spec", DECODE, "float32", {"ssm_pool"}),
    ("flashinfer_chunk_zero_initial_state", CHUNK, "varlen", SMALL, "float32", {"o", "final_state"}),
    ("sglang_verify_reads_column_0", SIGMOID, "spec", SMALL, "float32", {"o", "ssm_pool"}),
])
def test_planted_conversion_bug_fails(backend, op, variant, dims, state_dtype, outputs, backends):
    rec = _op(backend, op, variant, dims, "bfloat16", state_dtype, backends)
    assert rec["status"] == "fail" and outputs <= set(_failed(rec)), (rec.get("error"), _failed(rec))


def test_vllm_wrapper_gate_bug_fails_and_is_named(fake_flashinfer_package, backends):
    """vLLM's wrapper without exp(g): all-NaN outputs, named a gate-domain fault."""
    rec = _op("vllm_wrapper_gate_not_exp", CHUNK, "varlen", KV128, backends=backends, diagnose=True)
    assert rec["status"] == "fail" and {"o", "final_state"} <= set(_failed(rec))
    assert rec["hypotheses"], (rec.get("diagnosis_error"), rec.get("diagnosis_coverage"), rec.get("diagnosis"))
    assert rec["hypotheses"][0]["class"] == "gate_domain" and rec["hypotheses"][0]["matched"]


def test_gate_fault_named(backends):
    """The zoo's gate_log_as_linear fault is named by the diagnosis."""
    from harness.faults.catalogue import FAULTS
    case = Case(level="op", check=CHUNK, dims=SMALL, backend=FAULTS["gate_log_as_linear"].target, dtype="float32",
                state_dtype="float32", variant="varlen", device="cpu")
    rec = run_case(case, POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    top = rec["hypotheses"][0]
    assert top["class"] == "gate_domain" and top["matched"] and top["words"] in rec["diagnosis"]


def test_list_backends_shows_them(capsys):
    from harness.cli import main
    assert main(["list", "backends"]) == 0
    out = capsys.readouterr().out
    for name in ("flashinfer", "sglang", "vllm@flashinfer", "flashinfer@kmajor", "sglang@triton"):
        assert name in out


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_spec_invariance_bf16_state_within_one_rounding_per_token(state_dtype, backends):
    """A spec step keeps the state in fp32 between its tokens; plain decodes round a bf16 state
    after each: the runs differ by that rounding (the fakes model it: ~2.5e-3 to 3.7e-3, as on an
    H100 with vLLM), judged under the bf16 entry; an fp32 state stays bit-exact."""
    case = Case(level="layer", check="spec_zero_draft", dims=DECODE, backend=FAKES + "fake_flashinfer", layout="flat",
                tp=1, dtype="bfloat16", state_dtype=state_dtype, variant="recurrent.token_first.sharded", device="cpu")
    rec = run_case(case, POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))
    inv = [m for m in rec["metrics"] if m["quantity"] == "spec_invariance.core"]
    worst = max(m["rel_rms"] for m in inv)
    if state_dtype == "float32":
        assert worst == 0 and rec["tolerance"]["layer.spec_invariance"]["kind"] == "exact"
    else:
        assert 1e-3 < worst < rec["tolerance"]["layer.spec_invariance"]["value"]


@pytest.mark.parametrize("backend", ["fake_flashinfer", "fake_flashinfer_pool", "fake_flashinfer_mtp_buffer"])
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_flashinfer_in_kernel_gating_gets_an_fp32_A_log(backend, state_dtype, backends):
    """FlashInfer's decode / MTP kernels assert A_log is fp32 (vLLM keeps it fp32); a bf16 layer's
    A_log goes in upcast, exactly (on an H100: 11 spec_only_1 errors of @pool / @mtp-buffer)."""
    case = Case(level="layer", check="spec_only_1", dims=DECODE, backend=FAKES + backend, layout="flat", tp=1,
                dtype="bfloat16", state_dtype=state_dtype, variant="sigmoid_gating.token_first.sharded", device="cpu")
    rec = run_case(case, POLICY, "test", backends, diagnose=False)
    assert rec["status"] == "pass", (rec.get("error"), _failed(rec))


def test_fi_prefill_tail_repro_script_sees_the_rows():
    """scripts/fi_prefill_tail_repro.py (run on a GPU with FlashInfer) against the CPU fake of
    FlashInfer's prefill: nothing off; against a prefill whose tail chunk reads past the
    sequence's end (masked by multiplying): rows 64-70 and the first two states, as on the H100."""
    import importlib.util
    from pathlib import Path
    from harness.faults.catalogue import FAULTS
    path = Path(__file__).resolve().parent.parent / "scripts" / "fi_prefill_tail_repro.py"
    spec = importlib.util.spec_from_file_location("fi_prefill_tail_repro", path)
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    assert repro.contaminated_rows(ff.fi_chunk_gated_delta_rule, "cpu", "nan") == ([], [])
    past_end = FAULTS["chunk_tail_reads_past_end"].make()

    def fi_past_end(q, k, v, g=None, beta=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    use_qk_l2norm_in_kernel=False, **kw):
        o, final = past_end.chunk_gated_delta_rule(q[None], k[None], v[None], torch.log(g)[None], beta[None],
                                                   initial_state=initial_state, cu_seqlens=cu_seqlens,
                                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
        return o[0], final
    assert repro.contaminated_rows(fi_past_end, "cpu", "nan") == (list(range(64, 71)), [0, 1])
