"""The structural signatures (`signatures`) applied to a failing case's outputs.

`hints_for_call` says, from an op's arguments, what the axes of each output mean (tokens,
heads, channel sections, slots, sequence starts, PAD rows, the norm's groups and gate);
`scan` runs the signatures that apply to one output; `precision_reruns` re-runs a
reference op with its inputs and / or outputs rounded to a narrower dtype, the only
evidence on which a diff is called precision.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Mapping, Optional

import torch

from harness.reference.ops import op_decl, op_names

from . import signatures as S

F64 = torch.float64


class _Returns(Mapping):
    """op -> the names of its return values (None: not compared), as declared with its
    reference (harness.reference.ops), read live."""

    def __getitem__(self, op: str):
        return op_decl(op).returns

    def __iter__(self):
        return iter(op_names())

    def __len__(self):
        return len(op_names())


OUTPUTS: Mapping = _Returns()
STATE_ARGS = ("conv_states", "conv_state", "initial_state", "out")
# the ratio a swapped gate activation gives (rms_norm_gated's gate response)
GATE_CURVES = {
    "sigmoid where silu was asked": lambda z: torch.sigmoid(z) / torch.nn.functional.silu(z),
    "silu where sigmoid was asked": lambda z: torch.nn.functional.silu(z) / torch.sigmoid(z),
    "the gate dropped (act(z) = 1), silu asked": lambda z: 1 / torch.nn.functional.silu(z),
    "the gate dropped (act(z) = 1), sigmoid asked": lambda z: 1 / torch.sigmoid(z),
}


def bind(op: str, fn: Callable, args, kw) -> Dict[str, object]:
    """An op call's arguments by name (the reference signature of `op`)."""
    return dict(inspect.signature(fn).bind(*args, **kw).arguments)


def _starts(kw) -> Optional[List[int]]:
    for n in ("cu_seqlens", "query_start_loc"):
        t = kw.get(n)
        if isinstance(t, torch.Tensor) and t.numel() > 1:
            return [int(x) for x in t.tolist()[:-1]]
    return None


def _seq_slots(kw) -> Optional[List[int]]:
    """Per sequence of the call: its state slot (-1 PAD), or None."""
    for n in ("ssm_state_indices", "conv_state_indices", "cache_indices"):
        t = kw.get(n)
        if isinstance(t, torch.Tensor):
            t = t.reshape(t.shape[0], -1)
            acc = kw.get("num_accepted_tokens")
            return [int(t[i, int(acc[i]) - 1] if acc is not None and t.shape[1] > 1 else t[i, 0])
                    for i in range(t.shape[0])]
    return None


def pad_rows_of(kw, T: int) -> List[int]:
    """Token rows of the call's PAD sequences (slot < 0)."""
    slots, starts = _seq_slots(kw), _starts(kw)
    if slots is None:
        return []
    if starts is None:
        return [i for i, s in enumerate(slots) if s < 0]
    ends = starts[1:] + [T]
    return [t for n, s in enumerate(slots) if s < 0 for t in range(starts[n], ends[n])]


def spec_edges(kw) -> List[int]:
    """The first token of each spec window (a call with num_accepted_tokens)."""
    return _starts(kw) or [] if kw.get("num_accepted_tokens") is not None else []


