"""Shrink a failing case to a smaller one that still fails the same way (a minimal repro).

A greedy delta-debugging loop in the spirit of Hypothesis' shrinker: it proposes smaller
cases - lower TP, fewer steps, fewer sequences, no PAD rows, shorter prefills, fewer
draft tokens, fewer heads, smaller head dims, a narrower hidden size - keeps the first
that still fails the same way, and sweeps again until no move helps or the budget is
spent. Shrunk cases carry their inputs explicitly (`Case.scenario`): a layer case its
steps, an op case the sequences of its sample it keeps and their lengths.

**Same failure.** The shrinker never changes what is checked: level, check (op or mix),
backend, layout, variant (decode path / conv layout / ba), dtypes and seed stay. A
candidate fails the same way when

* its status is the original's (``fail``, or ``error``), and
* ``fail``: at least one failing output is one the original failed on - the same
  quantity, kind and cache, the fields the record's metrics carry (`Comparison`): never
  the output's name, never its step (``step3.core`` and ``step0.core`` are both the
  layer's core: dropping steps renumbers them); ``error``: the same structural class and
  exception type (the record's fields, not its message), and for an output that could not
  be compared the same output, and
* the control backend passes it (default: the base a zoo fault derives from, else
  ``reference``), so the failure is the backend's and not an artefact of tiny dims.

Heads keep HV % H == 0 and K != V when the original had K != V (a transposed state must
still show); r = HV / H is dropped only when that still fails.

**Size** of a case: the number of elements of every input it hands the backend - for a
layer case the weights, the hidden states of all steps and both cache pools; for an op
case every tensor argument of its sample - times the TP degree (each rank is a run of
its own, so TP 2 counts twice TP 1).

``gdn-harness shrink <case id | case.json> [--out min.json]`` writes the minimal case in
the format of ``gdn-harness repro --save`` (replayed by ``gdn-harness repro min.json``);
``scripts/experiments/shrink_zoo.py --zoo`` shrinks each zoo fault's first failing case and
reports the median size reduction.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from harness.cases.case import SPEC_EQUIVALENCE, Case
from harness.config import GDNDims
from harness.errors import HarnessError

SUITE = "shrink"


# ---------------------------------------------------------------- size
def case_size(case: Case, sample: Optional[dict] = None) -> int:
    """Elements of all inputs the case hands the backend, times TP (raises when invalid).
    `sample`: filled with an op case's sequences and lengths."""
    import torch
    if case.level == "op":
        if case.scenario is not None:
            sample = dict(case.scenario)
        elif sample is None:
            sample = {}
        from harness.cases.inputs import dtype_of
        from harness.cases.opcheck import OP_INFOS
        s = OP_INFOS[case.check].build(case.variant, case.dims, dtype_of(case.dtype), dtype_of(case.state_dtype),
                                        "vk", case.seed, "cpu", sample)
        return sum(v.numel() for v in s.kwargs.values() if isinstance(v, torch.Tensor))
    if case.level != "layer":
        raise HarnessError(f"shrink: {case.level} cases check the oracle, not a backend; nothing to shrink")
    from harness.cases.inputs import make_inputs
    sc = _scenario(case)
    inp = make_inputs(sc)
    w = [getattr(inp.weights, f) for f in inp.weights.__dataclass_fields__]
    return case.tp * sum(t.numel() for t in w + inp.hidden + [inp.conv_pool, inp.ssm_pool]
                         if isinstance(t, torch.Tensor))


def _scenario(case: Case):
    if case.check == SPEC_EQUIVALENCE:
        from harness.cases.layercheck import spec_equivalence_scenario
        return spec_equivalence_scenario(case.dims, case.layout, case.dtype, case.state_dtype, case.seed,
                                         case.conv_layout)
    from harness.cases.scenario import case_scenario
    return case_scenario(case)


