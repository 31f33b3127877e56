"""Tensor parallelism on a real torch.distributed engine (``gdn-harness run --tp N --distributed``).

Each rank is its own process holding only its shard (`harness.layouts.tp`) and its
slice of the cache pools; it runs the backend's layer composition
(`harness.optimized.compose`) over the case's multi-step scenario; the out_proj partials are
all-reduced (in fp32, as the tolerance policy assumes). Rank 0 gathers the per-rank core
outputs, projections and final caches, runs the TP=1 fp64 oracle, and the case is judged
and diagnosed by `runner.run_case` as an in-process case is (the ranks' pairs plugged in
as its `pairs_fn`; the autotune sweep alone is left out). It also checks the gathered projections against
the TP=1 layer's own (full-weight) projections, so a rank holding the wrong shard fails
even though the oracle starts from the projections the ranks computed.

Launch: the parent starts `world` worker processes (``python -m harness.run.distributed``,
torchrun-style environment; gloo on CPU, NCCL with one GPU per rank) and watches them
like ``--isolate`` does: a rank that crashes or hangs becomes an ``error`` record with
every rank's stderr tail and the remaining cases go to a fresh world. (The ranks are a
gang - one rendezvous, all alive or none - not jobs of `harness.run.isolate`'s pool, whose
workers each run jobs alone.) Under torchrun the
ranks run in place and rank 0 writes the report.

Failures inside a rank are agreed on before any data collective (every rank learns
every rank's error), so one rank's exception never leaves the others waiting.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Dict, List, Optional

import torch

from harness.cases.case import SPEC_EQUIVALENCE, Case
from harness.errors import HarnessError
from harness.run.isolate import share_cpus
from harness.optimized.interpret import interpret_triton

RECORD_PREFIX = "GDNREC "            # rank 0's record lines on stdout (other output is ignored)
STDERR_TAIL = 4000
# NVLink multicast off, also in every rank process (the GPU hosts require it).
SAFE_ENV = dict(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------- selection (parent)

def select_cases(cases: List[Case], tp_args, device: str) -> tuple:
    """The layer cases a ``--tp N --distributed`` run executes, and N (the world size)."""
    values = {v for arg in (tp_args or []) for v in arg.split(",") if v}
    if len(values) != 1 or not next(iter(values)).isdigit() or int(next(iter(values))) < 2:
        raise HarnessError(f"--distributed needs exactly one --tp N with N >= 2 (the world size), got {tp_args}")
    world = int(values.pop())
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) != world:
        raise HarnessError(f"--tp {world} under torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']}: they must match")
    if device.startswith("cuda") and not under_torchrun():
        have = torch.cuda.device_count()
        if have < world:
            raise HarnessError(f"--distributed --tp {world} --device {device}: needs {world} GPUs (one per rank), "
                               f"found {have}")
    picked = [c for c in cases if c.level == "layer" and c.tp == world and c.check != SPEC_EQUIVALENCE]
    if not picked:
        raise HarnessError(f"--distributed --tp {world}: no layer case at TP {world} in the selection "
                           "(op / self cases and the spec_one_accepted pseudo-mix run in process)")
    return picked, world


def under_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- records

def _record(case: Case, suite: str, world: int, pg: str) -> dict:
    from harness.run.runner import case_record    # one record skeleton for every runner
    return _distributed(case_record(case, suite), world, pg)


def _distributed(rec: dict, world: int, pg: str) -> dict:
    """`rec` as a distributed run's: its repro command and the world it ran on."""
    rec.update(repro=rec["repro"] + f" --tp {world} --distributed",
               distributed=dict(world_size=world, process_group=pg))
    return rec


def _crash_record(case: Case, suite: str, world: int, pg: str, error: str, tails: Dict[int, str]) -> dict:
    rec = _record(case, suite, world, pg)
    text = "".join(f"--- rank {r} stderr ---\n{t[-STDERR_TAIL // max(1, len(tails)):]}\n" for r, t in tails.items())
    rec.update(status="error", error=error, stderr_tail=text[-STDERR_TAIL:], duration_s=None)
    return rec


# ----------------------------------------------------------------------------- launcher (parent)

@dataclass
class _Rank:
    proc: subprocess.Popen
    err: List[str]
    reader: threading.Thread


