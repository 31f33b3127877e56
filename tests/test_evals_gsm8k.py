"""`gdn-harness gsm8k`: the offline lm-eval task, accuracy, the gate and the per-question diff,
run end to end on tiny random-weight checkpoints of both architectures (fp32, CPU)."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
from harness.cli import main
from harness.evals.gsm8k import TASK, summarize, task_config, wilson_lower
from tests.tiny_gdn_models import make_model_dir

FAULT = "harness.faults.catalogue:InterleavedCoreOnFlat"
QUESTIONS = [("What is 3 plus 4?", "3+4=7\n#### 7"), ("What is 12 minus 5?", "12-5=7\n#### 7"),
             ("Tom has 6 bags of 7 apples. How many apples?", "6*7=42\n#### 42")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gsm8k_data")
    for split, rows in (("test", QUESTIONS), ("train", QUESTIONS[::-1])):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(dict(question=q, answer=a)) + "\n" for q, a in rows))
    return d


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_gdn_cli")
    return {a: make_model_dir(root / a, a, seed=2) for a in ("qwen3_5", "qwen3_next")}


def test_task_is_lm_evals_gsm8k_on_local_files():
    """Everything but the dataset source (and the name) equals lm-eval's own gsm8k task."""
    import lm_eval
    import yaml
    theirs = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    ours = task_config({"test": "/x/test.jsonl", "train": "/x/train.jsonl"})
    assert ours["dataset_kwargs"] == {"data_files": {"test": "/x/test.jsonl", "train": "/x/train.jsonl"}}
    skip = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}
    assert {k: v for k, v in theirs.items() if k not in skip} == {k: v for k, v in TASK.items() if k not in skip}
    assert task_config({"test": "/x/t.jsonl"})["fewshot_split"] is None


def test_wilson_lower_bound():
    assert wilson_lower(9, 10) == pytest.approx(0.5958, abs=1e-4)
    assert wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)
    assert wilson_lower(0, 10) == 0.0 and wilson_lower(0, 0) == 0.0


def _fake_runs(correct):
    """runs / rows as cmd_gsm8k builds them: backend -> list of per-question strict correctness."""
    runs = {b: dict(seconds=1.0, filled_ops=[]) for b in correct}
    rows = [dict(divergence={}, tokens_agree=True,
                 answers={b: dict(strict_correct=c[i], flexible_correct=c[i]) for b, c in correct.items()})
            for i in range(len(next(iter(correct.values()))))]
    return runs, rows


@pytest.mark.parametrize("port, threshold, fails", [
    ([1] * 8 + [0] * 2, None, []),                   # 0.8 vs 0.8
    ([1] * 8 + [0] * 2, 0.85, ["port", "reference"]),  # both under the threshold
    ([1] * 7 + [0] * 3, None, []),                   # 0.1 below: within tolerance 0.1
    ([1] * 6 + [0] * 4, None, ["port"]),             # 0.2 below
])
def test_gate(port, threshold, fails):
    runs, rows = _fake_runs({"reference": [1] * 8 + [0] * 2, "port": port})
    s = summarize(runs, rows, "reference", Namespace(metric="strict", tolerance=0.1, threshold=threshold))
    assert sorted(b for b, x in s["backends"].items() if x["status"] == "fail") == fails
    assert len(s["failures"]) == len(fails)


def _run(model, data, backends, report, *extra):
    code = main(["gsm8k", "--model", str(model), "--data", str(data), "--backends", backends, "--num-fewshot", "0",
                 "--max-gen-toks", "3", "--limit", "2", "--threads", "1", "--device", "cpu",
                 "--report-dir", str(report), *extra])
    return code, json.loads((report / "gsm8k.json").read_text())


@pytest.mark.parametrize("arch", ["qwen3_5", "qwen3_next"])
def test_per_question_diff_reference_triton_and_interleaved_fault(arch, model_dirs, data_dir, tmp_path):
    """fp32: triton generates exactly the reference's tokens on every question of both
    architectures; the fused path that assumes the interleaved layout changes every answer
    of the flat (Qwen3.5) model. ~20 s each: Triton runs interpreted on the CPU."""
    flat = arch == "qwen3_5"
    code, rep = _run(model_dirs[arch], data_dir, "reference,triton" + (f",{FAULT}" if flat else ""), tmp_path)
    rows = rep["questions"]
    assert [r["doc_id"] for r in rows] == [0, 1] and rep["summary"]["baseline"] == "reference"
    assert all("triton" not in r["divergence"] for r in rows)
    assert rep["summary"]["backends"]["triton"]["agreement_with_baseline"] == 1.0
    assert all(r["answers"]["triton"]["text"] == r["answers"]["reference"]["text"] for r in rows)
    if not flat:
        assert all(r["tokens_agree"] for r in rows) and code == 0
    else:
        for r in rows:
            d = r["divergence"][FAULT]
            assert d["index"] == 0 and d["token"] != d["baseline_token"]
        assert rep["summary"]["backends"][FAULT]["agreement_with_baseline"] == 0.0
    md = (tmp_path / "summary.md").read_text()
    assert "| triton |" in md and "Wilson" in md


def test_usage_errors_exit_2(model_dirs, data_dir, tmp_path):
    base = ["gsm8k", "--threads", "1", "--device", "cpu", "--report-dir", str(tmp_path)]
    assert main(base + ["--data", str(data_dir)]) == 2                                   # no --model
    assert main(base + ["--model", str(tmp_path), "--data", str(data_dir)]) == 2        # not a model dir
    m = ["--model", str(model_dirs["qwen3_5"])]
    assert main(base + m + ["--data", str(data_dir), "--backends", "no_such_backend"]) == 2
    assert main(base + m + ["--data", str(tmp_path / "missing")]) == 2
    assert main(base + m + ["--data", str(data_dir / "test.jsonl"), "--num-fewshot", "5"]) == 2
