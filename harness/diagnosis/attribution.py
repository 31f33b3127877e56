"""Op attribution of a failing layer case: which op (or, for a fused `gdn_core`, which
stage) first goes wrong, at which step and entry, and in what shape.

The layer is re-run as the layer check runs it, with every backend op call checked in
isolation: the reference op gets the same inputs (upcast to fp64) and its results - and
the state pools it changes - are compared with the backend's under the op tolerances.
The first call that differs names the op, the step, the entry (by its slot / sequence)
and, through `structure.scan`, the shape of the difference. That op is then swapped for
the reference and the layer re-run: when every output passes the attribution is
confirmed. When no call differs on its own inputs each op is swapped in turn.
A `gdn_core` backend is checked per step against the fp64 oracle's step from the same
caches (conv stage: the conv pool; delta rule stage: the ssm pool; output: the core).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch

from harness.optimized.compose import backend_step
from harness.judge.compare import compare
from harness.cases.inputs import make_inputs
from harness.cases.layercheck import rank_pools, oracle_pairs, tf32_dots
from harness.cases.opcheck import OP_INFOS, state_policy_key
from ..layouts.projection import unpack_qkvz_ba
from ..layouts.state import conv_dim_first_view, ssm_convert
from ..layouts.tp import all_ranks, gather_heads, local_mixed_ba
from ..optimized.api import OPS
from ..optimized.reference_backend import ReferenceBackend
from ..reference.layer import oracle_step
from harness.cases.scenario import case_scenario
from . import structure
from .analysis import EXACT_RELATIONS
from .core import judge

F64 = torch.float64
REF = ReferenceBackend()


def _up(v):
    return v.detach().to(F64).clone() if isinstance(v, torch.Tensor) and v.is_floating_point() else (
        v.clone() if isinstance(v, torch.Tensor) else v)


class _Checked:
    """The layer's ops, each call compared with the reference on the same inputs."""

    def __init__(self, ops, policy, dtype: str, state_dtype: str, swap=(), check: bool = True,
                 pad_unspecified: bool = False):
        self.ops, self.policy, self.dtype, self.state_dtype = ops, policy, dtype, state_dtype
        # the backend declares PAD-row outputs unspecified: a call's PAD rows are no evidence
        self.pad_unspecified = pad_unspecified
        self.swap, self.check = set(swap), check
        self.step = self.rank = 0
        self.entries, self.p = [], None
        self.first: Optional[dict] = None
        self.calls = 0

    def __getattr__(self, op):
        if op not in OPS:
            raise AttributeError(op)
        fn = getattr(REF if op in self.swap else self.ops, op)
        if not self.check or self.first is not None:
            return fn

        def call(*args, **kw):
            ref_fn = getattr(REF, op)
            named = structure.bind(op, ref_fn, args, kw)
            before = {n: v.detach().clone() for n, v in named.items() if isinstance(v, torch.Tensor)}
            res = fn(*args, **kw)
            self.calls += 1
            try:
                self._compare(op, ref_fn, named, before, res)
            except Exception:  # noqa: BLE001 - a call the reference cannot re-run: not evidence
                pass
            return res
        return call

    def _compare(self, op, ref_fn, named, before, res):
        rkw = {n: _up(before[n]) if n in before else v for n, v in named.items()}
        got = res if isinstance(res, tuple) else (res,)
        want = ref_fn(**rkw)
        want = want if isinstance(want, tuple) else (want,)
        pairs = []
        for n, a, b in zip(structure.OUTPUTS[op], got, want):
            aliased = any(isinstance(named.get(x), torch.Tensor) and isinstance(a, torch.Tensor) and
                          a.data_ptr() == named[x].data_ptr() for x in structure.STATE_ARGS)
            if n is not None and not aliased and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                key = f"op.{op}.exact" if op == "unpack_qkvz_ba" else f"op.{op}"
                pairs.append((n, a, b, key))
        for n in structure.STATE_ARGS:
            if n in before and (not torch.equal(named[n], before[n]) or not torch.equal(rkw[n], _up(before[n]))):
                key = state_policy_key(op, OP_INFOS[op].caches.get(n))    # no cache: an output buffer (out=)
                pairs.append((n, named[n], rkw[n], key))
        loc = self.p.local
        hints = structure.hints_for_call(op, named, loc.H, loc.HV, loc.K, loc.V) if self.pad_unspecified else None
        bad = []
        for n, a, b, key in pairs:
            tol = self.policy.lookup(key, self.dtype, self.state_dtype)
            a, b = a.detach().cpu(), b.detach().cpu().to(F64)
            if hints is not None:
                a = _pad_rows_as_expected(a, b, hints.get(n, {}))
            m = compare(n, a, b, tol, None)
            if not m.passed:
                bad.append((n, a, b, tol, m))
        if not bad:
            return
        hints = hints or structure.hints_for_call(op, named, loc.H, loc.HV, loc.K, loc.V)
        sigs = []
        for n, a, b, tol, m in bad:
            sigs += [dict(s.to_dict(), op=op, step=self.step) for s in structure.scan(
                n, a, b, hints.get(n, {}), max(tol.value, 1e-12), loc.H, loc.HV, before.get(n))]
            if m.rel_rms < 0.1 and not any(s["kind"] == "precision" for s in sigs):
                reruns = structure.precision_reruns(ref_fn, {k: _up(before[k]) if k in before else v
                                                             for k, v in named.items()},
                                                    list(structure.OUTPUTS[op]),
                                                    [k for k in structure.STATE_ARGS if k in before])
                p = structure.precision_signature(n, a, b.to(F64), reruns, max(tol.value, 1e-12))
                if p and not any(x["confidence"] == "exact" and x["kind"] in EXACT_RELATIONS for x in sigs):
                    sigs.append(dict(p.to_dict(), op=op, step=self.step))
        self.first = dict(op=op, step=self.step, rank=self.rank, outputs=[b[0] for b in bad],
                          rel_rms=max(float(b[4].rel_rms) for b in bad),
                          entry=_entry_of(bad, named, self.entries, hints),
                          signatures=sigs)


