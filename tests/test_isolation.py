"""A backend that aborts the process and one that hangs each cost one case (an error
record with the stderr tail); the rest passes and the report exists. Ctrl-C mid-run
still writes the report of the finished cases."""
import json
import os
import signal
import subprocess
import sys
import time

from harness.cli import main

SUBSET = ["-k", "op.fused_recurrent_gated_delta_rule[", "-k", "op.fused_gdn_gating[", "--dtype", "float32"]


def _cases(report):
    return json.loads((report / "results.json").read_text())["cases"]


def test_aborting_backend_costs_one_case(tmp_path):
    rc = main(["run", "-q", "--suite", "smoke", "--backend", "tests.plugin_example:AbortingPort", "--isolate",
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
    rc = main(["run", "-q", "--suite", "smoke", "--backend", "tests.plugin_example:HangingPort", "--isolate",
               "--timeout", "8", "--report-dir", str(tmp_path), *SUBSET])
    assert rc == 1
    cases = _cases(tmp_path)
    hung = [c for c in cases if c["status"] == "error"]
    assert len(hung) == 1 and "strided" in hung[0]["id"] and "timed out after 8 s" in hung[0]["error"]
    assert sum(c["status"] == "pass" for c in cases) >= 3


def test_ctrl_c_writes_the_finished_cases(tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "run", "-q", "--suite", "smoke", "--backend",
           "tests.plugin_example:HangingPort", "--report-dir", str(tmp_path), *SUBSET]
    # started as a background job is: SIGINT ignored, which Python keeps unless told otherwise
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(12)                        # the hanging case blocks the run
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "interrupted" in err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["interrupted"] is True and 0 < len(doc["cases"]) < doc["planned_cases"]
    assert all(c["status"] == "pass" for c in doc["cases"])
