"""CUDA-graph capture / replay of a backend's decode and spec-verify steps (GPU only).

Serving engines capture the decode step once per padded batch size and replay it with
fresh inputs and a smaller real batch (the rest PAD rows). `graph_replay_pairs` captures a
backend's decode step - unpack, causal_conv1d_update, fused_gdn_gating, the recurrent
update, RMSNormGated, out_proj, on static buffers with static slot indices, no host
metadata - at `pad_batch` rows, then for each of two replays with new inputs and fewer
real rows:

* poisons the outputs and every pool slot with NaN's neighbours (the real sequences'
  slots get their true states back, the padded rows' stay NaN), replays, and compares with
  the same step run eagerly on the same inputs: real outputs and real slots equal, the
  PAD rows' outputs zero, slots no real row owns still NaN (untouched);
* the second replay's outputs must be its own, not the first replay's.

Faults of this class - a size read at capture time and frozen, a host-side branch on the
batch's contents - only exist under capture: a backend taking part declares
``cuda_graphs = True`` (its ops capturable: no host syncs, no Python decisions on tensor
values). Without CUDA the check is skipped with the reason. On a GPU:

    .venv/bin/python -m pytest tests/test_cuda_graph.py tests/test_cuda_graph_zoo.py -q -rs
    .venv/bin/python -m harness.tools.cudagraph --backend triton --dims qwen3-next-80b-a3b
    .venv/bin/python -m harness.tools.cudagraph --zoo          # the CUDA-graph faults: killed / missed

The spec-verify step captures the same way with 1 + num_spec tokens a row, per-row
accepted counts and the conv / ssm reads at the accepted offset. The triton backend's
kernels skip their value checks under capture (no host syncs) and take sizes from shapes.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

import torch

from harness.config import GDNDims
from harness.cases.comparison import Comparison
from harness.cases.inputs import dtype_of, make_weights
from harness.judge.policy import Policy
from harness.judge.verdict import judge_into
from harness.layouts.projection import qkv_to_mixed, split_mixed_qkv
from harness.layouts.tp import shard_params

POLICY_KEY = "graph.replay"     # exact (suites/tolerances.toml)


def why_not(backend, device: str) -> Optional[str]:
    """Why the graph check cannot run (None when it can)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device (this run has none)"
    if not getattr(backend, "cuda_graphs", False):
        return f"backend {getattr(backend, 'name', backend)} does not declare cuda_graphs = True"
    return None


STEPS = ("decode", "spec")


def decode_step(ops, p, buf: dict) -> None:
    """One decode (one token a row) or spec-verify step (1 + num_spec tokens a row: conv over
    the accepted-token window, states read at ``[n, num_accepted - 1]`` and written per token)
    over the static buffers `buf` (mq, mb, idx, cu, acc, out written in place); no host reads."""
    loc = p.local
    spec = buf.get("acc") is not None
    q, k, v, z, b, a = ops.unpack_qkvz_ba(buf["mq"], buf["mb"], loc, p.layout)
    conv_idx = buf["idx"][:, 0] if spec else buf["idx"]
    x = ops.causal_conv1d_update(qkv_to_mixed(q, k, v), buf["conv"], p.conv_weight, p.conv_bias, "silu",
                                 conv_state_indices=conv_idx, num_accepted_tokens=buf.get("acc"),
                                 query_start_loc=buf["cu"] if spec else None)
    q, k, v = split_mixed_qkv(x, loc)
    g, beta = ops.fused_gdn_gating(p.A_log, a, b, p.dt_bias)
    o, _ = ops.fused_recurrent_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None],
                                                initial_state=buf["ssm"], inplace_final_state=True,
                                                cu_seqlens=buf["cu"], ssm_state_indices=buf["idx"],
                                                num_accepted_tokens=buf.get("acc"),
                                                use_qk_l2norm_in_kernel=True, state_layout="vk")
    n = ops.rms_norm_gated(o[0].reshape(-1, loc.V), p.norm_weight, z.reshape(-1, loc.V))
    buf["out"].copy_(n.reshape(o.shape[1], -1) @ p.out_proj.T)


def _batch(step: str, B: int, n_real: int, num_spec: int, r: int, device):
    """(idx, acc, ssm slots the real rows own, conv slots they own) of a batch with `n_real`
    real rows of `B`: row i owns slots ``i * width + j`` (width 1 + num_spec for spec), PAD -1;
    spec rows accept 1..num_spec+1 tokens, varied per replay `r`."""
    if step == "decode":
        idx = torch.tensor([i if i < n_real else -1 for i in range(B)], dtype=torch.int32, device=device)
        owned = list(range(n_real))
        return idx, None, owned, owned
    w = 1 + num_spec
    idx = torch.tensor([[i * w + j if i < n_real else -1 for j in range(w)] for i in range(B)], dtype=torch.int32,
                       device=device)
    acc = torch.tensor([1 + (i + r) % w for i in range(B)], dtype=torch.int32, device=device)
    return idx, acc, list(range(n_real * w)), [i * w for i in range(n_real)]


