"""The worker pool (`harness.run.isolate.run_jobs`) that isolated runs, the fault zoo and
bisect-check share: a job's result or its structured error (a crash with its exit code or
signal, a timeout), a fresh worker after a CUDA error, and the zoo on top of it: a planted
fault that aborts, exits or hangs in one case costs only that case, which the kill matrix
names as the fault's detection."""
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.cases.case import Case
from harness.faults.catalogue import Fault
from harness.faults.zoo import run_zoo
from harness.run.isolate import Job, WorkerPool, run_jobs
from harness.run.worker import request_restart
from tests.plugin_example import AbortingPort, ExamplePortBackend, HangingPort, PoisoningPort, TransposedStatePort

CALL = "tests.test_pool:behave"


def behave(args, emit):
    """A pool job (runs in a worker): announce a step, then do what `args["do"]` says."""
    emit(f"step {args['do']}")
    do = args["do"]
    if do == "exit":
        os._exit(3)
    if do == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if do == "hang":
        time.sleep(3600)
    if do == "sticky":
        request_restart()           # as after an illegal memory access: this process is done
    return dict(pid=os.getpid(), do=do)


def _run(dos, timeout=30.0, on_done=None):
    got, pool = [], WorkerPool()
    try:
        run_jobs([Job(dict(call=CALL, args=dict(do=d)), d) for d in dos], lambda job, i: dict(os.environ),
                 on_done or (lambda job, outcome: got.append((job.tag, outcome))), 1, timeout, pool=pool)
    finally:
        pool.close()
    return got, pool


def test_results_and_structured_errors():
    got, _ = _run(["ok", "exit", "ok", "segv", "ok", "hang", "ok"], timeout=15.0)
    assert [t for t, _ in got] == ["ok", "exit", "ok", "segv", "ok", "hang", "ok"]
    by = dict((t, o) for t, o in got if t != "ok")
    assert by["exit"].kind == "crash" and by["exit"].returncode == 3
    assert by["exit"].error == "worker died: exited with code 3"
    assert by["segv"].kind == "crash" and by["segv"].returncode == -signal.SIGSEGV and "SIGSEGV" in by["segv"].error
    assert by["hang"].kind == "timeout" and by["hang"].error == "timed out after 15 s (its worker was killed)"
    assert all(o.events == [f"step {t}"] for t, o in got)       # what the job said before it ended
    oks = [o for t, o in got if t == "ok"]
    assert all(o.kind == "result" and o.value["do"] == "ok" for o in oks)
    # each crash or hang cost its worker: the job after it ran on a fresh one
    assert len({o.value["pid"] for o in oks}) == 4


def test_cuda_error_restarts_the_worker():
    got, _ = _run(["ok", "sticky", "ok", "ok"])
    assert [o.kind for _, o in got] == ["result"] * 4           # the job after the CUDA error is no crash
    pids = [o.value["pid"] for _, o in got]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_interrupt_keeps_finished_outcomes():
    got = []

    def on_done(job, outcome):
        got.append(job.tag)
        if len(got) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _, pool = _run(["ok", "ok", "hang", "ok"], on_done=on_done)
    assert got == ["ok", "ok"]


class ExitingPort(ExamplePortBackend):
    """Ends its process (``os._exit``, as a native library's fatal path does) on a decode."""
    name = "example-port-exiting"

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, ssm_state_indices=None, **kwargs):
        if ssm_state_indices is not None and ssm_state_indices.dim() == 1:
            os._exit(3)
        return ExamplePortBackend.fused_recurrent_gated_delta_rule(q, k, v, g, beta,
                                                                   ssm_state_indices=ssm_state_indices, **kwargs)


SUITE = dict(name="tiny-pool", group=[dict(level="op", ops=["fused_gdn_gating", "fused_recurrent_gated_delta_rule"],
                                           dims=["qwen3.5-27b:shrunk:H=2,K=12,V=20"], dtype=["float32"],
                                           state_dtype=["float32"])])