def _pad_rows_as_expected(a: torch.Tensor, b: torch.Tensor, hint: dict) -> torch.Tensor:
    """`a` with the call's PAD rows (`hint`'s pad_rows along its token_dim) set to `b`'s."""
    pad, td = hint.get("pad_rows"), hint.get("token_dim")
    if not pad or td is None or a.shape != b.shape:
        return a
    idx = torch.tensor(pad)
    return a.index_copy(td % a.dim(), idx, b.index_select(td % b.dim(), idx).to(a.dtype))


def _entry_of(bad, named, entries, hints) -> Optional[str]:
    """The plan entry behind the first divergent row or slot of the call."""
    slots = structure._seq_slots(named)
    starts = structure._starts(named)
    for n, a, b, tol, m in bad:
        t = max(tol.value, 1e-12)
        if n == "final_state":      # one per sequence of the call: the non-spec entries, in order
            wrong = structure.S.wrong_along(a, b, 0, t)
            rest = [e for e in entries if e.kind != "spec"]
            if wrong and wrong[0] < len(rest):
                e = rest[wrong[0]]
                return f"sequence {wrong[0]} of the call (sequence {e.seq}, a {e.kind} entry)"
        elif n in structure.STATE_ARGS and n != "out":
            wrong = structure.S.wrong_along(a, b, 0, t)
            if wrong:
                return _describe_slot(wrong[0], entries, "slot")
        elif slots is not None:
            td = structure._dim(hints.get(n, {}).get("token_dim"), a)
            wrong = structure.S.wrong_along(a, b, td, t) if td is not None else []
            if wrong:
                t0 = wrong[0]
                seq = t0 if starts is None else max(i for i, s in enumerate(starts) if s <= t0)
                if seq < len(slots):
                    return f"token {t0} of the call, " + _describe_slot(slots[seq], entries, "slot")
    return None


def _describe_slot(slot: int, entries, what: str) -> str:
    for e in entries:
        if e.kind != "pad" and (e.conv_slot == slot or slot in (e.ssm_slots or [])):
            return f"{what} {slot} (sequence {e.seq}, a {e.kind} entry)"
    return f"{what} {slot} (PAD / no entry owns it)" if slot < 0 or entries else f"{what} {slot}"


class _OutOfTime(Exception):
    """The attribution's share of the diagnosis budget ran out in the middle of a run."""


