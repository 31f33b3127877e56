"""The shrinker: a planted fault's failing case shrinks to a strictly smaller case that
still fails the same way, the written JSON replays through `repro`, a passing case is
refused. Reference-based faults only (pure torch: fast on the CPU)."""
import json

import pytest

from harness.cases.case import Case
from harness.cli import main
from harness.judge.policy import Policy
from harness.run.runner import run_case
from harness.tools.shrink import case_size, failure_signature, same_failure, shrink_case, write_case
from harness.cases.suite import parse_dims

ZERO_INIT = "harness.faults.catalogue:ChunkZeroInitialState"
NORM_FLIP = "harness.faults.catalogue:NormBeforeGateFlipped"


# a chunked-prefill continuation next to a fresh prefill, at TP 2 (small: the test stays fast)
SMALL = {"steps": [[{"seq": 0, "kind": "prefill", "tokens": 6}, {"kind": "pad"}],
                   [{"seq": 0, "kind": "prefill", "tokens": 5}, {"seq": 1, "kind": "prefill", "tokens": 3}]],
         "num_spec": 0}


def _layer_case(backend=ZERO_INIT):
    return Case("layer", "chunked_prefill", parse_dims("qwen3-next-80b-a3b:shrunk"), "flat", 2, 0, "cpu", backend,
                "float32", "float32", "recurrent.token_first.sharded", scenario=SMALL)


def test_layer_fault_shrinks_and_replays(tmp_path, capsys):
    case = _layer_case()
    res = shrink_case(case, budget_s=60, max_evals=4)
    assert res.evaluations <= 4 and res.accepted
    assert res.size < res.original_size == case_size(case)
    m = res.minimal
    # what is checked never changes; the scenario is explicit and strictly smaller
    assert (m.level, m.check, m.backend, m.layout, m.variant, m.dtype, m.seed) == \
        (case.level, case.check, case.backend, case.layout, case.variant, case.dtype, case.seed)
    assert case_size(m) == res.size and m.id != case.id
    again = run_case(m, Policy(), "t")
    assert again["status"] == "fail" and same_failure(res.signature, again)
    # the control (the fault's base, the reference) passes the minimal case
    assert res.control == "reference" and run_case(Case.from_dict({**m.to_dict(), "backend": "reference"}),
                                                   Policy(), "t")["status"] == "pass"
    path = write_case(tmp_path / "min.json", res)
    doc = json.loads(path.read_text())
    assert Case.from_dict(doc["case"]).id == m.id and doc["repro"] == f"gdn-harness repro {path}"
    assert doc["shrink"]["original_size"] > doc["shrink"]["size"]
    capsys.readouterr()
    assert main(["repro", str(path)]) == 1
    assert f"{m.id}: FAIL" in capsys.readouterr().out


def test_op_fault_cli_writes_minimal_case(tmp_path, capsys):
    case = Case("op", "rms_norm_gated", parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"), "flat", 1, 0, "cpu",
                NORM_FLIP, "float32", "float32", "before-silu-whole")
    src = tmp_path / "case.json"
    src.write_text(json.dumps(dict(case=case.to_dict(), suite="smoke")))
    out = tmp_path / "min.json"
    assert main(["shrink", str(src), "--out", str(out), "--max-evals", "10"]) == 1
    text = capsys.readouterr().out
    assert f"repro: gdn-harness repro {out}" in text
    doc = json.loads(out.read_text())
    m = Case.from_dict(doc["case"])
    assert case_size(m) < case_size(case) and m.dims.K != m.dims.V and m.dims.HV % m.dims.H == 0
    assert doc["shrink"]["same_failure"] == {"status": "fail", "outputs": [dict(quantity="y", kind="out", cache=None)]}
    assert doc["shrink"]["failing_outputs"] == ["y"]
    assert main(["repro", str(out)]) == 1


def test_passing_case_is_refused(tmp_path, capsys):
    src = tmp_path / "pass.json"
    src.write_text(json.dumps(dict(case=_layer_case("reference").to_dict(), suite="smoke")))
    assert main(["shrink", str(src), "--out", str(tmp_path / "min.json")]) == 2
    err = capsys.readouterr().err
    assert "does not fail" in err and "status pass" in err and not (tmp_path / "min.json").exists()


def _m(output, passed=False, quantity=None, kind="out", step=None, cache=None):
    """A metric as the judge writes it (harness.judge.verdict)."""
    return dict(output=output, passed=passed, quantity=quantity or output, kind=kind, step=step, cache=cache)


