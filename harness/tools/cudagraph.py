"""CUDA-graph capture / replay of a backend's decode step (GPU only).

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

    .venv/bin/python -m pytest tests/test_cuda_graph.py -q
    .venv/bin/python -m harness.tools.cudagraph --backend vllm --dims qwen3-next-80b-a3b
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

import torch

from harness.config import GDNDims
from harness.cases.inputs import dtype_of, make_weights
from harness.layouts.projection import qkv_to_mixed, split_mixed_qkv
from harness.layouts.tp import shard_params

Pair = Tuple[str, torch.Tensor, torch.Tensor, object, str]


def why_not(backend, device: str) -> Optional[str]:
    """Why the graph check cannot run (None when it can)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device (this run has none)"
    if not getattr(backend, "cuda_graphs", False):
        return f"backend {getattr(backend, 'name', backend)} does not declare cuda_graphs = True"
    return None


def decode_step(ops, p, buf: dict) -> None:
    """One decode step over the static buffers `buf` (mq, mb, idx, cu, out written in place)."""
    loc = p.local
    q, k, v, z, b, a = ops.unpack_qkvz_ba(buf["mq"], buf["mb"], loc, p.layout)
    x = ops.causal_conv1d_update(qkv_to_mixed(q, k, v), buf["conv"], p.conv_weight, p.conv_bias, "silu",
                                 conv_state_indices=buf["idx"])
    q, k, v = split_mixed_qkv(x, loc)
    g, beta = ops.fused_gdn_gating(p.A_log, a, b, p.dt_bias)
    o, _ = ops.fused_recurrent_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None],
                                                initial_state=buf["ssm"], inplace_final_state=True,
                                                cu_seqlens=buf["cu"], ssm_state_indices=buf["idx"],
                                                use_qk_l2norm_in_kernel=True, state_layout="vk")
    n = ops.rms_norm_gated(o[0].reshape(-1, loc.V), p.norm_weight, z.reshape(-1, loc.V))
    buf["out"].copy_(n.reshape(o.shape[1], -1) @ p.out_proj.T)


def graph_replay_pairs(backend, ops, dims: GDNDims, dtype: str = "bfloat16", state_dtype: str = "float32",
                       seed: int = 0, device: str = "cuda", pad_batch: int = 8, capture_real: int = 8,
                       real: Tuple[int, ...] = (5, 3, 8)) -> List[Pair]:
    """Capture at `pad_batch` rows of which `capture_real` are real, replay with `real` real
    rows (one replay each); pairs (name, actual, expected, token dim, policy key), all exact.
    Capturing with all rows real catches a host-side branch taken on "no PAD rows"; with
    fewer than a replay has, a batch size frozen at capture."""
    dt, st = dtype_of(dtype), dtype_of(state_dtype)
    p = shard_params(make_weights(dims, seed).to(dt), dims, "flat").to(device)
    gen = torch.Generator().manual_seed(seed + 7)
    slots = pad_batch + 2                                           # two slots nobody owns
    B = pad_batch
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dt)
    conv0 = rnd(slots, dims.conv_dim, dims.W - 1)
    ssm0 = (0.3 * torch.randn(slots, dims.HV, dims.V, dims.K, generator=gen)).to(device=device, dtype=st)
    buf = dict(mq=rnd(B, dims.qkvz_dim), mb=rnd(B, 2 * dims.HV), conv=conv0.clone(), ssm=ssm0.clone(),
               idx=torch.tensor([i if i < capture_real else -1 for i in range(B)], dtype=torch.int32,
                                device=device),
               cu=torch.arange(B + 1, dtype=torch.int32, device=device),
               out=torch.zeros(B, dims.hidden, dtype=dt, device=device))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                                   # warm up (compiles, autotunes)
        decode_step(ops, p, buf)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step(ops, p, buf)

    pairs: List[Pair] = []
    previous = None
    for r, n_real in enumerate(real):
        mq, mb = rnd(B, dims.qkvz_dim), rnd(B, 2 * dims.HV)
        idx = torch.tensor([i if i < n_real else -1 for i in range(B)], dtype=torch.int32, device=device)
        # eager reference on the same inputs and the same (un-poisoned) pools
        ref = dict(mq=mq.clone(), mb=mb.clone(), conv=conv0.clone(), ssm=ssm0.clone(), idx=idx.clone(),
                   cu=buf["cu"].clone(), out=torch.zeros_like(buf["out"]))
        decode_step(ops, p, ref)
        # poison: outputs and pools NaN, the real sequences' slots restored
        for key, src in (("mq", mq), ("mb", mb), ("idx", idx)):
            buf[key].copy_(src)
        buf["out"].fill_(float("nan"))
        for key, start in (("conv", conv0), ("ssm", ssm0)):
            buf[key].fill_(float("nan"))
            buf[key][:n_real] = start[:n_real]
        graph.replay()
        torch.cuda.synchronize()
        out = buf["out"].float().cpu()
        pairs.append((f"replay{r}.out[real]", out[:n_real], ref["out"][:n_real].float().cpu(), 0, "graph.replay"))
        pairs.append((f"replay{r}.out[pad]", out[n_real:], torch.zeros_like(out[n_real:]), 0, "graph.replay"))
        for key in ("conv", "ssm"):
            got = buf[key].float().cpu()
            pairs.append((f"replay{r}.{key}[real]", got[:n_real], ref[key][:n_real].float().cpu(), None,
                          "graph.replay"))
            untouched = torch.isnan(got[n_real:]).float()
            pairs.append((f"replay{r}.{key}[untouched]", untouched, torch.ones_like(untouched), None,
                          "graph.replay"))
        if previous is not None:
            k = min(n_real, previous.shape[0])
            stale = (out[:k] == previous[:k]).all(-1).float()
            pairs.append((f"replay{r}.out[not replay{r - 1}'s]", stale, torch.zeros_like(stale), 0, "graph.replay"))
        previous = out[:n_real].clone()
    return pairs


def main(argv=None) -> int:
    from harness.optimized.api import FilledOps
    from harness.optimized.registry import load_backend
    from harness.cases.suite import parse_dims
    ap = argparse.ArgumentParser(prog="python -m harness.tools.cudagraph", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--dims", default="qwen3-next-80b-a3b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    backend = load_backend(args.backend)
    why = why_not(backend, args.device)
    if why:
        print(f"skip: {why}")
        return 0
    pairs = graph_replay_pairs(backend, FilledOps(backend, load_backend("reference")), parse_dims(args.dims),
                               args.dtype, device=args.device)
    dims = parse_dims(args.dims)
    pairs += graph_replay_pairs(backend, FilledOps(backend, load_backend("reference")), dims, args.dtype,
                                device=args.device, capture_real=2)
    bad = [n for n, a, b, _, _ in pairs if not torch.equal(a, b)]
    for n in bad:
        print(f"FAIL {n}")
    print(f"{len(pairs) - len(bad)}/{len(pairs)} graph-replay checks pass")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
