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


def test_unknown_backend_exits_2_and_ends_the_workers_started_ahead(tmp_path, capsys):
    """`run` starts its workers before it loads the backends; a backend that fails to load ends them."""
    from harness.run import isolate
    assert main(["run", "--suite", "smoke", "--backend", "no-such-backend", "-k", "tp_reduce", "--jobs", "2",
                 "--report-dir", str(tmp_path / "x")]) == 2
    assert "unknown backend 'no-such-backend'" in capsys.readouterr().err
    pool = isolate.shared_pool()
    assert not pool._idle and not pool._busy


def test_malformed_policy_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[entry]]\nop = "self.tp_reduce"\nkind = "fuzzy"\nreason = "x"\n')
    assert run(tmp_path, "--policy", str(bad)) == 2
    assert "bad.toml:entry[0].kind" in capsys.readouterr().err


def test_list_and_console_script():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list", "presets"], capture_output=True, text=True)
    assert out.returncode == 0 and "qwen3-next-80b-a3b" in out.stdout and "layout=interleaved" in out.stdout
    assert main(["list", "checks"]) == 0 and main(["list", "suites"]) == 0


def test_help_reads_clean(capsys):
    import argparse

    from harness.cli import build_parser
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "gdn-harness" in out
    parser = build_parser()
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in parser.subcommands.items()
               for a in sp._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    assert "exit codes:" in run_help and "130" in run_help and "examples:" in run_help
    assert "--no-isolate" in run_help and "--timeout" in run_help


def test_unknown_option_prints_the_subcommands_usage(capsys):
    assert main(["run", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "usage: gdn-harness run" in err and "unrecognized arguments: --frobnicate" in err


@pytest.mark.parametrize("args,words", [(["--no-isolate", "--timeout", "5"], "--timeout needs worker processes"),
                                        (["--no-isolate", "--jobs", "2"], "--jobs runs cases in worker processes")])
def test_in_process_refuses_what_needs_workers(tmp_path, capsys, args, words):
    assert run(tmp_path, *FAST, *args) == 2
    assert words in capsys.readouterr().err


def test_isolation_is_the_default_but_for_the_reference(tmp_path):
    assert run(tmp_path, *FAST) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["isolation"] == "in process"
    assert main(["run", "-q", "--report-dir", str(tmp_path / "p"), "--suite", "smoke", "--backend",
                 "tests.plugin_example:ExamplePortBackend", "-k", "op.fused_gdn_gating[ and contiguous"]) == 0
    doc = json.loads((tmp_path / "p" / "results.json").read_text())
    assert doc["isolation"] == "workers" and doc["run_state"] == "complete" and doc["timeout_s"] == 600