def _run(case, backend, checked: _Checked, core=None, deadline: Optional[float] = None):
    """The layer check's run (run_layer_case) through `checked`; returns the pairs, or None when
    `checked` found the first divergent call (the rest of the run is not needed). Past
    `deadline` it raises `_OutOfTime` between steps."""
    sc = case_scenario(case)
    path, conv_layout, ba = case.decode_path, case.conv_layout, case.ba
    inp = make_inputs(sc)
    ranks = all_ranks(inp.weights.to(case.device), case.dims, case.layout, case.tp, ba)
    pools = [rank_pools(sc, inp.conv_pool, inp.ssm_pool, p, conv_layout, backend.ssm_state_layout, case.device)
             for p in ranks]
    steps_out, unpacked = [], []
    plan = sc.plan()
    for s, entries in enumerate(plan):
        if checked.check and checked.first is not None and core is None:
            return None
        if deadline is not None and time.perf_counter() > deadline:
            raise _OutOfTime(f"step {s} of {len(plan)}")
        h = inp.hidden[s].to(case.device)
        ref_in, per_rank = [], []
        for r, (p, (conv, ssm)) in enumerate(zip(ranks, pools)):
            checked.step, checked.rank, checked.entries, checked.p = s, r, entries, p
            mq, mb = h @ p.w_qkvz.T, h @ p.w_ba.T
            ref_in.append(unpack_qkvz_ba(mq, local_mixed_ba(p, mb), p.local, p.layout))
            per_rank.append(backend_step(checked, p, mq, mb, entries, conv_dim_first_view(conv, conv_layout), ssm,
                                         sc.norm, backend.ssm_state_layout, path, core, sc.num_spec))
        unpacked.append(tuple(gather_heads([r[i].cpu() for r in ref_in], dim=1) for i in range(6)))
        steps_out.append(dict(core=gather_heads([r["core"].cpu() for r in per_rank], dim=1),
                              out=sum(r["out"].float().cpu() for r in per_rank)))
    return oracle_pairs(sc, inp, steps_out, unpacked, pools, conv_layout, backend.ssm_state_layout, case.device,
                        tf32_dots(backend, sc, case.device))


def _failing_outputs(pairs, policy, case, pad_unspecified: bool = False) -> int:
    """How many of the pairs fail (0: the layer passes); PAD rows masked as the verdict masks
    them for a backend declaring them unspecified."""
    if pad_unspecified:
        from . import mask_pad_rows
        pairs, _ = mask_pad_rows(case, pairs)
    v = judge(pairs, {}, policy, case.dtype, case.state_dtype)
    return v.failing


def attribute_layer(case, backend, policy, deadline: float) -> Optional[dict]:
    """The op / stage a failing layer case first goes wrong in (see the module doc), or None."""
    from ..optimized.api import FilledOps
    ops = FilledOps(backend, REF)
    core = getattr(backend, "gdn_core", None)
    if core is not None:
        return _attribute_core(case, backend, ops, policy, core)
    unspecified = getattr(backend, "pad_row_outputs", "zeros") == "unspecified"
    checked = _Checked(ops, policy, case.dtype, case.state_dtype, pad_unspecified=unspecified)
    implemented = [op for op in OPS if backend.implements(op)]
    try:
        _run(case, backend, checked, deadline=deadline)
    except _OutOfTime as e:
        if checked.first is None:
            return dict(op=None, how="isolation", implemented=implemented, ruled_out=[],
                        cut_short=f"the budget ran out at {e} of the per-call comparison")
    first = checked.first

    def swapped_failing(op):
        return _failing_outputs(_run(case, backend, _Checked(ops, policy, case.dtype, case.state_dtype, swap=[op],
                                                             check=False), deadline=deadline), policy, case, unspecified)
    if first is not None:
        try:
            left = swapped_failing(first["op"])
            first.update(confirmed=left == 0, left_failing=left)
        except _OutOfTime as e:     # found, not confirmed
            first["cut_short"] = f"the budget ran out at {e} of the confirming swap"
        return dict(first, how="isolation")
    tried = []
    for op in implemented:         # no op differs on its own inputs: swap each in turn
        try:
            left = swapped_failing(op)
        except _OutOfTime as e:
            return dict(op=None, how="isolation", implemented=implemented, ruled_out=tried,
                        cut_short=f"the budget ran out at {e} of swapping {op}")
        tried.append(op)
        if left == 0:
            return dict(op=op, step=None, rank=None, outputs=[], entry=None, signatures=[], confirmed=True,
                        left_failing=0, how="swap")
    return dict(op=None, how="isolation", implemented=implemented, ruled_out=tried)


