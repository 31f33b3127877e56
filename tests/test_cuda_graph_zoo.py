"""The CPU-checkable parts of the CUDA-graph check (issue 19 item 2): the GPU-only faults are
registered beside the zoo (listed, never run by the suite zoo), the check and `--zoo` skip
with the reason on a machine without CUDA, the command's arguments, the captured batches'
slot layout, and the faults' eager behaviour (right outside a graph: no suite can kill them)."""
from tests.triton_device import DEVICE  # TRITON_INTERPRET set before triton's first import

import pytest
import torch

from harness.tools import cudagraph
from harness.faults import catalogue
from harness.faults.catalogue import FAULTS, GRAPH_FAULTS, GRAPH_ONLY
from harness.optimized.api import FilledOps
from harness.optimized.reference_backend import ReferenceBackend
from harness.optimized.triton_backend import TritonBackend
from harness.cases.suite import parse_dims

NO_CUDA = not torch.cuda.is_available()


def test_graph_faults_registered_beside_the_suite_zoo():
    assert set(GRAPH_FAULTS) == {"size_frozen_at_capture", "host_branch_on_pad_rows"}
    assert not set(GRAPH_FAULTS) & set(FAULTS)          # the suite zoo's 100 % stays about suites
    for name, f in GRAPH_FAULTS.items():
        assert f.where == "cuda-graph" and f.base == "triton" and catalogue.fault_of(name) is f
        be = f.make()
        assert be.cuda_graphs and isinstance(be, TritonBackend)
    assert TritonBackend.cuda_graphs and not ReferenceBackend.cuda_graphs


def test_list_mutants_shows_graph_faults_as_gpu_only(capsys):
    from harness.cli import main
    assert main(["list", "mutants"]) == 0
    out = capsys.readouterr().out
    for name in (*GRAPH_FAULTS, "checkpoint_stored_bf16", "readout_buffer_fp16"):
        assert name in out
    assert out.count("GPU only") >= len(GRAPH_FAULTS)


