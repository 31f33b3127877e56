"""A backend that aborts the process and one that hangs each cost one case (an error
record with the stderr tail); the rest passes and the report exists. Ctrl-C mid-run
still writes the report of the finished cases."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main

SUBSET = ["-k", "op.fused_recurrent_gated_delta_rule[", "-k", "op.fused_gdn_gating[", "--dtype", "float32"]


def _cases(report):
    return json.loads((report / "results.json").read_text())["cases"]


def test_aborting_backend_costs_one_case(tmp_path):
    rc = main(["run", "-q", "--suite", "smoke", "--backend", "tests.plugin_example:AbortingPort",
               "--timeout", "120", "--report-dir", str(tmp_path), *SUBSET])
    assert rc == 1
    cases = {c["id"]: c for c in _cases(tmp_path)}
    errors = [c for c in cases.values() if c["status"] == "error"]
    assert len(errors) == 1 and "spec" in errors[0]["id"]
    assert "worker died" in errors[0]["error"] and "fatal error in spec kernel" in errors[0]["stderr_tail"]
    assert sum(c["status"] == "pass" for c in cases.values()) >= 3       # decode / varlen / gating passed
    assert (tmp_path / "summary.md").exists()


def test_broken_cuda_context_costs_one_case(tmp_path):
    """A sticky CUDA error (illegal memory access) ends its worker: the cases after it run in a fresh one."""
    rc = main(["run", "-q", "--suite", "smoke", "--backend", "tests.plugin_example:PoisoningPort", "--isolate",
               "--timeout", "120", "--report-dir", str(tmp_path), "-k", "op.fused_recurrent_gated_delta_rule[",
               "--dtype", "float32"])
    assert rc == 1
    cases = _cases(tmp_path)
    errors = [c for c in cases if c["status"] == "error"]
    assert len(errors) == 1 and "spec" in errors[0]["id"] and "illegal memory access" in errors[0]["error"]
    after = cases[[c["id"] for c in cases].index(errors[0]["id"]) + 1:]
    assert after and all(c["status"] == "pass" for c in after), [(c["id"], c["status"]) for c in after]


def test_hanging_backend_times_out(tmp_path):
    rc = main(["run", "-q", "--suite", "smoke", "--backend", "tests.plugin_example:HangingPort",
               "--timeout", "25", "--report-dir", str(tmp_path), *SUBSET])
    # 25 s: the real cases finish in about a second alone, but 8 s was exceeded by a worker's
    # first case (imports, compiles) on a GPU machine running 8 test workers at once
    assert rc == 1
    cases = _cases(tmp_path)
    hung = [c for c in cases if c["status"] == "error"]
    assert len(hung) == 1 and "strided" in hung[0]["id"] and "timed out after 25 s" in hung[0]["error"]
    assert hung[0]["structural"] == "timeout" and hung[0]["duration_s"] >= 25      # not "0.00 s"
    assert "crashed" not in (tmp_path / "summary.md").read_text()
    assert sum(c["status"] == "pass" for c in cases) >= 3


def test_ctrl_c_writes_the_finished_cases(tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "run", "-q", "--suite", "smoke", "--backend",
           "tests.plugin_example:HangingPort", "--no-isolate", "--report-dir", str(tmp_path), *SUBSET]
    # started as a background job is: SIGINT ignored, which Python keeps unless told otherwise
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    # the hanging case blocks the run once a case has finished (no fixed sleep: a loaded GPU
    # machine took longer than 12 s to finish the first case)
    _wait_for(lambda: _finished(tmp_path) >= 1, seconds=180)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err             # 128 + SIGINT: interrupted, not a verdict
    assert "interrupted" in err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["interrupted"] is True and 0 < len(doc["cases"]) < doc["planned_cases"]
    assert all(c["status"] == "pass" for c in doc["cases"])


def _wait_for(pred, seconds=90.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def _finished(report):
    try:
        return len(json.loads((report / "results.json").read_text())["cases"])
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("mode,sig", [("--no-isolate", signal.SIGINT), ("--isolate", signal.SIGTERM),
                                      ("--isolate", signal.SIGINT)])
def test_interrupt_inside_a_native_call_leaves_the_report(tmp_path, mode, sig):
    """A case stuck in native code (no signal ends it, as a hung kernel or a compiler
    deadlock): SIGINT / SIGTERM still leave every report file, marked interrupted, naming
    the running case; the cases never started are junit skips; the exit code is 128 + signal."""
    report = tmp_path / "r"
    cmd = [sys.executable, "-m", "harness.cli", "run", "--suite", "smoke", "--backend", "tests.plugin_example:StuckPort",
           mode, "--report-dir", str(report), "-k", "op.fused_gdn_gating["]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _wait_for(lambda: _finished(report) >= 1)        # the contiguous case passed; the strided one is stuck
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + sig, err
    doc = json.loads((report / "results.json").read_text())
    assert doc["interrupted"] is True and doc["run_state"] == "interrupted"
    assert doc["interrupt_signal"] == signal.Signals(sig).name and doc["planned_cases"] == 4
    assert [c["status"] for c in doc["cases"]] == ["pass"]
    running = [u for u in doc["unfinished_cases"] if u["state"] == "running"]
    assert len(running) == 1 and "strided" in running[0]["id"]
    assert sum(u["state"] == "not started" for u in doc["unfinished_cases"]) == 2
    assert running[0]["id"] in err and "interrupted" in err           # the console names the running case
    assert (report / "summary.md").read_text().startswith(f"# INTERRUPTED ({signal.Signals(sig).name})")
    junit = (report / "junit.xml").read_text()
    assert junit.count('type="Interrupted"') == 1 and junit.count("<skipped") == 2 and "not run: interrupted" in junit
    html = (report / "report.html").read_text()
    assert 'id="incomplete"' in html and running[0]["id"] in html
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "harness" / "report" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_a_run_killed_hard_leaves_the_finished_cases(tmp_path):
    """SIGKILL (the OOM killer's signal) cannot be handled: the report written as cases
    finish still has them, and says the run did not complete."""
    report = tmp_path / "r"
    cmd = [sys.executable, "-m", "harness.cli", "run", "-q", "--suite", "smoke", "--backend",
           "tests.plugin_example:StuckPort", "--report-dir", str(report), "-k", "op.fused_gdn_gating["]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)), start_new_session=True)
    _wait_for(lambda: _finished(report) >= 1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    doc = json.loads((report / "results.json").read_text())
    assert doc["run_state"] == "running" and doc["interrupted"] is False and len(doc["cases"]) == 1
    assert (report / "summary.md").read_text().startswith("# INCOMPLETE")
    assert "<skipped" in (report / "junit.xml").read_text()


def test_a_second_signal_does_not_cut_the_report_short(tmp_path):
    """`timeout -s INT` signals the run, then its process group (the run again): the second
    SIGINT landed in the report writing, which left no report.html / junit.xml."""
    report = tmp_path / "r"
    cmd = [sys.executable, "-m", "harness.cli", "run", "-q", "--no-isolate", "--suite", "smoke", "--backend",
           "tests.plugin_example:TwiceInterruptedPort", "--report-dir", str(report), "-k", "op.fused_gdn_gating["]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 130, proc.stderr
    doc = json.loads((report / "results.json").read_text())
    assert doc["run_state"] == "interrupted" and [c["status"] for c in doc["cases"]] == ["pass"]
    assert (report / "summary.md").read_text().startswith("# INTERRUPTED (SIGINT)")
    assert 'id="incomplete"' in (report / "report.html").read_text()       # before: the 2nd signal killed these
    assert 'type="Interrupted"' in (report / "junit.xml").read_text()
    assert "Traceback" not in proc.stderr


def test_a_killed_worker_is_named_by_its_signal():
    from harness.run.isolate import death_reason
    assert death_reason(-6) == "killed by signal 6 (SIGABRT)"
    assert "out-of-memory" in death_reason(-9) and "SIGKILL" in death_reason(-9)
    assert death_reason(3) == "exited with code 3"