def _planted(name, cls):
    return Fault(name=name, base="reference", incident="planted for the pool test", diagnosis_class="process",
                 make=cls, where="python-glue", target=f"{cls.__module__}:{cls.__name__}")


def test_zoo_survives_a_fault_that_crashes_or_hangs():
    """Every case on every fault (--full): the poisoning fault's task ends at its CUDA error
    (a fresh worker for the next), the aborting / exiting / hanging faults each cost one
    case and are caught by it, and the well-behaved fault after them runs as usual."""
    faults = [_planted("poisons", PoisoningPort), _planted("aborts", AbortingPort), _planted("exits", ExitingPort),
              _planted("hangs", HangingPort), _planted("transposed", TransposedStatePort)]
    res = run_zoo(SUITE, base="reference", device="cpu", jobs=1, faults=faults, bases=["reference"], timeout=20.0)
    assert res["base_passed"] and not res["interrupted"] and not res["not_run"]
    f = res["faults"]
    assert res["killed"] == 5 and not res["survivors"], {n: e["caught_by"] for n, e in f.items()}
    spec = "op.fused_recurrent_gated_delta_rule[tests.plugin_example:{}-spec-"      # case ids name the target
    assert f["poisons"]["first_case"].startswith(spec.format("PoisoningPort"))
    assert f["poisons"]["cases_run"] == 4           # the varlen case after the CUDA error did not run
    assert "illegal memory access" in f["poisons"]["first_diagnosis"]
    assert f["aborts"]["first_case"].startswith(spec.format("AbortingPort")) and f["aborts"]["cases_to_first_kill"] == 4
    assert "killed by signal 6 (SIGABRT)" in f["aborts"]["first_diagnosis"]
    assert "fatal error in spec kernel" in f["aborts"]["first_diagnosis"]        # the worker's stderr tail
    assert f["exits"]["first_case"].startswith("op.fused_recurrent_gated_delta_rule[tests.test_pool:ExitingPort-decode-")
    assert "exited with code 3" in f["exits"]["first_diagnosis"]
    assert f["hangs"]["first_case"].startswith("op.fused_gdn_gating[tests.plugin_example:HangingPort-strided-")
    assert "timed out after 20 s" in f["hangs"]["first_diagnosis"]
    t = f["transposed"]
    assert t["cases_run"] == t["cases_planned"] == 5 and all(c["status"] == "fail" for c in t["caught_by"])


def test_slots_keep_to_their_compile_keys():
    """Two slots over jobs in suite order (A A A B B B, a self check between): each slot keeps
    to one key, so no two workers compile the same kernels at once; a slot whose keys are
    used up takes a fresh key, and only then another slot's."""
    from collections import deque

    from harness.run.isolate import Job, _take
    todo = deque(Job({}, n, k) for n, k in [("a1", "A"), ("a2", "A"), ("s", None), ("a3", "A"),
                                             ("b1", "B"), ("b2", "B"), ("b3", "B"), ("c1", "C")])
    mine, claimed, got = [set(), set()], set(), [[], []]
    while todo:
        for i in (0, 1):
            if todo:
                job = _take(todo, mine[i], claimed)
                if job.affinity is not None:
                    mine[i].add(job.affinity)
                    claimed.add(job.affinity)
                got[i].append(job.tag)
    assert got == [["a1", "a2", "a3", "c1"], ["s", "b1", "b2", "b3"]]


def test_compile_affinity_of_cases():
    from harness.cases.suite import parse_dims
    from harness.run.isolate import compile_affinity
    d = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20")
    op = dict(level="op", check="fused_gdn_gating", dims=d, backend="triton", dtype="float16", state_dtype="float32")
    assert compile_affinity(Case(**op, variant="contiguous")) == compile_affinity(Case(**op, variant="strided"))
    assert compile_affinity(Case(**op, variant="contiguous")) != compile_affinity(Case(**{**op, "dtype": "float32"}))
    assert compile_affinity(Case(level="self", check="tp_reduce", dims=d)) is None