def size_parts(case: Case) -> dict:
    """What a reader of the table wants besides the size: tokens, steps, sequences, heads."""
    d = case.dims
    out = dict(tp=case.tp, H=d.H, HV=d.HV, K=d.K, V=d.V, hidden=d.hidden)
    if case.level == "op":
        sample = explicit(case).scenario
        out.update(seqs=len(sample["seqs"]), tokens=sum(sample["lens"]))
    elif case.level == "layer" and case.check != SPEC_EQUIVALENCE:
        sc = _scenario(case)
        out.update(steps=len(sc.steps), seqs=len(sc.seq_ids()), num_spec=sc.num_spec,
                   tokens=sum(sc.entry_tokens(e) for st in sc.steps for e in st))
    return out


# ---------------------------------------------------------------- same failure
def _what(m: dict) -> dict:
    """What a failing (or broken) output is, from its record fields: its quantity, kind and
    cache; never its name, and never its step (dropping steps renumbers them). A record
    written before metrics carried these fields falls back to the name, unparsed."""
    return dict(quantity=m.get("quantity", m.get("output")), kind=m.get("kind", "out"), cache=m.get("cache"))


def _key(w: dict) -> tuple:
    return w["quantity"], w["kind"], w["cache"] or ""


def _whats(items) -> List[dict]:
    unique = {_key(w): w for w in map(_what, items)}
    return [unique[k] for k in sorted(unique)]


def failure_signature(rec: dict) -> dict:
    """What 'the same failure' is compared on (see the module doc): the record's fields."""
    if rec["status"] == "fail":
        return dict(status="fail", outputs=_whats(m for m in rec["metrics"] if not m["passed"]))
    if rec["status"] == "error":
        return dict(status="error", structural=rec.get("structural"), error_type=rec.get("error_type"),
                    outputs=_whats(rec.get("broken_outputs") or []))
    return dict(status=rec["status"])


def same_failure(sig: dict, rec: dict) -> bool:
    got = failure_signature(rec)
    if got["status"] != sig["status"]:
        return False
    key = lambda outs: set(map(_key, outs))
    if sig["status"] == "fail":
        return bool(key(got["outputs"]) & key(sig["outputs"]))
    return sig["status"] == "error" and (got["structural"], got["error_type"]) == (sig["structural"], sig["error_type"]) \
        and (not sig["outputs"] or bool(key(got["outputs"]) & key(sig["outputs"])))


def failing_outputs(rec: dict) -> List[str]:
    """The names (for people) of a record's failing / broken outputs."""
    if rec["status"] == "fail":
        return [m["output"] for m in rec["metrics"] if not m["passed"]]
    return [b["output"] for b in rec.get("broken_outputs") or []]


