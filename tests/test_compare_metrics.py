"""compare()'s metrics against their definitions (numerics policy, DESIGN.md), on finite
outputs (its fast path) and on outputs with NaN / Inf (counted, and the max |diff| points at them)."""
import math

import numpy as np
import pytest
import torch

from harness.judge.compare import Tolerance, compare

TOL = Tolerance("rel_rms", 0.04, atol=1e-5)


def _by_definition(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> dict:
    d = np.abs(o - r)
    rel = math.sqrt((d ** 2).mean()) / math.sqrt((r ** 2).mean())
    flat = int(d.argmax())
    return dict(max_abs=float(d.max()), max_abs_index=list(np.unravel_index(flat, o.shape)), rel_rms=rel,
                mismatch_frac=float((d > tol.atol + tol.value * np.abs(r)).mean()),
                worst_token=int(d.reshape(o.shape[0], -1).max(1).argmax()), passed=rel <= tol.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", [1e-4, 1e-2, 1.0])
def test_finite_outputs_match_the_definitions(dtype, noise):
    g = torch.Generator().manual_seed(int(noise * 1e4))
    ref = torch.randn(9, 3, 17, dtype=torch.float64, generator=g)
    out = (ref + noise * torch.randn(ref.shape, dtype=torch.float64, generator=g)).to(dtype)
    m = compare("y", out, ref, TOL)
    want = _by_definition(out.double().numpy(), ref.numpy(), TOL)
    assert m.nan == m.inf == 0
    assert m.max_abs == want["max_abs"] and m.max_abs_index == want["max_abs_index"]
    assert m.rel_rms == pytest.approx(want["rel_rms"], rel=1e-12)
    assert m.mismatch_frac == pytest.approx(want["mismatch_frac"], abs=1e-6)
    assert m.worst_token == want["worst_token"] and m.passed == want["passed"]


def test_nan_and_inf_are_counted_and_fail():
    ref = torch.randn(6, 8, dtype=torch.float64)
    out = ref.float().clone()
    out[2, 3], out[4, 1] = float("nan"), float("inf")
    m = compare("y", out, ref, TOL)
    assert (m.nan, m.inf, m.passed) == (1, 1, False)
    assert m.max_abs_index == [2, 3] and m.max_abs == math.inf    # NaN counts as the largest error
    assert m.worst_token == 2 and m.first_divergent_token == 2


def test_nan_in_the_reference_is_a_mismatch():
    ref = torch.randn(5, 4, dtype=torch.float64)
    ref[1, 1] = float("nan")
    m = compare("y", ref.float(), ref, TOL)
    assert m.first_divergent_token == 1 and m.mismatch_frac == pytest.approx(1 / 20)
