"""The canary through `gdn-harness gsm8k --canary` (CPU, offline): reference and triton answer its
held-out problems (>= 0.9), the zoo's interleaved-layout fault on a flat model breaks it (< 0.1),
and the Qwen3-Next twin answers exactly as the Qwen3.5 canary does."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")
from harness.cli import main
from harness.evals.canary_task import QWEN35_DIR, QWEN3NEXT_DIR

FAULT = "harness.faults.catalogue:InterleavedCoreOnFlat"
pytestmark = pytest.mark.skipif(not (QWEN35_DIR / "model.safetensors").is_file(),
                                reason="canary weights not built (scripts/experiments/canary_train.py)")


def _run(tmp_path, name, *argv):
    out = tmp_path / name
    code = main(["gsm8k", "--canary", "--report-dir", str(out), *argv])
    return code, json.loads((out / "gsm8k.json").read_text())


def _acc(rep, backend):
    return rep["summary"]["backends"][backend]["accuracy"]["strict"]["accuracy"]


def test_reference_answers_canary_and_twin_identically(tmp_path):
    code, rep = _run(tmp_path, "qwen35", "--backends", "reference", "--limit", "100")
    assert code == 0 and _acc(rep, "reference") >= 0.9
    code, twin = _run(tmp_path, "twin", "--model", str(QWEN3NEXT_DIR), "--backends", "reference", "--limit", "100")
    assert twin["meta"]["layout"] == "interleaved" and rep["meta"]["layout"] == "flat"
    assert [q["answers"]["reference"]["text"] for q in twin["questions"]] == \
        [q["answers"]["reference"]["text"] for q in rep["questions"]]


@pytest.mark.slow
def test_interleaved_fault_drops_canary_accuracy(tmp_path):
    """The issue's done-when. ~1 min on one CPU thread: the fault (triton ops) runs under the
    Triton interpreter, ~5 s per question. Unmutated triton on the canary (>= 0.9, status
    pass) is the CI step `gdn-harness gsm8k --canary` (.ci/run, 12 questions), and triton's
    tokens equal the reference's per question in test_evals_gsm8k: not run a third time here."""
    code, rep = _run(tmp_path, "zoo", "--backends", f"reference,{FAULT}", "--limit", "10")
    assert _acc(rep, "reference") >= 0.9
    assert _acc(rep, FAULT) < 0.1
    assert code == 1 and rep["summary"]["backends"][FAULT]["status"] == "fail"
    assert rep["summary"]["backends"]["reference"]["status"] == "pass"