# ---------------------------------------------------------------- moves
def _smaller(x: int, lo: int = 1) -> List[int]:
    """Values to try for an integer, smallest first (the biggest step that might work)."""
    return [v for v in dict.fromkeys([lo, x // 2, x - 1]) if lo <= v < x]


def _with_dims(case: Case, **kw) -> Case:
    d = case.dims
    new = {k: kw.get(k, getattr(d, k)) for k in ("hidden", "H", "HV", "K", "V")}
    root = d.name.split("~")[0]
    name = f"{root}~h{new['hidden']}H{new['H']}HV{new['HV']}K{new['K']}V{new['V']}"
    return replace(case, dims=GDNDims(W=d.W, name=name, **new))


def _dims_moves(case: Case, keep_k_ne_v: bool) -> Iterator[Tuple[str, Case]]:
    d, tp = case.dims, case.tp
    for t in [t for t in range(1, tp) if tp % t == 0]:
        yield f"tp={t}", replace(case, tp=t)
    r = d.r
    for h in _smaller(d.H, tp):
        if h % tp == 0:
            yield f"H={h}", _with_dims(case, H=h, HV=h * r)
    for rr in _smaller(r):
        if (d.H * rr) % tp == 0:
            yield f"r={rr}", _with_dims(case, HV=d.H * rr)
    for k in _smaller(d.K):
        if not (keep_k_ne_v and k == d.V):
            yield f"K={k}", _with_dims(case, K=k)
    for v in _smaller(d.V):
        if not (keep_k_ne_v and v == d.K):
            yield f"V={v}", _with_dims(case, V=v)
    if case.level == "layer":
        for h in _smaller(d.hidden):
            yield f"hidden={h}", _with_dims(case, hidden=h)


def _with_steps(case: Case, steps, num_spec: int) -> Case:
    return replace(case, scenario=dict(steps=[[dict(e) for e in st] for st in steps if st], num_spec=num_spec))


def _scenario_moves(case: Case) -> Iterator[Tuple[str, Case]]:
    steps, ns = case.scenario["steps"], case.scenario.get("num_spec", 0)
    if len(steps) > 1:
        for i in range(len(steps)):
            yield f"drop step {i}", _with_steps(case, steps[:i] + steps[i + 1:], ns)
    seqs = list(dict.fromkeys(e["seq"] for st in steps for e in st if e["kind"] != "pad"))
    if len(seqs) > 1:
        for s in seqs:
            yield f"drop seq {s}", _with_steps(case, [[e for e in st if e.get("seq") != s or e["kind"] == "pad"]
                                                      for st in steps], ns)
    for i, st in enumerate(steps):
        for j, e in enumerate(st):
            def edit(**kw):
                new = [list(x) for x in steps]
                new[i][j] = {**e, **kw}
                return _with_steps(case, new, ns)
            if e["kind"] == "pad" and len(st) > 1:
                yield f"drop pad {i}.{j}", _with_steps(case, steps[:i] + [st[:j] + st[j + 1:]] + steps[i + 1:], ns)
            n = int(e.get("tokens", 1))
            if e["kind"] == "prefill":
                for t in _smaller(n):
                    yield f"step {i} seq {e['seq']} prefill {t}", edit(tokens=t)
            if e["kind"] == "spec":
                acc = int(e.get("accepted", 1))
                for t in _smaller(n, acc):
                    yield f"step {i} seq {e['seq']} spec tokens {t}", edit(tokens=t)
                for a in _smaller(acc):
                    yield f"step {i} seq {e['seq']} accepted {a}", edit(accepted=a)
    spec = [int(e.get("tokens", 1)) for st in steps for e in st if e["kind"] == "spec"]
    need = max(spec) - 1 if spec else 0
    if need < ns:
        yield f"num_spec={need}", _with_steps(case, steps, need)


def _sample_moves(case: Case) -> Iterator[Tuple[str, Case]]:
    seqs, lens = case.scenario["seqs"], case.scenario["lens"]
    if len(seqs) > 1:
        for i in range(len(seqs)):
            yield f"drop seq {seqs[i]}", replace(case, scenario=dict(seqs=seqs[:i] + seqs[i + 1:],
                                                                     lens=lens[:i] + lens[i + 1:]))
    for i, n in enumerate(lens):
        for t in _smaller(n):
            yield f"seq {seqs[i]} tokens {t}", replace(case, scenario=dict(seqs=seqs,
                                                                           lens=lens[:i] + [t] + lens[i + 1:]))


def moves(case: Case, keep_k_ne_v: bool) -> Iterator[Tuple[str, Case]]:
    """Smaller candidates of `case`, in the order worth trying (cheaper runs first)."""
    dm = list(_dims_moves(case, keep_k_ne_v))
    yield from (m for m in dm if m[0].startswith("tp="))
    if case.level == "layer" and case.scenario is not None:
        yield from _scenario_moves(case)
    if case.level == "op" and case.scenario is not None:
        yield from _sample_moves(case)
    yield from (m for m in dm if not m[0].startswith("tp="))


def explicit(case: Case) -> Case:
    """The case with its inputs spelled out (`Case.scenario`): a layer case's mix as steps,
    an op case's sample as its sequences and lengths - same inputs, same result."""
    if case.scenario is not None or case.check == SPEC_EQUIVALENCE:
        return case
    if case.level == "op":
        sample: dict = {}
        case_size(case, sample)
        return replace(case, scenario=sample)
    sc = _scenario(case)
    return replace(case, scenario=dict(steps=sc.steps, num_spec=sc.num_spec))


# ---------------------------------------------------------------- the loop
@dataclass
class ShrinkResult:
    original: Case
    minimal: Case
    original_size: int
    size: int
    signature: dict
    record: dict                    # the minimal case's result record
    evaluations: int = 0
    control_runs: int = 0
    seconds: float = 0.0
    control: Optional[str] = None
    stopped: str = "fixpoint"       # fixpoint | budget
    accepted: List[str] = field(default_factory=list)

    @property
    def reduction(self) -> float:
        """original size / minimal size (1.0: nothing smaller failed the same way)."""
        return self.original_size / max(1, self.size)

    def summary(self) -> dict:
        return dict(original_id=self.original.id, original_case=self.original.to_dict(),
                    original_size=self.original_size, size=self.size, reduction=round(self.reduction, 2),
                    original_parts=size_parts(self.original), parts=size_parts(self.minimal),
                    same_failure=self.signature, failing_outputs=failing_outputs(self.record),
                    control=self.control, evaluations=self.evaluations, control_runs=self.control_runs,
                    seconds=round(self.seconds, 1), stopped=self.stopped, moves=self.accepted)


def default_control(backend: str) -> Optional[str]:
    """The base a zoo fault derives from; otherwise the reference (none for the reference)."""
    from harness.faults.catalogue import fault_of
    from harness.faults.zoo import BASE_TARGETS
    try:
        f = fault_of(backend)
        return BASE_TARGETS.get(f.base, f.base)
    except KeyError:
        return None if backend == "reference" else "reference"


def shrink_case(case: Case, budget_s: float = 120.0, max_evals: int = 400, control: Optional[str] = "auto",
                policy=None, oracle_device: Optional[str] = None, backends=None,
                log: Optional[Callable[[str], None]] = None) -> ShrinkResult:
    """Shrink a failing (or erroring) case; raises HarnessError when it does not fail."""
    from harness.judge.policy import Policy
    from harness.run.runner import BackendCache, run_case
    if case.level not in ("op", "layer"):
        raise HarnessError(f"shrink: {case.id} is a self check of the oracle; nothing to shrink")
    policy = policy or Policy()
    backends = backends or BackendCache()
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    rec = run_case(case, policy, SUITE, backends, oracle_device, diagnose=False)
    if rec["status"] not in ("fail", "error"):
        why = f" ({rec['error']})" if rec.get("error") else ""
        raise HarnessError(f"shrink: {case.id} does not fail on backend {case.backend} "
                           f"(status {rec['status']}{why}); only a failing case can be shrunk")
    sig = failure_signature(rec)
    control = default_control(case.backend) if control == "auto" else (None if control == "none" else control)
    size = case_size(case)
    res = ShrinkResult(case, case, size, size, sig, rec, control=control)
    if control:
        crec = run_case(replace(case, backend=control), policy, SUITE, backends, oracle_device,
                        diagnose=False)
        res.control_runs += 1
        if crec["status"] != "pass":
            say(f"control {control} does not pass the original ({crec['status']}); shrinking without a control")
            res.control = control = None
    say(f"shrinking {case.id}: size {res.size}, failing the same way = {sig}")
    keep_k_ne_v = case.dims.K != case.dims.V
    best, seen = explicit(case), set()
    progress = True
    while progress:
        progress = False
        for name, cand in moves(best, keep_k_ne_v):
            if time.perf_counter() - t0 > budget_s or res.evaluations >= max_evals:
                res.stopped = "budget"
                break
            key = json.dumps(cand.to_dict(), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                size = case_size(cand)
            except Exception:  # noqa: BLE001 - not a valid case (a spec-only sequence gone non-spec, a sample too short)
                continue
            if size >= res.size:
                continue
            r = run_case(cand, policy, SUITE, backends, oracle_device, diagnose=False)
            res.evaluations += 1
            if not same_failure(sig, r):
                continue
            if control:
                c = run_case(replace(cand, backend=control), policy, SUITE, backends, oracle_device,
                             diagnose=False)
                res.control_runs += 1
                if c["status"] != "pass":
                    continue
            best, res.size, res.record = cand, size, r
            res.accepted.append(name)
            progress = True
            say(f"  {name}: size {size}")
            break       # moves of the smaller case next
        if res.stopped == "budget":
            break
    res.minimal = best
    res.seconds = time.perf_counter() - t0
    return res


def repro_line(path: str) -> str:
    return f"gdn-harness repro {path}"


def write_case(path, res: ShrinkResult) -> Path:
    """The minimal case as `gdn-harness repro --save` writes it (+ how it was shrunk)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(dict(case=res.minimal.to_dict(), suite=SUITE, repro=repro_line(str(p)),
                                 shrink=res.summary()), indent=1) + "\n")
    return p


# ---------------------------------------------------------------- command line
def add_parser(sub) -> None:
    s = sub.add_parser("shrink", help="shrink a failing case to a minimal one that fails the same way")
    s.add_argument("case", help="a case id (or unique part of one) from a results.json, or a case JSON file")
    s.add_argument("--results", default=None, help="results.json or run folder (default reports/latest)")
    add_options(s, out_default="min.json")
    s.set_defaults(fn=cmd_shrink)


def add_options(p, out_default: Optional[str] = None) -> None:
    p.add_argument("--backend", default=None, help="shrink against this backend instead of the case's")
    if out_default:
        p.add_argument("--out", default=out_default, help="where the minimal case JSON goes (default min.json)")
        p.add_argument("--device", default=None, help="override the case's device")
        p.add_argument("--oracle-device", default=None, help="where the fp64 oracle runs (default: the case's device)")
        p.add_argument("--policy", default=None, help="tolerance policy file (default suites/tolerances.toml)")
    p.add_argument("--budget-s", type=float, default=120.0, help="stop shrinking after this many seconds")
    p.add_argument("--max-evals", type=int, default=400, help="stop after this many candidate runs")
    p.add_argument("--control", default="auto", help="a backend that must pass every accepted candidate: "
                   "auto (a zoo fault's base, else reference), a backend name, or none")


def repro_options(p) -> None:
    """``gdn-harness repro <case> --shrink [min.json]``: after the rerun, shrink a failing case."""
    p.add_argument("--shrink", nargs="?", const="min.json", default=None, metavar="OUT",
                   help="shrink the case if it fails; write the minimal case here (default min.json)")
    p.add_argument("--budget-s", type=float, default=120.0, help="with --shrink: stop after this many seconds")
    p.add_argument("--max-evals", type=int, default=400, help="with --shrink: stop after this many runs")
    p.add_argument("--control", default="auto", help="with --shrink: backend that must pass each candidate")


def after_repro(case: Case, rec: dict, args) -> Optional[int]:
    """The exit code of ``repro --shrink`` on a failing case (None: no shrink asked or due)."""
    if not getattr(args, "shrink", None) or rec["status"] not in ("fail", "error"):
        return None
    return run_and_write(case, args, args.shrink)


def run_and_write(case: Case, args, out: str) -> int:
    from harness.judge.policy import Policy
    if getattr(args, "backend", None):
        case = replace(case, backend=args.backend)
    res = shrink_case(case, args.budget_s, args.max_evals, args.control,
                      Policy(args.policy) if args.policy else None, args.oracle_device, log=print)
    path = write_case(out, res)
    print(f"minimal case: {res.minimal.id}")
    fails = failing_outputs(res.record) or [res.record["status"]]
    print(f"size {res.original_size} -> {res.size} ({res.reduction:.1f}x smaller; {res.evaluations} runs, "
          f"{res.seconds:.0f} s, {res.stopped}); fails {', '.join(fails)}")
    print(f"written to {path}; repro: {repro_line(str(path))}")
    return 1            # the minimal case fails: a correctness failure, as `repro` reports it


def cmd_shrink(args) -> int:
    from harness.report.paths import find_case
    case, _ = find_case(args.case, args.results)
    if args.device:
        case.device = args.device
    return run_and_write(case, args, args.out)
