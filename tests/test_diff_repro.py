"""gdn-harness diff (new failures, fixes, regressions, --baseline) and repro (by id, by case file)."""
import copy
import json

from tests.triton_device import DEVICE  # before triton's first import

import pytest

from harness.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    # smoke's op cases run on triton (a worker process); the layer case on the reference
    assert main(["run", "-q", "--suite", "smoke", "--backend", "reference", "--backend", "triton",
                 "-k", "op.fused_gdn_gating[triton-contiguous",
                 "-k", "layer.decode_only[reference-qwen3-next-80b-a3b:shrunk-flat-tp1", "--device", DEVICE,
                 "--report-dir", str(d)]) == 0
    return d


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def test_diff_classifies_and_baseline_mode(run_dir, tmp_path, capsys):
    old = json.loads((run_dir / "results.json").read_text())
    new = copy.deepcopy(old)
    def grows(m):
        return isinstance(m["rel_rms"], float) and m["rel_rms"] > 1e-12
    growing = next(c for c in new["cases"] if any(grows(m) for m in c["metrics"]))
    failing = next(c for c in new["cases"] if c is not growing)
    failing.update(status="fail", diagnosis="1/9 outputs out of tolerance")
    m = next(m for m in growing["metrics"] if grows(m))
    m["rel_rms"] *= 10
    a, b = _write(tmp_path / "old.json", old), _write(tmp_path / "new.json", new)
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "## New failures: 1" in out and "## Metric regressions: 1" in out and failing["id"] in out
    # baseline mode: only new failures fail; without them a regression alone passes
    assert main(["diff", a, b, "--baseline"]) == 1
    failing.update(status="pass", diagnosis=None)
    b = _write(tmp_path / "new2.json", new)
    assert main(["diff", a, b, "--baseline"]) == 0 and main(["diff", a, b]) == 1
    # and the reverse direction is a fix
    next(c for c in old["cases"] if c["id"] == failing["id"])["status"] = "fail"
    assert main(["diff", _write(tmp_path / "old2.json", old), str(run_dir)]) == 0
    assert "## Fixed: 1" in capsys.readouterr().out


def test_diff_bad_file_is_usage_error(tmp_path):
    assert main(["diff", str(tmp_path / "missing.json"), str(tmp_path / "x.json")]) == 2


def test_repro_by_id_and_by_case_file(run_dir, tmp_path, capsys):
    cid = next(c["id"] for c in json.loads((run_dir / "results.json").read_text())["cases"] if c["level"] == "layer")
    saved = tmp_path / "case.json"
    assert main(["repro", cid, "--results", str(run_dir), "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert f"{cid}: PASS" in out and "ssm_state" in out and "rel_rms" in out
    assert main(["repro", str(saved)]) == 0
    assert main(["repro", "no-such-case", "--results", str(run_dir)]) == 2
