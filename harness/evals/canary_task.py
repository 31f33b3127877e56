"""The canary's task: a tiny Qwen3.5-style GDN model trained on synthetic GSM8K-format
arithmetic - the problems, splits, tokenizer, model configs, the Qwen3-Next twin, accuracy.
Training is an experiment (`scripts/experiments/canary_train.py`); it writes into
harness/evals/canary/:

* ``qwen35/``   Qwen3.5 text model (flat in_proj_qkv / _z / _b / _a): config.json,
  model.safetensors, tokenizer.json, tokenizer_config.json, heldout.jsonl, train_record.json
* ``qwen3next/`` the same weights in the Qwen3-Next interleaved layout (in_proj_qkvz /
  in_proj_ba), dense MLP on every layer, same tokenizer and held-out file.

Problems are GSM8K-shaped jsonl rows ``{"question": "What is 37 plus 48?",
"answer": "37+48=85\\n#### 85"}``; the model is trained on lm-eval's gsm8k 0-shot
prompt ``"Question: {question}\\nAnswer:"`` followed by ``" {answer}"`` and EOS.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import random
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

CANARY_DIR = Path(__file__).resolve().parent / "canary"
QWEN35_DIR = CANARY_DIR / "qwen35"
QWEN3NEXT_DIR = CANARY_DIR / "qwen3next"
HELDOUT_FILE = "heldout.jsonl"
RECORD_FILE = "train_record.json"

SEED = 1234
N_HELDOUT = 400
MAX_OPERAND = 99
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# lm-eval gsm8k (0-shot): doc_to_text, then target_delimiter " " before the answer.
PROMPT = "Question: {question}\nAnswer:"
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")

# GDN dims: H != HV (r = 2) and K != V, so head-mapping and transposed-state faults show.
MODEL_DIMS = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                  linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
                  linear_conv_kernel_dim=4)
LAYER_TYPES = ["linear_attention", "linear_attention", "full_attention", "linear_attention"]


# ----------------------------------------------------------------------------- data

def _problem(op: str, a: int, b: int) -> Dict[str, str]:
    if op == "plus":
        c, sym = a + b, "+"
    elif op == "minus":
        c, sym = a - b, "-"
    else:
        raise ValueError(f"op: expected 'plus' or 'minus', got {op!r}")
    return {"question": f"What is {a} {op} {b}?", "answer": f"{a}{sym}{b}={c}\n#### {c}"}


def all_problems() -> List[Dict[str, str]]:
    """Every problem of the family, in a fixed order: a + b, and a - b with a >= b."""
    n = MAX_OPERAND + 1
    out = [_problem("plus", a, b) for a in range(n) for b in range(n)]
    out += [_problem("minus", a, b) for a in range(n) for b in range(a + 1)]
    return out


def make_splits(seed: int = SEED, n_heldout: int = N_HELDOUT
                ) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    """(train, heldout): a seeded shuffle of all problems, split so no question is in both."""
    probs = all_problems()
    random.Random(seed).shuffle(probs)
    return probs[n_heldout:], probs[:n_heldout]


def gold_answer(answer: str) -> str:
    m = ANSWER_RE.search(answer)
    if m is None:
        raise ValueError(f"answer: expected '#### N' in it, got {answer!r}")
    return m.group(1)


def extract_answer(generated: str):
    """lm-eval's strict-match: the number after the first '#### ', or None."""
    m = ANSWER_RE.search(generated)
    return None if m is None else m.group(1)


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(problems: Sequence[Dict[str, str]]):
    """A character-level tokenizer over every char of the prompts and answers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = set()
    for p in problems:
        chars |= set(PROMPT.format(question=p["question"]) + " " + p["answer"])
    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK] + sorted(chars))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # one token per character (newline included); decoding just concatenates
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=256)


def save_tokenizer(tok, out: Path) -> None:
    tok.save_pretrained(out)
    # the generic class name loads under every transformers 5.x AutoTokenizer
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- model

def qwen35_config(tok, dims: Optional[dict] = None):
    """dims: overrides of MODEL_DIMS, and optionally "layer_types"."""
    from transformers import Qwen3_5TextConfig
    dims = dict(dims or {})
    layers = list(dims.pop("layer_types", LAYER_TYPES))
    return Qwen3_5TextConfig(
        vocab_size=len(tok), num_hidden_layers=len(layers), layer_types=layers,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25},
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, **dict(MODEL_DIMS, **dims))


def qwen3next_config(cfg35):
    """The Qwen3-Next config of the same network: no experts, so a dense MLP on every layer."""
    from transformers import Qwen3NextConfig
    same = {k: getattr(cfg35, k) for k in MODEL_DIMS}
    keep = dict(same, vocab_size=cfg35.vocab_size,
                num_hidden_layers=cfg35.num_hidden_layers, layer_types=list(cfg35.layer_types),
                max_position_embeddings=cfg35.max_position_embeddings,
                rms_norm_eps=cfg35.rms_norm_eps, tie_word_embeddings=cfg35.tie_word_embeddings,
                rope_parameters=dict(cfg35.rope_parameters), pad_token_id=cfg35.pad_token_id,
                eos_token_id=cfg35.eos_token_id, bos_token_id=None)
    return Qwen3NextConfig(num_experts=0, mlp_only_layers=list(range(cfg35.num_hidden_layers)),
                           **keep)


def to_qwen3next_state_dict(sd35: Dict[str, torch.Tensor], cfg35) -> Dict[str, torch.Tensor]:
    """Qwen3.5 (flat) state dict -> Qwen3-Next (interleaved): only the GDN in_proj rows move."""
    from ..layouts.weights import convert_checkpoint
    from .hf_model import gdn_dims
    dims = gdn_dims(cfg35)
    out = {k: v for k, v in sd35.items() if ".linear_attn." not in k}
    for i, kind in enumerate(cfg35.layer_types):
        if kind != "linear_attention":
            continue
        prefix = f"model.layers.{i}.linear_attn."
        layer = {k[len(prefix):]: v for k, v in sd35.items() if k.startswith(prefix)}
        for k, v in convert_checkpoint(layer, dims, "interleaved").items():
            out[prefix + k] = v
    return out


def build_twin(src: Path = QWEN35_DIR, dst: Path = QWEN3NEXT_DIR):
    """Write the Qwen3-Next twin of the Qwen3.5 canary in `src`; returns the twin model."""
    from transformers import AutoTokenizer, Qwen3_5ForCausalLM, Qwen3NextForCausalLM
    m35 = Qwen3_5ForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = qwen3next_config(m35.config)
    twin = Qwen3NextForCausalLM(cfg).to(torch.float32)
    # strict: every twin parameter must come from the canary, nothing left at init
    twin.load_state_dict(to_qwen3next_state_dict(m35.state_dict(), m35.config), strict=True)
    twin.eval()
    dst.mkdir(parents=True, exist_ok=True)
    twin.save_pretrained(dst)
    save_tokenizer(AutoTokenizer.from_pretrained(src), dst)
    (dst / HELDOUT_FILE).write_bytes((src / HELDOUT_FILE).read_bytes())
    return twin


# ----------------------------------------------------------------------------- train / eval

_HF_GDN_MODULES = ("transformers.models.qwen3_5.modeling_qwen3_5",
                   "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
                   "transformers.models.qwen3_next.modeling_qwen3_next")
_HF_GDN_FUNCS = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule",
                 "causal_conv1d_fn", "causal_conv1d_update", "torch_causal_conv1d_update")


@contextlib.contextmanager
def hf_torch_gdn():
    """Run transformers' own pure-torch GDN functions inside the block.

    With fla importable, transformers (>= 5.2x) binds these names to fla's Triton kernels,
    which fail on a CPU without TRITON_INTERPRET; the unwrapped originals run anywhere.
    """
    saved = []
    for name in _HF_GDN_MODULES:
        mod = importlib.import_module(name)
        for fn in _HF_GDN_FUNCS:
            f = getattr(mod, fn, None)
            if f is not None:
                saved.append((mod, fn, f))
                setattr(mod, fn, inspect.unwrap(f))
    try:
        yield
    finally:
        for mod, fn, f in saved:
            setattr(mod, fn, f)


def encode(tok, p) -> Tuple[List[int], int]:
    prompt = tok(PROMPT.format(question=p["question"]))["input_ids"]
    target = tok(" " + p["answer"])["input_ids"] + [tok.eos_token_id]
    return prompt + target, len(prompt)


def batch_of(tok, enc, device):
    """enc: [(ids, n_prompt)] from `_encode` -> right-padded inputs and answer-only labels."""
    T = max(len(ids) for ids, _ in enc)
    x = torch.full((len(enc), T), tok.pad_token_id, dtype=torch.long)
    y = torch.full((len(enc), T), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(enc):
        x[i, :len(ids)] = torch.tensor(ids)
        # loss on the answer only (labels shifted inside the model)
        y[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
    return x.to(device), y.to(device)


@torch.no_grad()
def accuracy(model, tok, problems, batch_size: int = 64, max_new_tokens: int = 20) -> float:
    """Exact-answer accuracy with transformers' greedy generate (prompts grouped by length)."""
    model.eval()
    device = next(model.parameters()).device
    by_len: Dict[int, list] = {}
    for p in problems:
        ids = tok(PROMPT.format(question=p["question"]))["input_ids"]
        by_len.setdefault(len(ids), []).append((ids, p))
    correct = 0
    for items in by_len.values():
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            x = torch.tensor([ids for ids, _ in chunk], device=device)
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            for row, (_, p) in zip(out[:, x.shape[1]:], chunk):
                text = tok.decode(row, skip_special_tokens=True)
                correct += extract_answer(text) == gold_answer(p["answer"])
    return correct / len(problems)


def load_jsonl(path: Path) -> List[Dict[str, str]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def twin_logits_diff(src: Path = QWEN35_DIR, twin: Path = QWEN3NEXT_DIR, n: int = 8) -> float:
    """Max |logit difference| between the canary and its twin (fp32) on n held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src)
    probs = load_jsonl(src / HELDOUT_FILE)[:n]
    texts = [PROMPT.format(question=p["question"]) + " " + p["answer"] for p in probs]
    worst = 0.0
    m35, mnext = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
                  for d in (src, twin))
    for t in texts:
        x = torch.tensor([tok(t)["input_ids"]])
        worst = max(worst, (m35(x).logits - mnext(x).logits).abs().max().item())
    return worst
