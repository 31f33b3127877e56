"""``gdn-harness gsm8k``: a GSM8K spot check of a model with its GDN layers on each backend.

Offline: the data is local jsonl (``../shared/data/gsm8k`` from the repo root, or --data),
the task is lm-eval's gsm8k (prompt, 5-shot from train, strict-match and flexible-extract
filters) on a json dataset, the model a local directory. Per backend: accuracy (both
filters) with a Wilson 95 % lower bound. The gate fails a backend that falls more than
--tolerance below the baseline (``reference`` when listed, else the first backend) or
below --threshold. The report (gsm8k.json + summary.md) diffs every question across
backends: answers, agreement, first divergent generated token.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError, HarnessError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k"
CANARY_LIMIT = 12          # reference + triton (interpreted) on one CPU thread: ~75 s measured, < 2 min
CANARY_THRESHOLD = 0.9
CANARY_MAX_GEN = 24        # its answers are <= 17 tokens + EOS; a broken model stops here
METRICS = {"strict": "strict-match", "flexible": "flexible-extract"}
Z95 = 1.959964

# lm-eval's gsm8k task (v3.0) with the dataset read from local jsonl files.
TASK = dict(
    task="gsm8k_offline", output_type="generate_until", dataset_path="json", training_split="train",
    fewshot_split="train", test_split="test", doc_to_text="Question: {{question}}\nAnswer:",
    doc_to_target="{{answer}}",
    metric_list=[dict(metric="exact_match", aggregation="mean", higher_is_better=True, ignore_case=True,
                      ignore_punctuation=False, regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"])],
    generation_kwargs=dict(until=["Question:", "</s>", "<|im_end|>"], do_sample=False, temperature=0.0),
    repeats=1, num_fewshot=5,
    filter_list=[dict(name="strict-match", filter=[dict(function="regex", regex_pattern="#### (\\-?[0-9\\.\\,]+)"),
                                                   dict(function="take_first")]),
                 dict(name="flexible-extract", filter=[dict(function="regex", group_select=-1,
                                                            regex_pattern="(-?[$0-9.,]{2,})|(-?[0-9]+)"),
                                                       dict(function="take_first")])],
    metadata=dict(version=3.0))


def wilson_lower(k: int, n: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def data_files(data: Path, num_fewshot: int) -> Dict[str, str]:
    """{"test": ..., "train": ...}: a folder with test.jsonl (+ train.jsonl), or one jsonl file (test)."""
    data = Path(data)
    if data.is_file():
        files = {"test": data}
    elif data.is_dir():
        files = {s: data / f"{s}.jsonl" for s in ("test", "train") if (data / f"{s}.jsonl").is_file()}
    else:
        raise ConfigError("--data", f"{data} does not exist (a folder with test.jsonl / train.jsonl, or a .jsonl)")
    if "test" not in files:
        raise ConfigError("--data", f"no test.jsonl in {data}")
    if num_fewshot > 0 and "train" not in files:
        raise ConfigError("--num-fewshot", f"{num_fewshot}-shot needs train.jsonl next to test.jsonl in {data}")
    return {k: str(v.resolve()) for k, v in files.items()}


def task_config(files: Dict[str, str]) -> dict:
    cfg = json.loads(json.dumps(TASK))
    cfg["dataset_kwargs"] = {"data_files": files}
    if "train" not in files:
        cfg["training_split"] = cfg["fewshot_split"] = None
    return cfg


def _gold(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def run_backend(hm, tokenizer, backend: str, cfg: dict, args) -> dict:
    """lm-eval's gsm8k on one backend: per-question samples and our generations."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .lm_eval_model import GDNHarnessLM
    hm.set_backend(backend)
    lm = GDNHarnessLM(model=hm, tokenizer=tokenizer, batch_size=args.batch_size, max_gen_toks=args.max_gen_toks)
    t0 = time.time()
    res = lm_eval.simple_evaluate(model=lm, tasks=[cfg], num_fewshot=args.num_fewshot, limit=args.limit,
                                  log_samples=True, fewshot_as_multiturn=False, apply_chat_template=False,
                                  fewshot_random_seed=args.seed, random_seed=args.seed, bootstrap_iters=0,
                                  task_manager=TaskManager(include_defaults=False))  # no scan of lm-eval's tasks
    seconds = time.time() - t0
    samples: Dict[int, dict] = {}
    for s in res["samples"][cfg["task"]]:
        row = samples.setdefault(s["doc_id"], dict(doc=s["doc"], context=s["arguments"][0][0],
                                                   resp=s["resps"][0][0], answers={}, correct={}))
        name = s["filter"]
        row["answers"][name] = s["filtered_resps"][0]
        row["correct"][name] = bool(s["exact_match"])
    return dict(samples=samples, seconds=seconds, generations=lm.generations, filled_ops=hm.filled)


