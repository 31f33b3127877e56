"""Does a fatal GPU fault in one process reach the others on the same GPU? Three bystanders
run GEMMs for a few seconds and check them; a fourth stores through a wild pointer (an illegal
memory access). Run it once plainly (time-sliced contexts) and once with an MPS daemon's
CUDA_MPS_PIPE_DIRECTORY set: each process's exit code and last line are printed."""
import subprocess
import sys
import time

BYSTANDER = """
import time, torch
a = torch.randn(2048, 2048, device='cuda', dtype=torch.float64)
ref = (a @ a).sum().item()
n, t = 0, time.time()
try:
    while time.time() - t < 6:
        b = (a @ a).sum().item()
        assert b == ref, (b, ref)
        n += 1
    print('bystander ok', n, 'GEMMs')
except BaseException as e:
    print('bystander failed after', n, 'GEMMs:', repr(e)[:200]); raise SystemExit(1)
"""

FAULTER = """
import torch, triton, triton.language as tl
@triton.jit
def wild(p):
    tl.store(p + (1 << 40), 1.0)
x = torch.zeros(4, device='cuda')
try:
    wild[(1,)](x); torch.cuda.synchronize(); print('faulter: no fault')
except BaseException as e:
    print('faulter got', repr(e)[:200]); raise SystemExit(3)
"""


def main() -> int:
    procs = [subprocess.Popen([sys.executable, "-c", BYSTANDER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(3)]
    time.sleep(2.5)
    procs.append(subprocess.Popen([sys.executable, "-c", FAULTER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["(no output)"]
        print(f"{'faulter' if i == 3 else f'bystander {i}'}: rc {p.returncode}: {last[0][:240]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
