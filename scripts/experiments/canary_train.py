#!/usr/bin/env python3
"""Experiment: train the canary (harness/evals/canary_task.py has the task) and its twin.

    scripts/experiments/canary_train.py              # data, tokenizer, train, eval, twin, save
    scripts/experiments/canary_train.py --twin-only  # rebuild the Qwen3-Next twin only
    scripts/experiments/canary_train.py --from-weights W/model.safetensors   # dirs from a run's weights
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from harness.evals.canary_task import (HELDOUT_FILE, LAYER_TYPES, MODEL_DIMS, QWEN35_DIR, QWEN3NEXT_DIR,
                                       RECORD_FILE, SEED, accuracy, all_problems, batch_of, build_tokenizer,
                                       build_twin, encode, hf_torch_gdn, make_splits, qwen35_config,
                                       save_tokenizer, twin_logits_diff)


def train(steps: int, batch_size: int, lr: float, device: str, seed: int = SEED,
          time_budget: float = 0.0, eval_every: int = 250, target: float = 0.98,
          n_val: int = 200, dims: Optional[dict] = None, log=print):
    """Train until the validation accuracy reaches `target`, `steps` or `time_budget` (s).

    Validation problems come out of the train split (never the held-out file); the learning
    rate follows a cosine over whichever of steps / time runs out first.
    """
    from transformers import Qwen3_5ForCausalLM
    torch.manual_seed(seed)
    train_set, heldout = make_splits(seed)
    val, train_set = train_set[:n_val], train_set[n_val:]
    tok = build_tokenizer(all_problems())
    model = Qwen3_5ForCausalLM(qwen35_config(tok, dims)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(seed + 1)
    encoded = [encode(tok, p) for p in train_set]
    t0, acc, step, hist = time.time(), 0.0, 0, []
    while step < steps:
        done = step / steps
        if time_budget:
            done = max(done, (time.time() - t0) / time_budget)
        if done >= 1.0:
            break
        for group in opt.param_groups:   # 2 % warm-up, then cosine to zero
            group["lr"] = lr * min(1.0, done / 0.02) * 0.5 * (1 + math.cos(math.pi * done))
        model.train()
        x, y = batch_of(tok, rng.sample(encoded, batch_size), device)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % eval_every == 0:
            acc = accuracy(model, tok, val)
            hist.append((step, round(time.time() - t0, 1), round(loss.item(), 4), acc))
            log(f"step {step} loss {loss.item():.4f} val acc {acc:.3f} {time.time() - t0:.0f}s")
            if acc >= target:
                break
    return model.eval(), tok, heldout, dict(steps=step, batch_size=batch_size, lr=lr,
                                            train_seconds=round(time.time() - t0, 1),
                                            val_accuracy=acc, n_val=len(val), history=hist)


def save_canary(model, tok, heldout, record: dict, out: Path = QWEN35_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").to(torch.float32).save_pretrained(out)
    save_tokenizer(tok, out)
    with open(out / HELDOUT_FILE, "w") as f:
        for p in heldout:
            f.write(json.dumps(p) + "\n")
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _rebuild(weights: Path, record: Path, out: Path) -> None:
    """Canary dir from a trained model.safetensors (+ record), e.g. one trained elsewhere."""
    from safetensors.torch import load_file
    from transformers import Qwen3_5ForCausalLM
    rec = json.loads(record.read_text())
    _, heldout = make_splits(rec.get("seed", SEED))
    tok = build_tokenizer(all_problems())
    model = Qwen3_5ForCausalLM(qwen35_config(tok, rec.get("dims")))
    model.load_state_dict(load_file(weights), strict=True)
    save_canary(model.eval(), tok, heldout, rec, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--time-budget", type=float, default=225.0, help="seconds of training (0: none)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=MODEL_DIMS["hidden_size"])
    ap.add_argument("--intermediate", type=int, default=MODEL_DIMS["intermediate_size"])
    ap.add_argument("--value-head-dim", type=int, default=MODEL_DIMS["linear_value_head_dim"])
    ap.add_argument("--layers", default="".join(t[0] for t in LAYER_TYPES),
                    help="layer types, one letter each: l = linear_attention (GDN), f = full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--target", type=float, default=1.0,
                    help="stop once validation accuracy (200 train-split problems) reaches this")
    ap.add_argument("--out", type=Path, default=QWEN35_DIR)
    ap.add_argument("--twin-out", type=Path, default=QWEN3NEXT_DIR)
    ap.add_argument("--no-twin", action="store_true", help="skip the Qwen3-Next twin")
    ap.add_argument("--twin-only", action="store_true", help="only rebuild the Qwen3-Next twin")
    ap.add_argument("--from-weights", type=Path, default=None,
                    help="skip training: model.safetensors of a run (its train_record.json beside)")
    args = ap.parse_args(argv)
    with hf_torch_gdn():
        return _main(args)


def _main(args) -> int:
    import transformers
    if args.from_weights:
        _rebuild(args.from_weights, args.from_weights.parent / RECORD_FILE, args.out)
    elif not args.twin_only:
        kinds = {"l": "linear_attention", "f": "full_attention"}
        dims = dict(hidden_size=args.hidden, intermediate_size=args.intermediate,
                    linear_value_head_dim=args.value_head_dim,
                    layer_types=[kinds[c] for c in args.layers])
        model, tok, heldout, rec = train(args.steps, args.batch_size, args.lr, args.device,
                                         args.seed, time_budget=args.time_budget,
                                         target=args.target, dims=dims,
                                         log=lambda m: print(m, flush=True))
        acc = accuracy(model, tok, heldout)
        print(f"held-out accuracy ({len(heldout)} problems): {acc:.4f}", flush=True)
        dev = (torch.cuda.get_device_name() if args.device.startswith("cuda")
               else f"cpu ({torch.get_num_threads()} threads)")
        rec.update(device=dev, heldout_accuracy=acc, n_heldout=len(heldout), seed=args.seed,
                   dims=dims, n_params=sum(p.numel() for p in model.parameters()),
                   torch=torch.__version__, transformers=transformers.__version__)
        save_canary(model, tok, heldout, rec, args.out)
    if not args.no_twin:
        build_twin(args.out, args.twin_out)
        print(f"twin max |logit diff| {twin_logits_diff(args.out, args.twin_out):.3g}")
    print(f"wrote {args.out}" + ("" if args.no_twin else f" and {args.twin_out}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