def _first_divergence(base: List[int], other: List[int]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(base, other)):
        if x != y:
            return i
    return None if len(base) == len(other) else min(len(base), len(other))


def per_question(runs: Dict[str, dict], baseline: str, tokenizer) -> List[dict]:
    """Every question: its answers per backend, whether all backends generated the same
    tokens, and where each backend first left the baseline's tokens."""
    rows = []
    base = runs[baseline]
    for doc_id in sorted(base["samples"]):
        s0 = base["samples"][doc_id]
        toks = {b: r["generations"].get(r["samples"][doc_id]["context"], {}).get("tokens", [])
                for b, r in runs.items()}
        row = dict(doc_id=doc_id, question=s0["doc"]["question"], target=_gold(s0["doc"]["answer"]),
                   answers={}, divergence={})
        for b, r in runs.items():
            s = r["samples"][doc_id]
            row["answers"][b] = dict(strict=s["answers"].get("strict-match"),
                                     flexible=s["answers"].get("flexible-extract"),
                                     strict_correct=s["correct"].get("strict-match"),
                                     flexible_correct=s["correct"].get("flexible-extract"),
                                     text=s["resp"], tokens=len(toks[b]))
            if b == baseline:
                continue
            i = _first_divergence(toks[baseline], toks[b])
            if i is not None:
                pick = lambda ts: (None if i >= len(ts) else [ts[i], tokenizer.decode([ts[i]])])
                row["divergence"][b] = dict(index=i, baseline_token=pick(toks[baseline]), token=pick(toks[b]))
        row["tokens_agree"] = not row["divergence"]
        row["answers_agree"] = len({(a["strict"], a["flexible"]) for a in row["answers"].values()}) == 1
        rows.append(row)
    return rows


def summarize(runs: Dict[str, dict], rows: List[dict], baseline: str, args) -> dict:
    """Accuracy per backend and filter with Wilson lower bounds; the gate's verdicts."""
    n = len(rows)
    metric = METRICS[args.metric]
    backends, failures = {}, []
    for b, r in runs.items():
        acc = {}
        for short, name in METRICS.items():
            k = sum(bool(row["answers"][b][f"{short}_correct"]) for row in rows)
            acc[short] = dict(correct=k, n=n, accuracy=k / n if n else 0.0, wilson_lower=wilson_lower(k, n))
        agree = 0 if r.get("error") else sum(b not in row["divergence"] for row in rows)
        backends[b] = dict(accuracy=acc, agreement_with_baseline=agree / n if n else 1.0,
                           seconds=round(r["seconds"], 2), filled_ops=r["filled_ops"], error=r.get("error"))
    ref = backends[baseline]["accuracy"][args.metric]["accuracy"] if not backends[baseline]["error"] else None
    for b, s in backends.items():
        verdict = []
        if s["error"]:
            verdict.append(f"error: {s['error']}")
        else:
            a = s["accuracy"][args.metric]["accuracy"]
            # exactly `tolerance` below passes (k/n arithmetic must not flip it)
            if ref is not None and b != baseline and ref - a > args.tolerance + 1e-9:
                verdict.append(f"{metric} {a:.3f} < baseline {baseline} {ref:.3f} - tolerance {args.tolerance}")
            if args.threshold is not None and a < args.threshold:
                verdict.append(f"{metric} {a:.3f} < threshold {args.threshold}")
        s["status"] = "fail" if verdict else "pass"
        s["reasons"] = verdict
        failures += [f"{b}: {v}" for v in verdict]
    return dict(backends=backends, failures=failures, n=n, metric=metric, baseline=baseline)


def write_report(report_dir: Path, meta: dict, summary: dict, rows: List[dict]) -> None:
    from harness.report.results import atomic_write
    atomic_write(report_dir / "gsm8k.json", json.dumps(dict(meta=meta, summary=summary, questions=rows), indent=1))
    atomic_write(report_dir / "summary.md", markdown(meta, summary, rows))


def _cell(x) -> str:
    return "-" if x is None else str(x).replace("|", "\\|").replace("\n", "\\n")