# ------------------------------------------------------------------ fused gdn_core: stages vs the oracle's step
def _attribute_core(case, backend, ops, policy, core) -> Optional[dict]:
    found: Dict[str, dict] = {}

    def checked_core(mixed_qkvz, mixed_ba, p, batch, conv_state, ssm_state, norm):
        conv0 = conv_state.detach().to("cpu", F64).clone()
        ssm0 = ssm_convert(ssm_state.detach().cpu(), backend.ssm_state_layout, "vk").to(F64).clone()
        out = core(mixed_qkvz, mixed_ba, p, batch, conv_state, ssm_state, norm)
        entries = batch.entries()
        if "first" in found:
            return out
        loc = p.local
        unpacked = unpack_qkvz_ba(mixed_qkvz.cpu(), mixed_ba.cpu(), loc, p.layout)
        conv1, ssm1 = conv0.clone(), ssm0.clone()
        ref = oracle_step(p.to("cpu"), mixed_qkvz.cpu(), entries, conv1, ssm1, norm, unpacked=unpacked)
        got = dict(conv_state=conv_state.detach().cpu(), ssm_state=ssm_convert(ssm_state.detach().cpu(),
                                                                              backend.ssm_state_layout, "vk"),
                   core=out.detach().cpu())
        want = dict(conv_state=conv1, ssm_state=ssm1, core=ref["core"])
        keys = dict(conv_state="layer.conv_state", ssm_state="layer.ssm_state", core="layer.core")
        bad = {}
        for n in ("conv_state", "ssm_state", "core"):
            tol = policy.lookup(keys[n], case.dtype, case.state_dtype)
            m = compare(n, got[n], want[n].to(got[n].dtype) if n == "conv_state" else want[n], tol, None)
            if not m.passed:
                bad[n] = (tol, m)
        if bad:
            stage = ("slot routing or the conv feeding the delta rule (conv and ssm state both differ)"
                     if {"conv_state", "ssm_state"} <= set(bad) else
                     "conv stage (conv window / conv state)" if "conv_state" in bad else
                     "gating / delta rule stage (ssm state)" if "ssm_state" in bad else
                     "core output (rows written / gathered)")
            qkv = {"q": (0, loc.H * loc.K), "k": (loc.H * loc.K, 2 * loc.H * loc.K),
                   "v": (2 * loc.H * loc.K, loc.conv_dim)}
            hints = dict(conv_state=dict(slot_dim=0, channel_dim=1, sections=qkv, label="slot"),
                         ssm_state=dict(slot_dim=0, head_dim=1, label="slot"),
                         core=dict(token_dim=0, head_dim=1, starts=[e.bos for e in entries],
                                   pad_rows=[t for e in entries if e.kind == "pad" for t in range(e.bos, e.eos)],
                                   spec_edges=[e.bos for e in entries if e.kind == "spec"], chunk=64))
            befores = dict(conv_state=conv0, ssm_state=ssm0)
            sigs = [dict(s.to_dict(), op="gdn_core", step=found.get("step", 0))
                    for n, (tol, m) in bad.items()
                    for s in structure.scan(n, got[n], want[n], hints[n], max(tol.value, 1e-12), loc.H, loc.HV,
                                            befores.get(n))]
            entry = None
            for n in ("conv_state", "ssm_state"):
                if n in bad:
                    tol = bad[n][0]
                    wrong = [i for i in range(got[n].shape[0])
                             if structure.S.rel_err(got[n][i], want[n][i]) > max(tol.value, 1e-12)]
                    if wrong:
                        entry = _describe_slot(wrong[0], entries, "slot")
                        break
            found["first"] = dict(op="gdn_core", stage=stage, step=found.get("step", 0), rank=0,
                                  outputs=list(bad), rel_rms=max(float(m.rel_rms) for _, m in bad.values()),
                                  entry=entry, signatures=sigs, how="oracle intermediates")
        return out

    class _Stepper(_Checked):
        def __setattr__(self, k, v):
            if k == "step":
                found["step"] = v
            super().__setattr__(k, v)

    checked = _Stepper(ops, policy, case.dtype, case.state_dtype, check=False)
    _run(case, backend, checked, core=checked_core)
    if "first" in found:
        return found["first"]
    return dict(op="gdn_core", how="oracle intermediates", stage=None, ruled_out=["gdn_core stages"])
