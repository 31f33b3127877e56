"""Dims validation, presets, scenario data, and bad input naming the offending field / tensor."""
import json

import pytest
import torch

from harness.config import PRESETS, GDNDims, get_preset
from harness.errors import ConfigError, InputError
from harness.layouts.projection import unpack_qkvz_ba
from harness.reference import causal_conv1d_update, recurrent_gated_delta_rule, rms_norm_gated
from harness.cases.scenario import Scenario, mixed_scenario


@pytest.mark.parametrize("kw, field", [
    (dict(HV=3), "HV"), (dict(K=0), "K"), (dict(V=-1), "V"), (dict(W=1), "W"), (dict(hidden=0), "hidden")])
def test_dims_validation_names_the_field(kw, field):
    args = dict(hidden=16, H=2, HV=4, K=4, V=4) | kw
    with pytest.raises(ConfigError) as e:
        GDNDims(**args)
    assert e.value.field == field and field in str(e.value)


def test_tp_must_divide_heads():
    d = GDNDims(hidden=16, H=2, HV=6, K=4, V=4)
    with pytest.raises(ConfigError, match="tp: 4 does not divide H = 2"):
        d.local(4)
    assert d.local(2).H == 1 and d.local(2).HV == 3 and d.local(2).r == 3


def test_presets_match_design():
    assert len(PRESETS) == 8
    n = get_preset("qwen3-next-80b-a3b")
    assert (n.hidden, n.H, n.HV, n.K, n.V, n.W) == (2048, 16, 32, 128, 128, 4)
    assert get_preset("qwen3.5-27b").HV == 48 and get_preset("qwen3.5-397b-a17b").HV == 64
    s = n.shrink()
    assert s.r == n.r and s.K != s.V
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("qwen9")


def test_scenario_json_roundtrip_and_plan():
    sc = mixed_scenario(get_preset("qwen3.5-4b").shrink(), "flat", 2, seed=3)
    again = Scenario.from_json(sc.to_json())
    assert again.to_dict() == sc.to_dict() and json.loads(sc.to_json())["layout"] == "flat"
    plan = sc.plan()
    first = {e.seq: e for e in plan[0]}
    assert first[0].has_initial_state is False and first[2].kind == "decode"
    spec_e = next(e for e in plan[2] if e.seq == 0)
    assert spec_e.num_accepted == 3 and spec_e.ssm_slots == sc.slots[0]    # accepted all 3 drafts last step
    pad = next(e for e in plan[0] if e.kind == "pad")
    assert pad.conv_slot == -1


@pytest.mark.parametrize("steps, where", [
    ([[{"seq": 0, "kind": "nope"}]], "steps[0][0].kind"),
    ([[{"seq": 0, "kind": "decode", "tokens": 2}]], "steps[0][0].tokens"),
    ([[{"seq": 0, "kind": "spec", "tokens": 4}]], "steps[0][0].tokens"),
    ([[{"seq": 0, "kind": "spec", "tokens": 2, "accepted": 3}]], "steps[0][0].accepted"),
    ([[{"seq": 0, "kind": "spec", "tokens": 2, "accepted": 2}], [{"seq": 0, "kind": "prefill", "tokens": 3}]],
     "steps[1][0].kind"),     # a prefill cannot read at the accepted offset: needs spec_state="migrate"
    ([[{"seq": 0, "kind": "decode"}, {"seq": 0, "kind": "decode"}]], "steps[0][1].seq"),
])
def test_scenario_validation_names_the_entry(steps, where):
    with pytest.raises(ConfigError) as e:
        Scenario(dims=GDNDims(hidden=8, H=1, HV=1, K=2, V=2), steps=steps, num_spec=2).validate()
    assert e.value.field == where


def test_zero_draft_step_reads_after_the_last_accepted_token():
    """vllm #39273: a decode after a spec step that accepted drafts reads column accepted-1
    (spec_state "offset") or, after the engine's migration, column 0 ("migrate")."""
    dims = GDNDims(hidden=8, H=1, HV=1, K=2, V=2)
    steps = [[{"seq": 0, "kind": "prefill", "tokens": 4}], [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 3}],
             [{"seq": 0, "kind": "decode"}], [{"seq": 0, "kind": "spec", "tokens": 2, "accepted": 1}],
             [{"seq": 0, "kind": "decode"}]]
    off = Scenario(dims=dims, steps=steps, num_spec=2).validate()
    row = off.slots[0]
    e = off.plan()[2][0]
    assert (e.spec_read, e.num_accepted, e.ssm_slots, e.migrate) == (True, 3, row, 0)
    after = off.plan()[3][0]
    assert after.num_accepted == 1 and after.spec_read       # the decode left its state in column 0
    assert not off.plan()[4][0].spec_read                    # accepted 1: a plain decode
    mig = Scenario(dims=dims, steps=steps, num_spec=2, spec_state="migrate").validate()
    e = mig.plan()[2][0]
    assert (e.spec_read, e.num_accepted, e.migrate, e.ssm_slots) == (False, 1, 2, row)
    with pytest.raises(ConfigError, match="spec_state"):
        Scenario(dims=dims, steps=steps, num_spec=2, spec_state="column0").validate()


