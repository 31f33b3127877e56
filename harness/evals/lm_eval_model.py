"""lm-eval model class ``gdn-harness``: a HarnessModel (GDN layers on a harness backend).

    lm_eval --model gdn-harness --model_args pretrained=DIR,backend=triton,device=cuda ...

(after ``import harness.evals.lm_eval_model``, which registers it). Greedy generate_until
(batched: left-padded prefill, then decode steps over the state pool), loglikelihood and
loglikelihood_rolling from fresh prefills. Every generation is kept in `generations`
(context -> token ids and text), which the gsm8k command diffs across backends.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from . import set_offline

set_offline()

import torch  # noqa: E402 - after set_offline(): HF libraries read the offline switch at import
from lm_eval.api.model import TemplateLM  # noqa: E402 - as above
from lm_eval.api.registry import register_model  # noqa: E402 - as above
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402 - as above

from ..errors import ConfigError  # noqa: E402 - as above
from .hf_model import HarnessModel, load_model, text_config  # noqa: E402 - as above


@register_model("gdn-harness", "gdn_harness")
class GDNHarnessLM(TemplateLM):
    """lm-eval LM over `HarnessModel`. Give `pretrained` (a local model dir) or a built `model`
    and `tokenizer`."""

    def __init__(self, pretrained: Optional[str] = None, backend: str = "reference", device: str = "cpu",
                 dtype: str = "float32", batch_size=8, max_gen_toks: int = 256, max_length: Optional[int] = None,
                 tp: int = 1, decode_path: str = "recurrent", model: Optional[HarnessModel] = None,
                 tokenizer=None, **_ignored):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ConfigError("pretrained", "a local model directory (or pass model= and tokenizer=)")
            model = load_model(pretrained, backend, device, dtype, int(tp), decode_path)
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(pretrained, local_files_only=True)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = int(max_length or getattr(text_config(model.config), "max_position_embeddings", 2048))
        self.generations: Dict[str, dict] = {}

    # ---- tokenization
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("tokenizer", "needs an eos token")
        return eos

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: List[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _batches(self, items: List[int], key) -> List[List[int]]:
        """Indices in batches of `batch_size`, longest first (similar lengths pad little)."""
        order = sorted(items, key=key, reverse=True)
        n = max(1, self.batch_size_per_gpu)
        return [order[i:i + n] for i in range(0, len(order), n)]

    # ---- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        out: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        seqs = []
        for _, ctx, cont in requests:
            whole = (ctx + cont)[-(self.max_length + 1):]
            seqs.append((whole[:-1], len(cont)))
        for batch in self._batches(list(range(len(requests))), key=lambda i: len(seqs[i][0])):
            logits = self.model.logits([seqs[i][0] for i in batch])
            for i, lg in zip(batch, logits):
                n = seqs[i][1]
                cont = torch.tensor(requests[i][2][-n:], device=lg.device)
                logp = torch.log_softmax(lg[-n:], dim=-1)
                out[i] = (float(logp.gather(-1, cont[:, None]).sum()), bool((logp.argmax(-1) == cont).all()))
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        results = []
        for (string,) in [req.args for req in requests]:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            results.append(sum(s for s, _ in scored))
        return results

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        out: List[Optional[str]] = [None] * len(requests)
        groups: Dict[tuple, List[int]] = {}
        for i, req in enumerate(requests):
            ctx, kw = req.args
            kw = dict(kw or {})
            if kw.get("do_sample"):
                raise ConfigError("do_sample", "the gdn-harness model generates greedily only")
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            groups.setdefault((tuple(until), int(kw.get("max_gen_toks", self.max_gen_toks))), []).append(i)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        for (until, max_new), idx in groups.items():
            stops = [u for u in until if u] + ([eos_text] if eos_text else [])
            enc = {i: self.tok_encode(requests[i].args[0])[-max(1, self.max_length - max_new):] for i in idx}
            for batch in self._batches(idx, key=lambda i: len(enc[i])):
                gen = self.model.generate([enc[i] for i in batch], max_new, self._stopper(stops))
                for i, toks in zip(batch, gen):
                    text = self.tok_decode([t for t in toks if t != self.eot_token_id])
                    for s in stops:
                        text = text.split(s)[0]
                    ctx = requests[i].args[0]
                    self.generations[ctx] = dict(tokens=toks, text=text)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _stopper(self, stops: List[str]):
        """stop(row, tokens): EOS, or a stop string in the decoded tail (a string of n
        characters spans at most n tokens)."""
        eos, tail = self.eot_token_id, max((len(s) for s in stops), default=0) + 2

        def stop(_row: int, toks: List[int]) -> bool:
            if toks[-1] == eos:
                return True
            text = self.tokenizer.decode(toks[-tail:], skip_special_tokens=True)
            return any(s in text for s in stops)
        return stop
