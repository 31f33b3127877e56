"""The model integration: transformers Qwen3.5 / Qwen3-Next checkpoints (tiny, random weights,
saved with save_pretrained) with their GDN layers routed through harness backends."""
from __future__ import annotations

import pytest
import torch

from harness.errors import ConfigError, InputError
from tests.tiny_gdn_models import make_model_dir

pytest.importorskip("transformers")
from harness.evals.canary_task import hf_torch_gdn
from harness.evals.hf_model import HarnessGDN, gdn_modules, load_model

ARCHS = ("qwen3_5", "qwen3_next")
# fp32 logits, ours vs transformers: both chunk the prefill delta rule (different forms:
# transformers' WY/triangular solve, ours the reference chunk) and sum in different orders.
# Measured max |diff| / max |logit| <= 2.7e-6 on these models; the bound leaves ~7x margin.
REL_LOGITS = 2e-5


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_gdn")
    return {a: make_model_dir(root / a, a, seed=1) for a in ARCHS}


@pytest.fixture
def hf_torch():
    """transformers' own torch GDN functions (not fla's kernels, bound when fla is installed)."""
    with hf_torch_gdn():
        yield


def _prompts(vocab: int):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (37, 9, 1)]


def _close(ours, theirs, what):
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= REL_LOGITS * scale, f"{what}: max |diff| {err:.3g} > {REL_LOGITS} * max|logit| {scale:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_backend_gives_transformers_logits(arch, model_dirs, hf_torch):
    """Prefill (a left-padded batch) and every decode step of the reference backend == transformers'
    own model run statelessly over the whole sequence (fp32)."""
    torch.manual_seed(0)
    hm = load_model(model_dirs[arch], backend=None)
    assert hm.layout == ("flat" if arch == "qwen3_5" else "interleaved")
    prompts = _prompts(hm.config.vocab_size)
    steps = 6
    hm.set_backend("reference")
    prefill = hm.logits(prompts)
    scores = []
    gen = hm.generate(prompts, steps, scores=scores)
    hm.set_backend(None)
    for b, p in enumerate(prompts):
        with torch.no_grad():
            theirs = hm.hf(input_ids=torch.tensor([p + gen[b]])).logits[0].float()
        _close(prefill[b], theirs[:len(p)], f"prefill row {b}")
        ours = torch.stack([s[b] for s in scores])
        _close(ours, theirs[len(p) - 1:len(p) - 1 + steps], f"decode row {b}")
        assert gen[b] == theirs[len(p) - 1:len(p) - 1 + steps].argmax(-1).tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_come_from_the_checkpoint_layout(arch, model_dirs):
    """Every GDN layer is swapped, and the packed projection is the checkpoint's in its layout."""
    hm = load_model(model_dirs[arch], backend="reference")
    assert not gdn_modules(hm.hf) and len(hm.original) == 2     # no transformers GDN layer left
    for name, orig in hm.original.items():
        m = hm.hf.get_submodule(name)
        assert isinstance(m, HarnessGDN)
        p = m.ranks[0]
        if arch == "qwen3_next":
            assert torch.equal(p.w_qkvz, orig.in_proj_qkvz.weight) and torch.equal(p.w_ba, orig.in_proj_ba.weight)
        else:
            assert torch.equal(p.w_qkvz, torch.cat([orig.in_proj_qkv.weight, orig.in_proj_z.weight]))
            assert torch.equal(p.w_ba, torch.cat([orig.in_proj_b.weight, orig.in_proj_a.weight]))


def test_tp2_shards_sum_to_tp1(model_dirs):
    """Each GDN layer as 2 TP shards (partial out_proj outputs summed) gives the TP-1 logits."""
    one = load_model(model_dirs["qwen3_5"], backend="reference")
    two = load_model(model_dirs["qwen3_5"], backend="reference", tp=2)
    prompts = _prompts(one.config.vocab_size)
    for a, b in zip(one.logits(prompts), two.logits(prompts)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())


