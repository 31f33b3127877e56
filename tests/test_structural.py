"""Structural problems are reported as what they are, before (and without) a numerical
diagnosis: a wrong-shaped output, an exception, NaN / Inf; a hang reads "timed out"."""
import json

import pytest
import torch

from harness.cli import main
from tests.plugin_example import ExamplePortBackend

K = "op.fused_gdn_gating[tests.test_structural"


class ShortPort(ExamplePortBackend):
    """Its gating kernel drops the last head of g (an output one column short)."""
    name = "example-port-short"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        g, beta_out = ExamplePortBackend.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
        return g[..., :-1].contiguous(), beta_out


class NanPort(ExamplePortBackend):
    """Its gating kernel writes NaN into one element of g."""
    name = "example-port-nan"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        g, beta_out = ExamplePortBackend.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
        g = g.clone()
        g.view(-1)[0] = torch.nan
        return g, beta_out


def _run(tmp_path, port):
    rc = main(["run", "-q", "--no-isolate", "--suite", "smoke", "--backend", f"tests.test_structural:{port}",
               "--report-dir", str(tmp_path), "-k", "op.fused_gdn_gating[", "--dtype", "fp32"])
    doc = json.loads((tmp_path / "results.json").read_text())
    return rc, doc["cases"], (tmp_path / "summary.md").read_text(), (tmp_path / "report.html").read_text()


def test_a_wrong_shape_is_an_error_not_a_numerical_diagnosis(tmp_path):
    rc, cases, summary, html = _run(tmp_path, "ShortPort")
    assert rc == 1 and cases and all(c["status"] == "error" for c in cases)
    for c in cases:
        assert c["structural"] == "shape" and "output g: expected shape" in c["error"]
        assert "no known fault" not in (c.get("diagnosis") or "")     # no numerical diagnosis of a shape
        assert any(m["output"] == "beta" for m in c["metrics"])          # the well-formed output still compared
    assert "expected shape" in summary and "precision" not in summary and "no known fault" not in summary
    assert "precision or nondeterminism" not in html


def test_nan_outputs_say_nan_in_words_first(tmp_path):
    rc, cases, summary, _ = _run(tmp_path, "NanPort")
    assert rc == 1 and cases and all(c["status"] == "fail" for c in cases)
    for c in cases:
        assert c["structural"] == "nan/inf"
        assert c["diagnosis"].startswith("NaN / Inf in the output: g has 1 NaN")
        assert "no known fault" not in c["diagnosis"]
    assert "g has 1 NaN" in summary


def test_durations_include_the_diagnosis(tmp_path):
    rc = main(["run", "-q", "--no-isolate", "--suite", "smoke", "--backend", "tests.plugin_example:TransposedStatePort",
               "--report-dir", str(tmp_path), "-k", "op.fused_recurrent_gated_delta_rule[ and decode", "--dtype", "fp32"])
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert rc == 1
    diagnosed = [c for c in cases if c.get("diagnosis_s") is not None]
    assert diagnosed and all(c["duration_s"] >= c["diagnosis_s"] for c in diagnosed)


@pytest.mark.parametrize("args", [["--dtype", "fp8"], ["--tp", "3"], ["--layout", "flatt"], ["--mix", "nope"]])
def test_filter_values_are_checked_against_the_suite(tmp_path, capsys, args):
    assert main(["run", "--suite", "smoke", "--report-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert f"{args[0]} {args[1]}" in err and "valid:" in err
    assert {"--dtype": "float32", "--tp": "1", "--layout": "flat", "--mix": "decode_only"}[args[0]] in err


def test_filter_spellings_and_k_expressions(tmp_path):
    assert main(["run", "-q", "--suite", "smoke", "--report-dir", str(tmp_path), "--layout", "FLAT",
                 "-k", "(batch_independence or untouched_slots) and not qwen3-next and tp1"]) == 0
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert cases and all(("batch_independence" in c["id"] or "untouched_slots" in c["id"]) and
                         "qwen3-next" not in c["id"] for c in cases)


@pytest.mark.parametrize("expr", ["a and", "(a or b", "or a", "a b )"])
def test_bad_k_expressions_are_usage_errors(tmp_path, capsys, expr):
    assert main(["run", "--suite", "smoke", "--report-dir", str(tmp_path), "-k", expr]) == 2
    assert "-k" in capsys.readouterr().err
