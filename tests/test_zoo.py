"""The fault zoo: every named fault is killed by the smoke suite, the unmutated bases pass,
and the bases show no false positive over 20 seeds of a small smoke subset.

The Triton kernels (the faults' mutants included) run on the GPU when there is one, else
under TRITON_INTERPRET=1 (tests/triton_device.py).
"""
import json
import os
from pathlib import Path

from tests.triton_device import DEVICE

import pytest

from harness.cli import main as cli_main
from harness.faults.catalogue import FAULTS, class_name
from harness.faults.mutate import MutationError, apply_replacements, kernel_module, mutate
from harness.faults import zoo as zoo_module
from harness.faults.zoo import run_zoo
from harness.optimized.registry import load_backend
from harness.cases.suite import load_suite

JOBS = int(os.environ.get("GDN_ZOO_JOBS", min(2, os.cpu_count() or 1)))
# each fault's first-kill case from a full smoke zoo run (`gdn-harness zoo --suite smoke`, its
# kill_matrix.json faults' first_case): tried first, so a fault found only by the 47th case
# (a slow layer case) costs one case. Same cases; a stale entry only costs time.
FIRST_KILLS = Path(__file__).with_name("zoo_first_kills.json")

# the incident classes the catalogue must cover (name fragments of the faults)
REQUIRED = ["ba_view_from_qkvz", "interleaved_core_on_flat", "chunk_zero_initial_state", "state_stored_transposed",
            "qk_head_mod_h", "squeeze", "pad_rows", "ba_split_flat_on_interleaved", "spec_ungathered_ab",
            "off_by_one", "fresh_one_token_prefill", "assumed_contiguous", "softplus", "l2norm", "scale_applied_to_k",
            "gemma_norm_weight", "norm_before_gate", "conv_state_not_updated", "conv_writes_pad", "chunk_tail",
            "varlen_state_leak", "bf16", "dt_bias_after_softplus"]


