"""Report files of a run: junit.xml, the Buildkite annotation, results.json vs its schema, report.html.

One small real run (module fixture) gives pass / fail / error / skip records: the example
port passes fused_gdn_gating, fails the fused recurrent op and the decode_only layer mix
(token-major outputs, so error maps), skips the ops it lacks; a port whose kernel raises
gives error records.
"""
import base64
import copy
import json
import random
import re
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.results import counts, write_results
from harness.report.html import HEATMAP_FAILURES, write_html
from harness.report.junit import write_buildkite, write_junit
from tests.plugin_example import ExamplePortBackend

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "harness" / "report" / "results.schema.json"
EXAMPLE = ROOT / "reports" / "examples" / "h200-ci" / "fla" / "results.json"
PORT = "tests.plugin_example:TransposedStatePort"
RAISING = "tests.test_report_files:RaisingPort"


class RaisingPort(ExamplePortBackend):
    """A port whose gating kernel crashes: its cases become error records with a traceback."""
    name = "example-port-raising"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        raise RuntimeError("kernel launch failed: invalid configuration argument")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["run", "-q", "--suite", "smoke", "--backend", f"{PORT},{RAISING}", "--report-dir", str(out),
               "-k", "op.fused_gdn_gating[",                                       # pass (port), error (raising)
               "-k", f"op.fused_recurrent_gated_delta_rule[{PORT}-decode",          # fail, op level
               "-k", f"layer.decode_only[{PORT}-qwen3-next",                        # fail, error maps
               "-k", f"op.rms_norm_gated[{PORT}-after-silu"])                       # skip
    assert rc == 1
    doc = json.loads((out / "results.json").read_text())
    meta = {k: doc[k] for k in ("suite", "backends", "suite_file", "policy_version", "policy_file", "command",
                                "device", "wall_s")}          # what the CLI hands the writers
    return out, meta, doc["cases"]


def test_run_covers_every_status(run):
    _, _, records = run
    c = counts(records)
    assert c["pass"] and c["fail"] and c["error"] and c["skip"], c
    assert any(m.get("error_map") for r in records for m in r["metrics"])


# ----------------------------------------------------------------------------- junit / buildkite


def _crash_record(records):
    """An error record as an isolated worker writes it for a crash: no duration, the worker's stderr tail."""
    r = copy.deepcopy(next(r for r in records if r["status"] == "error"))
    r.pop("traceback", None)
    r.update(id=r["id"].replace("-s0]", "-s99]"), error="case crashed the worker: worker died with exit code 134",
             stderr_tail="\x1b[31mCUDA error: an illegal memory access was encountered\x1b[0m\x07\n", duration_s=None)
    return r


def test_junit_matches_records(run):
    out, meta, records = run
    records = records + [_crash_record(records)]
    path = write_junit(out, records, meta)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(records)
    got = Counter("fail" if tc.find("failure") is not None else "error" if tc.find("error") is not None
                  else "skip" if tc.find("skipped") is not None else "pass" for tc in cases)
    c = counts(records)
    assert {s: got.get(s, 0) for s in ("pass", "fail", "error", "skip")} == {s: c[s] for s in
                                                                            ("pass", "fail", "error", "skip")}
    assert (int(root.get("tests")), int(root.get("failures")), int(root.get("errors")), int(root.get("skipped"))) \
        == (c["total"], c["fail"], c["error"], c["skip"])
    groups = {(r["backend"], r["level"]) for r in records}
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {f"smoke.{b}.{lv}" for b, lv in groups}
    for s in suites:
        assert int(s.get("tests")) == len(s.findall("testcase"))
        assert int(s.get("failures")) == len(s.findall("testcase/failure"))
    by_id = {tc.get("name"): tc for tc in cases}
    for r in records:
        tc = by_id[r["id"]]
        assert tc.get("classname") == f"smoke.{r['backend']}.{r['level']}"
        assert float(tc.get("time")) == pytest.approx(r["duration_s"] or 0, abs=1e-4)
        if r["status"] == "fail":
            f = tc.find("failure")
            msg = f.get("message")
            for key in ("rel_rms", "max |diff|", "rel_rms <="):
                assert key in msg, msg
            if r["level"] == "layer":
                assert "first divergent token" in msg and "worst token" in msg
            assert r["repro"] in f.text
        elif r["status"] == "error" and "stderr_tail" in r:
            e = tc.find("error")
            assert "crashed the worker" in e.get("message") and "illegal memory access" in e.text
            assert "\x1b" not in e.text and "\x07" not in e.text and r["repro"] in e.text
        elif r["status"] == "error":
            e = tc.find("error")
            assert e.get("type") == "RuntimeError" and "kernel launch failed" in e.get("message")
            assert "Traceback" in e.text and "fused_gdn_gating" in e.text and r["repro"] in e.text
        elif r["status"] == "skip":
            assert tc.find("skipped").get("message") == r["error"]


