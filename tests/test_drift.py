"""The drift lane's growth judgement and report (synthetic per-step errors; no kernels run)."""
import json
import math

from harness.report.drift import curves, growth_exponent, verdict, write_report


def _case(mix, errs):
    metrics = [dict(output=f"step{s}.{k}", rel_rms=e) for s, e in enumerate(errs) for k in ("out", "core")]
    return dict(id=f"layer.{mix}[x]", mix=mix, status="pass", metrics=metrics)


def test_growth_exponent_tells_bounded_from_drifting():
    flat = [(s, 1e-7 * (1 + 0.1 * math.sin(s))) for s in range(1, 200)]
    walk = [(s, 1e-7 * s ** 0.5) for s in range(1, 200)]
    compounding = [(s, 1e-7 * s ** 1.5) for s in range(1, 200)]
    assert abs(growth_exponent(flat)) < 0.1 and verdict(growth_exponent(flat)) == "bounded"
    assert abs(growth_exponent(walk) - 0.5) < 1e-9 and verdict(growth_exponent(walk)) == "bounded"
    assert abs(growth_exponent(compounding) - 1.5) < 1e-9 and verdict(growth_exponent(compounding)) == "drifting"
    assert verdict(growth_exponent([(1, 1e-7)])) == "too few steps"


def test_report_plots_drift_cases_only(tmp_path):
    results = dict(cases=[_case("drift_64", [0.0] + [1e-7 * s ** 1.2 for s in range(1, 65)]),
                          _case("decode_only", [1e-7, 2e-7])])
    (tmp_path / "results.json").write_text(json.dumps(results))
    rows = write_report(tmp_path)
    assert [r["id"] for r in rows] == ["layer.drift_64[x]"]
    assert curves(results["cases"][0])["out"][0] == (1, 1e-7)        # the prefill step is not a decode step
    md = (tmp_path / "drift.md").read_text()
    assert "drifting" in md and (tmp_path / "drift.png").stat().st_size > 0
