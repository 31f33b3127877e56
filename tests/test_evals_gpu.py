"""The model integration on CUDA (skipped without a GPU): reference == transformers' logits, and
triton generates the reference's tokens, for tiny random checkpoints of both architectures."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_evals_model import ARCHS, REL_LOGITS, _prompts, hf_torch  # noqa: F401 - hf_torch: a fixture, used by name
from tests.tiny_gdn_models import make_model_dir

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_gdn_gpu")
    return {a: make_model_dir(root / a, a, seed=1) for a in ARCHS}


@pytest.fixture
def no_tf32(monkeypatch):
    # transformers' conv1d goes through cuDNN, which uses TF32 for fp32 by default
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_logits_equal_transformers_on_cuda(arch, model_dirs, hf_torch, no_tf32):  # noqa: F811 - the fixture imported above
    from harness.evals.hf_model import load_model
    hm = load_model(model_dirs[arch], backend=None, device="cuda")
    prompts = _prompts(hm.config.vocab_size)
    hm.set_backend("reference")
    scores = []
    gen = hm.generate(prompts, 6, scores=scores)
    hm.set_backend(None)
    for b, p in enumerate(prompts):
        with torch.no_grad():
            theirs = hm.hf(input_ids=torch.tensor([p + gen[b]], device="cuda")).logits[0].float()
        ours = torch.stack([s[b] for s in scores])
        ref = theirs[len(p) - 1:len(p) + 5]
        err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
        assert err <= REL_LOGITS * scale, f"row {b}: max |diff| {err:.3g} vs {REL_LOGITS} * {scale:.3g}"
        assert gen[b] == ref.argmax(-1).tolist()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_generates_reference_tokens_on_cuda(arch, dtype, model_dirs, no_tf32):
    """fp32: the same greedy tokens on every prompt (a batch with left padding); bf16: runs
    and stays finite (token agreement is not required there)."""
    from harness.evals.hf_model import load_model
    hm = load_model(model_dirs[arch], backend="reference", device="cuda", dtype=dtype)
    prompts = _prompts(hm.config.vocab_size)
    ref_scores, tri_scores = [], []
    ref = hm.generate(prompts, 8, scores=ref_scores)
    hm.set_backend("triton")
    tri = hm.generate(prompts, 8, scores=tri_scores)
    assert all(torch.isfinite(s).all() for s in tri_scores)
    if dtype == "float32":
        assert tri == ref


def test_gsm8k_command_on_cuda(model_dirs, tmp_path, no_tf32):
    pytest.importorskip("lm_eval")
    from harness.cli import main
    data = tmp_path / "data"
    data.mkdir()
    rows = [("What is 3 plus 4?", "3+4=7\n#### 7"), ("What is 12 minus 5?", "12-5=7\n#### 7")]
    (data / "test.jsonl").write_text("".join(json.dumps(dict(question=q, answer=a)) + "\n" for q, a in rows))
    code = main(["gsm8k", "--model", str(model_dirs["qwen3_5"]), "--data", str(data), "--backends",
                 "reference,triton", "--num-fewshot", "0", "--max-gen-toks", "8", "--device", "cuda",
                 "--dtype", "float32", "--report-dir", str(tmp_path / "rep")])
    rep = json.loads((tmp_path / "rep" / "gsm8k.json").read_text())
    assert code == 0 and len(rep["questions"]) == 2
    assert all(r["tokens_agree"] for r in rep["questions"]), [r["divergence"] for r in rep["questions"]]
