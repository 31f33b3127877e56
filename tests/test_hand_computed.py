"""Hand-computed T=1 and T=2 cases for conv, gating, norm and the delta rule."""
import math

import pytest
import torch

from harness.reference import (causal_conv1d_fn, causal_conv1d_update, fused_gdn_gating, l2norm,
                               recurrent_gated_delta_rule, chunk_gated_delta_rule, rms_norm_gated)

f64 = dict(dtype=torch.float64)
W3 = torch.tensor([[1.0, 2.0, 3.0]], **f64)          # one channel, W = 3, oldest -> newest


def t(*v):
    return torch.tensor(v, **f64)


# ---------------- conv ----------------
def test_conv_prefill_t2_fresh_and_with_history():
    x = t(1.0, 2.0)[None]                             # [dim=1, T=2]
    states = t(5.0, 7.0).reshape(1, 1, 2).clone()
    out = causal_conv1d_fn(x, W3, None, states.clone(), torch.tensor([0, 2]),
                           has_initial_state=torch.tensor([False]), activation=None)
    assert out.tolist() == [[3.0, 8.0]]               # [3*1, 2*1 + 3*2]
    out = causal_conv1d_fn(x, W3, None, states, torch.tensor([0, 2]),
                           has_initial_state=torch.tensor([True]), activation=None)
    assert out.tolist() == [[22.0, 15.0]]             # [5 + 14 + 3, 7 + 2 + 6]
    assert states.tolist() == [[[1.0, 2.0]]]          # the last W-1 raw inputs


def test_conv_prefill_t1_keeps_older_history_and_silu():
    states = t(5.0, 7.0).reshape(1, 1, 2).clone()
    out = causal_conv1d_fn(t(1.0)[None], W3, t(0.5), states, torch.tensor([0, 1]),
                           has_initial_state=torch.tensor([True]), activation="silu")
    y = 22.5
    assert out.item() == pytest.approx(y / (1 + math.exp(-y)), rel=1e-15)
    assert states.tolist() == [[[7.0, 1.0]]]


def test_conv_decode_t1():
    state = t(5.0, 7.0).reshape(1, 1, 2).clone()
    out = causal_conv1d_update(t(1.0).reshape(1, 1), state, W3)
    assert out.tolist() == [[22.0]] and state.tolist() == [[[7.0, 1.0]]]


def test_conv_spec_window_reads_at_accepted_offset():
    # state window W-1+num_spec = 4; num_accepted = 2 -> reads columns [1, 3)
    state = t(1.0, 2.0, 3.0, 4.0).reshape(1, 1, 4).clone()
    x = t(10.0, 20.0, 30.0).reshape(3, 1)             # varlen [tokens, dim]
    out = causal_conv1d_update(x, state, W3, num_accepted_tokens=torch.tensor([2]),
                               query_start_loc=torch.tensor([0, 3]))
    assert out[:, 0].tolist() == [38.0, 83.0, 140.0]
    assert state.tolist() == [[[3.0, 10.0, 20.0, 30.0]]]   # [old[off+1:off+W-1], x...]


def test_conv_pad_slot_untouched_and_zero_output():
    state = t(5.0, 7.0).reshape(1, 1, 2).clone()
    before = state.clone()
    out = causal_conv1d_update(t(1.0).reshape(1, 1), state, W3, conv_state_indices=torch.tensor([-1]))
    assert out.tolist() == [[0.0]] and torch.equal(state, before)


# ---------------- gating ----------------
def test_gating_values_and_softplus_threshold():
    A_log = t(math.log(2.0), math.log(2.0))
    a = t(0.0, 25.0)[None]
    b = t(0.0, 0.0)[None]
    g, beta = fused_gdn_gating(A_log, a, b, t(0.0, 0.0))
    assert g[0, 0].item() == pytest.approx(-2 * math.log(2.0), rel=1e-15)   # exp(g) = 1/4
    assert g[0, 1].item() == -50.0                                         # softplus(25) = 25 exactly
    assert beta.tolist() == [[0.5, 0.5]]


def test_gating_fp32_math_for_bf16_inputs():
    g, beta = fused_gdn_gating(t(0.0).float(), torch.zeros(1, 1, dtype=torch.bfloat16),
                               torch.zeros(1, 1, dtype=torch.bfloat16), t(0.0).float())
    assert g.dtype == torch.float32 and beta.dtype == torch.float32


# ---------------- norms ----------------
def test_l2norm_eps_inside_sqrt():
    assert l2norm(t(3.0, 4.0)).tolist() == pytest.approx([3 / math.sqrt(25 + 1e-6), 4 / math.sqrt(25 + 1e-6)], rel=1e-15)


def test_rms_norm_gated_before_and_after_gate():
    x, w, z = t(3.0, 4.0), t(1.0, 2.0), t(0.0, 0.0)
    y = rms_norm_gated(x, w, z, eps=0.0, activation="sigmoid", norm_before_gate=True)
    assert y.tolist() == pytest.approx([1.5 / math.sqrt(12.5), 4.0 / math.sqrt(12.5)], rel=1e-15)
    y = rms_norm_gated(x, w, z, eps=0.0, activation="sigmoid", norm_before_gate=False)
    assert y.tolist() == pytest.approx([1.5 / math.sqrt(3.125), 4.0 / math.sqrt(3.125)], rel=1e-15)
    y = rms_norm_gated(x, w, t(1.0, 1.0), eps=0.0, activation="silu")
    s = 1 / (1 + math.exp(-1.0))
    assert y.tolist() == pytest.approx([3 * s / math.sqrt(12.5), 8 * s / math.sqrt(12.5)], rel=1e-15)