def test_pad_conventions_minus_one_with_live_slot0_and_null_block():
    from harness.batch import NULL_BLOCK_ID
    from harness.cases.scenario import mix_scenario
    dims = GDNDims(hidden=8, H=1, HV=1, K=2, V=2)
    live = mix_scenario("pad_slot0_live", dims)
    assert live.slots[0][0] == 0 and all(e.conv_slot == -1 for st in live.plan() for e in st if e.kind == "pad")
    null = mix_scenario("pad_null_block", dims)
    assert all(NULL_BLOCK_ID not in row for row in null.slots.values())
    assert all(e.conv_slot == NULL_BLOCK_ID for st in null.plan() for e in st if e.kind == "pad")
    with pytest.raises(ConfigError, match="reserved null block"):
        Scenario(dims=dims, steps=[[{"seq": 0, "kind": "decode"}]], pad_slot="null_block", slots={0: [0]},
                 num_slots=2).validate()


def test_accepted_as_decodes_feeds_only_accepted_tokens():
    from harness.cases.scenario import accepted_as_decodes, mix_scenario
    sc = mix_scenario("spec_zero_draft", GDNDims(hidden=8, H=1, HV=1, K=2, V=2))
    dec, sources = accepted_as_decodes(sc)
    assert all(e["kind"] != "spec" for step in dec.steps for e in step)
    accepted = sum(e.get("accepted", 1) if e["kind"] == "spec" else Scenario.entry_tokens(e)
                   for step in sc.steps for e in step)
    assert sum(len(rows) for _, rows in sources) == accepted
    # step 1: spec 4/acc 3, spec 2/acc 2, spec 3/acc 1, spec 3/acc 3 at rows 0, 4, 6, 9
    assert sources[1:4] == [(1, [0, 4, 6, 9]), (1, [1, 5, 10]), (1, [2, 11])]


def test_bad_tensors_name_tensor_expected_and_actual():
    d = GDNDims(hidden=8, H=2, HV=4, K=2, V=3)
    with pytest.raises(InputError, match=r"mixed_ba: expected last dim \(2\*HV\) 8, got \(3, 6\)"):
        unpack_qkvz_ba(torch.zeros(3, d.qkvz_dim), torch.zeros(3, 6), d, "flat")
    with pytest.raises(InputError, match=r"k: expected shape \(1, 5, 2, 4\), got \(1, 5, 2, 3\)"):
        z = torch.zeros
        recurrent_gated_delta_rule(z(1, 5, 2, 4), z(1, 5, 2, 3), z(1, 5, 4, 3), z(1, 5, 4), z(1, 5, 4))
    with pytest.raises(InputError, match=r"weight: expected shape \(6,\), got \(5,\)"):
        rms_norm_gated(torch.zeros(2, 6), torch.zeros(5))
    with pytest.raises(InputError, match="conv_state: expected shape"):
        causal_conv1d_update(torch.zeros(2, 4), torch.zeros(3, 5, 3), torch.zeros(4, 4))
    with pytest.raises(InputError, match=r"z: expected shape \(2, 6\), got \(2, 5\)"):
        rms_norm_gated(torch.zeros(2, 6), torch.zeros(6), z=torch.zeros(2, 5))
    with pytest.raises(InputError, match=r"ssm_state_indices: expected dtype \[torch.int32, torch.int64\], got torch.float32"):
        z = torch.zeros
        recurrent_gated_delta_rule(z(1, 1, 2, 4), z(1, 1, 2, 4), z(1, 1, 4, 3), z(1, 1, 4), z(1, 1, 4),
                                   initial_state=z(2, 4, 3, 4), ssm_state_indices=z(1))
    with pytest.raises(ConfigError, match="layout"):
        unpack_qkvz_ba(torch.zeros(3, d.qkvz_dim), torch.zeros(3, 8), d, "diagonal")


def test_spec_invariance_leaves_pad_rows_out(monkeypatch):
    """PAD rows (no one's tokens) are not spec decoding's: a backend leaving them unwritten
    (poisoned NaN, `pad_row_outputs = unspecified`) must not fail "spec never changes the
    outputs" (seen on an H100: vLLM's spec_zero_draft, decode step 6's PAD row)."""
    from harness.cases import layercheck
    from harness.cases.scenario import accepted_as_decodes, mix_scenario
    sc = mix_scenario("spec_zero_draft", GDNDims(hidden=8, H=1, HV=1, K=2, V=2))
    plans = sc.plan()
    pads = [{t for e in plan if e.kind == "pad" for t in range(e.bos, e.eos)} for plan in plans]
    assert any(pads)

    def core(n, pad_rows):           # row r holds r; PAD rows NaN
        c = torch.arange(float(n))[:, None, None].expand(n, 1, 2).clone()
        c[sorted(pad_rows)] = float("nan")
        return dict(core=c)
    steps_out = [core(plan[-1].eos, pad) for plan, pad in zip(plans, pads)]
    dec, sources = accepted_as_decodes(sc)

    def fake_run(backend, ops, dsc, inp, ranks, conv_layout, decode_path, device, srcs=None):
        return [dict(core=steps_out[s]["core"][rows]) for s, rows in srcs], None, None
    monkeypatch.setattr(layercheck, "_backend_run", fake_run)
    pairs = layercheck.spec_invariance_pairs(None, None, sc, None, steps_out, [], "dim_first", "recurrent", "cpu")
    assert len(pairs) == len(sources)
    assert all(torch.isfinite(c.actual).all() and torch.equal(c.actual, c.expected) for c in pairs)
    kept = sum(c.actual.shape[0] for c in pairs)
    assert kept == sum(len(rows) for _, rows in sources) - sum(len(p) for p in pads)