def graph_replay_pairs(backend, ops, dims: GDNDims, dtype: str = "bfloat16", state_dtype: str = "float32",
                       seed: int = 0, device: str = "cuda", pad_batch: int = 8, capture_real: int = 8,
                       real: Tuple[int, ...] = (5, 3, 8), step: str = "decode",
                       num_spec: int = 2) -> List[Comparison]:
    """Capture a `step` ("decode" or "spec": the spec-verify step) at `pad_batch` rows of which
    `capture_real` are real, replay with `real` real rows (one replay each); the `Comparison`s
    of every replay, all under the exact entry `POLICY_KEY`. Capturing with all rows real
    catches a host-side branch taken on "no PAD rows"; with fewer than a replay has, a batch
    size frozen at capture."""
    if step not in STEPS:
        raise ValueError(f"step {step!r}: one of {STEPS}")
    dt, st = dtype_of(dtype), dtype_of(state_dtype)
    p = shard_params(make_weights(dims, seed, dtype=dt), dims, "flat").to(device)
    gen = torch.Generator().manual_seed(seed + 7)
    B = pad_batch
    w = 1 if step == "decode" else 1 + num_spec                     # tokens a row
    T = B * w
    slots = B * w + 2                                               # two slots nobody owns
    L = dims.W - 1 + (num_spec if step == "spec" else 0)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dt)
    conv0 = rnd(slots, dims.conv_dim, L)
    ssm0 = (0.3 * torch.randn(slots, dims.HV, dims.V, dims.K, generator=gen)).to(device=device, dtype=st)
    idx, acc, _, _ = _batch(step, B, capture_real, num_spec, 0, device)
    buf = dict(mq=rnd(T, dims.qkvz_dim), mb=rnd(T, 2 * dims.HV), conv=conv0.clone(), ssm=ssm0.clone(), idx=idx,
               acc=acc, cu=torch.arange(0, T + 1, w, dtype=torch.int32, device=device),
               out=torch.zeros(T, dims.hidden, dtype=dt, device=device))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                                   # warm up (compiles, autotunes)
        decode_step(ops, p, buf)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step(ops, p, buf)

    pairs: List[Comparison] = []
    previous = None
    for r, n_real in enumerate(real):
        mq, mb = rnd(T, dims.qkvz_dim), rnd(T, 2 * dims.HV)
        idx, acc, own_ssm, own_conv = _batch(step, B, n_real, num_spec, r, device)
        # eager reference on the same inputs and the same (un-poisoned) pools
        ref = dict(mq=mq.clone(), mb=mb.clone(), conv=conv0.clone(), ssm=ssm0.clone(), idx=idx.clone(),
                   acc=None if acc is None else acc.clone(), cu=buf["cu"].clone(), out=torch.zeros_like(buf["out"]))
        decode_step(ops, p, ref)
        # poison: outputs and pools NaN, the real sequences' slots restored
        for key, src in (("mq", mq), ("mb", mb), ("idx", idx), ("acc", acc)):
            if src is not None:
                buf[key].copy_(src)
        buf["out"].fill_(float("nan"))
        for key, start, owned in (("conv", conv0, own_conv), ("ssm", ssm0, own_ssm)):
            buf[key].fill_(float("nan"))
            buf[key][owned] = start[owned]
        graph.replay()
        torch.cuda.synchronize()
        out, t_real = buf["out"].float().cpu(), n_real * w
        pairs.append(Comparison(f"replay{r}.out[real]", out[:t_real], ref["out"][:t_real].float().cpu(), 0, POLICY_KEY,
                                quantity="out"))
        pairs.append(Comparison(f"replay{r}.out[pad]", out[t_real:], torch.zeros_like(out[t_real:]), 0, POLICY_KEY,
                                "pad_rows", quantity="out"))
        for key, owned in (("conv", own_conv), ("ssm", own_ssm)):
            got = buf[key].float().cpu()
            pairs.append(Comparison(f"replay{r}.{key}[real]", got[owned], ref[key][owned].float().cpu(), None,
                                    POLICY_KEY, "state", quantity=f"{key}_state", cache=key))
            rest = [s for s in range(slots) if s not in set(owned)]
            untouched = torch.isnan(got[rest]).float()      # 1 where the poison is still there
            pairs.append(Comparison(f"replay{r}.{key}[untouched]", untouched, torch.ones_like(untouched), None,
                                    POLICY_KEY, "untouched", quantity=f"{key}_state", cache=key))
        if previous is not None:
            k = min(t_real, previous.shape[0])
            stale = (out[:k] == previous[:k]).all(-1).float()
            pairs.append(Comparison(f"replay{r}.out[not replay{r - 1}'s]", stale, torch.zeros_like(stale), 0, POLICY_KEY,
                                    quantity="out[not the previous replay's]"))
        previous = out[:t_real].clone()
    return pairs


# every capture the check makes: (step, capture_real) - all rows real at capture (a host
# branch on "no PAD rows") and fewer than the replays have (a size frozen at capture)
CAPTURES = tuple((step, n) for step in STEPS for n in (8, 2))


