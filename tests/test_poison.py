"""Uninitialised memory is poisoned while a backend runs, so a `torch.empty` leak shows on
every device: fresh pages are zero (large CPU allocations, new GPU memory), which hid an
unwritten PAD row on the H200 while the CPU, handing out recycled memory, caught it."""
import pytest
import torch

from harness.cases.case import Case
from harness.optimized.poison import uninitialized_memory_poisoned
from harness.optimized.reference_backend import ReferenceBackend
from harness.judge.policy import Policy
from harness.run.runner import BackendCache, run_case
from harness.cases.suite import parse_dims

FRESH = 1 << 22     # elements: 16 MiB of fp32, past malloc's mmap threshold (zeroed pages)


def test_empty_is_poisoned_inside_and_restored_after():
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with uninitialized_memory_poisoned():
        assert torch.empty(FRESH).isnan().all()
        assert torch.empty(3, dtype=torch.bfloat16).isnan().all()
        assert (torch.empty(4, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()
        assert torch.ones(2).new_empty(5).isnan().all()
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_restored_when_the_backend_raises():
    with pytest.raises(RuntimeError, match="kernel failed"):
        with uninitialized_memory_poisoned():
            raise RuntimeError("kernel failed")
    assert not torch.are_deterministic_algorithms_enabled()


class FreshPagesPadLeak(ReferenceBackend):
    """Writes only the real rows of an output taken from a large torch.empty: fresh, zeroed
    pages on the CPU, so the PAD rows read 0 by luck unless the harness poisons them."""
    name = "fresh_pages_pad_leak"

    @staticmethod
    def fused_recurrent_gated_delta_rule(*args, **kwargs):
        o, final = ReferenceBackend.fused_recurrent_gated_delta_rule(*args, **kwargs)
        idx = kwargs.get("ssm_state_indices")
        leaked = torch.empty(FRESH + o.numel(), dtype=o.dtype, device=o.device)[-o.numel():].view_as(o)
        real = (idx.reshape(-1) >= 0) if idx is not None else torch.ones(o.shape[1], dtype=torch.bool)
        leaked[:, real.cpu()] = o[:, real.cpu()]
        return leaked, final


def test_unwritten_pad_rows_fail_even_on_zeroed_pages():
    case = Case(level="op", check="fused_recurrent_gated_delta_rule", dims=parse_dims("qwen3.5-27b:shrunk:H=2,K=12,V=20"),
                backend=f"{__name__}:FreshPagesPadLeak", dtype="float32", state_dtype="float32", variant="decode",
                device="cpu")
    rec = run_case(case, Policy(), "test", BackendCache(), diagnose=False)
    assert rec["status"] == "fail", rec
    bad = {m["output"]: m for m in rec["metrics"] if not m["passed"]}
    assert set(bad) == {"o"} and bad["o"]["nan"] > 0, rec["metrics"]
