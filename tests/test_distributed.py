"""Distributed TP on torch.distributed (gloo, CPU): world sizes 2 and 4 agree with the
in-process TP simulation, a rank on the wrong ba shard is caught, a crashed or hung rank
becomes an error record and the run goes on."""
import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from harness.cases.case import Case
from harness.cli import main
from harness.config import GDNDims
from harness.run.distributed import run_distributed
from harness.layouts.tp import shard_params
from harness.judge.policy import Policy
from harness.run.runner import run_case

ROOT = Path(__file__).resolve().parent.parent
DIMS = "qwen3-next-80b-a3b:shrunk:H=4,K=8,V=12,hidden=32"      # H = 4, HV = 8: TP 2 and 4


def _triton_on_cpu() -> bool:
    """Triton can run this process's CPU cases: installed and interpreted (the backend turns
    the interpreter on at its import where there is no GPU; triton is not imported here)."""
    return importlib.util.find_spec("triton") is not None and (
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.fixture
def rank_env(monkeypatch):
    # Ranks and the in-process run use one CPU thread each: CPU kernels round differently
    # with different thread counts, and the comparison below is bit for bit.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "tp.toml"
    path.write_text(f"""name = "tp"
[[group]]
level = "layer"
mixes = ["mixed"]
dims = ["{DIMS}"]
layout = ["interleaved", "flat"]
tp = [1, 2, 4]
dtype = ["float32"]
state_dtype = ["float32"]
conv_layout = ["token_first"]
""")
    return path


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_run_matches_in_process_tp(world, tmp_path, rank_env):
    # world 2: both backends on the flat layout; world 4: the reference on both layouts
    backends = ["reference"] + (["triton"] if world == 2 and _triton_on_cpu() else [])
    out = tmp_path / "report"
    args = ["run", "--suite", str(_suite(tmp_path)), "--tp", str(world), "--distributed", "-q",
            "--report-dir", str(out)] + [a for b in backends for a in ("--backend", b)]
    args += ["--layout", "flat"] if world == 2 else []
    assert main(args) == 0
    assert all((out / f).is_file() for f in ("results.json", "summary.md", "junit.xml", "report.html"))
    doc = json.loads((out / "results.json").read_text())
    assert doc["counts"]["pass"] == doc["counts"]["total"] == (2 if world == 4 else len(backends))
    for rec in doc["cases"]:
        assert rec["tp"] == world and rec["distributed"] == dict(world_size=world, process_group="gloo")
        assert rec["repro"].endswith(f"--tp {world} --distributed")
        names = {m["output"] for m in rec["metrics"]}
        assert {"step0.proj_qkvz", "step2.proj_ba", "conv_state", "ssm_state"} <= names
        in_process = run_case(Case.from_dict(rec["case"]), Policy(), "tp")
        assert in_process["status"] == "pass", (in_process["error"], in_process.get("traceback"))
        sim = {m["output"]: m for m in in_process["metrics"]}
        for m in rec["metrics"]:
            if m["output"].split(".")[-1].startswith("proj_"):
                continue                    # distributed-only check
            s = sim[m["output"]]
            if m["output"].endswith(".out") and world > 2:
                # the all-reduce sums 4 fp32 partials in its own order: ulps, not bits
                assert abs(m["rel_rms"] - s["rel_rms"]) < 1e-6 and m["passed"], m["output"]
            else:   # same shards, same ops, same oracle: bit-identical results
                assert (m["rel_rms"], m["max_abs"], m["max_abs_index"]) == \
                       (s["rel_rms"], s["max_abs"], s["max_abs_index"]), (rec["id"], m["output"])


def planted_faults(w, dims, layout, tp, rank, ba="sharded"):
    """Faults by dims name: 'wrong_ba' - rank 1 loads rank 0's in_proj_ba rows (a sharding
    fault); 'crash' - rank 1 segfaults; 'hang' - rank 1 never returns; 'raise' - rank 1
    raises; 'unsupported' - every rank raises NotImplementedError."""
    if rank == 1 and dims.name == "raise":
        raise ValueError("rank 1 cannot shard this")
    if dims.name == "unsupported":
        raise NotImplementedError("no such sharding")
    if rank == 1 and dims.name == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if rank == 1 and dims.name == "hang":
        time.sleep(3600)
    p = shard_params(w, dims, layout, tp, rank, ba)
    if rank == 1 and dims.name == "wrong_ba":
        p.w_ba = shard_params(w, dims, layout, tp, 0, ba).w_ba
    return p


def _case(name: str, mix: str = "decode_only") -> Case:
    dims = GDNDims(hidden=32, H=4, HV=8, K=8, V=12, name=name)
    return Case("layer", mix, dims, "interleaved", 2, 0, "cpu", "reference", "float32", "float32",
                "recurrent.token_first.sharded")


@pytest.fixture(scope="module")
def fault_records():
    """One world-2 run over the planted faults (each world start costs seconds of imports)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        mp.chdir(ROOT)
        recs = []
        # the crash case runs in the fresh world started after the hang
        run_distributed([_case("wrong_ba", "mixed"), _case("raise"), _case("unsupported"), _case("hang"),
                         _case("crash")], "tp", None, None,
                        recs.append, world=2, timeout=8, init_timeout=60,
                        sharder="tests.test_distributed:planted_faults")
    return {r["dims"]["name"]: r for r in recs}


def test_wrong_ba_shard_is_caught(fault_records):
    rec = fault_records["wrong_ba"]
    failed = [m["output"] for m in rec["metrics"] if not m["passed"]]
    assert rec["status"] == "fail" and failed, rec.get("error")
    # the oracle starts from the ranks' projections, so the TP=1 projection check names it
    assert all(name.endswith("proj_ba") for name in failed) and "proj_ba" in rec["diagnosis"]
    # judged by runner.run_case on rank 0, so diagnosed like an in-process case (conftest plugs the stage in)
    assert isinstance(rec["hypotheses"], list) and rec["diagnosis_s"] > 0 and "diagnosis_error" not in rec
    assert rec["phases"] and rec["distributed"] == dict(world_size=2, process_group="gloo")


def test_one_rank_raising_is_every_rank_s_error(fault_records):
    """Agreed on before any collective: rank 1's exception is the case's error (its traceback
    kept), the world goes on; NotImplementedError on every rank is a skip."""
    raised, unsupported = fault_records["raise"], fault_records["unsupported"]
    assert raised["status"] == "error" and raised["error"].startswith("rank 1: ValueError: rank 1 cannot shard this")
    assert "planted_faults" in raised["traceback"]
    assert unsupported["status"] == "skip" and "no such sharding" in unsupported["error"]


def test_crashed_and_hung_ranks_become_error_records(fault_records):
    assert len(fault_records) == 5
    hung, crashed = fault_records["hang"], fault_records["crash"]
    assert hung["status"] == crashed["status"] == "error"
    assert "timed out after 8 s" in hung["error"]
    assert "1 exited with code -11 (signal 11)" in crashed["error"] and "--- rank 1 stderr ---" in crashed["stderr_tail"]
    assert hung["duration_s"] is None and hung["repro"].endswith("--tp 2 --distributed")


@pytest.mark.parametrize("extra", [[], ["--tp", "1"], ["--tp", "2", "--tp", "4"]])
def test_distributed_needs_one_world_size(extra, tmp_path, capsys):
    assert main(["run", "--suite", str(_suite(tmp_path)), "--distributed", "-q"] + extra) == 2
    assert "--distributed needs exactly one --tp N" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the error without enough GPUs")
def test_distributed_nccl_needs_a_gpu_per_rank(tmp_path, capsys):
    assert main(["run", "--suite", str(_suite(tmp_path)), "--distributed", "--tp", "2", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "needs 2 GPUs" in err or "no CUDA device" in err
