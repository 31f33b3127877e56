"""A layer case's decode path, conv layout and ba are typed fields; ids, stored case files and
results.json keep their variant label ("recurrent.dim_first.sharded") as before."""
import json
from dataclasses import replace

import pytest

from harness.cases.case import Case
from harness.cases.suite import expand, load_suite
from harness.config import GDNDims
from harness.errors import ConfigError

DIMS = GDNDims(hidden=32, H=2, HV=4, K=8, V=6, name="tiny")


def _layer(**kw):
    return Case("layer", "decode_only", DIMS, "flat", 1, 0, "cpu", "triton", "float32", "float32", **kw)


def test_typed_axes_and_unchanged_label():
    c = _layer(decode_path="sigmoid_gating", conv_layout="token_first", ba="replicated")
    assert (c.decode_path, c.conv_layout, c.ba) == ("sigmoid_gating", "token_first", "replicated")
    assert c.variant == "sigmoid_gating.token_first.replicated"
    assert c.id == "layer.decode_only[triton-tiny-flat-tp1-float32-float32-sigmoid_gating.token_first.replicated-s0]"
    d = c.to_dict()
    assert d["variant"] == c.variant and not {"decode_path", "conv_layout", "ba"} & set(d)   # stored as ever
    assert Case.from_dict(json.loads(json.dumps(d))) == c


def test_a_stored_label_still_loads():
    """Case files written before the typed fields (and positional callers) give the label."""
    c = _layer(variant="recurrent.dim_first.sharded")
    assert (c.decode_path, c.conv_layout, c.ba) == ("recurrent", "dim_first", "sharded")
    assert c == _layer(decode_path="recurrent", conv_layout="dim_first", ba="sharded")
    with pytest.raises(ConfigError, match="decode_path.conv_layout.ba"):
        _layer(variant="recurrent.dim_first")


def test_replacing_an_axis_relabels_the_case():
    c = _layer(decode_path="recurrent", conv_layout="dim_first", ba="sharded")
    r = replace(c, conv_layout="token_first")
    assert r.variant == "recurrent.token_first.sharded" and "recurrent.token_first.sharded" in r.id


def test_axes_belong_to_layer_cases_and_come_together():
    with pytest.raises(ConfigError):
        _layer(decode_path="recurrent")
    with pytest.raises(ConfigError):
        Case("op", "rms_norm_gated", DIMS, variant="before-silu-whole", decode_path="recurrent")
    op = Case("op", "rms_norm_gated", DIMS, variant="before-silu-whole")
    assert op.decode_path is None and op.variant == "before-silu-whole"


def test_suite_layer_cases_carry_the_axes():
    cases = [c for c in expand(load_suite("smoke"), ["triton"]) if c.level == "layer"]
    assert cases
    for c in cases:
        assert c.variant == f"{c.decode_path}.{c.conv_layout}.{c.ba}"
        assert Case.from_dict(c.to_dict()) == c
