"""Where the tests run Triton kernels: the GPU when there is one, else the CPU under
TRITON_INTERPRET=1. Import this before anything imports triton: the interpreter must be on
from triton's first import, and a process without it runs Triton on GPU tensors only."""
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if CUDA else "cpu"
