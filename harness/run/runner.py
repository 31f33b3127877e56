"""Run cases, compare under the tolerance policy, and turn each into a result record.

An exception inside a case becomes an ``error`` record; the run goes on.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import time
import traceback
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from harness.run import autotune, triton_key
from harness.cases.case import SPEC_EQUIVALENCE, Case
from harness.errors import HarnessError
from harness.run.phases import Phases, TimedBackend, hook_compiles
from harness.judge.policy import Policy
from harness.judge.verdict import judge_into, output_fields
from harness.cases.selfcheck import CHECKS


# The diagnosis stage sits above run (it re-runs the oracle, reads cases): the CLI, the zoo and
# the tests plug it in. Child processes (workers, ranks) inherit the module name through the
# environment and import it themselves.
PLUGIN_ENV = "GDN_DIAGNOSIS_MODULE"
_diagnosis = None


def use_diagnosis(module) -> None:
    """Plug the diagnosis stage (``harness.diagnosis``) into run_case, here and in child processes."""
    global _diagnosis
    _diagnosis = module
    os.environ[PLUGIN_ENV] = module.__name__


def diagnosis_stage():
    """The plugged diagnosis module, or None when none was plugged in."""
    global _diagnosis
    if _diagnosis is None and os.environ.get(PLUGIN_ENV):
        _diagnosis = importlib.import_module(os.environ[PLUGIN_ENV])
    return _diagnosis


def repro_command(case: Case, suite: str) -> str:
    dev = f" --device {case.device}" if case.device != "cpu" else ""
    be = f" --backend {case.backend}" if case.level != "self" else ""
    return f"gdn-harness run --suite {suite}{be} -k '{case.id}' --seed {case.seed}{dev}"


class BackendCache:
    """Backends loaded once per run; a backend that fails to load fails its cases."""

    def __init__(self):
        self._loaded: Dict[str, object] = {}

    def get(self, name: str):
        if name not in self._loaded:
            from harness.optimized.registry import load_backend   # only the runner touches backends
            try:
                self._loaded[name] = load_backend(name)
            except Exception as e:  # noqa: BLE001 - a backend that fails to load fails its cases, with the error
                self._loaded[name] = e
        got = self._loaded[name]
        if isinstance(got, Exception):
            raise got
        return got


def _skip_reason(case: Case, backend) -> Optional[str]:
    why = backend.unavailable(case.device)
    if why:
        return why
    if case.dtype not in backend.dtypes:
        return f"backend {case.backend} does not take dtype {case.dtype}"
    if case.state_dtype not in backend.state_dtypes:
        return f"backend {case.backend} does not take state dtype {case.state_dtype}"
    if case.level == "op" and not backend.implements(case.check):
        return f"backend {case.backend} does not implement {case.check}"
    if case.level == "layer":
        path, conv = case.decode_path, case.conv_layout
        if path not in backend.decode_paths:
            return f"backend {case.backend} has no {path} decode path (has {list(backend.decode_paths)})"
        if conv not in backend.conv_state_layouts:
            return f"backend {case.backend} does not take a {conv} conv state"
    return None


def _pairs(case: Case, backends: BackendCache, rec: dict, oracle_device=None, phases: Optional[Phases] = None):
    """The case's `Comparison`s, or None when skipped.
    With `phases`, the backend's op calls are timed into it."""
    if case.level == "self":
        return CHECKS[case.check][0](case)
    with phases.timed("import") if phases is not None else contextlib.nullcontext():
        backend = backends.get(case.backend)
    reason = _skip_reason(case, backend)
    if reason:
        rec.update(status="skip", error=reason)
        return None
    kernels = case.backend != "reference"     # pure torch: no Triton import to pay for it
    autotune.install(load=kernels)            # before the backend's first kernel, even one imported lazily
    triton_key.install(load=kernels)
    if phases is not None:
        hook_compiles(load=kernels)
        backend = TimedBackend(backend, phases)
    if case.level == "op":
        from harness.cases.opcheck import run_op_case
        pairs = run_op_case(backend, case.check, case.variant, case.dims, case.dtype, case.state_dtype,
                            case.seed, case.device, oracle_device, case.scenario)
        return declared_pad_rows(case, backend, pairs, rec)
    from harness.cases.layercheck import run_layer_case, run_spec_equivalence
    from harness.optimized.api import FilledOps
    path, conv, ba = case.decode_path, case.conv_layout, case.ba
    ops = FilledOps(backend, backends.get("reference"))
    if case.check == SPEC_EQUIVALENCE:
        pairs = run_spec_equivalence(backend, ops, case.dims, case.layout, case.dtype, case.state_dtype, case.seed,
                                     case.device, path, conv)
    else:
        pairs = run_layer_case(backend, ops, case.dims, case.check, case.layout, case.tp, case.dtype,
                               case.state_dtype, case.seed, case.device, path, conv, ba, oracle_device, case.scenario)
        pairs = declared_pad_rows(case, backend, pairs, rec)
    rec["filled_ops"] = list(ops.filled)
    return pairs


