"""Benchmarks (``gdn-harness bench``): timings live here, never in asserts.

* ``copy``: the device's measured copy bandwidth (a large device-to-device copy, bytes
  read + written), the ceiling every op is set against.
* ``op``: each op of each backend at preset dims (TP 1 and a TP shard's local dims) on
  decode-shaped (a batch of 1-token sequences over a state pool) and prefill-shaped
  (a few long sequences) inputs, built by the op table's sample builders (the op's
  `OpInfo.bench` variants, scaled): median time and achieved bandwidth = the fewest bytes
  the op must move (each input read once, each output and updated state written once)
  / time, as a fraction of the copy bandwidth.
* ``oracle``: the fp64 reference delta rule on one long prefill (the harness's own cost).
* ``suite``: a suite's time-to-verdict, as CI sees it (a fresh process), cold (empty
  TRITON_CACHE_DIR, compiles included) and warm (the same cache).

Output: bench.json, bench.md and bench.png (when matplotlib is present).
"""
from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from harness.config import GDNDims
from harness.cases.inputs import dtype_of, make_delta_inputs
from harness.cases.opcheck import OP_INFOS, bench_sample
from harness.reference.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from harness.reference.ops import op_names



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeat: int) -> List[float]:
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_median(fn: Callable[[], object], device: torch.device, target_s: float = 0.3,
                max_runs: int = 100) -> List[float]:
    """Per-call seconds after one warm-up call (compiles, autotuning): CUDA events on a
    GPU, perf_counter elsewhere; as many runs as fit in about `target_s` (1..max_runs)."""
    time_call(fn, device, 1)                                  # warm-up
    est = time_call(fn, device, 1)[0]
    runs = max(1, min(max_runs, int(target_s / max(est, 1e-6))))
    if device.type != "cuda":
        return [est] + time_call(fn, device, runs - 1)
    times = [est]
    for _ in range(runs - 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def copy_bandwidth(device: str, nbytes: int) -> Dict:
    """Bytes read + written per second of a large device-to-device copy."""
    dev = torch.device(device)
    src = torch.randn(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    times = time_median(lambda: dst.copy_(src), dev, target_s=0.5)
    med = statistics.median(times)
    return dict(bench="copy", bytes=2 * src.nbytes, median_s=med, gbps=2 * src.nbytes / med / 1e9, runs=len(times))


# ----------------------------------------------------------------------------- op inputs

def bench_ops_of(shape: str) -> List[str]:
    """The ops timed on `shape` ("decode" / "prefill"): those whose op-table entry names a
    variant for it (`OpInfo.bench`), in the op table's order."""
    return [op for op in op_names() if shape in getattr(OP_INFOS.get(op), "bench", {})]


def op_inputs(shape: str, dims: GDNDims, seqs: int, tokens: int, dt: torch.dtype, st: torch.dtype,
              state_layout: str, device: str, seed: int = 0) -> Dict[str, tuple]:
    """Per op of the shape: (kwargs, names of kwargs the op updates in place), built by the op
    table's own sample builders (the op checks' physical inputs: gates from real gating,
    states of a plausible size), scaled to `seqs` sequences of `tokens` tokens, one state slot
    each. Values are drawn in fp64 on the CPU, then cast and moved, as the op checks do."""
    out = {}
    for op in bench_ops_of(shape):
        info = OP_INFOS[op]
        variant = info.bench[shape]
        s = info.build(variant, dims, dt, st, state_layout, seed, device, bench_sample(info, variant, seqs, tokens))
        out[op] = (s.kwargs, tuple(s.states))
    return out


def _tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    return []


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bytes_moved(kwargs: dict, inplace, result) -> int:
    """Each tensor argument read once, each returned tensor written once (a pool or an `out=`
    buffer returned as the result counts once), each in-place argument written once."""
    args = _tensors(list(kwargs.values()))
    seen = {t.data_ptr() for t in args}
    returned = _tensors(result)
    written = [t for t in returned if t.data_ptr() not in seen]
    back = {t.data_ptr() for t in returned}
    inplace = set(inplace) | {n for n, v in kwargs.items() if isinstance(v, torch.Tensor) and v.data_ptr() in back}
    return sum(map(_nbytes, args)) + sum(map(_nbytes, written)) + sum(_nbytes(kwargs[n]) for n in inplace)


def bench_ops(backend_names: List[str], dims: GDNDims, tps: List[int], device: str, dtype: str, state_dtype: str,
              decode_seqs: int, prefill_seqs: int, prefill_tokens: int, copy_gbps: float,
              log: Callable[[str], None] = print) -> List[Dict]:
    from harness.optimized.registry import load_backend
    dev = torch.device(device)
    dt, st = dtype_of(dtype), dtype_of(state_dtype)
    rows = []
    for name in backend_names:
        try:
            backend = load_backend(name)
            why = backend.unavailable(device) or (None if dtype in backend.dtypes else f"no dtype {dtype}")
        except Exception as e:  # noqa: BLE001 - an unloadable backend is a row, not a crash
            backend, why = None, f"cannot load: {type(e).__name__}: {e}"
        for tp in tps:
            local = dims.local(tp)
            for shape, seqs, tokens in (("decode", decode_seqs, 1), ("prefill", prefill_seqs, prefill_tokens)):
                ops = bench_ops_of(shape)
                base = dict(bench="op", backend=name, tp=tp, shape=shape, seqs=seqs, tokens_per_seq=tokens,
                            dims=local.to_dict(), dtype=dtype, state_dtype=state_dtype)
                inputs = None
                for op in ops:
                    row = dict(base, op=op)
                    rows.append(row)
                    if why or not backend.implements(op):
                        row["skipped"] = why or f"{name} does not implement {op}"
                        continue
                    if inputs is None:
                        inputs = op_inputs(shape, local, seqs, tokens, dt, st, backend.ssm_state_layout, device)
                    kwargs, inplace = inputs[op]
                    fn = getattr(backend, op)
                    try:
                        result = fn(**kwargs)
                        times = time_median(lambda: fn(**kwargs), dev)
                    except NotImplementedError as e:
                        row["skipped"] = f"not supported: {e}"
                        continue
                    except Exception as e:  # noqa: BLE001 - a crashing op is a row's error, the bench goes on
                        row["error"] = f"{type(e).__name__}: {e}"[:500]
                        continue
                    med = statistics.median(times)
                    nbytes = bytes_moved(kwargs, inplace, result)
                    row.update(median_s=med, runs=len(times), bytes=nbytes, gbps=nbytes / med / 1e9,
                               frac_of_copy=nbytes / med / 1e9 / copy_gbps if copy_gbps else None)
                    log(f"op {name:9} tp{tp} {shape:7} {op:46} {med * 1e3:9.3f} ms {row['gbps']:8.3g} GB/s")
                del inputs
    return rows


def bench_oracle(dims: GDNDims, tokens: int, device: str, repeat: int = 3,
                 recurrent: bool = False, seed: int = 0) -> List[Dict]:
    dev = torch.device(device)
    d = make_delta_inputs(dims, [tokens], seed)
    d = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    args = (d["q"], d["k"], d["v"], d["g"], d["beta"])
    kw = dict(initial_state=d["initial_state"], cu_seqlens=d["cu_seqlens"], use_qk_l2norm_in_kernel=True)
    forms = [("chunked", chunk_gated_delta_rule)] + ([("recurrent", recurrent_gated_delta_rule)] if recurrent else [])
    rows = []
    for name, fn in forms:
        times = time_call(lambda: fn(*args, **kw), dev, repeat)   # first call includes warm-up
        rows.append(dict(bench="oracle", form=name, dims=dims.to_dict(), tokens=tokens, dtype="float64",
                         device=str(dev), device_name=_device_name(dev),
                         torch=torch.__version__, times_s=[round(t, 4) for t in times],
                         median_s=round(statistics.median(times), 4), first_s=round(times[0], 4)))
    return rows


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")


# ----------------------------------------------------------------------------- suite cost

def _run_suite(cmd: List[str], env: Dict[str, str], limit_s: float):
    """(wall seconds, exit code, output tail, hit the limit) of one suite run in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tail, _ = proc.communicate(timeout=limit_s)
        hit_limit = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)          # the run writes the finished cases' report
        try:
            tail, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            tail, _ = proc.communicate()
        hit_limit = True
    return time.perf_counter() - t0, proc.returncode, tail or "", hit_limit


def _suite_cmd(suite: str, backend: str, device: str, jobs: int, out: Path, autotune: Optional[str]) -> List[str]:
    return ([sys.executable, "-m", "harness.cli", "run", "--suite", suite, "--backend", backend, "--device", device,
             "-q", "--report-dir", str(out)] + (["--jobs", str(jobs)] if jobs > 1 else [])
            + (["--autotune", autotune] if autotune else []))


def _fresh_cache(path: Optional[Path]) -> Path:
    cache = Path(path) if path else Path(tempfile.mkdtemp(prefix="gdn-bench-triton-"))
    if cache.exists() and any(cache.iterdir()):
        raise ValueError(f"--suite-cache {cache}: must be empty for the cold run")
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _env(cache: Path) -> Dict[str, str]:
    return dict(os.environ, TRITON_CACHE_DIR=str(cache), TRITON_CACHE_AUTOTUNING="1", PYTHONUNBUFFERED="1")


def suite_breakdown(records: List[dict], top: int = 5) -> Dict:
    """Seconds per phase summed over a run's records, case-seconds per level / op, and the
    slowest cases with their phases (what `bench --suite-cost` shows)."""
    from harness.run.phases import PHASES
    totals = {p: 0.0 for p in PHASES}
    by_group: Dict[str, float] = {}
    for r in records:
        for p in PHASES:
            totals[p] += (r.get("phases") or {}).get(f"{p}_s", 0.0)
        group = f"{r.get('level')}.{r.get('op')}"
        by_group[group] = by_group.get(group, 0.0) + (r.get("duration_s") or 0.0)
    slow = sorted(records, key=lambda r: -(r.get("duration_s") or 0.0))[:top]
    return dict(phases_s={p: round(v, 2) for p, v in totals.items()},
                case_seconds=round(sum(r.get("duration_s") or 0.0 for r in records), 2),
                compiles=sum((r.get("phases") or {}).get("compiles", 0) for r in records),
                autotuned=sum((r.get("phases") or {}).get("autotuned", 0) for r in records),
                oracle_replays=sum((r.get("phases") or {}).get("oracle_replays", 0) for r in records),
                by_group_s=dict(sorted(((k, round(v, 2)) for k, v in by_group.items()), key=lambda kv: -kv[1])[:12]),
                slowest=[dict(id=r["id"], duration_s=r.get("duration_s"), phases=r.get("phases")) for r in slow])


def bench_suite(suite: str, backend: str, device: str, jobs: Sequence[int], limit_s: float, cache_dir: Optional[str],
                report_dir: Path, log: Callable[[str], None] = print, rows: Optional[List[Dict]] = None,
                autotune: Optional[str] = None, cold_each: bool = False) -> List[Dict]:
    """Time-to-verdict of `gdn-harness run --suite` in a fresh process: cold (empty
    TRITON_CACHE_DIR) with `jobs[0]` workers (with `cold_each`: with each of `jobs`, each
    from its own empty cache), then warm (the first cold run's cache) with each of `jobs`.
    On a multi-GPU host the workers spread over the GPUs; on one GPU they share it. A run
    past `limit_s` gets SIGINT, so it still writes the report of its finished cases (the
    row says how many). Each row carries the run's per-phase breakdown (`suite_breakdown`).
    Rows are appended to `rows` as each run ends, so an interrupted bench keeps them."""
    cache = _fresh_cache(cache_dir)
    rows = [] if rows is None else rows
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    cold_cut = False
    runs = [("cold", n) for n in (jobs if cold_each else jobs[:1])] + [("warm", j) for j in jobs]
    for i, (label, n) in enumerate(runs):
        out = report_dir / f"suite-{label}-jobs{n}"
        run_cache = cache if i == 0 or label == "warm" else _fresh_cache(Path(f"{cache}-cold-jobs{n}"))
        wall, code, tail, hit_limit = _run_suite(_suite_cmd(suite, backend, device, n, out, autotune),
                                                 _env(run_cache), limit_s)
        if label == "cold" and i == 0:
            cold_cut = hit_limit
        elif label == "warm" and cold_cut:
            label = "partly warm"     # the cold run stopped early: this run still compiles the rest
        row = dict(bench="suite", suite=suite, backend=backend, device=device, jobs=n, cache=label,
                   gpus=min(n, gpus) if gpus else None, autotune=autotune or "pinned",
                   wall_s=round(wall, 2), exit_code=code, limit_s=limit_s, hit_limit=hit_limit,
                   output_tail=tail[-1500:])
        res = out / "results.json"
        if res.exists():
            doc = json.loads(res.read_text())
            row.update(counts=doc["counts"], planned_cases=doc.get("planned_cases"), run_wall_s=doc.get("wall_s"),
                       startup_s=doc.get("startup_s"), startup=doc.get("startup"),
                       breakdown=suite_breakdown(doc.get("cases", [])))
        rows.append(row)
        log(f"suite {suite} {backend} jobs={n} {label}: {wall:.1f} s, "
            f"{row.get('counts', {}).get('total', '?')}/{row.get('planned_cases', '?')} cases"
            + (" (limit hit)" if hit_limit else ""))
    return rows


def record_autotune(suite: str, backend: str, device: str, path: Path, report_dir: Path, limit_s: float,
                    device_name: str = "", jobs: int = 1, log: Callable[[str], None] = print) -> Path:
    """Run `suite` with the native autotuner (a fresh cache, `jobs` workers: they take turns
    per kernel) and write the configs it chose as the pins file `path` (`--autotune pinned`
    runs them). A run cut at `limit_s` writes the pins of the cases it finished."""
    from harness.run.autotune import pins_from_records
    out = report_dir / "record-autotune"
    wall, code, tail, hit = _run_suite(_suite_cmd(suite, backend, device, jobs, out, "native"),
                                       _env(_fresh_cache(None)), limit_s)
    res = out / "results.json"
    if not res.exists():
        raise RuntimeError(f"--record-autotune: the native run wrote no results (exit {code}): {tail[-800:]}")
    try:
        import triton
        version = triton.__version__
    except ImportError:
        version = ""
    pins = pins_from_records(json.loads(res.read_text())["cases"], device_name, version)
    path.write_text(json.dumps(pins, indent=1) + "\n")
    log(f"autotune pins: {sum(map(len, pins['kernels'].values()))} keys of {len(pins['kernels'])} kernels "
        f"-> {path} ({wall:.1f} s{', limit hit: partial' if hit else ''})")
    return path


# ----------------------------------------------------------------------------- report

def bench_markdown(doc: dict) -> str:
    env, rows = doc["environment"], doc["rows"]
    copy = next((r for r in rows if r["bench"] == "copy"), None)
    lines = [f"# gdn-harness bench: {env['device_name']}", "",
             f"torch {env['torch']}, triton {env.get('triton') or '-'}, Python {env['python']}; "
             f"dims `{doc['dims']['name']}`, activations {doc['dtype']}, state {doc['state_dtype']}.", "",
             f"Command: `{doc['command']}`", ""]
    if copy:
        lines += [f"Copy bandwidth (device-to-device, read + write): **{copy['gbps']:.4g} GB/s** "
                  f"({copy['bytes'] / 2**30:.2f} GiB moved per copy).", ""]
    ops = [r for r in rows if r["bench"] == "op"]
    for shape in ("decode", "prefill"):
        sel = [r for r in ops if r["shape"] == shape]
        if not sel:
            continue
        r0 = sel[0]
        what = (f"{r0['seqs']} sequences x 1 token" if shape == "decode"
                else f"{r0['seqs']} sequences x {r0['tokens_per_seq']} tokens")
        lines += [f"## {shape}: {what}", "", "| op | backend | TP | HV | median | GB/s | of copy BW |",
                  "|---|---|---|---|---|---|---|"]
        for r in sel:
            if "median_s" in r:
                frac = f"{100 * r['frac_of_copy']:.1f} %" if r.get("frac_of_copy") is not None else "-"
                lines.append(f"| {r['op']} | {r['backend']} | {r['tp']} | {r['dims']['HV']} | "
                             f"{r['median_s'] * 1e3:.3f} ms | {r['gbps']:.3g} | {frac} |")
            else:
                why = (r.get("skipped") or r.get("error") or "").replace("|", "/")[:90]
                lines.append(f"| {r['op']} | {r['backend']} | {r['tp']} | {r['dims']['HV']} | - | - | {why} |")
        lines.append("")
    oracle = [r for r in rows if r["bench"] == "oracle"]
    suites = [r for r in rows if r["bench"] == "suite"]
    if oracle or suites:
        lines += ["## The harness's own cost", ""]
    for r in oracle:
        lines.append(f"- fp64 oracle delta rule ({r['form']}), one {r['tokens']}-token prefill at "
                     f"{r['dims']['name']} (HV {r['dims']['HV']}): median {r['median_s']:.3f} s "
                     f"(first call {r['first_s']:.3f} s)")
    for r in suites:
        c = r.get("counts") or {}
        done = f"{c.get('total', '?')}/{r.get('planned_cases', '?')} cases"
        verdict = f"{c.get('pass', 0)} pass, {c.get('fail', 0)} fail, {c.get('error', 0)} error, {c.get('skip', 0)} skip"
        on = f" ({r['gpus']} GPU{'s' if r['gpus'] > 1 else ''})" if r.get("gpus") else ""
        lines.append(f"- suite `{r['suite']}` on `{r['backend']}`, --jobs {r['jobs']}{on}, {r['cache']} Triton cache: "
                     f"**{r['wall_s']:.1f} s** to verdict ({done}; {verdict})"
                     + (f" - stopped at the {r['limit_s']:g} s limit" if r["hit_limit"] else ""))
    lines += suite_breakdown_markdown(suites)
    lines.append("")
    return "\n".join(lines)


def suite_breakdown_markdown(suites: List[Dict]) -> List[str]:
    """Per suite run: case-seconds per phase (summed over workers), compiles, autotunings."""
    from harness.run.phases import PHASES
    rows = [r for r in suites if r.get("breakdown")]
    if not rows:
        return []
    lines = ["", "### Where the seconds go (case-seconds summed over workers)", "",
             "| run | wall | run's wall | before the run | after the run | case-s | " + " | ".join(PHASES)
             + " | compiles | autotuned | oracle steps replayed |",
             "|---" * (10 + len(PHASES)) + "|"]
    for r in rows:
        b = r["breakdown"]
        # before: results.json's startup_s (imports, planning, workers' start); after: the process's
        # wall less the rest (the final report write, the workers' and the process's exit)
        run_wall, before = r.get("run_wall_s"), r.get("startup_s")
        after = r["wall_s"] - run_wall - before if run_wall is not None and before is not None else None
        cells = [f"{v:.1f}" if v is not None else "-" for v in (r["wall_s"], run_wall, before, after)]
        lines.append(f"| {r['cache']} --jobs {r['jobs']} ({r.get('autotune', 'pinned')}) | " + " | ".join(cells) + " | "
                     f"{b['case_seconds']:.1f} | " + " | ".join(f"{b['phases_s'][p]:.1f}" for p in PHASES)
                     + f" | {b['compiles']} | {b['autotuned']} | {b.get('oracle_replays', 0)} |")
    for r in rows:
        if r.get("startup"):     # results.json's split of startup_s (the parent's steps before the first case)
            lines += ["", f"Before the run, {r['cache']} --jobs {r['jobs']}: " + ", ".join(
                f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in r["startup"].items())]
    for r in rows:
        b = r["breakdown"]
        lines += ["", f"Slowest cases, {r['cache']} --jobs {r['jobs']}: " + "; ".join(
            f"`{c['id']}` {c['duration_s'] or 0:.1f} s (" + ", ".join(
                f"{k[:-2]} {v:.1f}" for k, v in (c.get("phases") or {}).items() if k.endswith("_s") and v >= 0.05)
            + ")" for c in b["slowest"]),
            "", "Case-seconds by check: " + ", ".join(f"{k} {v:.1f}" for k, v in b["by_group_s"].items())]
    return lines


def bench_plot(doc: dict, path: Path) -> Optional[Path]:
    """Achieved bandwidth as a fraction of the copy bandwidth, per op / backend / TP."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ops = [r for r in doc["rows"] if r["bench"] == "op" and r.get("frac_of_copy") is not None]
    if not ops:
        return None
    labels = [f"{r['shape']} {r['op'].replace('fused_', '').replace('_gated_delta_rule', '_gdr')} "
              f"[{r['backend']}, tp{r['tp']}]" for r in ops]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(ops) + 1.2))
    colors = {"reference": "#999999", "triton": "#1f77b4", "fla": "#ff7f0e"}
    ax.barh(range(len(ops)), [100 * r["frac_of_copy"] for r in ops],
            color=[colors.get(r["backend"], "#2ca02c") for r in ops])
    ax.set_yticks(range(len(ops)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("achieved bandwidth, % of measured copy bandwidth")
    ax.set_title(f"{doc['environment']['device_name']}: {doc['dims']['name']} ({doc['dtype']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI

def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="time the backends' ops against the copy bandwidth, and the harness itself")
    b.add_argument("--dims", "--preset", dest="dims", default="qwen3-next-80b-a3b",
                   help="preset[:shrunk[:k=v,...]] (default qwen3-next-80b-a3b)")
    b.add_argument("--device", default=None, help="default cuda when present, else cpu")
    b.add_argument("--backend", action="append", help="backends to time (repeatable; default reference, triton, fla)")
    b.add_argument("--tp", action="append", type=int, help="TP degrees whose shard is timed (default 1 and 8)")
    b.add_argument("--dtype", default=None, help="activation dtype (default bfloat16 on GPU, float32 on CPU)")
    b.add_argument("--state-dtype", default="float32", help="ssm state dtype (default float32)")
    b.add_argument("--decode-seqs", type=int, default=256, help="decode shape: sequences of 1 token")
    b.add_argument("--prefill-seqs", type=int, default=4, help="sequences per prefill batch (default 4)")
    b.add_argument("--prefill-tokens", type=int, default=4096, help="tokens per prefill sequence")
    b.add_argument("--tokens", type=int, default=32768, help="the fp64 oracle's prefill length")
    b.add_argument("--repeat", type=int, default=3, help="oracle runs")
    b.add_argument("--recurrent", action="store_true", help="also time the oracle's per-token recurrence")
    b.add_argument("--no-ops", action="store_true", help="skip the op benchmarks")
    b.add_argument("--suite-cost", default=None, metavar="SUITE",
                   help="also time this suite's time-to-verdict, cold and warm Triton cache")
    b.add_argument("--suite-backend", default="triton", help="backend of the --suite-cost run (default triton)")
    b.add_argument("--suite-jobs", type=int, action="append",
                   help="workers (one per GPU); repeatable: the cold run uses the first, a warm run follows "
                        "for each (default 1)")
    b.add_argument("--suite-limit", type=float, default=900.0, help="seconds per suite run (then SIGINT)")
    b.add_argument("--suite-cache", default=None, help="the Triton cache dir to fill (must be empty; default a temp dir)")
    b.add_argument("--suite-cold-each", action="store_true",
                   help="a cold run (its own empty cache) for each --suite-jobs, not only the first")
    b.add_argument("--autotune", choices=("pinned", "sweep", "native"), default=None,
                   help="autotune policy of the --suite-cost runs (default: the run's default, pinned)")
    b.add_argument("--record-autotune", default=None, metavar="PINS_JSON",
                   help="run --suite-cost's suite (default ci) with the native autotuner first (--jobs: the "
                        "largest --suite-jobs) and write the configs it chose as the pins file (`--autotune "
                        "pinned` runs them)")
    b.add_argument("--quick", action="store_true",
                   help="tiny: shrunk dims, 4 decodes, 2 x 64-token prefills, a 256-token oracle (CPU smoke)")
    b.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    b.add_argument("--report-dir", default=None, help="write bench.json, bench.md, bench.png here")
    b.set_defaults(fn=cmd_bench)


def cmd_bench(args) -> int:
    import shlex

    from harness.errors import HarnessError
    from harness.report.results import atomic_write, environment
    from harness.cases.suite import parse_dims
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {device}: no CUDA device is available")
    dims = parse_dims(args.dims)
    if args.quick:
        dims = dims if ":" in args.dims else dims.shrink()
        args.decode_seqs, args.prefill_seqs, args.prefill_tokens = 4, 2, 64
        args.tokens = min(args.tokens, 256)
    tps = args.tp or ([1, 2] if args.quick else [1, 8])
    for tp in tps:
        dims.check_tp(tp)
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    backends = [b for arg in (args.backend or ["reference", "triton", "fla"]) for b in arg.split(",") if b]
    report_dir = Path(args.report_dir) if args.report_dir else None
    env = environment()
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["device_name"] = _device_name(torch.device(device))
    rows: List[Dict] = []
    try:
        _measure(args, rows, env, device, dims, tps, dtype, backends, report_dir)
    except KeyboardInterrupt:
        print("interrupted: writing the rows measured so far", file=sys.stderr)
    doc = dict(schema="gdn-harness-bench/1", command="gdn-harness " + " ".join(map(shlex.quote, args.argv)),
               environment=env, device=device, dims=dims.to_dict(), dtype=dtype, state_dtype=args.state_dtype,
               rows=rows)
    if report_dir:
        atomic_write(report_dir / "bench.json", json.dumps(doc, indent=1, default=str))
        atomic_write(report_dir / "bench.md", bench_markdown(doc))
        bench_plot(doc, report_dir / "bench.png")
        print(f"bench report in {report_dir}")
    return 0


def _measure(args, rows, env, device, dims, tps, dtype, backends, report_dir) -> None:
    copy = copy_bandwidth(device, (64 << 20) if args.quick or device == "cpu" else (1 << 30))
    rows.append(copy)
    print(f"copy bandwidth {copy['gbps']:.1f} GB/s ({env['device_name']})")
    if not args.no_ops:
        rows += bench_ops(backends, dims, tps, device, dtype, args.state_dtype, args.decode_seqs, args.prefill_seqs,
                          args.prefill_tokens, copy["gbps"])
    for r in bench_oracle(dims, args.tokens, device, args.repeat, args.recurrent, args.seed):
        rows.append(r)
        print(f"oracle/{r['form']:9} {r['dims']['name']} T={r['tokens']} {r['device_name']}: "
              f"median {r['median_s']:.3f}s (first {r['first_s']:.3f}s, {len(r['times_s'])} runs)")
    where = report_dir or Path(tempfile.mkdtemp(prefix="gdn-bench-"))
    if args.record_autotune:
        record_autotune(args.suite_cost or "ci", args.suite_backend, device, Path(args.record_autotune), where,
                        args.suite_limit, env["device_name"], max(args.suite_jobs or [1]))
    if args.suite_cost:
        bench_suite(args.suite_cost, args.suite_backend, device, args.suite_jobs or [1], args.suite_limit,
                    args.suite_cache, where, rows=rows, autotune=args.autotune, cold_each=args.suite_cold_each)
