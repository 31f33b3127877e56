"""Scenarios: multi-step serving batches as plain, JSON-serialisable data.

A scenario is a list of steps over a state-cache pool. Each step is a batch of entries:

* ``{"seq": 3, "kind": "prefill", "tokens": 37}`` - a fresh prefill the first time seq 3
  appears, a chunked-prefill continuation afterwards (``"has_initial_state"`` overrides);
* ``{"seq": 3, "kind": "decode"}`` - one token;
* ``{"seq": 3, "kind": "spec", "tokens": 3, "accepted": 2}`` - 1 + num_spec tokens, of which
  ``accepted`` (1..tokens) are kept; the next step reads the state from there;
* ``{"kind": "pad"}`` - a padded row (slot PAD_SLOT_ID): touches nothing, outputs zeros.

Every sequence owns ``num_spec + 1`` pool slots (non-contiguous, seeded shuffle unless
given). Conv state lives in its first slot (a window of W-1+num_spec columns); the ssm
state in slot ``[accepted-1]`` after a spec step and slot 0 otherwise.

A step after a spec step that accepted drafts (accepted > 1) reads the state after the
sequence's last accepted token, wherever the engine keeps it (``spec_state``, the engine
convention; vllm #39273 is a zero-draft decode reading column 0 instead):

* ``"offset"`` - a decode (a zero-draft step: ngram / prompt-lookup proposers return none)
  reads in place, like a 1-token spec step: the ssm state from column ``accepted-1``, the
  conv window from column offset ``accepted-1`` (vllm PR #40738 phase 2); its new state goes
  to column 0. A prefill cannot read an offset, so one after accepted drafts is refused.
* ``"migrate"`` - before a non-spec step the engine copies the ssm state from column
  ``accepted-1`` to column 0 and shifts the conv window to columns ``[0, W-1)`` (PR #40738
  phase 1's pre-copy, PR #52942's post-sampling migration); the step then reads column 0. Slots of the pool
start filled with seeded stale data, so a fresh sequence that read its slot would show.
A sequence that begins with a decode or spec step continues from that stale content
(a sequence with history).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional

from harness.batch import NULL_BLOCK_ID, PAD_SLOT_ID, EntryPlan
from harness.config import GDNDims, NormConfig
from harness.errors import ConfigError
from harness.layouts.projection import check_layout
from harness.layouts.state import check_conv_layout, check_ssm_layout

KINDS = ("prefill", "decode", "spec", "pad")
SPEC_STATES = ("offset", "migrate")     # where a zero-draft step after accepted drafts reads
# How padded rows are marked: PAD_SLOT_ID (-1) with every slot usable (slot 0 may be live),
# or a reserved null block: slot 0 owned by nobody, PAD rows point at it (FlashInfer's bf16
# decode redirects -1 there; vLLM's NULL_BLOCK_ID = 0).
PAD_SLOTS = ("minus_one", "null_block")


@dataclass
class Scenario:
    dims: GDNDims
    steps: List[List[dict]]
    layout: str = "flat"
    tp: int = 1
    ba: str = "sharded"
    num_spec: int = 0
    spec_state: str = "offset"
    pad_slot: str = "minus_one"
    num_slots: Optional[int] = None
    slots: Optional[Dict[int, List[int]]] = None
    seed: int = 0
    dtype: str = "float32"
    state_dtype: str = "float32"
    conv_state_layout: str = "dim_first"
    ssm_state_layout: str = "vk"
    conv_bias: bool = False
    norm: NormConfig = field(default_factory=NormConfig)
    name: str = ""

    # ---- plain data ----
    def to_dict(self) -> dict:
        d = asdict(self)
        d["dims"] = self.dims.to_dict()
        if self.slots is not None:
            d["slots"] = {str(k): v for k, v in self.slots.items()}
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        d = dict(d)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"scenario.{sorted(unknown)[0]}", f"unknown field; known: {sorted(known)}")
        if "dims" not in d or "steps" not in d:
            raise ConfigError("scenario", "needs 'dims' and 'steps'")
        d["dims"] = GDNDims.from_dict(d["dims"])
        if d.get("slots") is not None:
            d["slots"] = {int(k): list(v) for k, v in d["slots"].items()}
        if isinstance(d.get("norm"), dict):
            d["norm"] = NormConfig(**d["norm"])
        return cls(**d).validate()

    @classmethod
    def from_json(cls, s: str) -> "Scenario":
        return cls.from_dict(json.loads(s))

    # ---- validation ----
    def seq_ids(self) -> List[int]:
        seen: List[int] = []
        for step in self.steps:
            for e in step:
                if e.get("kind") != "pad" and e.get("seq") not in seen:
                    seen.append(e["seq"])
        return seen

    def validate(self) -> "Scenario":
        check_layout(self.layout)
        check_conv_layout(self.conv_state_layout)
        check_ssm_layout(self.ssm_state_layout)
        self.dims.check_tp(self.tp)
        if self.num_spec < 0:
            raise ConfigError("num_spec", f"must be >= 0, got {self.num_spec}")
        if self.spec_state not in SPEC_STATES:
            raise ConfigError("spec_state", f"one of {list(SPEC_STATES)}, got {self.spec_state!r}")
        if self.pad_slot not in PAD_SLOTS:
            raise ConfigError("pad_slot", f"one of {list(PAD_SLOTS)}, got {self.pad_slot!r}")
        if not self.steps:
            raise ConfigError("steps", "a scenario needs at least one step")
        drafts_accepted = set()     # sequences whose last step accepted drafts
        for si, step in enumerate(self.steps):
            if not step:
                raise ConfigError(f"steps[{si}]", "a step needs at least one entry")
            in_step = set()
            for ei, e in enumerate(step):
                where = f"steps[{si}][{ei}]"
                kind = e.get("kind")
                if kind not in KINDS:
                    raise ConfigError(f"{where}.kind", f"one of {list(KINDS)}, got {kind!r}")
                extra = set(e) - {"seq", "kind", "tokens", "accepted", "has_initial_state"}
                if extra:
                    raise ConfigError(f"{where}.{sorted(extra)[0]}", "unknown entry field")
                if kind == "pad":
                    continue
                seq = e.get("seq")
                if not isinstance(seq, int) or seq < 0:
                    raise ConfigError(f"{where}.seq", f"a sequence id >= 0, got {seq!r}")
                if seq in in_step:
                    raise ConfigError(f"{where}.seq", f"sequence {seq} appears twice in one step")
                in_step.add(seq)
                n = self.entry_tokens(e)
                if n < 1:
                    raise ConfigError(f"{where}.tokens", f"must be >= 1, got {n}")
                if kind == "decode" and n != 1:
                    raise ConfigError(f"{where}.tokens", f"a decode has 1 token, got {n}")
                if kind == "spec":
                    if n > self.num_spec + 1:
                        raise ConfigError(f"{where}.tokens",
                                          f"a spec step has at most num_spec + 1 = {self.num_spec + 1} tokens, got {n}")
                    acc = e.get("accepted", 1)
                    if not 1 <= acc <= n:
                        raise ConfigError(f"{where}.accepted", f"in [1, {n}], got {acc}")
                    (drafts_accepted.add if acc > 1 else drafts_accepted.discard)(seq)
                    continue
                if kind == "prefill" and seq in drafts_accepted and self.spec_state == "offset":
                    # a prefill's conv / chunk kernels read column 0 only
                    raise ConfigError(f"{where}.kind", f"sequence {seq} accepted drafts last step; a prefill "
                                      "after that needs spec_state='migrate'")
                drafts_accepted.discard(seq)
        ids = self.seq_ids()
        null = int(self.pad_slot == "null_block")      # slot 0 reserved
        need = len(ids) * (self.num_spec + 1) + null
        if self.num_slots is None:
            self.num_slots = need + 3        # spare slots that must stay untouched
        if self.num_slots < need:
            raise ConfigError("num_slots", f"{len(ids)} sequences x {self.num_spec + 1} slots need {need}, got {self.num_slots}")
        if self.slots is None:
            pool = list(range(null, self.num_slots))
            random.Random(self.seed).shuffle(pool)
            self.slots = {s: pool[i * (self.num_spec + 1):(i + 1) * (self.num_spec + 1)]
                          for i, s in enumerate(ids)}
        used = []
        for s in ids:
            row = self.slots.get(s)
            if row is None or len(row) != self.num_spec + 1:
                raise ConfigError(f"slots[{s}]", f"a list of num_spec + 1 = {self.num_spec + 1} slots, got {row}")
            used += row
        if len(set(used)) != len(used) or not all(0 <= u < self.num_slots for u in used):
            raise ConfigError("slots", f"distinct slots in [0, {self.num_slots}), got {self.slots}")
        if null and NULL_BLOCK_ID in used:
            raise ConfigError("slots", f"slot {NULL_BLOCK_ID} is the reserved null block (pad_slot='null_block')")
        return self

    @staticmethod
    def entry_tokens(e: dict) -> int:
        return int(e.get("tokens", 1))

    @property
    def conv_state_len(self) -> int:
        return self.dims.W - 1 + self.num_spec

    def plan(self) -> List[List["EntryPlan"]]:
        """Resolve every entry to token ranges, slots, has_initial_state, num_accepted."""
        self.validate()
        seen, accepted = set(), {}
        plans = []
        for step in self.steps:
            bos, out = 0, []
            for e in step:
                n = self.entry_tokens(e)
                if e["kind"] == "pad":
                    pad = NULL_BLOCK_ID if self.pad_slot == "null_block" else PAD_SLOT_ID
                    out.append(EntryPlan("pad", -1, bos, bos + n, pad, [pad], False, 1))
                else:
                    seq, row = e["seq"], self.slots[e["seq"]]
                    prev_acc, migrate = accepted.get(seq, 1), 0
                    if e["kind"] == "prefill":
                        has_init = bool(e.get("has_initial_state", seq in seen))
                    else:
                        has_init = True
                    if e["kind"] != "spec" and prev_acc > 1 and self.spec_state == "migrate":
                        prev_acc, migrate = 1, prev_acc - 1
                    offset_read = e["kind"] == "spec" or prev_acc > 1
                    out.append(EntryPlan(e["kind"], seq, bos, bos + n, row[0],
                                         list(row) if offset_read or migrate else [row[0]],
                                         has_init, prev_acc, migrate))
                    accepted[seq] = e.get("accepted", 1) if e["kind"] == "spec" else 1
                    seen.add(seq)
                bos += n
            plans.append(out)
        return plans


def mixed_scenario(dims: GDNDims, layout: str = "flat", tp: int = 1, seed: int = 0,
                   num_spec: int = 2, long: int = 70, **kw) -> Scenario:
    """Three steps mixing every kind: fresh and continued prefills (one of 1 token, one
    longer than a 64-chunk and not a multiple of it), decodes, spec decodes with every
    accepted count, a sequence with history, PAD rows, non-contiguous slots."""
    S = num_spec + 1
    steps = [
        [{"seq": 0, "kind": "prefill", "tokens": long}, {"seq": 1, "kind": "prefill", "tokens": 1},
         {"kind": "pad"}, {"seq": 2, "kind": "decode"}, {"seq": 3, "kind": "prefill", "tokens": 5}],
        [{"seq": 0, "kind": "spec", "tokens": S, "accepted": S} if num_spec else {"seq": 0, "kind": "decode"},
         {"seq": 1, "kind": "prefill", "tokens": 9}, {"seq": 2, "kind": "decode"}, {"kind": "pad"},
         {"seq": 3, "kind": "decode"}],
        [{"seq": 0, "kind": "spec", "tokens": S, "accepted": 1} if num_spec else {"seq": 0, "kind": "decode"},
         {"seq": 1, "kind": "decode"}, {"seq": 3, "kind": "spec", "tokens": S, "accepted": max(1, S - 1)}
         if num_spec else {"seq": 3, "kind": "decode"}, {"seq": 2, "kind": "prefill", "tokens": 3}],
    ]
    return Scenario(dims=dims, steps=steps, layout=layout, tp=tp, seed=seed, num_spec=num_spec,
                    name=f"mixed-{layout}-tp{tp}", **kw).validate()


def _mix_spec_only(num_spec: int):
    S = num_spec + 1
    # fresh prefills, then spec steps cycling through every accepted count
    first = [{"seq": s, "kind": "prefill", "tokens": 3 + 2 * s} for s in range(3)]
    steps = [first]
    for i in range(S):
        steps.append([{"seq": s, "kind": "spec", "tokens": S, "accepted": 1 + (i + s) % S} for s in range(3)])
    return steps


def _mix_zero_draft():
    """Ragged draft counts (0..K) in one batch under a compiled maximum of 3 drafts (runtime
    K 1-2 after the first spec step), accepted drafts followed by zero-draft decodes, and
    spec steps again after those (vllm #39273: ngram / prompt-lookup proposers return no
    drafts for some requests some steps)."""
    spec = lambda s, n, acc: {"seq": s, "kind": "spec", "tokens": n, "accepted": acc}
    dec = lambda s: {"seq": s, "kind": "decode"}
    return [[{"seq": 0, "kind": "prefill", "tokens": 5}, {"seq": 1, "kind": "prefill", "tokens": 3},
             {"seq": 2, "kind": "prefill", "tokens": 1}, dec(3)],
            [spec(0, 4, 3), spec(1, 2, 2), spec(2, 3, 1), spec(3, 3, 3)],
            [dec(0), spec(1, 3, 2), dec(2), spec(3, 1, 1)],
            [spec(0, 3, 2), dec(1), {"kind": "pad"}, spec(2, 2, 2), dec(3)],
            [dec(0), spec(1, 2, 1), dec(2)]]


def _mix_pad_slot0():
    """PAD rows around the sequence that owns slot 0 (its conv slot and ssm column 0) in
    every step - prefill, decode, spec, zero-draft decode - in the same kernel calls as it."""
    spec = lambda s, n, acc: {"seq": s, "kind": "spec", "tokens": n, "accepted": acc}
    dec = lambda s: {"seq": s, "kind": "decode"}
    pad = {"kind": "pad"}
    return [[pad, {"seq": 0, "kind": "prefill", "tokens": 6}, pad, dec(1), {"seq": 2, "kind": "prefill", "tokens": 1}],
            [pad, dec(0), dec(1), pad, dec(2)],
            [pad, spec(0, 3, 3), spec(1, 3, 2), dec(2), pad, {"seq": 3, "kind": "prefill", "tokens": 4}],
            [pad, dec(0), pad, dec(1), dec(3)],
            [pad, dec(0), dec(3), pad]]


# Batch mixes of the layer-level cases: name -> (steps builder, num_spec)
MIXES = {
    "prefill_only": (lambda: [[{"seq": 0, "kind": "prefill", "tokens": 70}, {"seq": 1, "kind": "prefill", "tokens": 5},
                               {"seq": 2, "kind": "prefill", "tokens": 1}]], 0),
    "decode_only": (lambda: [[{"seq": s, "kind": "decode"} for s in range(4)],
                             [{"seq": 2, "kind": "decode"}, {"kind": "pad"}, {"seq": 0, "kind": "decode"},
                              {"seq": 3, "kind": "decode"}, {"kind": "pad"}]], 0),
    "spec_only_1": (lambda: _mix_spec_only(1), 1),
    "spec_only_2": (lambda: _mix_spec_only(2), 2),
    "spec_only_3": (lambda: _mix_spec_only(3), 3),
    "mixed": (lambda: mixed_scenario(GDNDims(hidden=8, H=1, HV=1, K=2, V=2)).steps, 2),
    "chunked_prefill": (lambda: [[{"seq": 0, "kind": "prefill", "tokens": 64}, {"seq": 1, "kind": "decode"}],
                                 [{"seq": 0, "kind": "prefill", "tokens": 37}, {"seq": 1, "kind": "decode"}],
                                 [{"seq": 0, "kind": "prefill", "tokens": 1}],
                                 [{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "decode"}]], 0),
    "fresh_1token_prefill": (lambda: [[{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "prefill", "tokens": 1},
                                       {"seq": 2, "kind": "decode"}],
                                      [{"seq": 1, "kind": "decode"}, {"seq": 0, "kind": "decode"}]], 0),
    "prompt1_plus_spec": (lambda: [[{"seq": 0, "kind": "prefill", "tokens": 1}, {"seq": 1, "kind": "prefill", "tokens": 1}],
                                   [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 2},
                                    {"seq": 1, "kind": "spec", "tokens": 3, "accepted": 3}],
                                   [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 1},
                                    {"seq": 1, "kind": "spec", "tokens": 3, "accepted": 2}]], 2),
    "spec_zero_draft": (_mix_zero_draft, 3),
    "spec_zero_draft_migrate": (_mix_zero_draft, 3),
    "pad_slot0_live": (_mix_pad_slot0, 2),
    "pad_null_block": (_mix_pad_slot0, 2),
    "multi_step": (lambda: [[{"seq": 0, "kind": "prefill", "tokens": 20}, {"seq": 1, "kind": "prefill", "tokens": 9}],
                            [{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "prefill", "tokens": 4}],
                            [{"seq": 0, "kind": "spec", "tokens": 2, "accepted": 1}, {"seq": 1, "kind": "decode"}],
                            [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 3}, {"seq": 1, "kind": "decode"},
                             {"kind": "pad"}],
                            [{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 2},
                             {"seq": 1, "kind": "spec", "tokens": 2, "accepted": 2}]], 2),
}


def long_history(tokens: int, chunk: int = 2048):
    """A prefill of `tokens` in chunks, then decodes and spec: the nightly long histories."""
    steps, done = [], 0
    while done < tokens:
        n = min(chunk, tokens - done)
        steps.append([{"seq": 0, "kind": "prefill", "tokens": n}, {"seq": 1, "kind": "decode"}])
        done += n
    steps.append([{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 2}, {"seq": 1, "kind": "decode"}])
    steps.append([{"seq": 0, "kind": "spec", "tokens": 3, "accepted": 3}])
    return steps


# Scenario fields a mix fixes besides its batches (the engine convention it models).
MIX_OPTIONS = {"spec_zero_draft_migrate": {"spec_state": "migrate"},
               # slot 0 is sequence 0's (conv slot, ssm column 0), PAD is -1
               "pad_slot0_live": {"slots": {0: [0, 5, 2], 1: [7, 1, 9], 2: [4, 10, 6], 3: [3, 8, 11]}, "num_slots": 14},
               "pad_null_block": {"pad_slot": "null_block"}}


def drift_steps(decodes: int):
    """Two prefills, then `decodes` decode steps of both: the long-horizon drift lane
    (per-step error of output and state against the fp64 oracle; `harness.report.drift`)."""
    return ([[{"seq": 0, "kind": "prefill", "tokens": 16}, {"seq": 1, "kind": "prefill", "tokens": 5}]]
            + [[{"seq": 0, "kind": "decode"}, {"seq": 1, "kind": "decode"}] for _ in range(decodes)])


def mix_scenario(mix: str, dims: GDNDims, explicit: Optional[dict] = None, **kw) -> Scenario:
    """The scenario of a named mix (`MIXES`, ``history_<tokens>`` or ``drift_<decodes>``) for `dims`; `explicit`
    (``{"steps": [...], "num_spec": n}``, a shrunk case's) replaces the mix's batches."""
    kw = {**MIX_OPTIONS.get(mix, {}), **kw}
    if explicit is not None:
        unknown = set(explicit) - {"steps", "num_spec"}
        if unknown or "steps" not in explicit:
            raise ConfigError("case.scenario", f"expected keys steps, num_spec; got {sorted(explicit)}")
        steps, num_spec = explicit["steps"], int(explicit.get("num_spec", 0))
    elif mix.startswith("history_"):
        steps, num_spec = long_history(int(mix.split("_", 1)[1])), 2
    elif mix.startswith("drift_"):
        steps, num_spec = drift_steps(int(mix.split("_", 1)[1])), 0
    elif mix in MIXES:
        build, num_spec = MIXES[mix]
        steps = build()
    else:
        raise ConfigError("mix", f"unknown mix {mix!r}; known: {sorted(MIXES)}, history_<tokens> or drift_<decodes>")
    return Scenario(dims=dims, steps=steps, num_spec=num_spec, name=mix, **kw).validate()


def accepted_as_decodes(sc: Scenario):
    """The run spec decoding must not change: `sc` with every spec step's accepted tokens
    fed as decodes, one step per token (rejected drafts dropped), everything else as it was.
    Returns (that scenario, per step of it ``(s, rows)``: the step of `sc` and the rows of
    its batch its tokens come from, in order)."""
    steps, sources = [], []
    for s, (step, plan) in enumerate(zip(sc.steps, sc.plan())):
        counts = [e.get("accepted", 1) if e["kind"] == "spec" else 1 for e in step]
        for j in range(max(counts)):
            sub, rows = [], []
            for e, pe, n in zip(step, plan, counts):
                if j >= n:
                    continue
                if e["kind"] == "spec":
                    sub.append({"seq": e["seq"], "kind": "decode"})
                    rows.append(pe.bos + j)
                else:
                    sub.append(dict(e))
                    rows += list(range(pe.bos, pe.eos))
            steps.append(sub)
            sources.append((s, rows))
    return replace(sc, steps=steps, name=f"{sc.name}-as-decodes").validate(), sources


def case_scenario(case) -> Scenario:
    """A layer case's scenario (its mix, or its shrunk `scenario`, with its layout, TP, seed,
    dtypes and the conv-state layout and ba sharding named in its variant)."""
    return mix_scenario(case.check, case.dims, getattr(case, "scenario", None), layout=case.layout, tp=case.tp,
                        seed=case.seed, dtype=case.dtype, state_dtype=case.state_dtype,
                        conv_state_layout=case.conv_layout, ba=case.ba)