def declared_pad_rows(case: Case, backend, pairs, rec: dict):
    """A backend declaring PAD-row outputs unspecified: its PAD rows are not compared; the
    record says which outputs were masked and why (`pad_rows_not_compared`)."""
    if getattr(backend, "pad_row_outputs", "zeros") != "unspecified":
        return pairs
    stage = diagnosis_stage()
    if stage is None:
        raise HarnessError(f"backend {backend.name} leaves PAD-row outputs unspecified: masking them needs the "
                           "diagnosis stage (harness.run.runner.use_diagnosis(harness.diagnosis))")
    pairs, masked = stage.mask_pad_rows(case, pairs, backend.ssm_state_layout)
    if masked:
        rec["pad_rows_not_compared"] = dict(outputs=masked, reason=backend.pad_row_outputs_reason)
    return pairs


def case_record(case: Case, suite: str) -> dict:
    """A case's record skeleton (no verdict yet): run_case, the isolated and the distributed runners start from it."""
    return dict(id=case.id, suite=suite, level=case.level, op=case.check, backend=case.backend, layout=case.layout,
                tp=case.tp, mix=case.check if case.level == "layer" else None, variant=case.variant,
                dtype=case.dtype, state_dtype=case.state_dtype, dims=case.dims.to_dict(), seed=case.seed,
                device=case.device, status="pass", metrics=[], tolerance=None, margin=None, diagnosis=None,
                error=None, filled_ops=[], repro=repro_command(case, suite), case=case.to_dict())


def run_case(case: Case, policy: Policy, suite: str, backends: Optional[BackendCache] = None,
             oracle_device: Optional[str] = None, diagnose: Optional[bool] = None,
             pairs_fn: Optional[Callable] = None) -> dict:
    """One case -> its record. Structural problems - an exception, an output of the wrong
    shape or kind - make an ``error`` record saying so (``structural``), never diagnosed as
    numerics. A numerical failure of an op / layer case is diagnosed (`harness.diagnosis`)
    unless `diagnose` is False (default: on unless GDN_DIAGNOSE=0). A wrong-shaped output,
    or NaN / Inf (said first, in words), keeps a diagnosis only when a known fault
    reproduces it (a squeezed batch of one, garbage in PAD rows). A diagnosis never
    changes the verdict; ``duration_s`` includes it (``diagnosis_s``).

    `pairs_fn(case, backends, rec, oracle_device, phases)` replaces how the case's
    `Comparison`s are made (None: nothing to judge here, or skipped with the reason in
    `rec`): the distributed ranks run the case across processes and judge it here. The
    autotune sweep, which re-runs the case in this process, is left out then."""
    backends = backends or BackendCache()
    rec = case_record(case, suite)
    t0 = time.perf_counter()
    phases = Phases(case.device)
    autotune.install()
    rec["autotune"] = dict(policy=autotune.policy(), configs=autotune.start_case())   # filled as kernels run
    pairs, sweep_only = None, False
    try:
        with phases.timed("oracle"):
            pairs = (pairs_fn or _pairs)(case, backends, rec, oracle_device, phases)
        if pairs is not None:
            broken = structural_problems(pairs)
            with phases.timed("compare"):
                judge_into(rec, [c for c in pairs if c.output not in broken], policy, case.dtype, case.state_dtype)
            if broken:
                rec.update(status="error", structural="shape" if any(k == "shape" for k, _ in broken.values())
                           else "output type", diagnosis=None,
                           error=broken_error(broken),
                           broken_outputs=[dict(output=c.output, **output_fields(c)) for c in pairs
                                           if c.output in broken])
            elif rec["autotune"]["policy"] == "sweep" and autotune.widest() > 1 and pairs_fn is None:
                passed = rec["status"] == "pass"
                with phases.timed("sweep"):
                    _sweep(rec, case, backends, policy, oracle_device)
                sweep_only = passed and rec["status"] == "fail"
    except NotImplementedError as e:   # the backend cannot express this variant
        rec.update(status="skip", error=f"backend {case.backend} does not support this case: {e}")
    except Exception as e:  # noqa: BLE001 - a crash costs one case, never the run
        rec.update(status="error", structural="exception", error=f"{type(e).__name__}: {e}",
                   error_type=type(e).__name__, traceback=traceback.format_exc()[-4000:])
    # a failure of a swept config only: the case's own outputs pass, nothing to diagnose in them
    diagnosable = (rec["status"] == "fail" and not sweep_only) or rec.get("structural") in DIAGNOSABLE_STRUCTURAL
    if pairs and diagnosable and case.level in ("op", "layer"):
        diagnosis = diagnosis_stage()
        if diagnose and diagnosis is None:
            raise HarnessError("run_case(diagnose=True) without a diagnosis stage: "
                               "harness.run.runner.use_diagnosis(harness.diagnosis) first")
        if diagnosis is not None and (diagnosis.enabled() if diagnose is None else diagnose):
            _diagnose(rec, case, pairs, policy, backends, diagnosis)
            phases.add("diagnosis", rec.get("diagnosis_s", 0.0))
    rec["duration_s"] = round(time.perf_counter() - t0, 4)
    phases.add("oracle", -phases.inner_seconds())     # the backend's load and calls ran inside the oracle's timer
    rec["phases"] = phases.to_dict()
    return rec


