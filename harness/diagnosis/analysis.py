"""The structural part of a diagnosis: op attribution (layer cases) and the signatures of
the failing outputs, beside the hypothesis re-runs, and the sentence that says what was
established, how sure it is and what was ruled out."""
from __future__ import annotations

import math
import time
from typing import List, Optional

import torch

from harness.cases.case import SPEC_EQUIVALENCE

from . import signatures as S
from . import structure

MAX_SIGNATURES = 8
# relations that explain a whole output exactly: rounding noise never does, so a precision
# re-run of the same error size is then a coincidence, not evidence
EXACT_RELATIONS = ("transposed", "sign", "scale", "offset", "affine", "misrouting", "time_shift", "untouched",
                   "zeros", "gate_response", "norm_shape")


def _tol(policy, key, case) -> float:
    t = policy.lookup(key, case.dtype, case.state_dtype)
    return max(t.value, 1e-12)


def _failing(pairs, policy, case):
    from harness.judge.compare import compare
    for c in pairs:
        name, a, e, key = c.output, c.actual, c.expected, c.policy_key
        if tuple(a.shape) != tuple(e.shape):
            continue
        m = compare(name, a, e.to(a.device), policy.lookup(key, case.dtype, case.state_dtype), c.token_dim)
        if not m.passed:
            yield c, m


def op_signatures(case, pairs, policy, ssm_layout: str) -> dict:
    """Signatures of an op case's failing outputs (axes from the op's sample) and, where the
    error is small enough to be rounding, the precision re-runs that reproduce it."""
    from harness.cases.opcheck import OP_INFOS, upcast
    from .op import context
    ctx = context(case, {}, ssm_layout)
    s = ctx.build()
    kw = s.kwargs
    d = case.dims
    hints = structure.hints_for_call(case.check, kw, d.H, d.HV, d.K, d.V)
    sigs, checked = [], False
    reruns, first = None, None
    for c, m in _failing(pairs, policy, case):
        name, a, e, key = c.output, c.actual, c.expected, c.policy_key
        base = c.quantity       # the op's declared output or state argument (hints and inputs are keyed by it)
        hint = dict(hints.get(base, {}))
        td = structure._dim(hint.get("token_dim"), a)
        if td is not None and first is None and tuple(a.shape) == tuple(e.shape):
            wrong = S.wrong_along(a, e, td, _tol(policy, key, case))
            first = dict(output=name, token=wrong[0]) if wrong else None
        before = kw[base].detach().cpu() if base in s.states and c.kind != "untouched" else None
        tol = _tol(policy, key, case)
        found = structure.scan(name, a, e, hint, tol, d.H, d.HV, before)
        if m.rel_rms < 0.1 and c.kind != "untouched":
            if reruns is None:
                reruns = structure.precision_reruns(OP_INFOS[case.check].reference,
                                                    {n: upcast(v) for n, v in kw.items()},
                                                    list(s.outputs), list(s.states))
            checked = True
            p = structure.precision_signature(name, a, e, reruns, tol)
            if p and not any(x.confidence == "exact" and x.kind in EXACT_RELATIONS for x in found):
                found.append(p)
        if base == "final_state" and not found:
            alt = _state_one_token_earlier(case.check, OP_INFOS[case.check].reference, kw)
            x = S.matches_alternative(name, a, e, {"one token earlier (each sequence's last token dropped)": alt},
                                      tol) if alt is not None else None
            found += [x] if x else []
        sigs += [dict(x.to_dict(), op=case.check, step=None) for x in found]
    return dict(signatures=_rank(sigs), precision_checked=checked, first_token=first,
                attribution=dict(op=case.check, how="op case", step=None,
                                 outputs=[c.output for c, _ in _failing(pairs, policy, case)]))


def _state_one_token_earlier(op: str, fn, kw) -> Optional[torch.Tensor]:
    """The final states of a varlen delta-rule call with each sequence's last token dropped."""
    from harness.cases.opcheck import upcast
    cu = kw.get("cu_seqlens")
    if op not in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule") or cu is None or \
            kw.get("ssm_state_indices") is not None:
        return None
    cu = [int(c) for c in cu.tolist()]
    keep = [t for a, b in zip(cu, cu[1:]) for t in range(a, b - 1)]
    if any(b - a < 2 for a, b in zip(cu, cu[1:])):
        return None
    k2 = {n: upcast(v) for n, v in kw.items()}
    for n in ("q", "k", "v", "g", "beta"):
        k2[n] = k2[n][:, keep]
    k2["cu_seqlens"] = torch.tensor([c - i for i, c in enumerate(cu)], dtype=kw["cu_seqlens"].dtype)
    res = fn(**k2)
    return res[1].detach().cpu() if isinstance(res, tuple) and res[1] is not None else None


