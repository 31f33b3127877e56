"""Comparison of an output with its reference: metrics, localisation and the verdict.

Metrics per output (numerics policy in DESIGN.md): max |diff| and its index, relative
RMS error ``rms(out - ref) / rms(ref)``, the fraction of elements outside the
tolerance, NaN / Inf counts, and for token-major outputs the worst token and the first
divergent token. A tolerance is ``exact`` (bit equality) or ``rel_rms`` (bound on the
relative RMS error, NaN / Inf in real rows always fail).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy
import torch

from harness.errors import InputError


@dataclass
class Tolerance:
    kind: str                    # "exact" | "rel_rms"
    value: float = 0.0           # bound on rel RMS error (rel_rms)
    atol: float = 0.0            # elementwise floor used for the mismatch fraction
    reason: str = ""
    source: str = ""             # where the policy entry came from

    def describe(self) -> str:
        return "exact" if self.kind == "exact" else f"rel_rms <= {self.value:g}"


@dataclass
class Metrics:
    output: str
    shape: List[int]
    max_abs: float
    max_abs_index: List[int]
    rel_rms: float
    mismatch_frac: float
    nan: int
    inf: int
    worst_token: Optional[int] = None
    first_divergent_token: Optional[int] = None
    passed: bool = True
    margin: float = math.inf      # log10(bound / error); <= 0 fails, inf when error is 0
    tolerance: str = ""
    notes: List[str] = field(default_factory=list)
    error_map: Optional[dict] = None   # failing token-major outputs: max |diff| over token x head bins

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("margin", "rel_rms", "max_abs"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def compare(name: str, out: torch.Tensor, ref: torch.Tensor, tol: Tolerance,
            token_dim: Optional[int] = 0) -> Metrics:
    """Compare `out` with `ref` (same shape) under `tol`; token_dim indexes tokens if any."""
    if tuple(out.shape) != tuple(ref.shape):
        raise InputError(name, "shape (same as the reference)", tuple(ref.shape), tuple(out.shape))
    exact_equal = bool(torch.equal(out, ref)) if out.dtype == ref.dtype else False
    o, r = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    diff = torch.sub(o, r).abs_()
    if bool(torch.isfinite(diff).all()):    # then o (and r) hold no NaN / Inf: nothing to count or replace
        nan = inf = 0
        finite = diff
    else:
        nan, inf = int(torch.isnan(o).sum()), int(torch.isinf(o).sum())
        finite = torch.nan_to_num(diff, nan=math.inf)
    if o.numel():
        flat = int(torch.argmax(finite).item())
        max_abs = float(finite.reshape(-1)[flat])
        # numpy's: torch.unravel_index imports sympy on first use (0.4 s here, 2-4 s per GPU worker)
        index = [int(i) for i in numpy.unravel_index(flat, tuple(o.shape))]
    else:
        max_abs, index = 0.0, []
    ref_rms = float(r.pow(2).mean().sqrt()) if r.numel() else 0.0
    err_rms = float(finite.pow(2).mean().sqrt()) if r.numel() else 0.0
    rel = err_rms / ref_rms if ref_rms > 0 else (0.0 if err_rms == 0 else math.inf)
    if tol.kind == "exact":
        bad = ~(o == r) & ~(torch.isnan(o) & torch.isnan(r))
        passed = exact_equal or (out.dtype != ref.dtype and not bool(bad.any()))
        margin = math.inf if passed else -math.inf
    else:
        bad = torch.le(diff, r.abs().mul_(tol.value).add_(tol.atol)).logical_not_()   # NaN is bad
        passed = nan == 0 and inf == 0 and rel <= tol.value
        margin = (math.inf if rel == 0 else math.log10(tol.value / rel)) if math.isfinite(rel) else -math.inf
    m = Metrics(output=name, shape=list(o.shape), max_abs=max_abs, max_abs_index=index, rel_rms=rel,
                mismatch_frac=float(bad.float().mean()) if bad.numel() else 0.0, nan=nan, inf=inf,
                passed=passed, margin=margin, tolerance=tol.describe())
    if token_dim is not None and o.dim() > 0 and o.numel():
        per_tok = finite.transpose(0, token_dim).reshape(o.shape[token_dim], -1).amax(1)
        m.worst_token = int(per_tok.argmax())
        bad_tok = bad.transpose(0, token_dim).reshape(o.shape[token_dim], -1).any(1)
        m.first_divergent_token = int(bad_tok.nonzero()[0]) if bool(bad_tok.any()) else None
        if not passed:
            m.error_map = error_map(finite.transpose(0, token_dim))
    return m


def error_map(diff: torch.Tensor, max_tokens: int = 128, max_cols: int = 64) -> dict:
    """Max |diff| over (token, head) bins of a token-major error tensor, for heatmaps.

    Dim 1 is the head axis when there is one (``[T, HV, V]``), else the feature axis;
    both are binned down so the map stays small whatever the output size.
    """
    d = diff.reshape(diff.shape[0], diff.shape[1] if diff.dim() > 1 else 1, -1).amax(-1)  # [T, heads]
    d = torch.nan_to_num(d, posinf=float(torch.finfo(torch.float64).max))

    def binned(x: torch.Tensor, n: int, dim: int) -> tuple:
        size = x.shape[dim]
        per = -(-size // n)                     # ceil
        pad = per * -(-size // per) - size
        if pad:
            x = torch.nn.functional.pad(x.movedim(dim, -1), (0, pad)).movedim(-1, dim)
        shape = list(x.shape)
        shape[dim:dim + 1] = [shape[dim] // per, per]
        return x.reshape(shape).amax(dim + 1), per

    d, tok_per = binned(d, max_tokens, 0)
    d, col_per = binned(d, max_cols, 1)
    return dict(tokens_per_row=tok_per, heads_per_col=col_per, values=[[float(f"{v:.3g}") for v in row] for row in d.tolist()])
