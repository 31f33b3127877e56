"""Tiny random-weight Qwen3.5 / Qwen3-Next checkpoints (config.json + safetensors, written
with save_pretrained) and a character-level tokenizer, for the model-level tests."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.evals.canary_task import build_tokenizer, save_tokenizer

# H = 2 key heads (an interleaved / flat mix-up shows only with >= 2), r = 2, K != V
GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
           linear_value_head_dim=12, linear_conv_kernel_dim=4)
COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
              intermediate_size=48, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
              layer_types=["linear_attention", "full_attention", "linear_attention"], **GDN)
# every character a test prompt or answer uses (the canary's char-level tokenizer is built from these)
TEXTS = [{"question": "Tom has 6 bags of 7 apples; how many apples? What is 3 plus 4, 12 minus 5?",
          "answer": "6*7=42 (3+4=7, 12-5=7)\n#### 42"}]


def char_tokenizer():
    """A character-level fast tokenizer (one id per character), built locally."""
    return build_tokenizer(TEXTS)


def _config(arch: str, vocab: int, eos: int, pad: int):
    if arch == "qwen3_5":
        from transformers import Qwen3_5TextConfig
        return Qwen3_5TextConfig(vocab_size=vocab, eos_token_id=eos, pad_token_id=pad, **COMMON)
    if arch == "qwen3_next":
        from transformers import Qwen3NextConfig
        return Qwen3NextConfig(vocab_size=vocab, eos_token_id=eos, pad_token_id=pad, num_experts=4,
                               num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                               decoder_sparse_step=1, mlp_only_layers=[], **COMMON)
    if arch == "qwen3_5_moe":
        from transformers import Qwen3_5MoeTextConfig
        dense = {k: v for k, v in COMMON.items() if k != "intermediate_size"}
        return Qwen3_5MoeTextConfig(vocab_size=vocab, eos_token_id=eos, pad_token_id=pad, num_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=16, **dense)
    raise ValueError(arch)


def _spread_gdn_params(model, gen):
    """Model-like gates instead of transformers' init (A_log ~ log U(1, 16), dt_bias 1):
    a range of decays, and output projections large enough that the GDN path matters."""
    for name, m in model.named_modules():
        if name.endswith("linear_attn"):
            with torch.no_grad():
                m.A_log.copy_(torch.empty_like(m.A_log).uniform_(-2.0, 1.0, generator=gen))
                m.dt_bias.copy_(torch.empty_like(m.dt_bias).uniform_(-1.0, 1.0, generator=gen))
                m.norm.weight.copy_(1.0 + 0.2 * torch.randn(m.norm.weight.shape, generator=gen))


def make_model_dir(path: Path, arch: str, seed: int = 0) -> Path:
    """Save a random-weight `arch` model (qwen3_5 | qwen3_next | qwen3_5_moe) and the char tokenizer in `path`."""
    from transformers import AutoModelForCausalLM
    tok = char_tokenizer()
    config = _config(arch, len(tok), tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():    # std 0.02 init gives near-uniform logits: scale up so greedy is decisive
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5)
    _spread_gdn_params(model, gen)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return path
