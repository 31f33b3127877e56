"""gdn-harness bisect-check: its verdicts, and `git bisect run` on a small kernel repository
whose history introduces a real fault (q / k heads tiled instead of grouped) and has one
commit that does not even import (exit 125: skipped by bisect)."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from harness.tools.bisect import BAD, GOOD, UNTESTABLE, judge_exit, judge_record, run_in_child
from harness.cli import main
from harness.cases.suite import expand, load_suite

CMD = [sys.executable, "-m", "harness.cli", "bisect-check"]


def _save_case(path, check="fused_recurrent_gated_delta_rule", variant="decode"):
    """A cheap op case of the smoke suite, as `gdn-harness repro <id> --save` writes it (smoke
    runs op cases on triton only: the reference's would compare the oracle with itself)."""
    case = next(c for c in expand(load_suite("smoke"), ["triton"]) if c.level == "op" and c.check == check
                and c.variant == variant and c.dtype == "float32")
    case.backend = "reference"
    assert case.dims.HV > case.dims.H > 1        # a head-mapping fault shows
    path.write_text(json.dumps(dict(case=case.to_dict(), suite="smoke"), indent=1))
    return case


# ---------------------------------------------------------------- verdicts
def test_record_verdicts():
    assert judge_record(dict(status="pass", metrics=[{}], margin=2.0))[0] == GOOD
    assert judge_record(dict(status="fail", diagnosis="o out of tolerance"))[0] == BAD
    assert judge_record(dict(status="skip", error="backend x runs on ['cuda'], not cpu"))[0] == UNTESTABLE
    untestable = ["BackendLoadError: backend 'p.m:B': importing p.m failed: SyntaxError: invalid syntax",
                  "ModuleNotFoundError: No module named 'triton'", "OutOfMemoryError: CUDA out of memory.",
                  "RuntimeError: No CUDA GPUs are available", "AssertionError: Torch not compiled with CUDA enabled"]
    for err in untestable:
        assert judge_record(dict(status="error", error=err))[0] == UNTESTABLE, err
    for err in ["RuntimeError: CUDA error: an illegal memory access was encountered",
                "IndexError: index 7 is out of bounds", "InputError: q: expected shape (1, 4, 2, 12), got (4, 2, 12)"]:
        assert judge_record(dict(status="error", error=err))[0] == BAD, err


def test_dead_process_verdicts():
    assert judge_exit(-signal.SIGSEGV, "")[0] == BAD
    assert judge_exit(-signal.SIGABRT, "")[0] == BAD
    assert judge_exit(-signal.SIGKILL, "")[0] == UNTESTABLE          # the OOM killer
    assert judge_exit(1, "Traceback ...\nMemoryError: out of memory")[0] == UNTESTABLE
    assert judge_exit(3, "something else")[0] == BAD


def test_usage_errors_exit_2(tmp_path):
    assert main(["bisect-check", "--case", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text('{"case": {"level": "op"}}')
    assert main(["bisect-check", "--case", str(tmp_path / "bad.json")]) == 2
    _save_case(tmp_path / "case.json")
    assert main(["bisect-check", "--case", str(tmp_path / "case.json"), "--backend", "no-such-backend"]) == 2
    assert main(["bisect-check", "--case", str(tmp_path / "case.json"), "--timeout", "0"]) == 2


def test_crash_is_bad_and_missing_device_untestable(tmp_path, capsys):
    # a kernel that aborts its process (as a segfault would) on spec decode
    case = _save_case(tmp_path / "case.json", variant="spec")
    case.backend = "tests.plugin_example:AbortingPort"
    code, why = run_in_child(case, "smoke", None, None, timeout=120)
    assert code == BAD and "SIGABRT" in why and "fatal error in spec kernel" in why
    if not torch.cuda.is_available():
        assert main(["bisect-check", "--case", str(tmp_path / "case.json"), "--device", "cuda"]) == UNTESTABLE
        assert "UNTESTABLE (exit 125)" in capsys.readouterr().out


def test_hang_is_bad_and_killed(tmp_path):
    # a kernel that never returns on a strided input; the timeout covers the child's start too
    case = _save_case(tmp_path / "case.json", check="fused_gdn_gating", variant="strided")
    case.backend = "tests.plugin_example:HangingPort"
    code, why = run_in_child(case, "smoke", None, None, timeout=5)    # returns once the child is killed and reaped
    assert code == BAD and why.startswith("hung")


# ---------------------------------------------------------------- git bisect run on a kernel repository
GOOD_SRC = '''"""A platform port of the GDN ops (the test's kernel repository)."""
from harness import reference as ref
from harness.optimized.reference_backend import ReferenceBackend


class PortBackend(ReferenceBackend):
    name = "port"
    VERSION = {version}

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, *args, **kwargs):
        # the port expands q / k heads to the value heads itself: head hv reads key head hv // r
        r = v.shape[-2] // q.shape[-2]
        q, k = (t.{expand} for t in (q, k))
        return ref.recurrent_gated_delta_rule(q, k, v, g, beta, *args, **kwargs)
'''
GROUPED = "repeat_interleave(r, dim=-2)"
TILED = "repeat(1, 1, r, 1)"          # the fault: head hv reads key head hv % H


def _git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    out = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (args, out.stdout[-3000:], out.stderr[-3000:])
    return out.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_bisect_run_names_the_faulty_commit(tmp_path):
    repo = tmp_path / "kernels"
    (repo / "gdnport").mkdir(parents=True)
    (repo / "gdnport" / "__init__.py").write_text("")
    _git(repo, "init", "-q", "-b", "main")
    history = [("port: recurrent op", GOOD_SRC.format(version=1, expand=GROUPED)),
               ("port: version 2", GOOD_SRC.format(version=2, expand=GROUPED)),
               ("port: version 3", GOOD_SRC.format(version=3, expand=GROUPED)),
               ("port: WIP refactor (does not import)", GOOD_SRC.format(version=4, expand=GROUPED)
                .replace("def fused_recurrent_gated_delta_rule(", "def fused_recurrent_gated_delta_rule((")),
               ("port: fix the refactor", GOOD_SRC.format(version=5, expand=GROUPED)),
               ("port: faster head expansion", GOOD_SRC.format(version=6, expand=TILED)),
               ("port: version 7", GOOD_SRC.format(version=7, expand=TILED))]
    shas = []
    for msg, src in history:
        (repo / "gdnport" / "backend.py").write_text(src)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", msg)
        shas.append(_git(repo, "rev-parse", "HEAD").strip())
    _save_case(tmp_path / "case.json")

    _git(repo, "bisect", "start", shas[-1], shas[0])
    run = _git(repo, "bisect", "run", *CMD, "--case", str(tmp_path / "case.json"),
               "--backend", "gdnport.backend:PortBackend", "--timeout", "300")
    first_bad = _git(repo, "rev-parse", "refs/bisect/bad").strip()
    log = _git(repo, "bisect", "log")
    _git(repo, "bisect", "reset")
    assert first_bad == shas[5], run[-3000:]
    assert f"{shas[5]} is the first bad commit" in run
    # each step printed its decision: the faulty commit as a correctness failure, and the
    # commit that does not import as untestable - skipped, not blamed
    assert "BAD (exit 1)" in run and "out of tolerance" in run and "GOOD (exit 0)" in run
    assert "UNTESTABLE (exit 125)" in run and "SyntaxError" in run
    assert f"git bisect skip {shas[3]}" in log, log