def test_buildkite_annotation(run):
    out, meta, records = run
    path = write_buildkite(out / "buildkite.md", records, meta)
    text = path.read_text()
    c = counts(records)
    assert f"{c['fail']} failed, {c['error']} errors" in text and len(text.encode()) < 1 << 20
    bad = [r for r in records if r["status"] in ("fail", "error")]
    assert all(r["repro"] in text for r in bad[:20])
    passing = [r for r in records if r["status"] == "pass"]
    assert "passed" in write_buildkite(out, passing, meta).read_text().splitlines()[0]


# ----------------------------------------------------------------------------- results.json schema


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_results_json_matches_schema(run):
    out, _, _ = run
    v = _validator()
    doc = json.loads((out / "results.json").read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]
    assert not errors, errors[:5]
    if EXAMPLE.exists():           # a committed GPU run (passes and skips) validates too
        assert not list(v.iter_errors(json.loads(EXAMPLE.read_text())))
    doc["cases"].append(_crash_record(doc["cases"]))         # isolated runs: null duration, stderr tail
    assert not list(v.iter_errors(doc))
    bad = copy.deepcopy(doc)
    bad["cases"][0]["status"] = "flaky"
    del bad["cases"][1]["id"]
    bad["cases"][2]["level"] = "kernel"
    assert len(list(v.iter_errors(bad))) >= 3
    fail = next(c for c in doc["cases"] if c["status"] == "fail")
    fail["diagnosis"] = None
    assert list(v.iter_errors(doc))


# ----------------------------------------------------------------------------- report.html


def test_html_is_self_contained_with_matrix_and_heatmaps(run):
    out, meta, records = run
    path = write_html(out, records + [_crash_record(records)], meta)
    page = path.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert '<table class="matrix">' in page
    for s in ("pass", "fail", "error", "skip"):
        assert f'<td class="c {s}"' in page
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert imgs and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    for r in records:
        if r["status"] == "pass":          # a passing case: only in the embedded data, once
            assert page.count(json.dumps(r["id"])[1:-1]) == 1
        else:
            assert r["id"] in page and (r["status"] == "skip" or f'id="f{records.index(r)}"' in page)
    assert "RuntimeError: kernel launch failed" in page and "first divergent token" in page
    assert "illegal memory access" in page and "\x1b" not in page