def _run_zoo(out_dir):
    """The smoke zoo through the command line CI uses: `gdn-harness zoo --suite smoke`, on the
    CPU also where there is a GPU (the smoke policy's fp32 layer bounds are IEEE fp32; a GPU's
    chunked prefill runs TF32), in worker processes, which turn the interpreter on."""
    rc = cli_main(["zoo", "--suite", "smoke", "--base", "triton", "--jobs", str(max(2, JOBS)),
                   "--first-kills", str(FIRST_KILLS), "--report-dir", str(out_dir)])
    res = json.loads((Path(out_dir) / "kill_matrix.json").read_text())
    res["_rc"] = rc
    res["_paths"] = {"md": str(Path(out_dir) / "kill_matrix.md"), "json": str(Path(out_dir) / "kill_matrix.json")}
    return res


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The kill matrix, computed once per test session - also under pytest-xdist, whose
    workers share it through a file (pytest-xdist's documented once-per-session pattern)."""
    from harness.optimized.triton_backend import interpreter_too_old
    too_old = interpreter_too_old()     # a GPU machine's triton, too old for the CPU interpreter
    if too_old:
        pytest.skip(f"the smoke zoo runs on the CPU: {too_old}")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _run_zoo(tmp_path_factory.mktemp("zoo"))
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp().parent
    cached = root / "gdn_zoo_kill_matrix.json"
    with FileLock(str(cached) + ".lock"):
        if cached.is_file():
            return json.loads(cached.read_text())
        res = _run_zoo(root / "gdn_zoo")
        cached.write_text(json.dumps(res, default=str))
        return res


# ---------------------------------------------------------------- the catalogue itself
def test_catalogue_names_docs_and_coverage():
    assert len(FAULTS) >= 16
    for name, f in FAULTS.items():
        cls = f.make
        assert cls.__name__ == class_name(name) and f.target.endswith(":" + cls.__name__)
        assert cls.__doc__ and len(cls.__doc__) > 80, name          # names the incident it mirrors
        assert f.base in ("triton", "reference") and f.incident and f.diagnosis_class
        b = load_backend(f.target)                                   # loadable as --backend pkg.mod:attr
        assert b.name == name and isinstance(b, type(load_backend(f.base)))
    for frag in REQUIRED:
        assert any(frag in n for n in FAULTS), frag
    where = [f.where for f in FAULTS.values()]
    assert where.count("triton-source") >= 8 and "gdn_core" in where
    # the head-mapping fault lives in the Triton recurrent kernel's source
    assert FAULTS["qk_head_mod_h"].where == "triton-source"


def test_first_kills_name_known_faults():
    hints = zoo_module.load_first_kills(FIRST_KILLS)
    assert set(hints) <= set(FAULTS) and all(v.split("[", 1)[0].count(".") == 1 for v in hints.values())


def test_first_kill_hint_goes_first():
    suite = dict(load_suite("smoke"))
    f = FAULTS["zero_draft_reads_column_zero"]
    cases = zoo_module.backend_cases(suite, f.target)
    hint = next(c.id for c in reversed(cases) if c.level == "layer")
    ordered = zoo_module._hinted_first(cases, hint)
    group = hint.split("[", 1)[0]
    assert ordered[0].id == hint and sorted(c.id for c in ordered) == sorted(c.id for c in cases)
    n = sum(f"{c.level}.{c.check}" == group for c in cases)
    assert all(f"{c.level}.{c.check}" == group for c in ordered[:n])


def test_mutation_helper():
    src = "a = 1\nb = 2\na = 1 + 1\n"
    assert apply_replacements(src, [("b = 2", "b = 3")]) == "a = 1\nb = 3\na = 1 + 1\n"
    with pytest.raises(MutationError):
        apply_replacements(src, [("a = 1", "a = 0")])               # twice
    with pytest.raises(MutationError):
        apply_replacements(src, [("c = 4", "c = 5")])               # never
    from harness.optimized.triton_kernels import recurrent
    m = mutate(kernel_module("recurrent"), [("i_h = i_hv // (HV // H)", "i_h = i_hv % H")], tag="t")
    assert m is not recurrent and m.__package__ == recurrent.__package__
    import inspect
    assert "i_h = i_hv % H" in inspect.getsource(m._gdn_recurrent_kernel.fn)      # triton sees the mutant
    assert "i_h = i_hv // (HV // H)" in inspect.getsource(recurrent._gdn_recurrent_kernel.fn)   # original intact
    assert mutate(kernel_module("recurrent"), [("i_h = i_hv // (HV // H)", "i_h = i_hv % H")], tag="t") is m


# ---------------------------------------------------------------- the kill matrix
def test_unmutated_bases_pass(zoo):
    assert set(zoo["bases"]) == {"triton", "reference"}
    for name, b in zoo["bases"].items():
        assert b["passed"], (name, b["failures"][:3])
        assert b["cases_run"] > 0 and b["statuses"].get("pass", 0) > 0
    assert zoo["base_passed"]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_killed_by_smoke(zoo, name):
    e = zoo["faults"][name]
    assert not e["broken"], e["broken"]
    assert e["killed"], f"{name} survived the smoke suite ({e['cases_run']} cases run)"
    assert e["first_case"] and e["checks"] and e["cases_to_first_kill"] >= 1
    assert e["time_to_first_kill_s"] is not None


def test_kill_score_and_report(zoo):
    assert zoo["_rc"] == 0                                            # gdn-harness zoo: 100 % and the bases pass
    assert zoo["kill_score"] == 1.0 and not zoo["survivors"]
    md = Path(zoo["_paths"]["md"]).read_text()
    assert "Kill score: %d/%d" % (len(FAULTS), len(FAULTS)) in md
    assert all(f"`{n}`" in md for n in FAULTS)
    js = json.loads(Path(zoo["_paths"]["json"]).read_text())
    assert js["killed"] == len(FAULTS) and js["base_passed"] and js["command"].startswith("gdn-harness zoo")
    # the matrix: columns are check groups, each fault's row marks the group that caught it
    for e in js["faults"].values():
        assert e["first_diagnosis"], e["name"]                        # what the first detection said
        assert any(g in js["groups"] and v == "killed" for g, v in e["groups"].items()), e["name"]
    assert md.count("first detection said:") == len(FAULTS)


TINY = """name = "tiny"
[[group]]
level = "op"
ops = ["fused_recurrent_gated_delta_rule"]
dims = ["qwen3.5-27b:shrunk:H=2,K=12,V=20"]
dtype = ["float32"]
state_dtype = ["float32"]
"""


def test_zoo_command_exit_codes(tmp_path, capsys):
    """1 when a fault survives or the unmutated base fails, 2 on usage errors (a one-op suite)."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    out = tmp_path / "z"
    # gemma_norm_weight lives in the norm kernel: a recurrent-op-only suite cannot see it
    assert cli_main(["zoo", "--device", DEVICE, "--suite", str(suite), "--fault", "qk_head_mod_h,gemma_norm_weight", "-q",
                     "--report-dir", str(out)]) == 1
    js = json.loads((out / "kill_matrix.json").read_text())
    assert js["survivors"] == ["gemma_norm_weight"] and js["faults"]["qk_head_mod_h"]["killed"] and js["base_passed"]
    assert "Kill score: 1/2 (50 %)" in (out / "kill_matrix.md").read_text()
    printed = capsys.readouterr().out
    assert "SURVIVED gemma_norm_weight" in printed and "kill score 1/2 (50 %)" in printed
    strict = tmp_path / "strict.toml"
    strict.write_text('version = 1\n[[entry]]\nop = "op.fused_recurrent_gated_delta_rule"\nkind = "exact"\n'
                      'reason = "deliberately impossible: the kernel and the fp64 oracle round differently"\n')
    assert cli_main(["zoo", "--device", DEVICE, "--suite", str(suite), "--fault", "qk_head_mod_h", "--policy", str(strict), "-q",
                     "--report-dir", str(out)]) == 1
    assert not json.loads((out / "kill_matrix.json").read_text())["base_passed"]
    for bad in (["--fault", "no_such_fault"], ["--suite", "no-such-suite"], ["--suite", "self"], ["--jobs", "0"],
                ["--base", "vllm"]):
        assert cli_main(["zoo", "--device", DEVICE, *bad, "--report-dir", str(out)]) == 2, bad


def test_interrupted_zoo_still_writes_the_matrix(tmp_path, monkeypatch):
    """Ctrl-C (or `timeout -s INT`) mid-run: finished faults keep their verdict, the rest are
    listed as not run, the bases as incomplete, exit 1, and the matrix is written."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    real, calls = zoo_module._run_on_pool, []

    def interrupted_after_one(tasks, jobs, timeout, done, device):
        def once(r):        # Ctrl-C as the second task's result comes in (the pool's calling thread)
            calls.append(r["name"])
            if len(calls) > 1:
                raise KeyboardInterrupt
            done(r)
        return real(tasks, jobs, timeout, once, device)
    monkeypatch.setattr(zoo_module, "_run_on_pool", interrupted_after_one)
    out = tmp_path / "z"
    assert cli_main(["zoo", "--device", DEVICE, "--suite", str(suite), "--fault", "qk_head_mod_h,gemma_norm_weight", "-q",
                     "--report-dir", str(out)]) == 1
    js = json.loads((out / "kill_matrix.json").read_text())
    # one-chunk base first (zoo._tasks order), then the interrupt: both faults not run
    assert calls[0] == "triton" and js["interrupted"] and js["bases"]["triton"]["passed"]
    assert js["total"] == 2 and js["killed"] == 0 and js["faults"] == {}
    assert sorted(js["not_run"]) == ["gemma_norm_weight", "qk_head_mod_h"]
    assert "Interrupted; not run" in (out / "kill_matrix.md").read_text()


# ---------------------------------------------------------------- false positives
def _fp_subset():
    """A fast slice of smoke: the numerically sensitive ops (gating, norm, recurrent) and
    the decode-only layer mix, fp32 and fp16."""
    smoke = load_suite("smoke")
    op_dims = next(g["dims"] for g in smoke["group"] if g["level"] == "op")
    layer_dims = next(g["dims"] for g in smoke["group"] if g["level"] == "layer")
    return dict(smoke, name="smoke", group=[
        dict(level="op", ops=["fused_gdn_gating", "rms_norm_gated"], dims=op_dims, dtype=["float32", "float16"],
             state_dtype=["float32"], variants=["contiguous", "strided", "before-silu-group", "after-sigmoid-whole"]),
        dict(level="op", ops=["fused_recurrent_gated_delta_rule", "causal_conv1d_update"], dims=op_dims,
             dtype=["float32"], state_dtype=["float32"], variants=["decode", "spec", "spec-token_first"]),
        dict(level="layer", mixes=["decode_only"], dims=layer_dims, layout=["flat"], tp=[1], dtype=["float32"],
             state_dtype=["float32"], conv_layout=["token_first"]),
    ])


def test_bases_have_no_false_positives_over_20_seeds():
    seeds = list(range(1, 21))
    res = run_zoo(_fp_subset(), base="triton", device=DEVICE, faults=[], bases=["reference", "triton"], seeds=seeds, jobs=JOBS)
    for name, b in res["bases"].items():
        assert b["cases_run"] >= 20 * 8, (name, b["cases_run"])
        assert b["passed"] and not b["failures"], (name, b["failures"][:3])
        assert b["statuses"].get("skip", 0) == 0
    assert res["base_passed"]