def test_longest_first_starts_the_drift_lane_and_keeps_suite_order_otherwise():
    from harness.cases.suite import parse_dims
    from harness.run.isolate import Job, expected_cost, longest_first
    d, full = parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"), parse_dims("qwen3-next-80b-a3b")
    op = Case(level="op", check="fused_gdn_gating", dims=d, backend="triton", dtype="float16", state_dtype="float32")
    lay = dict(level="layer", backend="triton", dtype="bfloat16", state_dtype="float32",
               variant="recurrent.token_first.sharded")
    mixed, drift = Case(check="mixed", dims=full, **lay), Case(check="drift_256", dims=full, **lay)
    small, self_ = Case(check="mixed", dims=d, **lay), Case(level="self", check="tp_reduce", dims=d)
    assert expected_cost(drift) > expected_cost(mixed) > expected_cost(small) > expected_cost(op) == 0
    assert expected_cost(self_) == 0
    jobs = [Job({}, c) for c in (op, self_, small, mixed, drift)]
    assert [j.tag for j in longest_first(jobs)] == [drift, mixed, small, op, self_]


def test_prestarted_workers_are_the_ones_a_run_takes():
    """`gdn-harness run` starts its workers before it loads the backends itself (their imports
    overlap): the run's slots take exactly those workers, no fresh ones."""
    pool, env = WorkerPool(), dict(os.environ)
    try:
        pool.prestart([env, env])
        pool.prestart([env, env])        # two idle already: none more
        started = {w.proc.pid for ws in pool._idle.values() for w in ws}
        got = []
        run_jobs([Job(dict(call=CALL, args=dict(do="ok")), i) for i in range(6)], lambda job, i: env,
                 lambda job, outcome: got.append(outcome), 2, 30.0, pool=pool)
        assert [o.kind for o in got] == ["result"] * 6
        assert {o.value["pid"] for o in got} <= started and len(started) == 2
        starts = [o.worker_start_s for o in got if o.worker_start_s is not None]
        assert len(starts) == len({o.value["pid"] for o in got}) and all(s > 0 for s in starts)
    finally:
        pool.close()


def test_close_without_wait_returns_and_the_workers_end_on_their_own():
    """The program's end (`exit_now` -> `release_shared_pool`): workers told to end, not waited for."""
    pool, env = WorkerPool(), dict(os.environ)
    pool.prestart([env])
    (worker,) = [w for ws in pool._idle.values() for w in ws]
    deadline = time.monotonic() + 120
    while worker.ready_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.close(wait=False)
    assert not pool._idle
    deadline = time.monotonic() + 60
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.proc.returncode == 0                  # its input ended: a clean exit, unaided


def test_the_program_end_releases_the_shared_pool():
    code = ("import harness.run.isolate as iso\n"
            "iso.release_shared_pool = lambda: print('released', flush=True)\n"
            "from harness.cli.common import exit_now\n"
            "exit_now(3)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.split()) == (3, ["released"]), out.stderr


def test_close_ends_idle_workers_and_kills_those_still_starting():
    pool, env = WorkerPool(), dict(os.environ)
    pool.prestart([env, env])
    ready = [w for ws in pool._idle.values() for w in ws]
    deadline = time.monotonic() + 120
    while any(w.ready_at is None for w in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.prestart([dict(env, GDN_TEST_OTHER="1")])     # another environment, still at its imports at close
    starting = [w for ws in pool._idle.values() for w in ws if w not in ready]
    pool.close()
    assert [w.proc.returncode for w in ready] == [0, 0]               # end of input: a clean exit
    assert [w.proc.returncode for w in starting] == [-signal.SIGKILL]  # it had run nothing