def run_distributed(cases: List[Case], suite: str, policy: Optional[str], oracle_device: Optional[str],
                    on_done: Callable[[dict], None], world: int, timeout: float = 600.0,
                    init_timeout: float = 120.0, sharder: Optional[str] = None) -> None:
    """Run `cases` on `world` ranks; one record per case through `on_done` (rank 0's, or
    an error record when a rank crashed or hung). `sharder` ("module:attr", same
    signature as `harness.layouts.tp.shard_params`) replaces the sharding rules: a
    platform's own loader, or a planted fault."""
    if under_torchrun():
        recs = rank_main(dict(cases=[c.to_dict() for c in cases], suite=suite, policy=policy,
                              oracle_device=oracle_device, timeout=timeout, init_timeout=init_timeout,
                              sharder=sharder, launcher="torchrun"), emit=on_done)
        if int(os.environ["RANK"]) != 0:
            raise SystemExit(0)        # rank 0 alone writes the report
        return recs
    todo = list(cases)
    pg = "nccl" if todo and todo[0].device.startswith("cuda") else "gloo"
    while todo:
        done = _run_world(todo, suite, policy, oracle_device, on_done, world, timeout, init_timeout, sharder, pg)
        todo = todo[done:]


def _run_world(cases, suite, policy, oracle_device, on_done, world, timeout, init_timeout, sharder, pg) -> int:
    """One world of `world` processes over `cases`; returns how many cases got a record."""
    job = json.dumps(dict(cases=[c.to_dict() for c in cases], suite=suite, policy=policy, oracle_device=oracle_device,
                          timeout=timeout, init_timeout=init_timeout, sharder=sharder, launcher="spawn"))
    base = interpret_triton(cases[0].device, dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                                                  WORLD_SIZE=str(world), PYTHONUNBUFFERED="1", **SAFE_ENV))
    if pg == "gloo":
        base.setdefault("OMP_NUM_THREADS", "1")     # `world` processes share the CPU
    ranks: List[_Rank] = []
    try:
        for r in range(world):
            env = share_cpus(dict(base, RANK=str(r), LOCAL_RANK=str(r)), world)
            # rank 0's stdout carries the records; other ranks' stdout joins their stderr
            proc = subprocess.Popen([sys.executable, "-m", "harness.run.distributed"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE if r == 0 else subprocess.STDOUT,
                                    text=True, env=env)
            proc.stdin.write(job)
            proc.stdin.close()
            err: List[str] = []
            stream = proc.stderr if r == 0 else proc.stdout
            reader = threading.Thread(target=lambda f=stream, e=err: e.extend(f), daemon=True)
            reader.start()
            ranks.append(_Rank(proc, err, reader))
        return _watch(ranks, cases, suite, on_done, world, timeout, init_timeout, pg)
    finally:
        for k in ranks:
            if k.proc.poll() is None:
                k.proc.kill()
            k.proc.wait()


def _watch(ranks, cases, suite, on_done, world, timeout, init_timeout, pg) -> int:
    lines: List[str] = []
    out_reader = threading.Thread(target=lambda: lines.extend(ln for ln in ranks[0].proc.stdout
                                                             if ln.startswith(RECORD_PREFIX)), daemon=True)
    out_reader.start()
    done, why = 0, None
    # the first case also waits for process start and rendezvous
    deadline = time.monotonic() + timeout + init_timeout
    while done < len(cases):
        while done < len(lines):
            on_done(json.loads(lines[done][len(RECORD_PREFIX):]))
            done += 1
            deadline = time.monotonic() + timeout
        dead = [(r, k.proc.returncode) for r, k in enumerate(ranks) if k.proc.poll() is not None]
        crashed = [(r, rc) for r, rc in dead if rc != 0]
        if crashed or (dead and len(dead) == world):
            out_reader.join(timeout=1.0)
            if done < len(lines):
                continue
            why = ("rank(s) " + ", ".join(f"{r} exited with code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
                                          for r, rc in (crashed or dead)))
            break
        if time.monotonic() > deadline:
            why = f"timed out after {timeout:g} s (a rank hung)"
            break
        time.sleep(0.02)
    for k in ranks:
        if k.proc.poll() is None:
            k.proc.kill()
        k.proc.wait()
        k.reader.join(timeout=2)
    out_reader.join(timeout=1.0)
    if done < len(cases):
        tails = {r: "".join(k.err) for r, k in enumerate(ranks)}
        on_done(_crash_record(cases[done], suite, world, pg, f"distributed case failed: {why}", tails))
        done += 1
    return done


# ----------------------------------------------------------------------------- rank side

class RankFailure(Exception):
    """Some rank raised; every rank raises this with all ranks' errors, so all leave the case."""

    def __init__(self, errors: Dict[int, tuple]):
        self.errors = errors
        self.not_implemented = all(kind == "NotImplementedError" for kind, _, _ in errors.values())
        super().__init__("; ".join(f"rank {r}: {kind}: {msg}" for r, (kind, msg, _) in sorted(errors.items())))


class CollectiveError(RuntimeError):
    """A collective failed (a peer died, or a timeout): the process group is unusable."""


def _coll(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as e:
        raise CollectiveError(f"{fn.__name__} failed: {type(e).__name__}: {e}") from e


def _agree(fn):
    """Run `fn` on every rank; if any rank raised, raise RankFailure on all of them."""
    import torch.distributed as dist
    try:
        result, err = fn(), None
    except Exception as e:  # noqa: BLE001 - reported to every rank
        result, err = None, (type(e).__name__, str(e), traceback.format_exc()[-STDERR_TAIL:])
    errs: List = [None] * dist.get_world_size()
    _coll(dist.all_gather_object, errs, err)
    failed = {r: e for r, e in enumerate(errs) if e is not None}
    if failed:
        raise RankFailure(failed)
    return result


def _gather(t: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """Every rank's `t` (same shape on all) on rank 0, on the CPU; None on other ranks."""
    import torch.distributed as dist
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    _coll(dist.gather, t, parts, dst=0)
    return [p.cpu() for p in parts] if parts is not None else None


def _load(spec: str):
    import importlib
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def distributed_pairs(case: Case, backend, ops, device: str, oracle_device: Optional[str], sharder=None):
    """Run one layer case on this rank; rank 0 returns the (name, actual, expected, token
    dim, policy key) pairs, other ranks None."""
    import torch.distributed as dist

    from harness.cases.inputs import make_inputs
    from harness.cases.layercheck import rank_pools, full_weight_projection_pairs, oracle_pairs, rank_step, tf32_dots
    from harness.layouts.tp import gather_heads, shard_params
    from harness.cases.scenario import mix_scenario
    rank, world = dist.get_rank(), dist.get_world_size()
    path, conv_layout, ba = case.decode_path, case.conv_layout, case.ba
    ssm_layout = backend.ssm_state_layout

    def setup():
        sc = mix_scenario(case.check, case.dims, case.scenario, layout=case.layout, tp=world, seed=case.seed, dtype=case.dtype,
                          state_dtype=case.state_dtype, conv_state_layout=conv_layout, ba=ba)
        inp = make_inputs(sc)       # seeded: every rank draws the same layer, then keeps its shard
        p = (sharder or getattr(backend, "shard_params", None) or shard_params)(inp.weights, case.dims, case.layout, world, rank, ba).to(device)
        pools = rank_pools(sc, inp.conv_pool, inp.ssm_pool, p, conv_layout, ssm_layout, device)
        return sc, (inp if rank == 0 else None), p, pools

    sc, inp, p, (conv, ssm) = _agree(setup)
    steps_out, unpacked = [], []
    for s, entries in enumerate(sc.plan()):
        h = inp.hidden[s] if rank == 0 else None
        h = _step_hidden(sc, entries[-1].eos, h, device)
        ref_in, got = _agree(lambda: rank_step(backend, ops, p, h, entries, conv, ssm, sc, conv_layout, path))
        out = got["out"].float()             # partials summed in fp32 (the policy's assumption)
        _coll(dist.all_reduce, out)
        core = _gather(got["core"])
        proj = [_gather(t) for t in ref_in]
        if rank == 0:
            unpacked.append(tuple(gather_heads(parts, dim=1) for parts in proj))
            steps_out.append(dict(core=gather_heads(core, dim=1), out=out.cpu()))
    conv_parts, ssm_parts = _gather(conv), _gather(ssm)
    if rank != 0:
        return None
    pairs = oracle_pairs(sc, inp, steps_out, unpacked, list(zip(conv_parts, ssm_parts)), conv_layout, ssm_layout,
                         oracle_device or device, tf32_dots(backend, sc, device))
    # The TP=1 layer's projections from the full weights: a rank on the wrong shard shows here.
    return pairs + full_weight_projection_pairs(sc, inp, unpacked, device)


def _step_hidden(sc, T: int, h: Optional[torch.Tensor], device: str) -> torch.Tensor:
    """A step's `T` hidden states on every rank: rank 0's tensor broadcast (as a serving
    engine hands every TP rank the same activations)."""
    import torch.distributed as dist
    from harness.cases.inputs import dtype_of
    buf = h.to(device) if h is not None else torch.empty(T, sc.dims.hidden, dtype=dtype_of(sc.dtype), device=device)
    _coll(dist.broadcast, buf, src=0)
    return buf


def _rank_device(device: str) -> str:
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def rank_main(job: dict, emit: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """A rank's loop over the job's cases (all ranks run the same cases in the same order).
    Each case goes through `runner.run_case` with the ranks' pairs: rank 0 judges and
    diagnoses it as an in-process case would."""
    import torch.distributed as dist

    from harness.run.runner import BackendCache, run_case
    from harness.judge.policy import Policy
    cases = [Case.from_dict(d) for d in job["cases"]]
    policy = Policy(job["policy"]) if job.get("policy") else Policy()
    pg = "nccl" if cases and cases[0].device.startswith("cuda") else "gloo"
    device = _rank_device(cases[0].device if cases else "cpu")
    spawned = job.get("launcher") == "spawn"
    # spawned: the parent's watchdog (per-case timeout) fires before the collectives time out
    pg_timeout = float(job.get("timeout", 600.0)) + (60.0 if spawned else 0.0)
    dist.init_process_group(pg, timeout=timedelta(seconds=pg_timeout),
                            **({"device_id": torch.device(device)} if pg == "nccl" else {}))
    rank, world = dist.get_rank(), dist.get_world_size()
    sharder = _load(job["sharder"]) if job.get("sharder") else None
    backends = BackendCache()
    records = []
    broken: Optional[CollectiveError] = None
    for case in cases:
        raised: List[Exception] = []
        pairs = _rank_pairs(rank, device, job.get("oracle_device"), sharder, broken, raised)
        rec = _distributed(run_case(case, policy, job["suite"], backends, job.get("oracle_device"), pairs_fn=pairs),
                           world, pg)
        err = raised[0] if raised else None
        if isinstance(err, CollectiveError):
            if spawned:        # the parent turns the dead world into this case's error record
                print(f"rank {rank}: {err}", file=sys.stderr, flush=True)
                os._exit(3)
            broken = broken or CollectiveError(f"process group unusable since case {case.id}: {err}")
            rec.update(status="error", error=str(err))
        elif isinstance(err, RankFailure) and not err.not_implemented:
            rec.update(error=f"{err}", traceback=err.errors[min(err.errors)][2])     # the first failing rank's
        if rank == 0:
            records.append(rec)
            if emit:
                emit(rec)
            else:
                sys.stdout.write(RECORD_PREFIX + json.dumps(rec, default=str) + "\n")
                sys.stdout.flush()
    if not broken:
        dist.barrier()
        dist.destroy_process_group()
    return records


def _rank_pairs(rank: int, device: str, oracle_device: Optional[str], sharder, broken, raised: List[Exception]):
    """`run_case`'s pairs_fn on a rank: the case run across the ranks; rank 0 gets the
    comparisons, the others None. A rank failure or a failed collective is noted in
    `raised` (rank_main handles it after the record) and raised on."""
    from harness.optimized.api import FilledOps
    from harness.run.runner import _skip_reason, declared_pad_rows

    def pairs(case: Case, backends, rec: dict, _oracle_device, _phases):
        try:
            if broken:
                raise broken
            backend = _agree(lambda: backends.get(case.backend))
            reason = _skip_reason(case, backend)
            if reason:
                rec.update(status="skip", error=reason)
                return None
            ops = FilledOps(backend, backends.get("reference"))
            got = distributed_pairs(case, backend, ops, device, oracle_device, sharder)
            rec["filled_ops"] = list(ops.filled)
        except RankFailure as e:
            raised.append(e)
            if e.not_implemented:       # run_case: "backend X does not support this case: ..."
                raise NotImplementedError(str(e)) from e
            raise
        except CollectiveError as e:
            raised.append(e)
            raise
        return declared_pad_rows(case, backend, got, rec) if rank == 0 else None
    return pairs


def main() -> int:
    rank_main(json.loads(sys.stdin.read()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