def test_same_failure_ignores_step_numbers_only():
    rec = dict(status="fail", metrics=[_m("step3.core", quantity="core", step=3),
                                       _m("ssm_state", True, kind="state", cache="ssm")])
    sig = failure_signature(rec)
    assert sig == {"status": "fail", "outputs": [dict(quantity="core", kind="out", cache=None)]}
    assert same_failure(sig, dict(status="fail", metrics=[_m("step0.core", quantity="core", step=0)]))
    assert not same_failure(sig, dict(status="fail", metrics=[_m("ssm_state", kind="state", cache="ssm")]))
    assert not same_failure(sig, dict(status="error", structural="exception", error_type="RuntimeError",
                                      error="RuntimeError: x", metrics=[]))
    err = failure_signature(dict(status="error", structural="exception", error_type="IndexError",
                                 error="IndexError: out of range"))
    assert same_failure(err, dict(status="error", structural="exception", error_type="IndexError", error="other")) \
        and not same_failure(err, dict(status="error", structural="exception", error_type="ValueError", error="x"))


def test_same_failure_reads_fields_where_the_name_regex_was_fooled():
    """The old rule (a regex turning ``step3`` / ``seq1`` in output names into ``step*`` /
    ``seq*``, and the error text up to its first colon) was fooled both ways; the record's
    fields are not."""
    import re
    regex = lambda name: re.sub(r"\b(step|seq)\d+", r"\1*", name)
    # 1. the same failure, renamed by a dropped step: the spec-invariance check names its decode step
    #    "[decode step 2]" (no digit right after "step"), so the regex kept it
    inv = "spec_invariance.core"
    before = dict(status="fail", metrics=[_m("spec_invariance.step3[decode step 2].core", quantity=inv)])
    after = dict(status="fail", metrics=[_m("spec_invariance.step2[decode step 1].core", quantity=inv)])
    assert regex(before["metrics"][0]["output"]) != regex(after["metrics"][0]["output"])
    assert same_failure(failure_signature(before), after)
    # 2. the same shape error one step earlier: the regex took "output step3.core" for the error type
    shape = lambda s: dict(status="error", structural="shape", error=f"output step{s}.core: expected shape (5, 2, 4), "
                           "got (5, 8)", broken_outputs=[dict(output=f"step{s}.core", quantity="core", kind="out")])
    assert shape(3)["error"].split(":", 1)[0] != shape(2)["error"].split(":", 1)[0]
    assert same_failure(failure_signature(shape(3)), shape(2))
    assert not same_failure(failure_signature(shape(3)), dict(shape(2), broken_outputs=[
        dict(output="step2.out", quantity="out", kind="out")]))
    # 3. two different failures under similar names: garbage in PAD rows reported under the output's own
    #    name vs wrong values in the output's real rows - one name after the regex, not one failure
    pad = dict(status="fail", metrics=[_m("step1.out", quantity="out", kind="pad_rows", step=1)])
    real = dict(status="fail", metrics=[_m("step2.out", quantity="out", step=2)])
    assert regex("step1.out") == regex("step2.out")
    assert not same_failure(failure_signature(pad), real)
    # 4. a conv state and a recurrent state whose names say nothing of which is which
    conv = dict(status="fail", metrics=[_m("pool", kind="state", cache="conv")])
    ssm = dict(status="fail", metrics=[_m("pool", kind="state", cache="ssm")])
    assert not same_failure(failure_signature(conv), ssm)


def test_scenario_field_is_backwards_compatible():
    case = Case.from_dict({k: v for k, v in _layer_case().to_dict().items() if k != "scenario"})
    assert "scenario" not in case.to_dict() and "-sc" not in case.id
    with_sc = Case.from_dict({**case.to_dict(), "scenario": {"steps": [[{"seq": 0, "kind": "decode"}]], "num_spec": 0}})
    assert with_sc.id != case.id and Case.from_dict(with_sc.to_dict()).id == with_sc.id
    with pytest.raises(Exception, match="only op and layer cases"):
        Case.from_dict({**with_sc.to_dict(), "level": "self"})


def test_op_case_drops_sequences_of_its_sample():
    """An op case's sample shrinks too: the varlen leak still shows with fewer, shorter sequences."""
    case = Case("op", "chunk_gated_delta_rule", parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"), "flat", 1, 0,
                "cpu", "harness.faults.catalogue:VarlenStateLeak", "float32", "float32", "varlen",
                scenario={"seqs": [0, 2, 3], "lens": [1, 9, 7]})     # 3 of the variant's 4 sequences, shorter
    res = shrink_case(case, budget_s=60, max_evals=3, control=None)
    full, part = res.summary()["original_parts"], res.summary()["parts"]
    assert (full["seqs"], full["tokens"]) == (3, 17)
    assert part["seqs"] < 3 and part["tokens"] < 17 and res.size < res.original_size
    assert same_failure(res.signature, run_case(res.minimal, Policy(), "t", diagnose=False))