def hints_for_call(op: str, kw: dict, H: int, HV: int, K: int, V: int) -> Dict[str, dict]:
    """Per output name (return values, then in-place state arguments): the meaning of its axes."""
    h: Dict[str, dict] = {}
    starts = _starts(kw)
    qkv = {"q": (0, H * K), "k": (H * K, 2 * H * K), "v": (2 * H * K, 2 * H * K + HV * V)}
    if op == "unpack_qkvz_ba":
        for n in ("q", "k", "v", "z", "b", "a"):
            h[n] = dict(token_dim=0, head_dim=1)
    elif op == "causal_conv1d_fn":
        T = kw["x"].shape[1]
        h["out"] = dict(token_dim=1, channel_dim=0, sections=qkv, starts=starts, pad_rows=pad_rows_of(kw, T))
    elif op == "causal_conv1d_update":
        x = kw["x"]
        h["out"] = dict(token_dim=0, channel_dim=1, sections=qkv, starts=starts, pad_rows=pad_rows_of(kw, x.shape[0]),
                        spec_edges=spec_edges(kw))
    elif op == "fused_gdn_gating":
        for n in ("g", "beta"):
            h[n] = dict(token_dim=-2, head_dim=-1)
    elif op in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update"):
        T = kw["q"].shape[1]
        h["o"] = dict(token_dim=1, head_dim=2, starts=starts, pad_rows=pad_rows_of(kw, T), spec_edges=spec_edges(kw),
                      chunk=64 if op == "chunk_gated_delta_rule" else 10 ** 9)
        h["final_state"] = dict(slot_dim=0, head_dim=1, label="sequence",
                                lengths=[b - a for a, b in zip(starts, starts[1:] + [T])] if starts else None)
    elif op == "fused_recurrent_gated_delta_rule_packed_decode":
        h["out"] = dict(token_dim=0, head_dim=2, pad_rows=pad_rows_of(kw, kw["mixed_qkv"].shape[0]))
    elif op == "rms_norm_gated":
        V_ = kw["x"].shape[-1]
        h["y"] = dict(token_dim=0, group=kw.get("group_size") or V_, gate=kw.get("z"))
    for n in ("conv_states", "conv_state"):
        h[n] = dict(slot_dim=0, channel_dim=1, sections=qkv, label="slot", window_dim=2)
    h["initial_state"] = dict(slot_dim=0, head_dim=1, label="slot")
    return h


def scan(name: str, actual, expected, hint: dict, tol: float, H: int = 1, HV: int = 1,
         before: Optional[torch.Tensor] = None) -> List[S.Signature]:
    """The signatures that fit one failing output, most specific first."""
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if tuple(a.shape) != tuple(e.shape) or not a.numel():
        return []
    found: List[Optional[S.Signature]] = [S.nonfinite(name, a, e, _dim(hint.get("token_dim"), a))]
    found += [S.transposed(name, a, e, tol), S.affine(name, a, e, tol)]
    if "slot_dim" in hint:
        d, label = hint["slot_dim"], hint.get("label", "slot")
        found += [S.misrouting(name, a, e, d, tol, label), S.zeros_untouched(name, a, e, before, d, tol, label)]
        if hint.get("lengths"):
            found.append(S.sequence_pattern(name, a, e, hint["lengths"], d, tol))
    wd = _dim(hint.get("window_dim"), a)
    if wd is not None and a.shape[wd] > 1:
        found.append(S.time_shift(name, a, e, wd, tol, None, "window column"))
    td = _dim(hint.get("token_dim"), a)
    if td is not None:
        found += [S.time_shift(name, a, e, td, tol, hint.get("starts")),
                  S.misrouting(name, a, e, td, tol, "token row"),
                  S.zeros_untouched(name, a, e, None, td, tol, "token"),
                  S.boundary(name, a, e, td, tol, hint.get("starts"), hint.get("chunk", 64), hint.get("spec_edges", ()),
                             hint.get("pad_rows", ()))]
        if hint.get("starts") and len(hint["starts"]) > 1:
            found.append(_sequence_misrouting(name, a, e, td, hint["starts"], tol))
    hd = _dim(hint.get("head_dim"), a)
    if hd is not None and a.shape[hd] > 1:
        found += [S.misrouting(name, a, e, hd, tol, "head"), S.head_pattern(name, a, e, hd, H, a.shape[hd], tol)]
    if "sections" in hint and _dim(hint.get("channel_dim"), a) is not None:
        found.append(S.channel_section(name, a, e, _dim(hint["channel_dim"], a), hint["sections"], tol))
    if hint.get("group"):
        found.append(S.norm_shape(name, a, e, hint["group"], tol))
        if hint.get("gate") is not None:
            found.append(S.gate_response(name, a, e, hint["gate"], tol, GATE_CURVES))
    out, seen = [], set()
    for s in found:
        if s is not None and (s.kind, s.words) not in seen:
            seen.add((s.kind, s.words))
            out.append(s)
    return sorted(out, key=lambda s: (s.confidence != "exact", RANK.index(s.kind)))


