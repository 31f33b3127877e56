"""Loading backends: built-in names, package.module:attr, the entry-point group; the
example plugin runs a suite, and its transposed-state twin is caught."""
import json

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.optimized.registry import ENTRY_POINT_GROUP, check_backend, load_backend

PLUGIN = "tests.plugin_example:ExamplePortBackend"


def test_builtin_and_module_attr():
    assert load_backend("reference").name == "reference"
    b = load_backend(PLUGIN)
    assert b.name == "example-port" and b.ssm_state_layout == "kv"
    assert b.implemented_ops() == ["fused_gdn_gating", "fused_recurrent_gated_delta_rule"]


def test_bad_names_are_usage_errors():
    with pytest.raises(HarnessError, match="unknown backend 'nope'"):
        load_backend("nope")
    with pytest.raises(HarnessError, match="importing no_such_pkg.mod failed"):
        load_backend("no_such_pkg.mod:Thing")
    with pytest.raises(HarnessError, match="has no attribute 'Missing'"):
        load_backend("tests.plugin_example:Missing")


def test_the_runs_check_builds_no_backend_class(tmp_path, monkeypatch):
    """The CLI refuses what load_backend would, without constructing a Backend class (the workers
    do: the triton backend's construction loads fla and makes a CUDA context)."""
    (tmp_path / "counting_plugin.py").write_text(
        "from tests.plugin_example import ExamplePortBackend\n"
        "BUILT = []\n"
        "class Counting(ExamplePortBackend):\n"
        "    def __init__(self):\n        BUILT.append(1)\n"
        "def not_a_backend():\n    return 42\n"
        "JUNK = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_backend("counting_plugin:Counting")
    check_backend("triton")
    import counting_plugin
    assert counting_plugin.BUILT == []
    for bad, words in (("nope", "unknown backend 'nope'"), ("counting_plugin:Missing", "no attribute 'Missing'"),
                       ("counting_plugin:JUNK", "is str, not a harness Backend"),
                       ("counting_plugin:not_a_backend", "is int, not a harness Backend"),
                       ("vllm@no-such-variant", "no variant 'no-such-variant'")):
        with pytest.raises(HarnessError, match=words):
            check_backend(bad)


def test_entry_point_group(tmp_path, monkeypatch):
    dist = tmp_path / "example_port-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-port\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nexample-port = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_backend("example-port").name == "example-port"


def _run(tmp_path, backend):
    rc = main(["run", "-q", "--suite", "smoke", "--backend", backend, "--report-dir", str(tmp_path),
               "-k", "op.fused_recurrent", "-k", "op.causal_conv1d_update[", "-k", "layer.spec_only_2["])
    return rc, json.loads((tmp_path / "results.json").read_text())["cases"]


def test_example_plugin_passes_with_filled_ops(tmp_path):
    rc, cases = _run(tmp_path, PLUGIN)
    assert rc == 0, [c["id"] for c in cases if c["status"] not in ("pass", "skip")]
    skipped = [c for c in cases if c["status"] == "skip"]
    assert skipped and all("does not implement" in c["error"] for c in skipped)
    layer = [c for c in cases if c["level"] == "layer" and c["status"] == "pass"]
    assert layer and "causal_conv1d_update" in layer[0]["filled_ops"]


def test_transposed_state_port_is_caught_and_located(tmp_path):
    rc, cases = _run(tmp_path, "tests.plugin_example:TransposedStatePort")
    assert rc == 1
    failed = [c for c in cases if c["status"] == "fail"]
    assert failed
    for c in failed:
        assert "out of tolerance" in c["diagnosis"] and "at [" in c["diagnosis"]
    states = [m for c in failed for m in c["metrics"] if not m["passed"] and "state" in m["output"]]
    assert states, "the ssm state must be named among the failing outputs"


EXAMPLE = "docs/examples/my_port.py"


def test_the_one_file_example_of_the_docs_runs(tmp_path):
    """docs/backends.md's one-file backend, loaded by its path as the doc says, passes; its
    variant without the packed decode skips that op and that decode path, saying why."""
    rc = main(["run", "-q", "--suite", "smoke", "--report-dir", str(tmp_path), "--backend",
               f"{EXAMPLE}:MyPortBackend,{EXAMPLE}:MyPortWithoutPackedDecode", "--dtype", "fp32",
               "-k", "op.fused_gdn_gating[ or op.fused_recurrent_gated_delta_rule_packed_decode[",
               "-k", "layer.decode_only[ and qwen3-next-80b-a3b:shrunk-flat-tp1"])
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert rc == 0, [(c["id"], c["status"], c.get("error")) for c in cases if c["status"] not in ("pass", "skip")]
    mine = [c for c in cases if c["op"] == "fused_gdn_gating"]
    assert len(mine) == 4 and all(c["status"] == "pass" for c in mine)
    skipped = [c for c in cases if c["status"] == "skip"]
    assert skipped and all(c["backend"].endswith(":MyPortWithoutPackedDecode") for c in skipped)
    assert all(c["error"].startswith(f"backend {c['backend']} ") for c in skipped)   # the name as given


def test_the_docs_name_each_ops_exact_reference():
    import re
    from pathlib import Path

    from harness.cases.opcheck import OP_INFOS
    doc = (Path(__file__).parents[1] / "docs" / "backends.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| `([\w.]+)` \|$", doc, re.M))
    assert table == {op: f"{i.reference.__module__}.{i.reference.__name__}" for op, i in OP_INFOS.items()}


def test_a_backend_has_one_name_in_the_report(tmp_path):
    rc, cases = _run(tmp_path, PLUGIN)
    assert rc == 0 and {c["backend"] for c in cases} == {PLUGIN}
    for f in ("summary.md", "report.html", "junit.xml"):
        assert "example-port" not in (tmp_path / f).read_text(), f        # never its declared name too


def test_colon_after_a_registered_name_points_to_the_variant():
    """`--backend vllm:triton` (as issue texts write it) says the variant is `vllm@triton`."""
    from harness.optimized.registry import load_backend
    with pytest.raises(HarnessError, match="variant follows .@.: .vllm@triton."):
        load_backend("vllm:triton")
