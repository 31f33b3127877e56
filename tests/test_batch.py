"""The batch seam (harness.batch): a step's plan as vLLM-style metadata tensors (`CoreBatch`),
which is what a backend's `gdn_core` receives (docs/backends.md)."""
import pytest
import torch

from harness.batch import PAD_SLOT_ID, CoreBatch
from harness.cases.case import Case
from harness.cases.scenario import MIXES, mix_scenario
from harness.config import get_preset
from harness.judge.policy import Policy
from harness.layouts.projection import qkv_to_mixed
from harness.optimized.api import CoreBatch as ApiCoreBatch
from harness.optimized.compose import core_step
from harness.optimized.reference_backend import ReferenceBackend
from harness.run.runner import BackendCache, run_case

DIMS = get_preset("qwen3-next-80b-a3b").shrink()


def test_api_names_the_same_class():
    assert ApiCoreBatch is CoreBatch


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_plan_round_trips_through_the_tensors(mix):
    sc = mix_scenario(mix, DIMS)
    for step in sc.plan():
        batch = CoreBatch.from_plan(step, sc.num_spec)
        n = len(step)
        assert batch.query_start_loc.tolist() == [0] + [e.eos for e in step]
        assert batch.state_indices.shape == (n, sc.num_spec + 1) and batch.state_indices.dtype == torch.int32
        assert batch.has_initial_state.dtype == torch.bool and batch.num_accepted_tokens.shape == (n,)
        for e, back in zip(step, batch.entries()):
            assert (back.kind, back.bos, back.eos, back.conv_slot, back.has_initial_state, back.num_accepted) == \
                (e.kind, e.bos, e.eos, e.conv_slot, e.has_initial_state, e.num_accepted)
            assert back.spec_read == e.spec_read
            assert back.ssm_slots == (e.ssm_slots if e.spec_read else [e.conv_slot])
        non_spec = [i for i, e in enumerate(step) if not e.spec_read]
        assert all(batch.state_indices[i, 1:].eq(PAD_SLOT_ID).all() for i in non_spec)


class CoreOnly(ReferenceBackend):
    """A fused-core backend: the reference's ops behind `gdn_core`, recording what it got."""
    name = "core_only"
    got = []

    def gdn_core(self, mixed_qkvz, mixed_ba, p, batch, conv_state, ssm_state, norm):
        type(self).got.append(batch)
        q, k, v, z, b, a = self.unpack_qkvz_ba(mixed_qkvz, mixed_ba, p.local, p.layout)
        return core_step(self, p, qkv_to_mixed(q, k, v), a, b, batch.entries(), conv_state, ssm_state,
                         self.ssm_state_layout, "recurrent", mixed_qkvz.shape[0], mixed_qkvz.device)


@pytest.mark.parametrize("mix", ["decode_only", "spec_only_3", "mixed"])
def test_gdn_core_receives_a_core_batch(mix):
    CoreOnly.got.clear()
    case = Case(level="layer", check=mix, dims=DIMS, backend="tests.test_batch:CoreOnly", layout="flat", tp=1,
                dtype="float32", state_dtype="float32", variant="recurrent.dim_first.sharded", device="cpu")
    rec = run_case(case, Policy(), "test", BackendCache(), diagnose=False)
    assert rec["status"] == "pass", rec.get("error") or [m for m in rec["metrics"] if not m["passed"]]
    assert CoreOnly.got and all(isinstance(b, CoreBatch) for b in CoreOnly.got)
    assert any(k == "spec" for b in CoreOnly.got for k in b.kinds) == (mix != "decode_only")


def test_layer_comparisons_carry_kind_and_step():
    """What an output is travels as fields (kind, step), not in its name."""
    from harness.cases.layercheck import run_layer_case
    be = ReferenceBackend()
    pairs = run_layer_case(be, be, DIMS, "mixed", "flat", 1, "float32", "float32", 0, "cpu")
    kinds = {c.kind for c in pairs}
    assert {"out", "state", "untouched", "pad_rows"} <= kinds, kinds
    assert all(c.step is not None for c in pairs if c.kind in ("out", "pad_rows"))
    assert all(c.step is None for c in pairs if c.kind in ("state", "untouched"))
    with pytest.raises(ValueError):
        type(pairs[0])("x", None, None, None, "layer.out", kind="outputs")
