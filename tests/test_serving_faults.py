"""Issue 19's precision faults: a prefix-cache checkpoint stored narrower than the cold run's
state (item 1) and an fp16 read-out buffer (item 6). Each is killed by a smoke case and
named by the diagnosis; the zoo's faults are only the subjects (the diagnosis never runs
their code)."""
from tests.triton_device import DEVICE

import pytest
import torch

from harness.cases.case import Case
from harness.diagnosis import variants as V
from harness.faults.catalogue import FAULTS
from harness.cases.opcheck import checkpoint_ends, run_op_case
from harness.optimized.reference_backend import ReferenceBackend
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import parse_dims

DIMS = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")     # the smoke suite's op dims
POLICY = Policy()


@pytest.fixture(scope="module")
def backends():
    return BackendCache()


def _case(fault, op, variant, dtype="float32", level="op", **kw):
    return Case(level=level, check=op, dims=DIMS, backend=FAULTS[fault].target, dtype=dtype,
                state_dtype="float32", variant=variant, device=DEVICE, **kw)


def _failed(rec):
    return sorted(m["output"] for m in rec["metrics"] if not m["passed"])


def test_checkpoint_end_pair_is_exact_on_the_reference():
    pairs = run_op_case(ReferenceBackend(), "chunk_gated_delta_rule_checkpoints", "block128", DIMS, "float32",
                        "float32", 0, "cpu")
    end = [c for c in pairs if c.output == "checkpoint_end"]
    assert len(end) == 1 and end[0].policy_key == "op.checkpoint_end" and end[0].kind == "state"
    assert POLICY.lookup("op.checkpoint_end", "float32", "float32").kind == "exact"
    assert torch.equal(end[0].actual, end[0].expected)


def test_checkpoint_ends_are_the_sequences_a_block_divides():
    kw = dict(checkpoint_every=128, cu_seqlens=torch.tensor([0, 256, 385, 448]))
    assert checkpoint_ends(kw) == ([1], [0])           # 2 + 1 + 0 checkpoints; only seq 0 ends on one


def test_checkpoint_stored_bf16_killed_by_the_exact_end_check_and_named(backends):
    rec = run_case(_case("checkpoint_stored_bf16", "chunk_gated_delta_rule_checkpoints", "block128"), POLICY,
                   "test", backends, diagnose=True)
    # inside the checkpoints' fp32 chunk tolerance: only the exact end check sees it
    assert rec["status"] == "fail" and _failed(rec) == ["checkpoint_end"], rec["metrics"]
    top = rec["hypotheses"][0]
    assert top["matched"] and top["hypothesis"] == "checkpoint_stored_bf16" and top["class"] == "prefix_checkpoints"


def test_readout_buffer_fp16_killed_in_fp32_and_named(backends):
    rec = run_case(_case("readout_buffer_fp16", "fused_recurrent_gated_delta_rule", "decode"), POLICY, "test",
                   backends, diagnose=True)
    assert rec["status"] == "fail" and "o" in _failed(rec)
    top = rec["hypotheses"][0]
    assert top["matched"] and top["class"] == "output_precision", rec["hypotheses"]
    # an fp16 run already reads out in fp16: the fault is invisible there, as in the field
    rec16 = run_case(_case("readout_buffer_fp16", "fused_recurrent_gated_delta_rule", "decode", dtype="float16"),
                     POLICY, "test", backends, diagnose=False)
    assert rec16["status"] == "pass"


def test_readout_buffer_fp16_overflows_where_the_hypothesis_does():
    """Values past fp16's range: the fault's outputs are Inf exactly where the hypothesis'
    fp32 re-run through an fp16 buffer is (the fp32 state itself stays finite)."""
    be = FAULTS["readout_buffer_fp16"].make()
    g = torch.Generator().manual_seed(0)
    T, H, HV, K, Vd = 5, 2, 6, 12, 20
    q, k = torch.randn(1, T, H, K, generator=g), torch.randn(1, T, H, K, generator=g)
    v = torch.randn(1, T, HV, Vd, generator=g) * 3e5
    gg, beta = -torch.rand(1, T, HV, generator=g), torch.rand(1, T, HV, generator=g)
    cu = torch.tensor([0, T], dtype=torch.int32)
    q, k, v, gg, beta, cu = (t.to(DEVICE) for t in (q, k, v, gg, beta, cu))   # the kernel's device
    kw = dict(cu_seqlens=cu, use_qk_l2norm_in_kernel=True, output_final_state=True)
    o, final = be.fused_recurrent_gated_delta_rule(q, k, v, gg, beta, **kw)
    assert bool(torch.isinf(o).any()) and bool(torch.isfinite(final).all())
    want, _ = V.readout_fp16()[V.RECURRENT](q, k, v, gg, beta, **kw)
    assert torch.equal(torch.isinf(o), torch.isinf(want))


