"""Workers forked from the preloaded server (harness/run/forkstart.py): the server's imports make
no CUDA call (a context does not survive a fork), a forked worker runs with the environment it
was asked for in a session of its own, and a worker whose environment differs elsewhere is
started the old way."""
import os
import subprocess
import sys

from harness.run import forkstart
from harness.run.isolate import Job, WorkerPool, run_jobs

CALL = "tests.test_forkstart:report"


def report(args, emit):
    """A pool job (runs in a worker): what the worker sees."""
    import torch
    return dict(pid=os.getpid(), sid=os.getsid(0), threads=torch.get_num_threads(),
                env={k: os.environ.get(k) for k in args["keys"]}, parent=os.getppid())


def test_preloaded_imports_make_no_cuda_call():
    code = ("import torch\n"
            "def boom(*a, **k):\n    raise RuntimeError('a CUDA call at import')\n"
            "torch.cuda.is_available = torch.cuda.device_count = torch.cuda.init = torch.cuda._lazy_init = boom\n"
            "torch._C._cuda_getDeviceCount = boom\n"
            f"for m in {forkstart.PRELOAD!r}:\n    __import__(m)\n"
            "print('ok')\n")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]


def test_forked_worker_has_its_environment_and_session(monkeypatch):
    monkeypatch.delenv("GDN_WORKER_START", raising=False)
    # the server may have started in an earlier test, in its environment (pytest's per-test variables)
    base = {k: v for k, v in (forkstart._server_env or os.environ).items() if k != "GDN_WORKER_START"}
    env = dict(base, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    assert forkstart.forked_start(env)
    got, pool = [], WorkerPool()
    try:
        run_jobs([Job(dict(call=CALL, args=dict(keys=["OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"])))],
                 lambda job, i: env, lambda job, outcome: got.append(outcome), 1, 60.0, pool=pool)
    finally:
        pool.close()
    (o,) = got
    assert o.kind == "result", o.error
    v = o.value
    assert v["env"] == {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert v["threads"] == 1
    assert v["sid"] == v["pid"]                  # its own session: a terminal's Ctrl-C reaches the parent only
    assert v["parent"] != os.getpid()            # forked by the server, not this process


def test_no_harness_module_reads_its_variables_at_import():
    """A GDN_* variable may differ between the server and a worker: none is read at module level."""
    import ast
    import pathlib
    root = pathlib.Path(forkstart.__file__).parents[1]
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:                 # module-level statements only
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            src = ast.get_source_segment(path.read_text(), node) or ""
            if "environ" in src or "getenv" in src:
                assert "GDN_" not in src, f"{path}: a GDN_ variable read at import: {src[:120]}"


def test_other_differences_start_the_worker_the_old_way(monkeypatch):
    monkeypatch.delenv("GDN_WORKER_START", raising=False)
    base = dict(forkstart._server_env or os.environ)
    assert forkstart.forked_start(dict(base, MKL_NUM_THREADS="3"))
    assert forkstart.forked_start(dict(base, GDN_AUTOTUNE="pinned"))
    assert not forkstart.forked_start(dict(base, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True"))
    assert not forkstart.forked_start({k: v for k, v in base.items() if k != "PATH"})
    monkeypatch.setenv("GDN_WORKER_START", "spawn")
    assert not forkstart.forked_start(dict(base))


def test_a_cli_worker_is_forked():
    """What the CLI adds to its environment before its workers start keeps them forked: against
    the server's environment, which start_early gave the run's interpreter mode."""
    from harness.evals import OFFLINE_ENV
    from harness.optimized.interpret import interpret_triton
    from harness.run.isolate import case_env
    server = interpret_triton("cpu", dict(os.environ))
    env = dict(case_env("cpu", 2), **OFFLINE_ENV)
    added = {k for k in set(env) | set(server) if env.get(k) != server.get(k)}
    assert added and all(forkstart.fork_safe(k) for k in added), sorted(added)
    assert env["TRITON_INTERPRET"] == server["TRITON_INTERPRET"] == "1"


def test_the_server_gets_the_workers_interpreter_mode():
    """triton.language's @jit helpers are wrapped in the mode of their import (the server's
    preload): the server starts in the run's mode (a fresh CLI process: no kernel imported yet),
    and a worker in another mode is spawned."""
    code = ("import os, sys\n"
            "from harness.run import forkstart\n"
            "forkstart._context = lambda: print(os.environ.get('TRITON_INTERPRET'))\n"
            "os.environ.pop('TRITON_INTERPRET', None)\n"
            "forkstart.start_early(sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GDN_WORKER_START")}
    runs = {"cpu": ["--device", "cpu"], "default": [], "cuda": ["--device=cuda"]}
    got = {name: subprocess.run([sys.executable, "-c", code, "run", "--backend", "triton", *a], env=env,
                                capture_output=True, text=True, timeout=120).stdout.strip()
           for name, a in runs.items()}
    assert got["cpu"] == got["default"] == "1"          # --device's default is cpu
    assert got["cuda"] == "None"                         # the GPU's kernels, compiled
    assert not forkstart.fork_safe("TRITON_INTERPRET")
    base = dict(forkstart._server_env or os.environ)
    assert not forkstart.forked_start(dict(base, TRITON_INTERPRET="0" if base.get("TRITON_INTERPRET") == "1" else "1"))


def test_early_start_only_for_runs_that_use_workers(monkeypatch):
    started = []
    monkeypatch.delenv("GDN_WORKER_START", raising=False)
    monkeypatch.setattr(forkstart, "_context", lambda: started.append(1))
    yes = [["run", "--suite", "smoke", "--backend", "reference", "--backend", "triton"],
           ["run", "--backend=triton,reference"], ["run", "--jobs", "4"], ["run", "--timeout", "30"],
           ["run", "--isolate"]]
    no = [["run", "--suite", "self"], ["run", "--backend", "reference"], ["run", "--backend", "triton", "--no-isolate"],
          ["run", "--backend", "triton", "--distributed"], ["list", "backends"], [], ["run", "-h", "--backend", "x"]]
    assert [forkstart.start_early(a) for a in yes] == [True] * len(yes)
    assert [forkstart.start_early(a) for a in no] == [False] * len(no)
    monkeypatch.setenv("GDN_WORKER_START", "spawn")
    assert not forkstart.start_early(yes[0])
    assert len(started) == len(yes)


def test_forkstart_imports_no_torch():
    """The CLI starts the server before its own imports load torch."""
    got = subprocess.run([sys.executable, "-c", "import sys, harness.run.forkstart; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "False", got.stderr[-2000:]


def test_the_console_script_forks_working_workers(tmp_path):
    """Through a script named like the console script (multiprocessing would re-run a script
    __main__ in each child, and the CLI's import in there started a server of its own): a run
    on workers runs every case to its record (a worker that died would leave an error record)."""
    import json
    script = tmp_path / "gdn-harness"
    script.write_text("import sys\nfrom harness.cli import main\nsys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if k != "GDN_WORKER_START"}
    got = subprocess.run([sys.executable, str(script), "run", "--suite", "smoke", "--backend", "triton", "-k",
                          "layer.mixed and tp1", "--device", "cpu", "--jobs", "2", "-q", "--report-dir",
                          str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert got.returncode == 0, (got.stdout + got.stderr)[-3000:]
    cases = json.loads((tmp_path / "r" / "results.json").read_text())["cases"]
    # a worker that died leaves an error record; skip: this triton's interpreter is too old (the GPU image's 3.6)
    assert cases and all(c["status"] in ("pass", "skip") for c in cases), \
        [(c["id"], c["status"], c["error"]) for c in cases]
    assert "Traceback" not in got.stderr, got.stderr[-3000:]