def test_bad_inputs_are_named(model_dirs, tmp_path):
    with pytest.raises(ConfigError, match="--model"):
        load_model(tmp_path)
    hm = load_model(model_dirs["qwen3_5"], backend="reference")
    with pytest.raises(InputError, match="token ids"):
        hm.logits([[5, 6], []])
    with pytest.raises(ConfigError, match="decode_path"):
        load_model(model_dirs["qwen3_5"], backend="harness.faults.catalogue:QkHeadModH", decode_path="nope")


def test_lm_eval_loglikelihood_and_generate_until(model_dirs, hf_torch):
    """The lm-eval class: loglikelihood from our logits == from transformers' own; generate_until
    cuts at the stop string and records the generated tokens."""
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from harness.evals.lm_eval_model import GDNHarnessLM
    d = model_dirs["qwen3_5"]
    tok = AutoTokenizer.from_pretrained(d)
    hm = load_model(d, backend=None)
    lm = GDNHarnessLM(model=hm, tokenizer=tok, batch_size=2)
    reqs = [SimpleNamespace(args=("Question: 2+2?\nAnswer:", " 4")),
            SimpleNamespace(args=("Q: 7*6 ", "= 42"))]
    want = []
    for ctx, cont in (r.args for r in reqs):
        ids = tok.encode(ctx + cont)
        n = len(tok.encode(cont if not ctx.endswith(" ") else " " + cont))
        with torch.no_grad():
            logp = torch.log_softmax(hm.hf(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        want.append(float(logp[-n:].gather(-1, torch.tensor(ids[-n:])[:, None]).sum()))
    hm.set_backend("reference")
    got = lm.loglikelihood(reqs)
    assert [g for g, _ in got] == pytest.approx(want, rel=1e-5)
    ctx = "Question: 1+1?\nAnswer:"
    text = lm.generate_until([SimpleNamespace(args=(ctx, {"until": ["Question:"], "max_gen_toks": 5}))])[0]
    toks = lm.generations[ctx]["tokens"]
    assert 1 <= len(toks) <= 5 and text == tok.decode(toks, skip_special_tokens=True).split("Question:")[0]


def test_qwen35_vision_language_checkpoint(tmp_path, hf_torch):
    """Qwen3.5 releases are vision-language checkpoints (model_type qwen3_5, weights under
    model.language_model.*): they load as the causal LM, and the reference backend gives the
    logits of the full VL model on text."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from harness.evals.canary_task import save_tokenizer
    from tests.tiny_gdn_models import COMMON, char_tokenizer
    tok = char_tokenizer()
    cfg = Qwen3_5Config(text_config=dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, **COMMON),
                        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                                           out_hidden_size=32, patch_size=4, temporal_patch_size=2,
                                           spatial_merge_size=2))
    torch.manual_seed(0)
    vl = Qwen3_5ForConditionalGeneration(cfg).eval()
    vl.save_pretrained(tmp_path)
    save_tokenizer(tok, tmp_path)
    hm = load_model(tmp_path, backend="reference")
    assert hm.layout == "flat" and len(hm.original) == 2
    ids = _prompts(len(tok))[0]
    with torch.no_grad():
        theirs = vl(input_ids=torch.tensor([ids])).logits[0]
    _close(hm.logits([ids])[0], theirs, "VL checkpoint")


def test_qwen35_moe_reference_gives_transformers_logits(tmp_path, hf_torch):
    """Qwen3.5 MoE (flat GDN, MoE MLP): prefill and decode logits == transformers' (fp32)."""
    hm = load_model(make_model_dir(tmp_path, "qwen3_5_moe", seed=1), backend="reference")
    assert hm.layout == "flat" and type(hm.hf).__name__ == "Qwen3_5MoeForCausalLM"
    p = _prompts(hm.config.vocab_size)[0]
    scores = []
    gen = hm.generate([p], 4, scores=scores)[0]
    hm.set_backend(None)
    with torch.no_grad():
        theirs = hm.hf(input_ids=torch.tensor([p + gen])).logits[0].float()
    _close(torch.stack([s[0] for s in scores]), theirs[len(p) - 1:len(p) + 3], "moe decode")