def markdown(meta: dict, summary: dict, rows: List[dict], max_rows: int = 100) -> str:
    b0 = summary["baseline"]
    ok = not summary["failures"]
    lines = [f"# gdn-harness gsm8k: {'PASS' if ok else 'FAIL'}", "",
             f"model `{meta['model']}` ({meta['model_type']}, {meta['layout']} layout, GDN dims {meta['dims']}), "
             f"{meta['device']} {meta['dtype']}, {summary['n']} questions of `{meta['data']}`, "
             f"{meta['num_fewshot']}-shot; gate on {summary['metric']} (tolerance {meta['tolerance']} below "
             f"`{b0}`, threshold {meta['threshold']})", "",
             "| backend | strict-match | Wilson 95% low | flexible-extract | Wilson 95% low | same tokens as "
             f"{b0} | time | filled from reference | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for b, s in summary["backends"].items():
        a, f = s["accuracy"]["strict"], s["accuracy"]["flexible"]
        lines.append(f"| {b} | {a['accuracy']:.3f} ({a['correct']}/{a['n']}) | {a['wilson_lower']:.3f} | "
                     f"{f['accuracy']:.3f} ({f['correct']}/{f['n']}) | {f['wilson_lower']:.3f} | "
                     f"{100 * s['agreement_with_baseline']:.1f}% | {s['seconds']:.1f}s | "
                     f"{', '.join(s['filled_ops']) or '-'} | {s['status']} |")
    if summary["failures"]:
        lines += ["", "Gate failures:", ""] + [f"- {_cell(f)}" for f in summary["failures"]]
    diff = [r for r in rows if not r["tokens_agree"]]
    lines += ["", f"## Questions where the backends differ: {len(diff)} of {len(rows)}", ""]
    if diff:
        others = [b for b in summary["backends"] if b != b0]
        lines += ["| doc | question | gold | " + " | ".join(f"{b} strict / flexible" for b in summary["backends"]) +
                  " | first divergent token (index: " + b0 + " -> backend) |",
                  "|---|---|---|" + "---|" * len(summary["backends"]) + "---|"]
        for r in diff[:max_rows]:
            ans = " | ".join(f"{_cell(a['strict'])} / {_cell(a['flexible'])}" for a in r["answers"].values())
            div = "; ".join(f"{b} @{d['index']}: {_cell(d['baseline_token'] and d['baseline_token'][1])!r} -> "
                            f"{_cell(d['token'] and d['token'][1])!r}" for b, d in r["divergence"].items()
                            if b in others)
            q = r["question"] if len(r["question"]) <= 60 else r["question"][:57] + "..."
            lines.append(f"| {r['doc_id']} | {_cell(q)} | {_cell(r['target'])} | {ans} | {div} |")
        if len(diff) > max_rows:
            lines.append(f"\n... {len(diff) - max_rows} more in gsm8k.json")
    lines += ["", "Every question (answers, tokens, divergence) is in gsm8k.json."]
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    g = sub.add_parser("gsm8k", help="GSM8K spot check: a Qwen3-Next / Qwen3.5 model with its GDN layers on "
                       "each backend, offline, per-question diff")
    g.add_argument("--model", default=None, help="local model directory (config.json + safetensors + tokenizer)")
    g.add_argument("--canary", action="store_true",
                   help="the committed canary model on its held-out problems: CPU, 0-shot, fp32, "
                        f"--limit {CANARY_LIMIT}, --threshold {CANARY_THRESHOLD}")
    g.add_argument("--backends", default="reference,triton", help="comma-separated backends (registered names "
                   "or package.module:attr); the baseline is `reference` when listed, else the first")
    g.add_argument("--data", default=None, help=f"folder with test.jsonl (+ train.jsonl) or a .jsonl file "
                   f"(default {DEFAULT_DATA}; with --canary the model's heldout.jsonl)")
    g.add_argument("--limit", type=int, default=None, help="first N test questions (default all)")
    g.add_argument("--num-fewshot", type=int, default=None, help="examples from train (default 5; canary 0)")
    g.add_argument("--device", default=None, help="default cuda when present, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="model dtype (default bfloat16 on cuda, float32 on cpu)")
    g.add_argument("--threshold", type=float, default=None, help="fail a backend whose accuracy is below this")
    g.add_argument("--tolerance", type=float, default=0.08,
                   help="fail a backend more than this below the baseline's accuracy (default 0.08)")
    g.add_argument("--metric", choices=sorted(METRICS), default="strict", help="filter the gate uses")
    g.add_argument("--batch-size", type=int, default=16, help="questions generated together")
    g.add_argument("--max-gen-toks", type=int, default=None,
                   help=f"tokens generated at most per question (default 256; canary {CANARY_MAX_GEN})")
    g.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the recurrent (ssm) state pool")
    g.add_argument("--tp", type=int, default=1, help="run each GDN layer as this many TP shards (summed)")
    g.add_argument("--decode-path", default="recurrent", choices=["recurrent", "sigmoid_gating", "packed"],
                   help="the backend's decode path the model runs (default recurrent)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (canary default 1)")
    g.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed")
    g.add_argument("--report-dir", default=None, help="default reports/<timestamp> (+ reports/latest)")
    g.set_defaults(fn=cmd_gsm8k)


def _canary_defaults(args) -> None:
    from .canary_task import HELDOUT_FILE, QWEN35_DIR
    args.model = args.model or str(QWEN35_DIR)
    args.data = args.data or str(Path(args.model) / HELDOUT_FILE)
    args.device = args.device or "cpu"
    args.dtype = args.dtype or "float32"
    args.limit = CANARY_LIMIT if args.limit is None else args.limit
    args.num_fewshot = 0 if args.num_fewshot is None else args.num_fewshot
    args.threshold = CANARY_THRESHOLD if args.threshold is None else args.threshold
    args.threads = 1 if args.threads is None else args.threads
    args.max_gen_toks = CANARY_MAX_GEN if args.max_gen_toks is None else args.max_gen_toks
    args.batch_size = max(args.batch_size, args.limit or 0)   # one batch: decode steps dominate on CPU


def cmd_gsm8k(args) -> int:
    from . import set_offline
    from ..optimized.interpret import interpret_triton
    set_offline()
    interpret_triton()
    import torch

    from harness.report.paths import point_latest, report_dir as new_report_dir
    from ..optimized.registry import load_backend
    if args.canary:
        _canary_defaults(args)
    if not args.model:
        raise ConfigError("--model", "a local model directory (or --canary)")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.num_fewshot = 5 if args.num_fewshot is None else args.num_fewshot
    args.max_gen_toks = 256 if args.max_gen_toks is None else args.max_gen_toks
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b]
    if not backends or len(set(backends)) != len(backends):
        raise ConfigError("--backends", f"distinct backend names, got {args.backends!r}")
    for b in backends:          # unknown / unimportable backends are usage errors, before any work
        why = load_backend(b).unavailable(args.device)
        if why:
            raise HarnessError(f"backend {b!r}: {why}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", f"must be >= 1, got {args.limit}")
    files = data_files(Path(args.data or DEFAULT_DATA), args.num_fewshot)
    from transformers import AutoTokenizer

    from .hf_model import load_model
    hm = load_model(args.model, None, args.device, args.dtype, args.tp, args.decode_path, args.state_dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    report_dir = new_report_dir(args.report_dir)
    cfg = task_config(files)
    baseline = "reference" if "reference" in backends else backends[0]
    runs = {}
    for b in backends:
        print(f"gdn-harness gsm8k: {b} ...", flush=True)
        try:
            runs[b] = run_backend(hm, tokenizer, b, cfg, args)
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 - a crashing backend fails the gate; the report is still written
            runs[b] = dict(samples={}, seconds=0.0, generations={}, filled_ops=[], error=f"{type(e).__name__}: {e}")
    ok_runs = {b: r for b, r in runs.items() if not r.get("error")}
    base = baseline if baseline in ok_runs else next(iter(ok_runs), None)
    rows = per_question(ok_runs, base, tokenizer) if base else []
    for b, r in runs.items():   # an errored backend has no answers: counted wrong
        if r.get("error"):
            for row in rows:
                row["answers"][b] = dict(strict=None, flexible=None, strict_correct=False, flexible_correct=False,
                                         text=None, tokens=0)
    summary = summarize(runs, rows, baseline, args)
    meta = dict(model=str(args.model), model_type=hm.config.model_type, layout=hm.layout, dims=hm.dims.to_dict(),
                device=args.device, dtype=args.dtype, data=files, num_fewshot=args.num_fewshot, limit=args.limit,
                tolerance=args.tolerance, threshold=args.threshold, tp=args.tp, decode_path=args.decode_path,
                state_dtype=args.state_dtype,
                backends=backends, argv=getattr(args, "argv", None))
    write_report(report_dir, meta, summary, rows)
    point_latest(report_dir)
    for b, s in summary["backends"].items():
        a, f = s["accuracy"]["strict"], s["accuracy"]["flexible"]
        print(f"{b:>24}: strict {a['accuracy']:.3f} (>= {a['wilson_lower']:.3f}), flexible {f['accuracy']:.3f} "
              f"(>= {f['wilson_lower']:.3f}), same tokens as {summary['baseline']} "
              f"{100 * s['agreement_with_baseline']:.0f}%, {s['seconds']:.0f}s  {s['status'].upper()}")
    for f in summary["failures"]:
        print(f"FAIL {f}")
    print(f"report: {report_dir / 'summary.md'}")
    return EXIT_FAIL if summary["failures"] else EXIT_OK
