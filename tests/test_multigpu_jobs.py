"""Multi-GPU runs without GPUs: --jobs N keeps one worker process per job slot, each
pinned to its own GPU, and pytest-xdist workers map to GPUs."""
import os
import subprocess

import torch

from harness.run import isolate
from harness.cases.case import Case
from harness.config import get_preset


def test_one_pinned_worker_per_job_slot(monkeypatch):
    started, threads = [], []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(isolate.os, "cpu_count", lambda: 64)
    real = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(kwargs["env"].get("CUDA_VISIBLE_DEVICES"))
        threads.append(kwargs["env"].get("OMP_NUM_THREADS"))
        return real(*args, **kwargs)

    monkeypatch.setattr(isolate.subprocess, "Popen", spy)
    dims = get_preset("qwen3-next-80b-a3b").shrink()
    cases = [Case("self", "tp_reduce", dims, layout, tp, seed) for layout in ("interleaved", "flat")
             for tp in (1, 2) for seed in (0, 1)]
    recs = []
    isolate.run_isolated(cases, "x", None, None, recs.append, jobs=2, timeout=120, gpus=2, pool=isolate.WorkerPool())
    assert sorted(r["id"] for r in recs) == sorted(c.id for c in cases)
    assert all(r["status"] == "pass" for r in recs)
    # one process per slot for all its 4 cases (not one per group), slots on GPUs 0 and 1
    assert sorted(started) == ["0", "1"]
    assert threads == ["32", "32"]            # the host's CPUs shared, not 64 spinning threads each


def test_cpu_share_keeps_the_users_setting(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert isolate.share_cpus(dict(os.environ), 8)["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(isolate.os, "cpu_count", lambda: 6)
    assert isolate.share_cpus({}, 4) == dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_xdist_worker_takes_its_gpu(monkeypatch):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "suite_entry", Path(__file__).resolve().parent.parent / "suites" / "test_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for worker, want in (("gw0", "cuda:0"), ("gw3", "cuda:3"), ("gw5", "cuda:1")):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        assert mod._worker_device("cuda") == want
    assert mod._worker_device("cpu") == "cpu"
