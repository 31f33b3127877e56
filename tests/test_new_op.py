"""A new op needs its reference (declared with ``@gdn_op``), its `OpInfo` and tolerance lines
(docs/new_op.md): a throwaway op declared here shows up in the backend API, the reference
backend, suites, the op checks, bench, diagnosis and the fault zoo's kernel-module ops,
without any other list naming it."""
import types

import pytest
import torch

from harness.cases import opcheck
from harness.cases.opcheck import OP_INFOS, OpInfo, Sample
from harness.config import GDNDims
from harness.reference.ops import gdn_op, op_decl, op_names, undeclare

OP = "scaled_tanh_for_test"
DIMS = GDNDims(hidden=32, H=2, HV=4, K=8, V=12, W=4, name="new-op-test")


def _reference(x: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    return torch.tanh(x.to(torch.float64 if x.dtype == torch.float64 else torch.float32) * alpha).to(x.dtype)


def _build(variant, dims, dt, st, layout, seed, device, sample=None):
    (T,), = opcheck._keep(sample, [5])
    x = torch.randn(T, dims.HV, dims.V, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if variant == "strided":
        x = opcheck._strided(x)
    return Sample(dict(x=x.to(device=device, dtype=dt)), ("y",))


@pytest.fixture
def new_op(monkeypatch, tmp_path):
    """The op declared (kind norm, run on decode and prefill), its OpInfo and a tolerance file
    with its lines; all gone afterwards."""
    gdn_op(OP, kind="norm", roles=("decode", "prefill"), returns=("y",))(_reference)
    monkeypatch.setitem(OP_INFOS, OP, OpInfo(OP, _reference, ("contiguous", "strided"), _build,
                                             bench=dict(decode="contiguous", prefill="contiguous")))
    from harness.judge.policy import DEFAULT_POLICY, Policy
    path = tmp_path / "tolerances.toml"
    path.write_text(DEFAULT_POLICY.read_text() + f'\n[[entry]]\nop = "op.{OP}"\ndtype = "*"\nkind = "rel_rms"\n'
                    'value = 1e-6\nreason = "test op: tanh in fp32 vs fp64"\n')
    yield Policy(path)
    undeclare(OP)


def test_backend_api_and_reference_backend(new_op):
    from harness.optimized.api import OPS, Backend, FilledOps
    from harness.optimized.reference_backend import ReferenceBackend
    assert OP in OPS and op_names()[-1] == OP          # kind norm: last, in pipeline order
    ref = ReferenceBackend()
    assert OP in ref.implemented_ops() and ref.implements(OP)
    assert getattr(ref, OP) is _reference
    empty = Backend()
    assert OP not in empty.implemented_ops()
    assert getattr(FilledOps(empty, ref), OP) is _reference


def test_suites_and_op_checks_run_it(new_op, tmp_path):
    from harness.cases.suite import expand, load_suite
    from harness.run.runner import BackendCache, run_case
    suite = tmp_path / "all_ops.toml"
    suite.write_text('name = "all_ops"\n[[group]]\nlevel = "op"\nops = ["*"]\n'
                     'dims = ["qwen3.5-27b:shrunk:H=2,K=12,V=20"]\ndtype = ["float32"]\n')
    cases = [c for c in expand(load_suite(str(suite)), ["reference"]) if c.check == OP]
    assert sorted(c.variant for c in cases) == ["contiguous", "strided"]
    for case in cases:
        rec = run_case(case, new_op, "all_ops", BackendCache())
        assert rec["status"] == "pass", rec
        assert [(m["output"], m["tolerance"]) for m in rec["metrics"]] == [("y", "rel_rms <= 1e-06")]


def test_bench_times_it(new_op):
    from harness.tools.bench import bench_ops, bench_ops_of
    assert OP in bench_ops_of("decode") and OP in bench_ops_of("prefill")
    rows = bench_ops(["reference"], DIMS, [1], "cpu", "float32", "float32", 3, 2, 8, 1.0, log=lambda s: None)
    mine = [r for r in rows if r["op"] == OP]
    assert {r["shape"] for r in mine} == {"decode", "prefill"}
    assert all(r["median_s"] > 0 and r["bytes"] > 0 for r in mine), mine


def test_diagnosis_reads_it_from_the_table(new_op):
    from harness.diagnosis import structure
    from harness.diagnosis.op import HYPOTHESES, OpContext
    assert structure.OUTPUTS[OP] == ("y",) and OP in list(structure.OUTPUTS)

    def picked(op, variant):
        ctx = OpContext(op, variant, DIMS, "float32", "float32", "vk", 0, {})
        return {h.name for h in HYPOTHESES if h.when(ctx)}
    # hypotheses are chosen by kind / role: the same as the real op of its kind (norm)
    assert picked(OP, "contiguous") == picked("rms_norm_gated", "before-silu-whole")
    assert {"norm_gemma_weight", "norm_group_ignored"} <= picked(OP, "contiguous")


def test_fault_zoo_finds_it_in_a_kernel_module(new_op):
    from harness.faults.catalogue import module_ops
    mod = types.ModuleType("fake_kernels")
    exec(f"def {OP}(x, alpha=0.5):\n    return x\n", mod.__dict__)
    assert module_ops(mod) == [OP]


def test_op_table_halves_agree():
    """Every declared op has an OpInfo with the same reference, and no OpInfo lacks a declaration."""
    assert set(OP_INFOS) == set(op_names())
    for name, info in OP_INFOS.items():
        assert info.reference is op_decl(name).reference, name
        for shape, variant in info.bench.items():
            assert shape in ("decode", "prefill") and variant in info.variants, (name, shape)
            assert op_decl(name).has(shape), (name, shape)       # benched only on batch kinds it serves


def test_declaration_is_checked():
    with pytest.raises(ValueError, match="kind"):
        gdn_op("x_for_test", kind="attention")(_reference)
    with pytest.raises(ValueError, match="unknown roles"):
        gdn_op("x_for_test", kind="norm", roles=("verify",))(_reference)
    with pytest.raises(ValueError, match="declared twice"):
        gdn_op("rms_norm_gated", kind="gating")(_reference)
    assert op_decl("rms_norm_gated").kind == "norm"