def layer_signatures(case, pairs, policy) -> List[dict]:
    """Signatures of a layer case's failing outputs (step outputs, core, pools)."""
    from harness.cases.inputs import make_inputs
    from harness.cases.scenario import case_scenario
    sc = case_scenario(case)
    plans = sc.plan()
    inp = make_inputs(sc)
    d = sc.dims
    qkv = {"q": (0, d.key_dim), "k": (d.key_dim, 2 * d.key_dim), "v": (2 * d.key_dim, 2 * d.key_dim + d.value_dim)}
    sigs = []
    for c, m in _failing(pairs, policy, case):
        name, a, e, key = c.output, c.actual, c.expected, c.policy_key
        before = None
        if c.step is not None:
            s = c.step
            if c.kind == "pad_rows":
                continue
            es = plans[s]
            hint = dict(token_dim=0, starts=[x.bos for x in es if x.tokens],
                        pad_rows=[t for x in es if x.kind == "pad" for t in range(x.bos, x.eos)],
                        spec_edges=[x.bos for x in es if x.kind == "spec"], chunk=64)
            if c.quantity == "core":
                hint["head_dim"] = 1
        elif c.kind == "state" and c.cache == "conv":
            hint, before = dict(slot_dim=0, channel_dim=1, sections=qkv, label="slot"), inp.conv_pool
        elif c.kind == "state" and c.cache == "ssm":
            hint, before = dict(slot_dim=0, head_dim=1, label="slot"), inp.ssm_pool
        else:
            continue
        sigs += [dict(x.to_dict(), op=None, step=None)
                 for x in structure.scan(name, a, e, hint, _tol(policy, key, case), d.H, d.HV, before)]
    return _rank(sigs)


def _rank(sigs: List[dict]) -> List[dict]:
    return sorted(sigs, key=lambda s: (s["confidence"] != "exact", structure.RANK.index(s["kind"])))


def divergence(pairs, policy, case) -> dict:
    """Where the failing outputs start to diverge: the earliest first divergent token of a
    token-major output (else the worst output's max |diff| index), and the worst rel_rms."""
    best, worst = None, 0.0
    for c, m in _failing(pairs, policy, case):
        name = c.output
        rel = m.rel_rms if math.isfinite(m.rel_rms) else math.inf
        worst = max(worst, rel)
        if m.first_divergent_token is not None and (best is None or "token" not in best or
                                                    m.first_divergent_token < best["token"]):
            best = dict(output=name, token=m.first_divergent_token)
        elif best is None:
            best = dict(output=name, index=m.max_abs_index)
    return dict(best or {}, worst_rel_rms=worst)


def analyse(case, pairs, policy, backend, ssm_layout: str, deadline: float) -> dict:
    """attribution (layer), signatures (attribution's first, then the outputs'), whether a
    precision re-run was tried, and where the divergence starts."""
    out = dict(attribution=None, signatures=[], precision_checked=False, divergence=divergence(pairs, policy, case))
    if case.level == "op":
        out.update(op_signatures(case, pairs, policy, ssm_layout))
        first = out.pop("first_token", None)     # the op's token axis, which the op pairs do not carry
        if first:
            out["divergence"] = dict(first, worst_rel_rms=out["divergence"].get("worst_rel_rms", 0.0))
    elif case.level == "layer" and case.check != SPEC_EQUIVALENCE:
        if backend is not None and time.perf_counter() < deadline:
            from .attribution import attribute_layer
            try:
                att = attribute_layer(case, backend, policy, deadline)
            except Exception as e:  # noqa: BLE001 - attribution is evidence, never the verdict
                att = dict(op=None, error=f"{type(e).__name__}: {e}")
            out["attribution"] = att
            if att:
                out["signatures"] += att.pop("signatures", []) or []
                out["precision_checked"] = bool(att.get("op")) and att.get("rel_rms", 1) < 0.1
        out["signatures"] += layer_signatures(case, pairs, policy)
    out["signatures"] = out["signatures"][:MAX_SIGNATURES]
    return out