def _synthetic(records, n=5000):
    """n records copied from the small real run and a committed GPU run, with unique ids / seeds,
    spread over more TP columns, and error maps perturbed (every heatmap distinct, as in a real run)."""
    pool = list(records) * 3
    if EXAMPLE.exists():
        pool += json.loads(EXAMPLE.read_text())["cases"]
    rnd = random.Random(0)
    out = []
    for i in range(n):
        r = copy.deepcopy(pool[i % len(pool)])
        r["id"] = re.sub(r"-s\d+\]$", f"-s{i}]", r["id"]) if r["id"].endswith("]") else f"{r['id']}-{i}"
        r["seed"] = i
        r["repro"] = r["repro"].replace(pool[i % len(pool)]["id"], r["id"])
        if r["level"] == "layer":
            r["tp"] = (1, 2, 4, 8)[(i // len(pool)) % 4]
        for m in r["metrics"]:
            if m.get("error_map"):
                m["error_map"]["values"] = [[v * rnd.uniform(0.3, 3) for v in row] for row in m["error_map"]["values"]]
        out.append(r)
    assert len({r["id"] for r in out}) == n
    return out


def test_html_5000_cases(run, tmp_path):
    _, meta, records = run
    big = _synthetic(records)
    c = counts(big)
    t0 = time.perf_counter()
    path = write_html(tmp_path, big, meta)
    html_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    junit = write_junit(tmp_path, big, meta)
    junit_s = time.perf_counter() - t0
    write_results(tmp_path, big, meta)
    size = path.stat().st_size
    page = path.read_text()
    print(f"\n5000-case report.html: {size / 2**20:.2f} MiB written in {html_s:.2f} s "
          f"({c['pass']} pass, {c['fail']} fail, {c['error']} error, {c['skip']} skip; "
          f"{page.count('data:image/png;base64,')} PNGs inline); junit.xml {junit.stat().st_size / 2**20:.2f} MiB "
          f"in {junit_s:.2f} s; results.json {(tmp_path / 'results.json').stat().st_size / 2**20:.2f} MiB")
    assert size < 10 * 2**20
    assert c["fail"] > HEATMAP_FAILURES and f"first {HEATMAP_FAILURES} of {c['fail']} failures" in page
    assert len(ET.parse(junit).getroot().findall("./testsuite/testcase")) == 5000


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("GDN_REQUIRE_CHROMIUM"):   # CI installs it: a skip there would hide the check
            pytest.fail("chromium not installed but GDN_REQUIRE_CHROMIUM is set")
        pytest.skip("chromium not installed")
    return chromium


def test_html_first_screen_shows_what_failed(run, tmp_path):
    """In headless Chromium at 1400 x 900, the first failure row (a backend under test, with
    its diagnosis or error) is on the first screen, before any matrix."""
    chromium = _chromium()
    out, meta, records = run
    page = write_html(out, records, meta)
    probe = tmp_path / "probe.html"
    probe.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><iframe id="f" src="' + page.resolve().as_uri() + '" '
        'style="width:1400px;height:900px;border:0"></iframe><pre id="out">pending</pre><script>'
        "document.getElementById('f').addEventListener('load',function(){var d=this.contentDocument,"
        "out=document.getElementById('out'),row=d.querySelector('#whatfailed tbody tr'),"
        "m=d.querySelector('table.matrix');if(!row){out.textContent='no failure row';return;}"
        "out.textContent='bottom='+Math.round(row.getBoundingClientRect().bottom)+' matrix='"
        "+Math.round(m.getBoundingClientRect().top)+' text='+row.textContent;});</script></body></html>")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--window-size=1400,900", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    m = re.search(r"bottom=(\d+) matrix=(-?\d+) text=([^<]*)", dom)
    assert m, dom[-2000:]
    assert int(m.group(1)) <= 900 and int(m.group(1)) < int(m.group(2))
    assert "reference" not in m.group(3).split("fail")[0] and ("error" in m.group(3) or "fail" in m.group(3))


def test_html_groups_identical_failures_and_shows_op_layouts(run):
    out, meta, records = run
    bad = next(r for r in records if r["status"] == "fail" and r["level"] == "layer")
    twins = [dict(copy.deepcopy(bad), id=bad["id"] + f"-v{i}", layout=lay, tp=tp)
             for i, (lay, tp) in enumerate([("interleaved", 2), ("flat", 4)])]
    page = write_html(out, records + twins, meta).read_text()
    section = page[page.index('id="whatfailed"'):page.index('id="matrix"')]
    row = next(tr for tr in section.split("<tr")[1:] if bad["id"] in tr)
    from harness.report.html import failure_key
    same = sum(failure_key(r) == failure_key(bad) for r in records) + 2      # one row for all of them
    assert same >= 3 and f'<td class="cnt">{same}</td>' in row and "tp1, tp2, tp4" in row and "interleaved" in row
    assert page.index('id="whatfailed"') < page.index('<table class="matrix">')
    from harness.report.html import _col_key
    assert _col_key(dict(level="op", op="unpack_qkvz_ba", layout="interleaved", variant="interleaved-strided", tp=1)) \
        == ("interleaved", 1)
    assert _col_key(dict(level="op", op="fused_gdn_gating", layout="flat", variant="strided", tp=1))[0] == "any layout"


def test_op_cases_carry_their_real_layout():
    from harness.cases.suite import expand, load_suite
    cases = [c for c in expand(load_suite("smoke"), ["triton"]) if c.check == "unpack_qkvz_ba"]
    assert cases and all(c.layout == c.variant.split("-")[0] for c in cases)
    assert {c.layout for c in cases} == {"interleaved", "flat"}


def test_html_screenshot(run, tmp_path):
    chromium = _chromium()
    out, meta, records = run
    page = write_html(out, records, meta)
    png = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,2000",
           page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, cwd=tmp_path)
    assert png.exists(), "chromium wrote no screenshot"
    try:
        from PIL import Image
    except ImportError:
        assert png.stat().st_size > 20_000
        return
    img = Image.open(png).convert("RGB")
    assert img.size == (1400, 2000)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "screenshot is (nearly) blank"
    white = sum(n for n, rgb in colours if min(rgb) >= 250)
    assert white < 0.98 * img.size[0] * img.size[1]
    red = sum(n for n, (r, g, b) in colours if r > 200 and g < 215 and b < 215 and r - g > 30)
    assert red > 500, "no failing (red) matrix cells in the first screen"
