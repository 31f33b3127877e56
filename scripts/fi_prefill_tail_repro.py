"""Minimal repro: does FlashInfer's GDN prefill let one sequence's non-finite rows reach
another sequence's outputs and final state?

Seen 2026-12-06 on an H100 (FlashInfer 0.7.2.post1 SM90 prefill through vLLM 0.33's
wrapper, docs/findings.md): with a PAD row holding ~1e18 at row 71 of a varlen batch
[70, 1, PAD, 1, 5], rows 64-70 - the 70-token sequence's last chunk and the 1-token
sequence after it, whose 64-row windows contain row 71 - came out NaN. Here the batch is
[70, 1, 1, 5] with the third sequence poisoned (NaN, or 1e18 in v), called directly.
Run on a GPU with FlashInfer importable: python3 scripts/fi_prefill_tail_repro.py
"""
import math

import torch

from harness.reference.delta_rule import chunk_gated_delta_rule as ref

LENS, POISONED = [70, 1, 1, 5], 2


def contaminated_rows(fi_chunk, device, poison: str, HV: int = 2, D: int = 128, dtype=torch.bfloat16):
    """Rows outside the poisoned sequence that differ from the fp64 reference by more than
    bf16 noise (NaN included), and the sequences whose final state does."""
    torch.manual_seed(0)
    cu = [0]
    for n in LENS:
        cu.append(cu[-1] + n)
    T, N = cu[-1], len(LENS)
    q, k, v = (torch.randn(T, HV, D, device=device).to(dtype) for _ in range(3))
    alpha = torch.exp(-0.1 * torch.rand(T, HV, device=device))          # FlashInfer's gate: the decay
    beta = torch.rand(T, HV, device=device)
    h0 = torch.randn(N, HV, D, D, device=device) * 0.1
    bad = slice(cu[POISONED], cu[POISONED + 1])
    if poison == "nan":
        for t in (q, k, v):
            t[bad] = float("nan")
    else:
        v[bad] = 1e18
    o, final = fi_chunk(q, k, v, g=alpha, beta=beta, initial_state=h0.clone(), output_final_state=True,
                        cu_seqlens=torch.tensor(cu, dtype=torch.int64, device=device), use_qk_l2norm_in_kernel=True)
    f64 = lambda t: t.detach().double().cpu()
    want, want_final = ref(f64(q)[None], f64(k)[None], f64(v)[None], torch.log(f64(alpha))[None], f64(beta)[None],
                           initial_state=f64(h0), cu_seqlens=torch.tensor(cu), use_qk_l2norm_in_kernel=True)
    err = (f64(o) - want[0]).abs().amax(dim=(1, 2)).nan_to_num(math.inf)
    rows = [t for t in range(T) if not bad.start <= t < bad.stop and err[t] > 0.1]
    ferr = (f64(final) - want_final).abs().amax(dim=(1, 2, 3)).nan_to_num(math.inf)
    states = [n for n in range(N) if n != POISONED and ferr[n] > 0.1]
    return rows, states


if __name__ == "__main__":
    from flashinfer.gdn_prefill import chunk_gated_delta_rule
    import flashinfer
    print("flashinfer", flashinfer.__version__, torch.cuda.get_device_name())
    for poison in ("nan", "1e18"):
        rows, states = contaminated_rows(chunk_gated_delta_rule, "cuda", poison)
        print(f"sequence {POISONED} poisoned with {poison}: rows of other sequences off {rows or 'none'}; "
              f"final states off {states or 'none'}")