def test_rms_norm_group_size():
    y = rms_norm_gated(t(3.0, 4.0, 6.0, 8.0), torch.ones(4, **f64), eps=0.0, group_size=2)
    assert y.tolist() == pytest.approx([3 / math.sqrt(12.5), 4 / math.sqrt(12.5), 6 / math.sqrt(50), 8 / math.sqrt(50)], rel=1e-15)


# ---------------- delta rule (K = 2, V = 1) ----------------
def _inputs():
    q = t(1.0, 0.0, 0.0, 1.0).reshape(1, 2, 1, 2)
    k = t(1.0, 0.0, 0.6, 0.8).reshape(1, 2, 1, 2)
    v = t(2.0, 1.0).reshape(1, 2, 1, 1)
    g = torch.full((1, 2, 1), math.log(0.5), **f64)
    beta = t(0.5, 1.0).reshape(1, 2, 1)
    return q, k, v, g, beta


@pytest.mark.parametrize("fn", [recurrent_gated_delta_rule, chunk_gated_delta_rule])
def test_delta_rule_t2_from_zero(fn):
    o, S = fn(*_inputs(), scale=1.0)
    # t1: u = 0.5 * 2 = 1, S = [1, 0], o = 1; t2: S = [.5, 0], Sk = .3, u = .7, S = [.92, .56], o = .56
    assert o.flatten().tolist() == pytest.approx([1.0, 0.56], rel=1e-14)
    assert S.flatten().tolist() == pytest.approx([0.92, 0.56], rel=1e-14)


def test_delta_rule_t1_with_initial_state_and_kv_layout():
    q, k, v, g, beta = (x[:, :1] for x in _inputs())
    S0 = t(2.0, 4.0).reshape(1, 1, 1, 2)                        # [N, HV, V, K]
    o, S = recurrent_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=S0)
    # S = .5 S0 = [1, 2]; Sk = 1; u = .5 (2 - 1) = .5; S = [1.5, 2]; o = 1.5
    assert o.item() == pytest.approx(1.5) and S.flatten().tolist() == pytest.approx([1.5, 2.0])
    o2, S2 = recurrent_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=S0.transpose(-1, -2),
                                        state_layout="kv")
    assert o2.item() == pytest.approx(1.5) and S2.shape == (1, 1, 2, 1)


def test_delta_rule_spec_slots_read_accepted_write_per_token():
    pool = torch.zeros(3, 1, 1, 2, **f64)
    pool[0] = t(2.0, 4.0).reshape(1, 1, 2)
    o, _ = recurrent_gated_delta_rule(*_inputs(), scale=1.0, initial_state=pool,
                                      ssm_state_indices=torch.tensor([[2, 0]]),
                                      num_accepted_tokens=torch.tensor([2]), inplace_final_state=True)
    # read slot idx[0][1] = 0 (S0 = [2, 4]); after t1 S = [1.5, 2] -> slot 2; after t2 -> slot 0
    assert pool[2].flatten().tolist() == pytest.approx([1.5, 2.0])
    # t2: S = [.75, 1]; Sk = .45 + .8 = 1.25; u = 1 - 1.25 = -.25; S = [.6, .8]; o = .8
    assert pool[0].flatten().tolist() == pytest.approx([0.6, 0.8])
    assert o.flatten().tolist() == pytest.approx([1.5, 0.8])


def test_delta_rule_gva_head_mapping():
    # HV = 2 value heads over H = 1 key head: both read q/k head 0
    q, k, v, g, beta = _inputs()
    v2 = torch.cat([v, 2 * v], dim=2)
    o, _ = recurrent_gated_delta_rule(q, k, v2, g.repeat(1, 1, 2), beta.repeat(1, 1, 2), scale=1.0)
    assert o[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.56]) and o[0, :, 1, 0].tolist() == pytest.approx([2.0, 1.12])



def zero_draft_conv_case(fn, device="cpu"):
    """A 1-token step after a spec step that accepted 3 (vllm #39273): prior inputs are the
    state columns [2, 2+W-1), the new window [old[3 : W+1], x] lands in columns [0, W-1)."""
    dim, W, L_state = 2, 3, 4                          # W-1+num_spec, num_spec = 2
    state = torch.arange(dim * L_state, dtype=torch.float32, device=device).reshape(1, dim, L_state)
    w = torch.ones(dim, W, device=device)
    x = torch.full((1, dim), 100.0, device=device)
    st = state.clone()
    ids = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)
    y = fn(x, st, w, None, None, conv_state_indices=ids(0), num_accepted_tokens=ids(3), query_start_loc=ids(0, 1))
    assert torch.equal(y[0], state[0, :, 2:4].sum(-1) + 100.0)
    assert torch.equal(st[0, :, :2], torch.stack([state[0, :, 3], x[0]], dim=-1))
    assert torch.equal(st[0, :, 2:], state[0, :, 2:])      # later columns untouched


def test_conv_zero_draft_reads_at_the_accepted_offset():
    zero_draft_conv_case(causal_conv1d_update)