# ------------------------------------------------------------------ words
def attribution_words(att: Optional[dict]) -> Optional[str]:
    if not att:
        return None
    if att.get("error"):
        return f"op attribution failed ({att['error']})"
    op, step = att.get("op"), att.get("step")
    where = f"step {step}" + (f", {att['entry']}" if att.get("entry") else "") if step is not None else ""
    if att.get("how") == "op case":
        outs = att.get("outputs") or []
        return (f"localised to op {op} (an op case: {', '.join(outs)} "
                f"{'differs' if len(outs) == 1 else 'differ'} from the reference)")
    if op == "gdn_core":
        if not att.get("stage"):
            return ("gdn_core: every step's conv state, ssm state and core match the oracle's step from the same "
                    "caches (stages ruled out)")
        return (f"localised to gdn_core's {att['stage']}: it differs from the fp64 oracle's step from the same "
                f"caches at {where} ({', '.join(att.get('outputs', []))}, rel_rms {att.get('rel_rms', 0):.3g})")
    if op is None:
        ruled = att.get("ruled_out") or []
        if att.get("cut_short"):
            return (f"op attribution incomplete: {att['cut_short']} (ruled out so far: {', '.join(ruled) or 'none'}; "
                    "raise --diagnose-budget)")
        return (f"no op differs from the reference on its own inputs and no single swap makes the layer pass "
                f"(ruled out: {', '.join(ruled) or 'none implemented'})")
    if att.get("how") == "swap":
        return (f"localised to op {op}: swapping it for the reference makes the layer pass (established), though no "
                "single call differs beyond the op tolerance")
    s = (f"localised to op {op}: it first differs from the reference on its own inputs at {where} "
         f"({', '.join(att.get('outputs', []))}, rel_rms {att.get('rel_rms', 0):.3g})")
    if att.get("confirmed"):
        s += "; swapping it for the reference makes the layer pass (established)"
    elif "left_failing" in att:
        s += f"; with it swapped {att['left_failing']} outputs still fail (another fault too)"
    elif att.get("cut_short"):
        s += f"; not confirmed: {att['cut_short']}"
    return s


def signature_words(sigs: List[dict], n: int = 2) -> Optional[str]:
    if not sigs:
        return None
    parts, kinds = [], set()
    for s in sigs:
        if s["kind"] in kinds or len(parts) == n:
            continue
        kinds.add(s["kind"])
        at = f" [{s['op']}" + (f", step {s['step']}" if s.get("step") is not None else "") + "]" if s.get("op") else ""
        sure = "" if s["confidence"] == "exact" else f" ({s['confidence']})"
        parts.append(f"{s['words']}{at}{sure}")
    return "signature: " + "; ".join(parts)


def sentence(hyps: List[dict], extra: dict, coverage: Optional[dict], hyp_sentence, coverage_note) -> Optional[str]:
    """Hypothesis words (when one matches) + what the attribution and signatures established;
    when nothing is named, what was ruled out."""
    parts = []
    matched = bool(hyps and hyps[0]["matched"])
    if matched:
        parts.append(hyp_sentence(hyps))
    a = attribution_words(extra.get("attribution"))
    if a:
        parts.append(a)
    sigs = extra.get("signatures") or []
    s = signature_words(sigs)
    if s:
        parts.append(s)
    if not matched:
        ruled = []
        note = coverage_note(coverage)
        if note:
            ruled.append(note)
        if hyps:
            ruled.append(hyp_sentence(hyps))
        worst = (extra.get("divergence") or {}).get("worst_rel_rms", 0.0)
        if extra.get("precision_checked") and not any(x["kind"] == "precision" for x in sigs):
            ruled.append("not precision: bf16 / fp16 / tf32 rounding re-runs of the reference do not reproduce "
                         "an error of this size")
        elif worst >= 0.1 and not any(x["kind"] == "precision" for x in sigs):
            ruled.append(f"not precision: rel_rms {worst:.3g} is far above bf16 / fp16 rounding (~4e-3)")
        if not a and not s:
            ruled.append("no structural signature fits (not a permutation, shift, transposition, rescaling, "
                         "head / channel / boundary pattern)")
        parts.append("not a known fault class: " + "; ".join(ruled) if ruled else "not a known fault class")
    d = extra.get("divergence") or {}
    if d.get("output") and not any(x["kind"] == "boundary" for x in sigs[:MAX_SIGNATURES]):
        parts.append(f"the divergence starts at {d['output']} token {d['token']}" if "token" in d else
                     f"the largest difference is at {d['output']} index {d.get('index')}")
    return "; ".join(parts) if parts else None