def test_readout_buffer_fp16_named_at_layer_level(backends):
    rec = run_case(Case(level="layer", check="decode_only", dims=parse_dims("qwen3-next-80b-a3b:shrunk"),
                        backend=FAULTS["readout_buffer_fp16"].target, dtype="float32", state_dtype="float32",
                        layout="flat", device=DEVICE, variant="recurrent.token_first.sharded"),
                   POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    assert any(h["matched"] and h["class"] == "output_precision" for h in rec["hypotheses"]), rec["hypotheses"]


def test_spec_invariance_bf16_state_passes_the_reference_and_kills_the_stale_read(backends):
    """With a bf16 state even the reference's spec step (fp32 between its tokens) differs from
    plain decodes by the state's rounding (4.6e-3 here): the bf16 entry admits that, and the
    zero-draft stale read (vllm #39273) stays O(1) outside it."""
    def run(backend, device):   # the fault's Triton backend runs on the CPU only under the interpreter
        return run_case(Case(level="layer", check="spec_zero_draft", dims=parse_dims("qwen3.5-27b:shrunk"),
                             backend=backend, dtype="bfloat16", state_dtype="bfloat16", layout="flat", device=device,
                             variant="recurrent.token_first.sharded"), POLICY, "test", backends, diagnose=False)

    def worst(rec):
        return max(m["rel_rms"] for m in rec["metrics"] if m["quantity"] == "spec_invariance.core")
    ok, bad = run("reference", "cpu"), run(FAULTS["zero_draft_reads_column_zero"].target, DEVICE)
    assert ok["status"] == "pass" and 1e-3 < worst(ok) < ok["tolerance"]["layer.spec_invariance"]["value"]
    assert bad["status"] == "fail" and worst(bad) > 0.5


def test_nan_neighbour_kills_a_tail_chunk_that_reads_past_its_end_and_names_it(backends):
    """A chunked prefill whose last partial chunk loads the next rows of the packed batch and
    masks them by multiplying (FlashInfer 0.7.2's SM90 prefill on an H100) is exact on finite
    inputs; a NaN neighbour turns rows 64-70 - the 70-token sequence's tail and the 1-token
    sequence after it - into NaN, as on the GPU, and the diagnosis names the mechanism."""
    dims = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")

    def run(backend, variant, diagnose=False):
        return run_case(Case(level="op", check="chunk_gated_delta_rule", dims=dims, backend=backend, dtype="float32",
                             state_dtype="float32", variant=variant, device="cpu"), POLICY, "test", backends,
                        diagnose=diagnose)
    fault = FAULTS["chunk_tail_reads_past_end"].target
    assert run("reference", "nan_neighbour")["status"] == "pass"
    assert run(fault, "varlen")["status"] == "pass" and run(fault, "long")["status"] == "pass"
    rec = run(fault, "nan_neighbour", diagnose=True)
    assert rec["status"] == "fail" and rec["hypotheses"][0]["hypothesis"] == "chunk_tail_next_times_zero"
    assert rec["hypotheses"][0]["class"] == "varlen_isolation" and rec["hypotheses"][0]["matched"]
    o = next(m for m in rec["metrics"] if m["output"] == "o")
    assert o["nan"] == 7 * dims.HV * dims.V          # rows 64-70 of the 76 judged (the NaN row left out)


class UnwrittenPadRowsTailPastEnd(FAULTS["chunk_tail_reads_past_end"].make):
    """The FlashInfer-in-vLLM situation on the CPU: the conv leaves PAD rows unwritten (NaN,
    declared unspecified) and the chunk's tail reads past each sequence's end."""
    name = "unwritten_pad_rows_tail_past_end"
    pad_row_outputs = "unspecified"
    pad_row_outputs_reason = "a test backend whose conv never writes PAD rows"

    @staticmethod
    def causal_conv1d_fn(x, weight, bias, conv_states, query_start_loc, cache_indices=None, has_initial_state=None,
                         activation="silu", pad_slot_id=-1):
        from harness.reference import causal_conv1d_fn
        out = causal_conv1d_fn(x, weight, bias, conv_states, query_start_loc, cache_indices, has_initial_state,
                               activation, pad_slot_id)
        starts = query_start_loc.tolist()
        for n, slot in enumerate(cache_indices.tolist()):
            if slot == pad_slot_id:
                out[:, starts[n]:starts[n + 1]] = float("nan")
        return out


def test_layer_attribution_passes_over_unspecified_pad_rows_to_the_chunk(backends):
    """A backend's declared-unspecified PAD rows are no evidence against the op that leaves
    them: the layer's NaN (rows 64-70 of mixed's prefill, as on the H100) is attributed to the
    chunked prefill that read the PAD row past a sequence's end, not to the conv."""
    rec = run_case(Case(level="layer", check="mixed", dims=parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"),
                        backend=f"{__name__}:UnwrittenPadRowsTailPastEnd", dtype="float32", state_dtype="float32",
                        layout="flat", device="cpu", variant="recurrent.token_first.sharded"),
                   POLICY, "test", backends, diagnose=True)
    assert rec["status"] == "fail"
    step0 = next(m for m in rec["metrics"] if m["output"] == "step0.core")
    assert step0["nan"] == 7 * 6 * 20 and step0["worst_token"] == 64        # rows 64-70, HV 6, V 20
    att = rec["attribution"]
    assert att["op"] == "chunk_gated_delta_rule" and att["confirmed"] and att["step"] == 0, att