@pytest.mark.skipif(not NO_CUDA, reason="checks the skip on a machine without CUDA")
def test_without_cuda_the_check_and_zoo_skip_with_the_reason(capsys):
    assert "CUDA device" in cudagraph.why_not(TritonBackend(), "cpu")
    assert cudagraph.main(["--zoo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skip: CUDA graphs need a CUDA device") and all(n in out for n in GRAPH_FAULTS)
    assert cudagraph.main([]) == 0 and capsys.readouterr().out.startswith("skip: ")


def test_zoo_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cudagraph.main(["--fault", "size_frozen_at_capture"])          # --fault without --zoo
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cudagraph.main(["--zoo", "--fault", "no_such_fault"])
    assert e.value.code == 2 and "known: host_branch_on_pad_rows, size_frozen_at_capture" in capsys.readouterr().err
    with pytest.raises(ValueError):
        cudagraph.run_zoo(parse_dims("qwen3-next-80b-a3b:shrunk"), faults=["no_such_fault"])
    assert set(cudagraph.CAPTURES) == {("decode", 8), ("decode", 2), ("spec", 8), ("spec", 2)}
    assert "GPU only" in GRAPH_ONLY


def test_batches_own_their_slots():
    idx, acc, ssm, conv = cudagraph._batch("spec", 4, 2, 2, 1, "cpu")
    assert idx.tolist() == [[0, 1, 2], [3, 4, 5], [-1] * 3, [-1] * 3]
    assert acc.tolist() == [2, 3, 1, 2] and ssm == list(range(6)) and conv == [0, 3]
    idx, acc, ssm, conv = cudagraph._batch("decode", 4, 3, 2, 0, "cpu")
    assert idx.tolist() == [0, 1, 2, -1] and acc is None and ssm == conv == [0, 1, 2]
    with pytest.raises(ValueError):
        cudagraph.graph_replay_pairs(TritonBackend(), None, parse_dims("qwen3-next-80b-a3b:shrunk"), step="prefill")


def _eager_step(backend, step, n_real, dims, r=0):
    """One eager decode / spec-verify step (the graph check's step, no capture) where the tests
    run Triton (the GPU when there is one)."""
    from harness.cases.inputs import make_weights
    from harness.layouts.tp import shard_params
    gen = torch.Generator().manual_seed(3)
    B, S = 4, 2
    w = 1 if step == "decode" else 1 + S
    idx, acc, _, _ = cudagraph._batch(step, B, n_real, S, r, "cpu")
    slots = B * w + 2
    buf = dict(mq=torch.randn(B * w, dims.qkvz_dim, generator=gen), mb=torch.randn(B * w, 2 * dims.HV, generator=gen),
               conv=torch.randn(slots, dims.conv_dim, dims.W - 1 + (S if step == "spec" else 0), generator=gen),
               ssm=0.3 * torch.randn(slots, dims.HV, dims.V, dims.K, generator=gen), idx=idx, acc=acc,
               cu=torch.arange(0, B * w + 1, w, dtype=torch.int32), out=torch.zeros(B * w, dims.hidden))
    buf = {k: None if v is None else v.to(DEVICE) for k, v in buf.items()}
    params = shard_params(make_weights(dims, 0).to(torch.float32).to(DEVICE), dims, "flat")
    cudagraph.decode_step(FilledOps(backend, ReferenceBackend()), params, buf)
    return buf


@pytest.mark.parametrize("fault", sorted(GRAPH_FAULTS))
@pytest.mark.parametrize("step", ["decode", "spec"])
def test_graph_faults_are_right_in_eager_mode(fault, step):
    """Eager (every call reads its host values afresh) a CUDA-graph fault computes what its base
    does - the reason no suite case can kill it and the graph check must."""
    dims = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")
    be = GRAPH_FAULTS[fault].make()
    for n_real in (4, 2):           # all rows real first: the host branch's fast path is taken
        got, want = _eager_step(be, step, n_real, dims), _eager_step(TritonBackend(), step, n_real, dims)
        for key in ("out", "conv", "ssm"):
            assert torch.equal(got[key], want[key]), (key, n_real)


def test_replay_comparisons_go_through_the_layer_judge():
    """The graph check's Comparisons are judged by the layer cases' judge (exact entry
    `graph.replay` of the policy), with the verdict its old bit-equality rule gave: a NaN
    left in an output, one bit off in a slot, a poisoned slot overwritten each fail."""
    from harness.cases.comparison import Comparison
    key = cudagraph.POLICY_KEY
    out = torch.randn(6, 8)
    off = out.clone()
    off[2, 3] = torch.nextafter(off[2, 3], torch.tensor(10.0))
    nan = out.clone()
    nan[4, 0] = float("nan")
    mask = torch.ones(3, 5)
    pairs = [Comparison("replay0.out[real]", out, out.clone(), 0, key, quantity="out"),
             Comparison("replay0.out[pad]", torch.zeros(2, 8), torch.zeros(2, 8), 0, key, "pad_rows", quantity="out"),
             Comparison("replay1.out[real]", nan, out, 0, key, quantity="out"),
             Comparison("replay1.ssm[real]", off, out, None, key, "state", quantity="ssm_state", cache="ssm"),
             Comparison("replay1.conv[untouched]", mask.clone().index_fill_(0, torch.tensor([1]), 0.0), mask, None,
                        key, "untouched", quantity="conv_state", cache="conv")]
    rec = cudagraph.judged(pairs)
    assert rec["status"] == "fail" and rec["tolerance"][key]["kind"] == "exact"
    bad = cudagraph.failing(pairs)
    assert bad == ["replay1.out[real]", "replay1.ssm[real]", "replay1.conv[untouched]"]
    assert bad == [c.output for c in pairs if not torch.equal(c.actual, c.expected)]
    assert cudagraph.failing(pairs[:2]) == []