def judged(pairs: List[Comparison], dtype: str = "bfloat16", state_dtype: str = "float32",
           policy: Optional[Policy] = None) -> dict:
    """A record of `pairs` judged as layer cases are (`harness.judge.verdict`): status, metrics, margin."""
    rec: dict = {}
    judge_into(rec, pairs, policy or Policy(), dtype, state_dtype)
    return rec


def failing(pairs: List[Comparison], dtype: str = "bfloat16", state_dtype: str = "float32") -> List[str]:
    """The outputs of `pairs` out of tolerance (all exact here: replay == eager bit for bit)."""
    return [m["output"] for m in judged(pairs, dtype, state_dtype)["metrics"] if not m["passed"]]


def check_backend(make, dims: GDNDims, dtype: str = "bfloat16", device: str = "cuda") -> List[Tuple[str, int, List[str]]]:
    """Every capture of `CAPTURES` on a fresh backend from `make()` (a fault keeps host state
    between calls): (step, capture_real, failing pair names)."""
    from harness.optimized.api import FilledOps
    from harness.optimized.registry import load_backend
    out = []
    for step, n in CAPTURES:
        be = make()
        pairs = graph_replay_pairs(be, FilledOps(be, load_backend("reference")), dims, dtype, device=device,
                                   capture_real=n, step=step)
        out.append((step, n, failing(pairs, dtype)))
    return out


def run_zoo(dims: GDNDims, dtype: str = "bfloat16", device: str = "cuda", base: str = "triton",
            faults: Optional[List[str]] = None) -> dict:
    """The CUDA-graph faults (`harness.faults.catalogue.GRAPH_FAULTS`) against the captures:
    each killed when some capture's check fails; the base must pass them all."""
    from harness.faults.catalogue import GRAPH_FAULTS
    from harness.optimized.registry import load_backend
    names = faults or list(GRAPH_FAULTS)
    unknown = [n for n in names if n not in GRAPH_FAULTS]
    if unknown:
        raise ValueError(f"unknown CUDA-graph fault {unknown[0]!r}; known: {sorted(GRAPH_FAULTS)}")
    base_runs = check_backend(lambda: load_backend(base), dims, dtype, device)
    res = dict(base=base, base_passed=not any(f for _, _, f in base_runs), base_runs=base_runs, faults={})
    for name in names:
        runs = check_backend(GRAPH_FAULTS[name].make, dims, dtype, device)
        res["faults"][name] = dict(killed=any(f for _, _, f in runs), runs=runs)
    return res


def main(argv=None) -> int:
    from harness.optimized.registry import load_backend
    from harness.cases.suite import parse_dims
    ap = argparse.ArgumentParser(prog="python -m harness.tools.cudagraph", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--dims", default="qwen3-next-80b-a3b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--zoo", action="store_true",
                    help="run the CUDA-graph faults (gdn-harness list mutants: GPU only) against the captures, "
                         "--backend as their base; report killed / missed")
    ap.add_argument("--fault", action="append", default=None, help="with --zoo: only these faults (repeatable)")
    args = ap.parse_args(argv)
    if args.fault and not args.zoo:
        ap.error("--fault needs --zoo")
    dims = parse_dims(args.dims)
    if args.zoo:
        from harness.faults.catalogue import GRAPH_FAULTS
        faults = [f for a in args.fault for f in a.split(",") if f] if args.fault else None
        unknown = [f for f in faults or [] if f not in GRAPH_FAULTS]
        if unknown:
            ap.error(f"unknown CUDA-graph fault {unknown[0]!r}; known: {', '.join(sorted(GRAPH_FAULTS))}")
        why = why_not(load_backend(args.backend), args.device)
        if why:
            print(f"skip: {why}; CUDA-graph faults not run: {', '.join(faults or GRAPH_FAULTS)}")
            return 0
        res = run_zoo(dims, args.dtype, args.device, args.backend, faults)
        for step, n, bad in res["base_runs"]:
            print(f"base {args.backend:8} {step:6} capture_real={n}: {'FAIL ' + ', '.join(bad) if bad else 'pass'}")
        for name, r in res["faults"].items():
            by = [f"{step} capture_real={n}: {bad[0]}" for step, n, bad in r["runs"] if bad]
            print(f"{'KILLED' if r['killed'] else 'MISSED':7} {name:26} {'by ' + '; '.join(by) if by else ''}")
        killed = sum(r["killed"] for r in res["faults"].values())
        print(f"CUDA-graph kill score {killed}/{len(res['faults'])}; base passes: {res['base_passed']}")
        return 0 if killed == len(res["faults"]) and res["base_passed"] else 1
    backend = load_backend(args.backend)
    why = why_not(backend, args.device)
    if why:
        print(f"skip: {why}")
        return 0
    runs = check_backend(lambda: load_backend(args.backend), dims, args.dtype, args.device)
    for step, n, bad in runs:
        for name in bad:
            print(f"FAIL {step} capture_real={n}: {name}")
    n_bad = sum(bool(bad) for _, _, bad in runs)
    print(f"{len(runs) - n_bad}/{len(runs)} captures pass (decode and spec-verify steps)")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
