"""The reference backend's op cases that the smoke suite leaves out (`exclude_backends`):
each op of the op table, reference vs the fp64 oracle, through the runner as `gdn-harness
run` does. They compare the reference functions with themselves in fp64, so they fail only
by precision or by raising - checked here once, not on every smoke run."""
import copy

import pytest

from harness.cases.opcheck import OP_INFOS
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import expand, load_suite

_POLICY = Policy()
_BACKENDS = BackendCache()


def _smoke_op_cases():
    """The smoke suite's op cases of the reference, as if it did not exclude them."""
    suite = copy.deepcopy(load_suite("smoke"))
    groups = [g for g in suite["group"] if g["level"] == "op"]
    for g in groups:
        g.pop("exclude_backends", None)
    return expand(dict(suite, group=groups), ["reference"])


CASES = _smoke_op_cases()


def test_smoke_leaves_them_out_and_they_cover_every_op():
    smoke = expand(load_suite("smoke"), ["reference", "triton"])
    assert not [c for c in smoke if c.level == "op" and c.backend == "reference"]
    assert {c.check for c in smoke if c.level == "op" and c.backend == "triton"} == {c.check for c in CASES}
    assert {c.check for c in CASES} == set(OP_INFOS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_op_matches_the_oracle(case):
    rec = run_case(case, _POLICY, "smoke", _BACKENDS)
    assert rec["status"] == "pass", f"{rec['status']}: {rec.get('error') or rec['diagnosis']}\nrepro: {rec['repro']}"


def test_exclude_backends_is_checked_and_honoured(tmp_path):
    from harness.errors import ConfigError
    group = ('[[group]]\nlevel = "op"\nops = ["fused_gdn_gating"]\ndims = ["qwen3.5-27b:shrunk:H=2,K=12,V=20"]\n'
             'variants = ["contiguous"]\n')
    ok = tmp_path / "ok.toml"
    ok.write_text(group + 'exclude_backends = ["reference"]\n')
    assert [c.backend for c in expand(load_suite(str(ok)), ["reference", "triton", "reference@x"])] == ["triton"]
    for bad, words in ((group + 'exclude_backends = ["referenc"]\n', "unknown backend 'referenc'"),
                       ('[[group]]\nlevel = "self"\nchecks = ["tp_reduce"]\ndims = ["qwen3.5-27b:shrunk"]\n'
                        'exclude_backends = ["reference"]\n', "self checks run on no backend")):
        path = tmp_path / "bad.toml"
        path.write_text(bad)
        with pytest.raises(ConfigError, match=words):
            load_suite(str(path))
