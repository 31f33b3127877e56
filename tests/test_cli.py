"""gdn-harness run / list: exit codes 0 / 1 / 2 and the report files."""
import json
import subprocess
import sys

import pytest

from harness.cli import main

FAST = ["-k", "self.batch_independence[qwen3-next", "-k", "self.untouched_slots[qwen3.5-0.8b:shrunk-flat"]


def run(tmp_path, *args):
    return main(["run", "-q", "--report-dir", str(tmp_path / "r"), *args])


def test_run_passes_and_writes_reports(tmp_path):
    assert run(tmp_path, *FAST) == 0
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert doc["schema_version"] == 1 and doc["counts"]["pass"] == doc["counts"]["total"] == 2
    case = doc["cases"][0]
    for key in ("id", "backend", "op", "layout", "tp", "dtype", "seed", "status", "metrics", "tolerance",
                "margin", "repro"):
        assert key in case
    assert case["metrics"] and {"max_abs", "rel_rms", "max_abs_index", "first_divergent_token"} <= set(case["metrics"][0])
    assert case["tolerance"] and all(t["reason"] for t in case["tolerance"].values())
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "2 passed, 0 failed" in summary


def test_correctness_failure_exits_1_with_diagnosis(tmp_path):
    policy = tmp_path / "strict.toml"
    policy.write_text('version = 1\n[[entry]]\nop = "self.chunked_vs_recurrent"\nkind = "exact"\n'
                      'reason = "deliberately impossible: chunked and recurrent reassociate sums"\n')
    rc = run(tmp_path, "--policy", str(policy), "-k", "self.chunked_vs_recurrent[qwen3-next")
    assert rc == 1
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert doc["cases"][0]["status"] == "fail" and "out of tolerance" in doc["cases"][0]["diagnosis"]
    assert "## Failures" in (tmp_path / "r" / "summary.md").read_text()


@pytest.mark.parametrize("args", [["run", "--suite", "nope"], ["run", "-k", "no-such-case"], ["frobnicate"],
                                  ["run", "--tp"]])
def test_usage_errors_exit_2(tmp_path, args, capsys):
    assert main(args + ["--report-dir", str(tmp_path / "x")] if args[0] == "run" else args) == 2


def test_malformed_policy_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[entry]]\nop = "self.tp_reduce"\nkind = "fuzzy"\nreason = "x"\n')
    assert run(tmp_path, "--policy", str(bad)) == 2
    assert "bad.toml:entry[0].kind" in capsys.readouterr().err


def test_list_and_console_script():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list", "presets"], capture_output=True, text=True)
    assert out.returncode == 0 and "qwen3-next-80b-a3b" in out.stdout and "layout=interleaved" in out.stdout
    assert main(["list", "checks"]) == 0 and main(["list", "suites"]) == 0
