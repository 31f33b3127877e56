"""A suite as pytest tests: ``pytest suites/ --backend triton [--suite ci] [--device cuda] -n 4``.

One test per case (ids are the case ids, so -k works as with the CLI). Under
pytest-xdist with several GPUs each worker takes its own GPU.
"""
import os

import pytest
import torch

from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import expand, load_suite

_POLICY = Policy()
_BACKENDS = BackendCache()


def _worker_device(device: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if device == "cuda" and worker.startswith("gw") and torch.cuda.device_count() > 1:
        return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"
    return device


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    suite = load_suite(opt("--suite"))
    backends = [b for arg in (opt("--backend") or ["reference"]) for b in arg.split(",") if b]
    cases = expand(suite, backends, device=opt("--device"))
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def test_case(case, request):
    case.device = _worker_device(case.device)
    oracle = request.config.getoption("--oracle-device")
    rec = run_case(case, _POLICY, request.config.getoption("--suite"), _BACKENDS, oracle)
    if rec["status"] == "skip":
        pytest.skip(rec["error"])
    if rec["status"] == "error":
        pytest.fail(f"{rec['error']}\n{rec.get('traceback', '')}\nrepro: {rec['repro']}", pytrace=False)
    assert rec["status"] == "pass", f"{rec['diagnosis']}\nrepro: {rec['repro']}"
