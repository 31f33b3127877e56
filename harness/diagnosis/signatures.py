"""Structural signatures of a difference: what shape the error has, not which known fault it is.

Each function looks at one output (`actual`) and what it should be (`expected`), plus
the inputs it needs (axes, sequence starts, the gate, re-runs), and returns a
`Signature` when its pattern is there, else None. They know no fault of the zoo: they
describe the diff (a permutation of slots, a one-token shift, a boundary where it
starts, a subset of heads, a rescaling, ...), so they also describe faults nobody wrote
a hypothesis for. `tol` is the relative RMS error below which two tensors count as the
same (the case's tolerance); "wrong" means above it.

Vocabulary (`Signature.kind`): misrouting, time_shift, boundary, head_pattern,
channel_section, precision, transposed, sign, scale, offset, affine, zeros, untouched,
nonfinite, norm_shape, gate_response.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy
import torch

F64 = torch.float64
KINDS = ("misrouting", "time_shift", "boundary", "head_pattern", "channel_section", "precision", "transposed",
         "sign", "scale", "offset", "affine", "zeros", "untouched", "nonfinite", "norm_shape", "gate_response")


@dataclass
class Signature:
    kind: str                    # one of KINDS
    output: str                  # the output it was found in
    words: str                   # what it means, for a person
    confidence: str = "strong"   # exact (bit / tolerance-level fit) | strong | partial
    where: dict = field(default_factory=dict)

    def __post_init__(self):
        assert self.kind in KINDS, self.kind

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ helpers
def _f(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(F64).cpu()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """rms(a - b) / rms(b); inf where a holds NaN / Inf that b does not; 0 for two zero tensors."""
    a, b = _f(a), _f(b)
    if a.shape != b.shape:
        return math.inf
    bad = ~torch.isfinite(a) & torch.isfinite(b)
    if bool(bad.any()):
        return math.inf
    same = ~torch.isfinite(a) & ~torch.isfinite(b)
    d = torch.where(same, torch.zeros_like(a), a - b)
    num = float(d.pow(2).mean().sqrt()) if d.numel() else 0.0
    den = float(torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0).pow(2).mean().sqrt()) if b.numel() else 0.0
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def _same(a, b, tol: float) -> bool:
    return rel_err(a, b) <= max(tol, 1e-12)


def _slices(x: torch.Tensor, axis: int) -> List[torch.Tensor]:
    return list(_f(x).movedim(axis, 0))


def wrong_along(actual, expected, axis: int, tol: float) -> List[int]:
    """Indices along `axis` whose slice is out of tolerance (relative to the whole tensor's
    scale, so a near-zero slice with a tiny absolute error is not called wrong)."""
    a, e = _f(actual).movedim(axis, 0), _f(expected).movedim(axis, 0)
    scale = float(torch.nan_to_num(e, nan=0.0).pow(2).mean().sqrt()) or 1.0
    out = []
    for i in range(a.shape[0]):
        d = a[i] - e[i]
        if not bool(torch.isfinite(a[i]).all()) and bool(torch.isfinite(e[i]).all()):
            out.append(i)
        elif float(torch.nan_to_num(d, nan=0.0).pow(2).mean().sqrt()) > max(tol, 1e-12) * scale:
            out.append(i)
    return out


def _ranges(idx: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    idx = sorted(idx)
    parts, start = [], None
    for n, i in enumerate(idx):
        if start is None:
            start = i
        if n + 1 == len(idx) or idx[n + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


# ------------------------------------------------------------------ misrouting
def misrouting(name: str, actual, expected, axis: int = 0, tol: float = 1e-6, label: str = "slot",
               candidates: Optional[torch.Tensor] = None) -> Optional[Signature]:
    """Slices (rows / slots / heads / sequences) along `axis` that hold another slice's
    expected value: "slot 5 holds what slot 4 should". `candidates` (same layout as
    expected) adds values a slice may hold instead, e.g. the inputs before the call."""
    wrong = wrong_along(actual, expected, axis, tol)
    if not wrong:
        return None
    a, e = _slices(actual, axis), _slices(expected, axis)
    found = {}
    for i in wrong:
        for j in range(len(e)):
            if j != i and float(e[j].abs().max()) > 0 and _same(a[i], e[j], tol):
                found[i] = j
                break
    if not found:
        return None
    shifts = {i - j for i, j in found.items()}
    pairs = [f"{label} {i} holds what {label} {j} should" for i, j in list(found.items())[:3]]
    more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
    shift = f"; a uniform shift by {shifts.pop():+d}" if len(shifts) == 1 and len(found) > 1 else ""
    words = (f"misrouting in {name} along its {label} axis: {'; '.join(pairs)}{more} - {len(found)} of the "
             f"{len(wrong)} wrong {label}s hold another {label}'s expected value{shift}")
    return Signature("misrouting", name, words, "exact" if len(found) == len(wrong) else "partial",
                     dict(axis=axis, label=label, map={int(i): int(j) for i, j in found.items()}, wrong=len(wrong)))


# ------------------------------------------------------------------ time shift
def time_shift(name: str, actual, expected, token_dim: int = 0, tol: float = 1e-6,
               starts: Optional[Sequence[int]] = None, label: str = "token") -> Optional[Signature]:
    """Tokens whose output equals the reference's one token earlier (late by one) or later.
    `starts` (sequence starts) keeps the comparison inside each sequence. At least half of
    the wrong tokens must fit (a shifted window has one new column no shift explains)."""
    wrong = wrong_along(actual, expected, token_dim, tol)
    if not wrong:
        return None
    a, e = _slices(actual, token_dim), _slices(expected, token_dim)
    seq_of = _seq_index(len(a), starts)
    for d, what in ((1, "one token late (holds the reference's value of token t-1)"),
                    (-1, "one token early (holds the reference's value of token t+1)")):
        hit = [t for t in wrong if 0 <= t - d < len(e) and seq_of[t - d] == seq_of[t] and _same(a[t], e[t - d], tol)]
        if hit and 2 * len(hit) >= len(wrong):
            what = what.replace("token", label)
            return Signature("time_shift", name, f"time shift in {name}: {len(hit)} of {len(wrong)} wrong {label}s are "
                             f"{what}; first at {label} {hit[0]}", "exact" if len(hit) == len(wrong) else "strong",
                             dict(shift=d, first_token=hit[0], tokens=len(hit), label=label))
    return None


def _seq_index(T: int, starts: Optional[Sequence[int]]) -> List[int]:
    starts = sorted(set([0] + list(starts or [])))
    out, n = [], -1
    for t in range(T):
        while n + 1 < len(starts) and starts[n + 1] <= t:
            n += 1
        out.append(n)
    return out


def matches_alternative(name: str, actual, expected, alternatives: Dict[str, torch.Tensor], tol: float,
                        kind: str = "time_shift") -> Optional[Signature]:
    """`actual` equals one of the `alternatives` (re-runs of the reference one token earlier /
    later, ...) where it differs from `expected`: the first alternative that fits, by its label."""
    if _same(actual, expected, tol):
        return None
    for label, alt in alternatives.items():
        if alt is not None and tuple(alt.shape) == tuple(actual.shape) and _same(actual, alt, tol):
            return Signature(kind, name, f"{name} equals the reference {label}", "exact", dict(alternative=label))
    return None


# ------------------------------------------------------------------ boundaries
def boundary(name: str, actual, expected, token_dim: int = 0, tol: float = 1e-6,
             starts: Optional[Sequence[int]] = None, chunk: int = 64, spec_edges: Sequence[int] = (),
             pad_rows: Sequence[int] = ()) -> Optional[Signature]:
    """Where the divergence starts along the tokens, named when it is a structural edge:
    a PAD row, a sequence start, a `chunk`-token chunk boundary inside a sequence, a spec
    window edge. Also says when only one sequence is wrong."""
    wrong = wrong_along(actual, expected, token_dim, tol)
    T = actual.shape[token_dim]
    if not wrong or len(wrong) == T and T > 1 and not starts:
        return None
    t0 = wrong[0]
    starts = sorted(set(starts or [0]))
    seq = _seq_index(T, starts)
    n = seq[t0]
    pos = t0 - starts[n]
    wrong_seqs = sorted({seq[t] for t in wrong})
    only = (f"; only sequence {wrong_seqs[0]} (tokens {starts[wrong_seqs[0]]}-"
            f"{(starts[wrong_seqs[0] + 1] if wrong_seqs[0] + 1 < len(starts) else T) - 1}) is wrong"
            if len(wrong_seqs) == 1 and len(starts) > 1 else "")
    pad = set(pad_rows)
    if pad and set(wrong) <= pad:
        what, edge = f"only PAD rows ({_ranges(wrong)}) differ", "pad_row"
    elif t0 in set(spec_edges):
        what, edge = f"the divergence starts at token {t0}, a spec window edge", "spec_edge"
    elif pos > 0 and pos % chunk == 0:
        what, edge = (f"the divergence starts at token {t0}, a {chunk}-token chunk boundary (position {pos} of "
                      f"sequence {n})"), "chunk"
    elif pos == 0 and t0 > 0 and len(starts) > 1:
        what, edge = f"the divergence starts at token {t0}, the start of sequence {n} (earlier sequences match)", \
            "sequence_start"
    elif pos > 0:
        what, edge = (f"the divergence starts inside sequence {n} at token {t0} (position {pos}; the tokens before "
                      f"match)"), "inside"
    else:
        return None
    return Signature("boundary", name, f"boundary in {name}: {what}{only}", "exact",
                     dict(first_token=t0, edge=edge, sequence=n, position=pos, wrong_sequences=wrong_seqs))


def sequence_pattern(name: str, actual, expected, lengths: Sequence[int], axis: int = 0, tol: float = 1e-6,
                     chunk: int = 64) -> Optional[Signature]:
    """Per-sequence results (final states) wrong for only some sequences, named by what their
    lengths share: not a multiple of `chunk` (a partial last chunk), one token, shorter or
    longer than a chunk; else the sequences are listed."""
    wrong = wrong_along(actual, expected, axis, tol)
    n = actual.shape[axis]
    if not wrong or len(wrong) == n or len(lengths) != n:
        return None
    ws = set(wrong)
    tests = {f"length % {chunk} != 0 (a partial last chunk)": lambda L: L % chunk != 0,
             "length 1": lambda L: L == 1, f"length < {chunk}": lambda L: L < chunk,
             f"length > {chunk} (more than one chunk)": lambda L: L > chunk}
    shared = [w for w, f in tests.items() if ws == {i for i, L in enumerate(lengths) if f(L)}]
    what = f": exactly the sequences of {shared[0]}" if shared else ""
    return Signature("boundary", name, f"sequence pattern in {name}: only sequences {_ranges(wrong)} of {n} (lengths "
                     f"{', '.join(str(lengths[i]) for i in wrong)}) differ{what}", "exact",
                     dict(edge="sequence_pattern", sequences=wrong, shared=shared[0] if shared else None))


# ------------------------------------------------------------------ heads and channels
def head_pattern(name: str, actual, expected, head_dim: int, H: int, HV: int, tol: float = 1e-6) -> Optional[Signature]:
    """Only some value heads wrong; named when the set follows the GVA grouping: the heads
    where hv % H != hv // r (a tiled instead of a grouped q/k mapping), whole groups hv // r,
    or heads sharing hv % H."""
    wrong = wrong_along(actual, expected, head_dim, tol)
    n = actual.shape[head_dim]
    if not wrong or len(wrong) == n:
        return None
    r = max(HV // max(H, 1), 1)
    ws = set(wrong)
    extra = ""
    if r > 1 and ws == {hv for hv in range(n) if hv % H != (hv // r) % H}:
        extra = f": exactly the heads where hv % H != hv // r (r = {r}) - a q/k head mapping pattern"
    elif r > 1 and ws == {hv for hv in range(n) if (hv // r) in {w // r for w in ws}}:
        extra = f": whole GVA groups {_ranges(sorted({w // r for w in ws}))} (hv // r, r = {r})"
    elif H > 1 and ws == {hv for hv in range(n) if hv % H in {w % H for w in ws}}:
        extra = f": the heads with hv % H in {{{_ranges(sorted({w % H for w in ws}))}}}"
    return Signature("head_pattern", name, f"head pattern in {name}: only value heads {_ranges(wrong)} of {n} "
                     f"differ{extra}", "exact", dict(heads=wrong, of=n, grouped=bool(extra)))


def channel_section(name: str, actual, expected, channel_dim: int, sections: Dict[str, tuple],
                    tol: float = 1e-6) -> Optional[Signature]:
    """Only some channel sections wrong (`sections`: name -> (start, stop), e.g. the conv's
    q / k / v sections)."""
    wrong = set(wrong_along(actual, expected, channel_dim, tol))
    if not wrong:
        return None
    bad = [s for s, (a, b) in sections.items() if wrong & set(range(a, b))]
    if len(bad) == len(sections):
        return None
    return Signature("channel_section", name, f"channel sections in {name}: only {' and '.join(bad)} "
                     f"(channels {', '.join(f'{sections[s][0]}-{sections[s][1] - 1}' for s in bad)}) differ; "
                     f"{', '.join(s for s in sections if s not in bad)} match", "exact", dict(sections=bad))


# ------------------------------------------------------------------ precision
def precision(name: str, actual, expected, reruns: Dict[str, torch.Tensor], factor: float = 2.0,
              tol: float = 0.0) -> Optional[Signature]:
    """The error is of the size a narrower dtype gives: some re-run of the reference with
    that rounding (`reruns`: label -> output, e.g. "bf16 at the state store") has an error
    within `factor` of the backend's (or reproduces it outright). Without such a re-run
    nothing is said."""
    base = rel_err(actual, expected)
    if not math.isfinite(base) or base <= tol:
        return None
    best = None
    for label, out in reruns.items():
        if out is None or tuple(out.shape) != tuple(actual.shape):
            continue
        err = rel_err(out, expected)
        if err > 0 and base / factor <= err <= base * factor:
            ratio = max(err, base) / min(err, base)
            if best is None or ratio < best[2]:
                best = (label, err, ratio)
    if best is None:
        return None
    label, err, _ = best
    exact = _same(actual, reruns[label], tol)
    return Signature("precision", name, f"precision: the reference re-run with {label} gives an error of the same "
                     f"size (rel_rms {err:.3g} vs the backend's {base:.3g})"
                     f"{'; it reproduces the output' if exact else ''}", "exact" if exact else "strong",
                     dict(rerun=label, rerun_rel_rms=err, rel_rms=base))


# ------------------------------------------------------------------ global relations
def transposed(name: str, actual, expected, tol: float = 1e-6) -> Optional[Signature]:
    """The last two axes transposed: logically (square tiles) or as memory (a [B, A] tile
    read / written where an [A, B] one lives)."""
    if _same(actual, expected, tol) or actual.dim() < 2:
        return None
    e = _f(expected)
    cands = {"memory-transposed ([B, A] tile in an [A, B] buffer)":
             e.transpose(-1, -2).contiguous().reshape(e.shape)}
    if e.shape[-1] == e.shape[-2]:
        cands["transposed (last two axes swapped)"] = e.transpose(-1, -2)
    for label, c in cands.items():
        if _same(actual, c, tol):
            return Signature("transposed", name, f"{name} is the reference {label}", "exact", dict(how=label))
    return None


def affine(name: str, actual, expected, tol: float = 1e-6) -> Optional[Signature]:
    """out ~ a * ref + b over the whole output: a sign flip (a = -1), a scale (b = 0), an
    offset (a = 1) or a general affine map; said only when the fit is within tolerance."""
    a_, e_ = _f(actual).reshape(-1), _f(expected).reshape(-1)
    ok = torch.isfinite(a_) & torch.isfinite(e_)
    if int(ok.sum()) < 2 or _same(actual, expected, tol):
        return None
    x, y = e_[ok], a_[ok]
    X = torch.stack([x, torch.ones_like(x)], 1)
    sol = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    a, b = float(sol[0]), float(sol[1])
    if rel_err(a * x + b, y) > max(tol, 1e-12) or rel_err(y, x) <= max(tol, 1e-12):
        return None
    scale = float(x.pow(2).mean().sqrt()) or 1.0
    b_small, a_one = abs(b) <= 1e-3 * scale, abs(a - 1) <= 1e-3
    if b_small and abs(a + 1) <= 1e-3:
        return Signature("sign", name, f"{name} is the reference with its sign flipped (out = -ref)", "exact",
                         dict(a=a, b=b))
    if b_small:
        return Signature("scale", name, f"{name} is the reference scaled by {a:.4g} (out = {a:.4g} * ref)", "exact",
                         dict(a=a, b=b))
    if a_one:
        return Signature("offset", name, f"{name} is the reference shifted by {b:.4g} (out = ref + {b:.4g})",
                         "exact", dict(a=a, b=b))
    return Signature("affine", name, f"{name} is an affine map of the reference (out = {a:.4g} * ref + {b:.4g})",
                     "exact", dict(a=a, b=b))


def zeros_untouched(name: str, actual, expected, before: Optional[torch.Tensor] = None, axis: int = 0,
                    tol: float = 1e-6, label: str = "slot") -> Optional[Signature]:
    """Wrong slices (along `axis`) that are all zero, or that still hold their value from
    before the call (`before`): never written."""
    wrong = wrong_along(actual, expected, axis, tol)
    if not wrong:
        return None
    a = _slices(actual, axis)
    b = _slices(before, axis) if before is not None and tuple(before.shape) == tuple(actual.shape) else None
    untouched = [i for i in wrong if b is not None and torch.equal(a[i], b[i])]
    zero = [i for i in wrong if i not in untouched and bool((a[i] == 0).all())]
    if untouched and len(untouched) >= len(zero):
        return Signature("untouched", name, f"untouched: {label}s {_ranges(untouched)} of {name} still hold their "
                         f"value from before the call (never written); {len(untouched)} of {len(wrong)} wrong "
                         f"{label}s", "exact" if len(untouched) == len(wrong) else "partial",
                         dict(indices=untouched, wrong=len(wrong)))
    if zero:
        return Signature("zeros", name, f"zeros: {label}s {_ranges(zero)} of {name} are all zero where the "
                         f"reference has values (never written, or zero-initialised); {len(zero)} of {len(wrong)} "
                         f"wrong {label}s", "exact" if len(zero) == len(wrong) else "partial",
                         dict(indices=zero, wrong=len(wrong)))
    return None


def nonfinite(name: str, actual, expected, token_dim: Optional[int] = 0) -> Optional[Signature]:
    """NaN / Inf where the reference is finite: how many and the first token (index) holding one."""
    a, e = _f(actual), _f(expected)
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    if not bool(bad.any()):
        return None
    first = [int(i) for i in numpy.unravel_index(int(bad.reshape(-1).nonzero()[0, 0]), tuple(bad.shape))]   # not torch's: sympy
    what = "NaN" if bool(torch.isnan(a[bad]).any()) else "Inf"
    where = f"token {first[token_dim]}" if token_dim is not None and a.dim() > token_dim else f"index {first}"
    return Signature("nonfinite", name, f"{what} in {name}: {int(bad.sum())} non-finite values where the reference "
                     f"is finite, first at {where}", "exact", dict(first_index=first, count=int(bad.sum())))


# ------------------------------------------------------------------ normalisation / activation
def norm_shape(name: str, actual, expected, group: int, tol: float = 1e-6) -> Optional[Signature]:
    """Each (row, group of `group` channels) of the output a rescaled copy of the expected
    one, with scales that vary: the normalisation's statistics (group size, eps, the RMS
    itself) differ, the direction within each group is right."""
    a, e = _f(actual), _f(expected)
    if a.shape[-1] % group or _same(a, e, tol):
        return None
    a, e = a.reshape(-1, group), e.reshape(-1, group)
    keep = e.pow(2).sum(1) > 0
    a, e = a[keep], e[keep]
    if not a.shape[0]:
        return None
    c = (a * e).sum(1) / e.pow(2).sum(1)
    if rel_err(c[:, None] * e, a) > max(tol, 1e-12):
        return None
    spread = float(c.std() / c.abs().mean()) if c.numel() > 1 else 0.0
    if spread < 1e-3:      # one global scale: `affine` says that
        return None
    rms_a, rms_e = a.pow(2).mean(1).sqrt(), e.pow(2).mean(1).sqrt()
    return Signature("norm_shape", name, f"normalisation in {name}: every group of {group} channels is the expected "
                     f"vector rescaled (scale {float(c.min()):.3g}-{float(c.max()):.3g}); group-wise RMS "
                     f"{float(rms_a.mean()):.3g} vs expected {float(rms_e.mean()):.3g}: the norm's statistics "
                     f"(group size / eps / RMS) differ", "exact", dict(group=group, scale_min=float(c.min()),
                                                                     scale_max=float(c.max())))


def gate_response(name: str, actual, expected, gate: torch.Tensor, tol: float = 1e-6,
                  curves: Optional[Dict[str, Callable]] = None) -> Optional[Signature]:
    """The ratio actual / expected is a function of the gate input `gate` alone (same shape):
    the gate's response curve differs. `curves` (label -> f(z), the ratio a known
    activation mix-up would give) name it when one fits."""
    a, e, z = _f(actual).reshape(-1), _f(expected).reshape(-1), _f(gate).reshape(-1)
    if a.shape != z.shape or _same(actual, expected, tol):
        return None
    keep = e.abs() > 1e-3 * (e.abs().max() or 1.0)
    a, e, z = a[keep], e[keep], z[keep]
    q = a / e
    if q.numel() < 32 or float(q.std()) < 1e-9:
        return None
    # a function of z: neighbours in z have near-equal ratios (robust medians: a curve may
    # have a pole, as sigmoid / silu at 0)
    qs = q[torch.argsort(z)]
    step = float((qs[1:] - qs[:-1]).abs().median())
    spread = float((q - q.median()).abs().median())
    if spread < 1e-9 or step > 0.1 * spread:
        return None
    named = ""
    for label, f in (curves or {}).items():
        if rel_err(f(z), q) <= 1e-3:
            named = f": it is {label}"
            break
    pts = [float(q[(z - v).abs().argmin()]) for v in (-2.0, 0.0, 2.0)]
    return Signature("gate_response", name, f"gate response in {name}: actual / expected is a function of the gate "
                     f"alone (ratio {pts[0]:.3g}, {pts[1]:.3g}, {pts[2]:.3g} at z = -2, 0, 2){named}",
                     "exact" if named else "strong", dict(ratio_at=pts, curve=named[8:] or None))
