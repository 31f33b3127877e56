"""The fp64 oracle on a GPU agrees with the CPU run (skipped where no CUDA device is present)."""
import pytest
import torch

from harness.config import get_preset
from harness.judge.policy import Policy
from harness.cases.case import Case
from tests.test_invariants import assert_check

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_oracle_matches_cpu():
    assert_check(Case("self", "device_agreement", get_preset("qwen3-next-80b-a3b").shrink(), device="cuda"))
    assert Policy().lookup("self.device_agreement", "float64").kind == "rel_rms"
