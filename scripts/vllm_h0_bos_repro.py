"""Minimal repro: vLLM 0.33's fused_recurrent_gated_delta_rule without ssm_state_indices
reads sequence n's initial state at row `bos` (its first token's offset) instead of row n.

Docstring: initial_state "[N, HV, V, K] for N input sequences". With cu_seqlens
[0, 1, 4, 6] sequence 2 (bos = 4) reads row 4 of the storage behind a 3-row h0.
Run on a GPU with vLLM importable: python3 scripts/vllm_h0_bos_repro.py
"""
import torch

from harness.reference.delta_rule import recurrent_gated_delta_rule as ref
from vllm.third_party.flash_linear_attention.ops import fused_recurrent_gated_delta_rule

torch.manual_seed(0)
dev, H, HV, K, V = "cuda", 1, 1, 16, 16
cu = torch.tensor([0, 1, 4, 6], dtype=torch.int32, device=dev)
T, N = 6, 3
q, k = (torch.randn(1, T, H, K, device=dev) for _ in range(2))
v = torch.randn(1, T, HV, V, device=dev)
g, beta = -0.1 * torch.rand(1, T, HV, device=dev), torch.rand(1, T, HV, device=dev)
storage = torch.randn(8, HV, V, K, device=dev)          # rows 3.. are not the sequences' states
h0 = storage[:N]
o, _ = fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, inplace_final_state=False,
                                        cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
f64 = lambda t: t.double()
want, _ = ref(f64(q), f64(k), f64(v), f64(g), f64(beta), initial_state=f64(h0), cu_seqlens=cu,
              use_qk_l2norm_in_kernel=True)
bos_rows = storage[cu[:-1].long()]                      # what the kernel reads
as_bos, _ = ref(f64(q), f64(k), f64(v), f64(g), f64(beta), initial_state=f64(bos_rows), cu_seqlens=cu,
                use_qk_l2norm_in_kernel=True)
for n in range(N):
    s = slice(int(cu[n]), int(cu[n + 1]))
    err = (o[0, s].double() - want[0, s]).abs().max().item()
    err_bos = (o[0, s].double() - as_bos[0, s]).abs().max().item()
    print(f"seq {n} bos {int(cu[n])}: max|o - ref(h0[{n}])| = {err:.3g}   max|o - ref(storage[bos])| = {err_bos:.3g}")