def _sweep(rec: dict, case: Case, backends: BackendCache, policy: Policy, oracle_device) -> None:
    """Autotune policy sweep: the case again per config index, every autotuned kernel on its
    config index mod n, each judged like the case; a failing config fails the case."""
    runs = []
    for i in range(autotune.widest()):
        scratch = case_record(case, rec["suite"])
        autotune.start_case()
        try:
            with autotune.sweeping(i):
                got = _pairs(case, backends, scratch, oracle_device)
            broken = structural_problems(got)
            judge_into(scratch, [c for c in got if c.output not in broken], policy, case.dtype, case.state_dtype)
            if broken:
                scratch.update(status="error", error=broken_error(broken))
        except Exception as e:  # noqa: BLE001 - a config that crashes is that config's finding
            scratch.update(status="error", error=f"{type(e).__name__}: {e}")
        runs.append(dict(index=i, status=scratch["status"], margin=scratch["margin"], error=scratch["error"],
                         configs=autotune.case_configs()))
        if scratch["status"] != "pass" and rec["status"] == "pass":
            rec.update(status="fail", diagnosis=f"autotune config index {i} ({scratch['status']}): "
                                                f"{scratch.get('diagnosis') or scratch['error']}")
    rec["autotune"]["sweep"] = runs


# structural errors with the outputs in hand: a known fault (a squeezed batch of one) may name them
DIAGNOSABLE_STRUCTURAL = ("shape", "output type")


def structural_problems(pairs) -> Dict[str, Tuple[str, str]]:
    """Output name -> (structural class, what makes it no number to compare): "output type"
    (not a tensor; complex or integer where the reference is real floating point) or "shape"
    (a shape other than the reference's)."""
    import torch
    found = {}
    for c in pairs:
        out, ref = c.actual, c.expected
        if not isinstance(out, torch.Tensor):
            found[c.output] = ("output type", f"expected a tensor, got {type(out).__name__}")
        elif tuple(out.shape) != tuple(ref.shape):
            found[c.output] = ("shape", f"expected shape {tuple(ref.shape)}, got {tuple(out.shape)}")
        elif ref.is_floating_point() and not out.is_floating_point():
            found[c.output] = ("output type", f"expected a real floating-point dtype (as {ref.dtype}), got {out.dtype}")
    return found


def broken_error(broken: Dict[str, Tuple[str, str]]) -> str:
    """A record's error line for outputs `structural_problems` found no number to compare in."""
    return "; ".join(f"output {n}: {why}" for n, (_, why) in broken.items())


def _diagnose(rec: dict, case: Case, pairs, policy: Policy, backends: BackendCache, diagnosis) -> None:
    """Hypotheses for a failing case into rec["hypotheses"], the top one appended to the
    diagnosis sentence; a crash in here is noted, the verdict stays."""
    t0 = time.perf_counter()
    try:
        backend = backends.get(case.backend)
        coverage: dict = {}
        found = diagnosis.analyse(case, pairs, policy, backend, getattr(backend, "ssm_state_layout", "vk"),
                                  diagnosis.budget_s(), coverage)
        rec.update(hypotheses=found["hypotheses"], signatures=found["signatures"])
        if found["attribution"]:
            rec["attribution"] = found["attribution"]
        if coverage:
            rec["diagnosis_coverage"] = coverage
        hyps = found["hypotheses"]
        if rec.get("structural"):   # only a known fault that reproduces it: a numerical reading would mislead
            words = diagnosis.sentence(hyps) if hyps and hyps[0].get("matched") else None
        else:
            words = found["sentence"]
        if words:
            rec["diagnosis"] = f"{rec['diagnosis']}; {words}" if rec.get("diagnosis") else words
    except Exception as e:  # noqa: BLE001 - a crash in the diagnosis is noted; the verdict stays
        rec["hypotheses"] = []
        rec["diagnosis_error"] = f"{type(e).__name__}: {e}"
    rec["diagnosis_s"] = round(time.perf_counter() - t0, 4)


def run_cases(cases: Iterable[Case], policy: Policy, suite: str,
              on_done: Optional[Callable[[dict], None]] = None, oracle_device: Optional[str] = None,
              on_start: Optional[Callable[[Case], None]] = None) -> List[dict]:
    from harness.run import interrupt
    backends = BackendCache()
    records = []
    for case in cases:
        if on_start:
            on_start(case)
        rec = run_case(case, policy, suite, backends, oracle_device)
        # a signal whose KeyboardInterrupt a library swallowed (or turned into an error of
        # this case) stops the run here; the case counts as interrupted, not as its record
        interrupt.check()
        records.append(rec)
        if on_done:
            on_done(rec)
    return records
