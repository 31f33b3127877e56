"""Each structural signature finds its planted pattern and stays silent on a clean case
(and on an unrelated error). Small tensors, no backend."""
import torch

from harness.diagnosis import signatures as S

TOL = 1e-6


def _t(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _noise(x, rel=0.3, seed=1):
    return x + rel * _t(*x.shape, seed=seed)


def test_misrouting_names_the_slot_and_is_silent_on_clean_and_noise():
    e = _t(6, 3, 4)
    a = e.clone()
    a[5] = e[4]
    sig = S.misrouting("ssm_state", a, e, 0, TOL)
    assert sig and sig.kind == "misrouting" and "slot 5 holds what slot 4 should" in sig.words
    assert sig.where["map"] == {5: 4}
    assert S.misrouting("ssm_state", e.clone(), e, 0, TOL) is None
    assert S.misrouting("ssm_state", _noise(e), e, 0, TOL) is None


def test_misrouting_uniform_shift():
    e = _t(5, 4)
    a = torch.cat([e[:1], e[:-1]])         # row i holds row i-1
    sig = S.misrouting("rows", a, e, 0, TOL, label="row")
    assert sig and "uniform shift by +1" in sig.words


def test_time_shift_late_by_one_within_sequences():
    e = _t(8, 2, 3)
    a = e.clone()
    a[1:4] = e[0:3]                        # sequence [0, 4): one token late
    sig = S.time_shift("o", a, e, 0, TOL, starts=[0, 4])
    assert sig and sig.where["shift"] == 1 and sig.where["first_token"] == 1
    assert S.time_shift("o", e.clone(), e, 0, TOL) is None
    assert S.time_shift("o", _noise(e), e, 0, TOL) is None


def test_matches_alternative():
    e, alt = _t(3, 4), _t(3, 4, seed=5)
    sig = S.matches_alternative("state", alt.clone(), e, {"one token earlier": alt}, TOL)
    assert sig and "one token earlier" in sig.words
    assert S.matches_alternative("state", e.clone(), e, {"one token earlier": alt}, TOL) is None
    assert S.matches_alternative("state", _noise(e), e, {"one token earlier": alt}, TOL) is None


def test_boundary_chunk_sequence_start_pad():
    e = _t(150, 4)
    a = e.clone()
    a[64:100] += 1.0                        # one sequence [0, 100): from position 64 on
    sig = S.boundary("o", a, e, 0, TOL, starts=[0, 100])
    assert sig and sig.where["edge"] == "chunk" and sig.where["first_token"] == 64
    a = e.clone()
    a[100:] += 1.0
    sig = S.boundary("o", a, e, 0, TOL, starts=[0, 100])
    assert sig and sig.where["edge"] == "sequence_start" and "only sequence 1" in sig.words
    a = e.clone()
    a[[3, 4]] = float("nan")
    sig = S.boundary("o", a, e, 0, TOL, starts=[0, 100], pad_rows=[3, 4])
    assert sig and sig.where["edge"] == "pad_row"
    a = e.clone()
    a[7] += 1
    sig = S.boundary("o", a, e, 0, TOL, starts=[0, 100], spec_edges=[7])
    assert sig and sig.where["edge"] == "spec_edge"
    assert S.boundary("o", e.clone(), e, 0, TOL, starts=[0, 100]) is None


def test_head_pattern_gva_tiled_and_groups():
    H, HV = 2, 6                             # r = 3
    e = _t(4, HV, 3)
    a = e.clone()
    bad = [hv for hv in range(HV) if hv % H != hv // 3]
    a[:, bad] += 1.0
    sig = S.head_pattern("o", a, e, 1, H, HV, TOL)
    assert sig and "hv % H != hv // r" in sig.words
    a = e.clone()
    a[:, 3:6] += 1.0
    sig = S.head_pattern("o", a, e, 1, H, HV, TOL)
    assert sig and "whole GVA groups 1" in sig.words
    assert S.head_pattern("o", e.clone(), e, 1, H, HV, TOL) is None
    assert S.head_pattern("o", _noise(e), e, 1, H, HV, TOL) is None     # every head wrong: no pattern


def test_channel_section():
    e = _t(12, 5)
    a = e.clone()
    a[4:8] *= 2
    sec = {"q": (0, 4), "k": (4, 8), "v": (8, 12)}
    sig = S.channel_section("conv_out", a, e, 0, sec, TOL)
    assert sig and sig.where["sections"] == ["k"]
    assert S.channel_section("conv_out", e.clone(), e, 0, sec, TOL) is None
    assert S.channel_section("conv_out", _noise(e), e, 0, sec, TOL) is None


def test_precision_only_with_a_reproducing_rerun():
    e = _t(64, 16)
    a = e.to(torch.bfloat16).to(torch.float64)
    rerun = {"bf16 at the output": e.to(torch.bfloat16).to(torch.float64)}
    sig = S.precision("o", a, e, rerun, tol=1e-6)
    assert sig and sig.kind == "precision" and "bf16" in sig.words
    assert S.precision("o", e.clone(), e, rerun, tol=1e-6) is None                       # clean
    assert S.precision("o", _noise(e), e, rerun, tol=1e-6) is None                       # error far too big
    assert S.precision("o", a, e, {}, tol=1e-6) is None                                  # no re-run, no claim


def test_transposed_memory_and_logical():
    e = _t(2, 3, 4)
    a = e.transpose(-1, -2).contiguous().reshape(e.shape)
    assert S.transposed("state", a, e, TOL).where["how"].startswith("memory")
    sq = _t(2, 4, 4)
    assert S.transposed("state", sq.transpose(-1, -2), sq, TOL) is not None
    assert S.transposed("state", e.clone(), e, TOL) is None
    assert S.transposed("state", _noise(e), e, TOL) is None


def test_affine_sign_scale_offset():
    e = _t(10, 4)
    assert S.affine("o", -e, e, TOL).kind == "sign"
    sig = S.affine("o", 0.5 * e, e, TOL)
    assert sig.kind == "scale" and abs(sig.where["a"] - 0.5) < 1e-9
    assert S.affine("o", e + 0.25, e, TOL).kind == "offset"
    assert S.affine("o", 2 * e + 1, e, TOL).kind == "affine"
    assert S.affine("o", e.clone(), e, TOL) is None
    assert S.affine("o", _noise(e), e, TOL) is None


def test_zeros_and_untouched():
    before, e = _t(4, 3), _t(4, 3, seed=7)
    a = e.clone()
    a[2] = before[2]
    sig = S.zeros_untouched("ssm_state", a, e, before, 0, TOL)
    assert sig and sig.kind == "untouched" and sig.where["indices"] == [2]
    a = e.clone()
    a[1] = 0
    sig = S.zeros_untouched("ssm_state", a, e, before, 0, TOL)
    assert sig and sig.kind == "zeros" and sig.where["indices"] == [1]
    assert S.zeros_untouched("ssm_state", e.clone(), e, before, 0, TOL) is None
    assert S.zeros_untouched("ssm_state", _noise(e), e, before, 0, TOL) is None


def test_nonfinite_first_token():
    e = _t(6, 3)
    a = e.clone()
    a[4, 1] = float("nan")
    sig = S.nonfinite("o", a, e, 0)
    assert sig and sig.where["first_index"] == [4, 1] and "token 4" in sig.words
    assert S.nonfinite("o", e.clone(), e, 0) is None
    assert S.nonfinite("o", _noise(e), e, 0) is None


def test_norm_shape_groupwise_rescale():
    e = _t(8, 16)
    scales = torch.rand(8, 2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    a = (e.reshape(8, 2, 8) * scales).reshape(8, 16)
    sig = S.norm_shape("y", a, e, 8, TOL)
    assert sig and sig.kind == "norm_shape"
    assert S.norm_shape("y", e.clone(), e, 8, TOL) is None
    assert S.norm_shape("y", _noise(e), e, 8, TOL) is None
    assert S.norm_shape("y", 2 * e, e, 8, TOL) is None          # one global scale is affine's


def test_gate_response_curve():
    z = _t(64, 8) * 2
    e = _t(64, 8, seed=9)
    ratio = lambda z: torch.sigmoid(z) / torch.nn.functional.silu(z)
    a = e * ratio(z)
    sig = S.gate_response("y", a, e, z, TOL, curves={"sigmoid instead of silu": ratio})
    assert sig and sig.where["curve"] == "sigmoid instead of silu"
    assert S.gate_response("y", e.clone(), e, z, TOL) is None
    assert S.gate_response("y", _noise(e), e, z, TOL) is None


def test_time_shift_of_a_window_column():
    e = _t(2, 3, 3)
    a = e.clone()
    a[..., :-1] = e[..., 1:]                 # window shifted: column c holds column c+1's value
    sig = S.time_shift("conv_state", a, e, 2, TOL, label="window column")
    assert sig and sig.where["shift"] == -1 and sig.where["label"] == "window column"
    assert S.time_shift("conv_state", e.clone(), e, 2, TOL, label="window column") is None


def test_sequence_pattern_partial_chunk():
    lengths = [64, 70, 128, 5]
    e = _t(4, 2, 3)
    a = e.clone()
    a[[1, 3]] += 1                           # the sequences whose length % 64 != 0
    sig = S.sequence_pattern("final_state", a, e, lengths, 0, TOL)
    assert sig and sig.where["shared"].startswith("length % 64 != 0")
    assert S.sequence_pattern("final_state", e.clone(), e, lengths, 0, TOL) is None
    assert S.sequence_pattern("final_state", _noise(e), e, lengths, 0, TOL) is None
