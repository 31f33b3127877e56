"""gdn-harness bench on the CPU: the --quick report (ops, copy bandwidth, oracle) and the
suite time-to-verdict rows; timings are never asserted, only that they were taken."""
import json

import torch

from harness.tools.bench import bench_ops_of, bytes_moved
from harness.cli import main


def test_quick_bench_report(tmp_path):
    assert main(["bench", "--quick", "--device", "cpu", "--backend", "reference", "--tp", "1", "--tp", "2",
                 "--repeat", "1", "--report-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    rows = doc["rows"]
    copy = [r for r in rows if r["bench"] == "copy"]
    assert len(copy) == 1 and copy[0]["gbps"] > 0
    ops = [r for r in rows if r["bench"] == "op"]
    want = {(op, shape, tp) for tp in (1, 2) for shape in ("decode", "prefill") for op in bench_ops_of(shape)}
    assert {"causal_conv1d_update", "fused_recurrent_gated_delta_rule_packed_decode"} <= set(bench_ops_of("decode"))
    assert {"causal_conv1d_fn", "chunk_gated_delta_rule"} <= set(bench_ops_of("prefill"))
    assert {(r["op"], r["shape"], r["tp"]) for r in ops} == want
    for r in ops:
        assert r["median_s"] > 0 and r["bytes"] > 0 and r["frac_of_copy"] > 0, r
    assert {r["dims"]["HV"] for r in ops if r["tp"] == 2} == {doc["dims"]["HV"] // 2}
    (oracle,) = [r for r in rows if r["bench"] == "oracle"]
    assert oracle["tokens"] == 256 and oracle["median_s"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "## decode: 4 sequences x 1 token" in md and "## prefill: 2 sequences x 64 tokens" in md
    assert "Copy bandwidth" in md and "fp64 oracle" in md


def test_bytes_moved_counts_reads_writes_and_inplace_states():
    x, z, w = torch.ones(6, 4), torch.ones(6, 4), torch.ones(4)
    y = torch.ones(6, 4)
    assert bytes_moved(dict(x=x, weight=w, z=z, eps=1e-6), (), y) == (24 + 4 + 24 + 24) * 4
    pool = torch.ones(3, 2, 2)
    # a pool updated in place and returned counts once as read and once as written
    assert bytes_moved(dict(q=x, initial_state=pool), ("initial_state",), (y, pool)) == (24 + 12 + 24 + 12) * 4
    # so does an out= buffer the op fills and returns
    assert bytes_moved(dict(q=x, initial_state=pool, out=y), ("initial_state",), y) == (24 + 12 + 24 + 12 + 24) * 4


def test_suite_time_to_verdict_rows(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\n[[group]]\nlevel = "self"\nchecks = ["tp_reduce"]\n'
                     'dims = ["qwen3-next-80b-a3b:shrunk"]\n')
    assert main(["bench", "--quick", "--device", "cpu", "--no-ops", "--repeat", "1", "--suite-cost", str(suite),
                 "--suite-backend", "reference", "--suite-cache", str(tmp_path / "cache"),
                 "--suite-jobs", "1", "--suite-jobs", "2", "--report-dir", str(tmp_path / "out")]) == 0
    rows = [r for r in json.loads((tmp_path / "out" / "bench.json").read_text())["rows"] if r["bench"] == "suite"]
    assert [(r["cache"], r["jobs"]) for r in rows] == [("cold", 1), ("warm", 1), ("warm", 2)]
    for r in rows:
        assert r["exit_code"] == 0 and not r["hit_limit"] and r["wall_s"] > 0
        assert r["counts"]["pass"] == r["counts"]["total"] == r["planned_cases"] == 1
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "on `reference`, --jobs 1, cold Triton cache" in md and "--jobs 2, warm Triton cache" in md
    assert (tmp_path / "out" / "suite-warm-jobs2" / "results.json").exists()
    for r in rows:    # the per-phase breakdown of each run
        b = r["breakdown"]
        assert b["case_seconds"] > 0 and b["slowest"][0]["phases"]["compare_s"] > 0
    assert "Where the seconds go" in md and "| warm --jobs 2 (pinned) |" in md
    assert "| oracle steps replayed |" in md and all(r["breakdown"]["oracle_replays"] == 0 for r in rows)  # CPU: eager
    for r in rows:    # the process's wall holds the run's own and its startup (results.json); the rest is after
        assert 0 < r["run_wall_s"] and 0 < r["startup_s"] and r["run_wall_s"] + r["startup_s"] <= r["wall_s"]
        after = r["wall_s"] - r["run_wall_s"] - r["startup_s"]
        assert f"| {r['wall_s']:.1f} | {r['run_wall_s']:.1f} | {r['startup_s']:.1f} | {after:.1f} |" in md
        # the startup by step, as results.json has it
        steps = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in r["startup"].items())
        assert set(r["startup"]) >= {"cli_imports_s", "plan_s", "workers_s", "backend_check_s"}
        assert f"Before the run, {r['cache']} --jobs {r['jobs']}: {steps}" in md
    assert rows[-1]["breakdown"]["phases_s"]["worker_start"] > 0      # --jobs 2: a worker's start is its own phase


def test_cold_each_and_record_autotune(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\n[[group]]\nlevel = "self"\nchecks = ["tp_reduce"]\n'
                     'dims = ["qwen3-next-80b-a3b:shrunk"]\n')
    pins = tmp_path / "pins.json"
    assert main(["bench", "--quick", "--device", "cpu", "--no-ops", "--repeat", "1", "--suite-cost", str(suite),
                 "--suite-backend", "reference", "--suite-cache", str(tmp_path / "cache"), "--suite-cold-each",
                 "--suite-jobs", "1", "--suite-jobs", "2", "--autotune", "pinned", "--record-autotune", str(pins),
                 "--report-dir", str(tmp_path / "out")]) == 0
    rows = [r for r in json.loads((tmp_path / "out" / "bench.json").read_text())["rows"] if r["bench"] == "suite"]
    assert [(r["cache"], r["jobs"]) for r in rows] == [("cold", 1), ("cold", 2), ("warm", 1), ("warm", 2)]
    assert all(r["autotune"] == "pinned" and r["counts"]["pass"] == 1 for r in rows)
    doc = json.loads(pins.read_text())      # the reference autotunes nothing: an empty, valid pins file
    assert doc["schema"] == "gdn-harness-autotune-pins/1" and doc["kernels"] == {}
    rec = json.loads((tmp_path / "out" / "record-autotune" / "results.json").read_text())["cases"][0]
    assert rec["autotune"] == {"policy": "native", "configs": []}


def test_warm_after_a_cut_cold_run_is_partly_warm(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\n[[group]]\nlevel = "self"\nchecks = ["tp_reduce"]\n'
                     'dims = ["qwen3-next-80b-a3b:shrunk"]\n')
    assert main(["bench", "--quick", "--device", "cpu", "--no-ops", "--repeat", "1", "--suite-cost", str(suite),
                 "--suite-backend", "reference", "--suite-cache", str(tmp_path / "cache"), "--suite-limit", "0.01",
                 "--report-dir", str(tmp_path / "out")]) == 0
    rows = [r for r in json.loads((tmp_path / "out" / "bench.json").read_text())["rows"] if r["bench"] == "suite"]
    assert [(r["cache"], r["hit_limit"]) for r in rows] == [("cold", True), ("partly warm", True)]
