"""The committed canary (harness/evals/canary/): a tiny Qwen3.5 GDN model trained on synthetic
GSM8K-format arithmetic, and its Qwen3-Next twin (same weights, interleaved layout)."""
from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from harness.evals import canary_task as ct
from harness.evals.hf_model import gdn_dims
from harness.layouts.weights import convert_checkpoint

# Held-out problems answered in the accuracy tests: enough for >= 0.9 to mean something,
# few enough for seconds on one CPU thread.
N_SAMPLE = 48


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # a 0.2M-parameter model: extra threads only contend (10x slower on a busy 2-core box)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ct.QWEN35_DIR)
    with ct.hf_torch_gdn():
        m35, twin = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
                     for d in (ct.QWEN35_DIR, ct.QWEN3NEXT_DIR))
    return tok, m35, twin


@pytest.fixture(scope="module")
def sample():
    return ct.load_jsonl(ct.QWEN35_DIR / ct.HELDOUT_FILE)[:N_SAMPLE]


def test_generator_is_deterministic_and_splits_are_disjoint():
    train, held = ct.make_splits()
    assert (train, held) == ct.make_splits()
    assert len(held) == ct.N_HELDOUT and len(train) + len(held) == len(ct.all_problems())
    assert not {p["question"] for p in train} & {p["question"] for p in held}
    # the committed held-out file is the generator's, in both model dirs
    for d in (ct.QWEN35_DIR, ct.QWEN3NEXT_DIR):
        assert ct.load_jsonl(d / ct.HELDOUT_FILE) == held
    assert ct.make_splits(seed=ct.SEED + 1)[1] != held


def test_problems_are_gsm8k_format_and_correct():
    for p in ct.all_problems()[::97]:
        a, op, b = re.fullmatch(r"What is (\d+) (plus|minus) (\d+)\?", p["question"]).groups()
        want = int(a) + int(b) if op == "plus" else int(a) - int(b)
        assert want >= 0 and ct.gold_answer(p["answer"]) == str(want)
        assert p["answer"].endswith(f"\n#### {want}")
        prompt = ct.PROMPT.format(question=p["question"])
        assert len(prompt) <= 38 and len(" " + p["answer"]) + 1 <= 20   # answer + EOS


def test_tokenizer_loads_offline_one_token_per_char(models, sample):
    tok = models[0]
    text = ct.PROMPT.format(question=sample[0]["question"]) + " " + sample[0]["answer"]
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.eos_token == ct.EOS and tok.pad_token == ct.PAD and tok.unk_token_id not in ids


def test_canary_files_and_record():
    rec = json.loads((ct.QWEN35_DIR / ct.RECORD_FILE).read_text())
    assert rec["heldout_accuracy"] >= 0.9 and rec["n_heldout"] == ct.N_HELDOUT
    for d in (ct.QWEN35_DIR, ct.QWEN3NEXT_DIR):
        assert (d / "model.safetensors").stat().st_size < 5 * 2**20
    cfg = json.loads((ct.QWEN35_DIR / "config.json").read_text())
    assert cfg["linear_num_key_heads"] != cfg["linear_num_value_heads"]
    assert cfg["linear_key_head_dim"] != cfg["linear_value_head_dim"]
    assert {"linear_attention", "full_attention"} <= set(cfg["layer_types"])


def test_canary_reaches_accuracy_with_transformers_generate(models, sample):
    tok, m35, _ = models
    with ct.hf_torch_gdn():
        acc = ct.accuracy(m35, tok, sample)
    assert acc >= 0.9, f"canary held-out accuracy {acc:.3f} on {len(sample)} problems"


def test_twin_holds_the_same_weights_interleaved(models):
    _, m35, twin = models
    assert twin.config.model_type == "qwen3_next" and twin.config.num_experts == 0
    assert all(type(layer.mlp).__name__ == "Qwen3NextMLP" for layer in twin.model.layers)
    sd35, sdn = m35.state_dict(), twin.state_dict()
    assert not any("in_proj_qkv." in k for k in sdn) and any("in_proj_qkvz." in k for k in sdn)
    dims = gdn_dims(m35.config)
    for i, kind in enumerate(m35.config.layer_types):
        if kind != "linear_attention":
            continue
        pre = f"model.layers.{i}.linear_attn."
        back = convert_checkpoint({k[len(pre):]: v for k, v in sdn.items() if k.startswith(pre)},
                                  dims, "flat")
        for k, v in back.items():
            assert torch.equal(v, sd35[pre + k]), pre + k
    assert all(torch.equal(v, sd35[k]) for k, v in sdn.items() if ".linear_attn." not in k)


def test_twin_gives_the_same_logits(models, sample):
    tok, m35, twin = models
    texts = [ct.PROMPT.format(question=p["question"]) + " " + p["answer"] for p in sample[:8]]
    with ct.hf_torch_gdn(), torch.no_grad():
        for t in texts:
            x = torch.tensor([tok(t)["input_ids"]])
            a, b = m35(x).logits, twin(x).logits
            # measured 0 on CPU: only the in_proj GEMMs differ (fused vs split rows)
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_interleaved_reading_of_flat_weights_breaks_the_canary(models, sample):
    """The incident class the canary exists for: flat (Qwen3.5) projections unpacked as if
    interleaved. Here the twin's model gets the flat-packed in_proj rows."""
    tok, m35, twin = models
    from transformers import Qwen3NextForCausalLM
    broken = Qwen3NextForCausalLM(twin.config).eval()
    sd = twin.state_dict()
    sd35 = m35.state_dict()
    for k in list(sd):
        if k.endswith("in_proj_qkvz.weight"):
            pre = k[:-len("in_proj_qkvz.weight")]
            sd[k] = torch.cat([sd35[pre + "in_proj_qkv.weight"], sd35[pre + "in_proj_z.weight"]])
            sd[pre + "in_proj_ba.weight"] = torch.cat([sd35[pre + "in_proj_b.weight"],
                                                       sd35[pre + "in_proj_a.weight"]])
    broken.load_state_dict(sd, strict=True)
    with ct.hf_torch_gdn():
        acc = ct.accuracy(broken, tok, sample)
    assert acc < 0.1, f"misread layout still answers {acc:.3f}"