# most telling first: a relation that explains the whole diff, then where it lives
RANK = ("transposed", "sign", "scale", "offset", "affine", "misrouting", "time_shift", "untouched", "zeros",
        "gate_response", "norm_shape", "head_pattern", "channel_section", "precision", "nonfinite", "boundary")


def _dim(d, t) -> Optional[int]:
    if d is None:
        return None
    d = d if d >= 0 else t.dim() + d
    return d if 0 <= d < t.dim() else None


def _sequence_misrouting(name, a, e, td, starts, tol) -> Optional[S.Signature]:
    """Sequences of equal length that hold another sequence's expected tokens."""
    T = a.shape[td]
    ends = list(starts[1:]) + [T]
    spans = [(s, t) for s, t in zip(starts, ends) if t > s]
    A = [a.narrow(td, s, t - s) for s, t in spans]
    E = [e.narrow(td, s, t - s) for s, t in spans]
    found = {}
    for i, x in enumerate(A):
        if S.rel_err(x, E[i]) <= max(tol, 1e-12):
            continue
        for j, y in enumerate(E):
            if j != i and y.shape == x.shape and float(y.abs().max()) > 0 and S.rel_err(x, y) <= max(tol, 1e-12):
                found[i] = j
                break
    if not found:
        return None
    words = "; ".join(f"sequence {i} holds what sequence {j} should" for i, j in list(found.items())[:3])
    return S.Signature("misrouting", name, f"misrouting in {name}: {words}", "exact", dict(label="sequence", map=found))


# ------------------------------------------------------------------ precision re-runs
def round_to(x, fmt: str):
    """x rounded to `fmt` (bf16, fp16, tf32), back in x's dtype; non-float values unchanged."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    if fmt == "tf32":
        m, e = torch.frexp(x.to(F64))
        return torch.ldexp(torch.round(m * 2 ** 11) / 2 ** 11, e).to(x.dtype)
    return x.to(torch.bfloat16 if fmt == "bf16" else torch.float16).to(x.dtype)


FORMATS = ("bf16", "fp16", "tf32")


def precision_reruns(fn: Callable, kw: dict, names: List[str], states: List[str]) -> Dict[str, Dict[str, torch.Tensor]]:
    """`fn(**kw)` re-run (fp64 kw) with rounding at each stage: the inputs, the outputs (and
    states written), both - per format. label -> {output name: tensor}."""
    out = {}
    for fmt in FORMATS:
        for stage in ("inputs", "outputs", "inputs and outputs"):
            k = {n: (round_to(v, fmt) if "inputs" in stage and n not in states else v) for n, v in kw.items()}
            k = {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in k.items()}
            try:
                res = fn(**k)
            except Exception:  # noqa: BLE001 - a format the op cannot take
                continue
            res = res if isinstance(res, tuple) else (res,)
            got = {n: r for n, r in zip(names, res) if n is not None and isinstance(r, torch.Tensor)}
            got.update({n: k[n] for n in states if isinstance(k.get(n), torch.Tensor)})
            if "outputs" in stage:
                got = {n: round_to(t, fmt) for n, t in got.items()}
            out[f"{fmt} rounding at the {stage}"] = {n: t.detach().cpu() for n, t in got.items()}
    return out


def precision_signature(name: str, actual, expected, reruns: Dict[str, Dict[str, torch.Tensor]],
                        tol: float) -> Optional[S.Signature]:
    return S.precision(name, actual, expected, {label: r.get(name) for label, r in reruns.items()}, tol=tol)
