"""Layer-level diagnosis: the fp64 layer oracle re-run under each hypothesis.

The oracle starts from the backend's own projections (as the layer check does); a
hypothesis changes how they are unpacked, how the batch is planned (which entries read
which state), or replaces reference ops inside the oracle (``run_oracle(ops=...)``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import torch

from harness.cases.inputs import make_inputs
from ..layouts.projection import unpack_qkvz_ba
from ..layouts.tp import all_ranks, gather_heads, local_mixed_ba
from ..reference.layer import run_oracle
from harness.cases.scenario import Scenario, case_scenario
from . import variants as V
from .core import Hypothesis as H


@dataclass
class LayerContext:
    sc: Scenario
    inp: object
    ranks: list
    proj: list                       # per step, per rank: (mixed_qkvz, local mixed_ba) in the case dtype
    pairs: list                      # the case's Comparisons: a hypothesis' outputs are found by their fields

    @property
    def layout(self) -> str:
        return self.sc.layout

    def kinds(self):
        return {e.kind for step in self.sc.plan() for e in step}


def context(case, pairs) -> LayerContext:
    sc = case_scenario(case)
    inp = make_inputs(sc)
    ranks = all_ranks(inp.weights, case.dims, case.layout, case.tp, sc.ba)
    # the layer check's GEMMs on its device (a GPU's differ from the CPU's in the last bit,
    # and the conv caches holding their rows are compared exactly)
    on_dev = [p.to(case.device) for p in ranks]
    proj = [[((hd @ d.w_qkvz.T).cpu(), local_mixed_ba(p, (hd @ d.w_ba.T).cpu())) for p, d in zip(ranks, on_dev)]
            for hd in (h.to(case.device) for h in inp.hidden)]
    return LayerContext(sc, inp, ranks, proj, list(pairs))


def _unpacked(c: LayerContext, unpack=None) -> List[tuple]:
    fn = unpack or unpack_qkvz_ba
    out = []
    for per_rank in c.proj:
        parts = [fn(mq, mb, p.local, c.layout) for p, (mq, mb) in zip(c.ranks, per_rank)]
        out.append(tuple(gather_heads([r[i] for r in parts], dim=1) for i in range(6)))
    return out


def _spec_ab_by_position(c: LayerContext, unpacked):
    """a / b of the spec tokens taken by batch position (a[:n_spec]) instead of their rows."""
    out = []
    for (q, k, v, z, b, a), entries in zip(unpacked, c.sc.plan()):
        idx = [t for e in entries if e.kind == "spec" for t in range(e.bos, e.eos)]
        if idx:
            b, a = b.clone(), a.clone()
            b[idx], a[idx] = b[:len(idx)].clone(), a[:len(idx)].clone()
        out.append((q, k, v, z, b, a))
    return out


def _plans(c: LayerContext, fn):
    return [[fn(e) for e in step] for step in c.sc.plan()]


def routed(plans):
    """The batch as vLLM's layer routes it: in a step with a non-spec prefill, the decodes
    ride along in the prefill (chunked) call as 1-token sequences with history. The same
    math for a correct backend; it tells the oracle's variants which kernel path
    (prefill: no state pool; decode / spec: the pool) each entry took."""
    out = []
    for step in plans:
        ride = any(e.kind == "prefill" for e in step)
        out.append([dataclasses.replace(e, kind="prefill", has_initial_state=True)
                    if ride and e.kind == "decode" and not e.spec_read else e for e in step])
    return out


def _fresh_one_token_as_decode(e):
    if e.kind == "prefill" and e.tokens == 1 and not e.has_initial_state:
        return dataclasses.replace(e, kind="decode", has_initial_state=True)
    return e


def _fresh_reads_stale(e):
    return dataclasses.replace(e, has_initial_state=True) if e.kind == "prefill" else e


def _zero_draft_column_zero(e):
    if e.kind == "decode" and e.spec_read:
        return dataclasses.replace(e, num_accepted=1, ssm_slots=e.ssm_slots[:1])
    return e


def _uniform_width(c: LayerContext, unpacked):
    """Every step re-laid as a backend runs it when it locates spec-path request n's tokens
    at ``n * (num_spec + 1)`` of the spec token stream (each running num_spec + 1 tokens,
    clipped to the stream): (hidden, unpacked, plans, per step the batch row of each row)."""
    S = c.sc.num_spec + 1
    hidden, unp, plans, back = [], [], [], []
    for h, u, entries in zip(c.inp.hidden, unpacked, c.sc.plan()):
        spec = [e for e in entries if e.spec_read]
        stream = [t for e in spec for t in range(e.bos, e.eos)]
        rows, new = [], []
        for e in entries:
            if not e.spec_read:
                new.append(dataclasses.replace(e, bos=len(rows), eos=len(rows) + e.tokens))
                rows += range(e.bos, e.eos)
        for i, e in enumerate(spec):
            take = stream[i * S:(i + 1) * S]
            new.append(dataclasses.replace(e, bos=len(rows), eos=len(rows) + len(take)))
            rows += take
        hidden.append(h[rows])
        unp.append(tuple(t[rows] for t in u))
        plans.append(new)
        back.append(rows)
    return hidden, unp, plans, back


def _pad_as_decode(e):
    """A PAD row run through the decode kernels (the conv still skips its -1 slot)."""
    return dataclasses.replace(e, kind="decode", has_initial_state=True) if e.kind == "pad" else e


def _recurrent_slots(remap):
    """The recurrent rule with its state-pool indices remapped: ``remap(idx [N, S], read
    column [N]) -> idx``."""
    from .. import reference as ref

    def rec(q, k, v, g, beta, **kw):
        idx = kw.get("ssm_state_indices")
        if idx is not None:
            two = idx if idx.dim() == 2 else idx[:, None]
            acc = kw.get("num_accepted_tokens")
            read = acc.long() - 1 if acc is not None else torch.zeros(two.shape[0], dtype=torch.long)
            two = remap(two, read)
            kw["ssm_state_indices"] = two if idx.dim() == 2 else two[:, 0]
        return ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    return {V.RECURRENT: rec}


def _slot0_as_pad(idx, read):
    """Rows whose read slot is 0 made PAD rows (the kernel then skips them whole)."""
    return torch.where(idx.gather(1, read[:, None]) == 0, torch.full_like(idx, -1), idx)


def _ba_two_shards(c: LayerContext, unpacked):
    """The projections when every rank's in_proj_ba rows come from sharding the interleaved
    ``[b_g a_g]`` weight as two sections (the flat layout's rule), with its b / a check."""
    from ..layouts.tp import shard_sections
    w_ba = c.inp.weights.packed_in_proj(c.sc.dims, c.layout)[1]
    rows = [shard_sections(w_ba, [c.sc.dims.HV] * 2, c.sc.tp, p.rank) for p in c.ranks]
    out, proj = [], {}
    for s, (h, u) in enumerate(zip(c.inp.hidden, unpacked)):
        parts = [unpack_qkvz_ba(mq, h @ w.T, p.local, c.layout) for p, w, (mq, _) in zip(c.ranks, rows, c.proj[s])]
        b, a = (gather_heads([r[i] for r in parts], dim=1) for i in (4, 5))
        out.append((*u[:4], b, a))
        proj[("proj_ba", s)] = torch.cat([b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1)], dim=1)
    return out, proj


def _contiguous_conv(c: LayerContext):
    """The conv weight / bias every rank holds with conv1d split contiguously, gathered as
    q | k | v sections (what the ranks together apply, as one TP=1 weight)."""
    from ..layouts.tp import gather_conv_channels, shard_rows
    w = c.inp.weights
    tp = c.sc.tp
    cat = lambda t: None if t is None else gather_conv_channels(
        [shard_rows(t, tp, r) for r in range(tp)], c.sc.dims, dim=0)
    return dataclasses.replace(w, conv_weight=cat(w.conv_weight), conv_bias=cat(w.conv_bias))


def _history_dropped(e):
    return dataclasses.replace(e, has_initial_state=False) if e.kind == "prefill" else e


def prefill_only(ops: V.Ops) -> V.Ops:
    """A chunk variant applied to the oracle's prefill calls (the oracle's prefill is the recurrence)."""
    from .. import reference as ref
    fn = ops[V.CHUNK]

    def rec(q, k, v, g, beta, **kw):
        if kw.get("ssm_state_indices") is None:
            return fn(q, k, v, g, beta, **kw)
        return ref.recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    return {V.RECURRENT: rec}


def _has(*kinds):
    return lambda c: bool(set(kinds) & c.kinds())


def _fresh_one(c):
    return any(e.kind == "prefill" and e.tokens == 1 and not e.has_initial_state for s in c.sc.plan() for e in s)


def _continued(c):
    return any(e.kind == "prefill" and e.has_initial_state for s in c.sc.plan() for e in s)


def _multi_group(c):       # interleaved and flat differ only when a rank holds more than one key head
    return c.sc.dims.local(c.sc.tp).H > 1


# build(c) -> dict(unpack=..., ab=..., plans=..., ops=...)
HYPOTHESES = [
    H("core_other_layout", "projection_layout_core",
      "matches the reference when the {other} unpack is applied to this {layout}-layout model (q, k, v, b, a; z "
      "right): the fused core path assumes the {other} in_proj layout",
      lambda c: dict(unpack=V.unpack_with(qkv=V.other_layout(c.layout), ba=V.other_layout(c.layout))), _multi_group),
    H("ba_other_layout", "projection_layout_ba",
      "b and a match when mixed_ba is unpacked with the {other} layout on this {layout}-layout model: the b/a "
      "split does not follow the model's layout (b/a view from mixed_qkvz's groups, or a [b | a] two-shard split "
      "on an interleaved model at TP > 1)",
      lambda c: dict(unpack=V.unpack_with(ba=V.other_layout(c.layout))), _multi_group),
    H("all_other_layout", "projection_layout_core",
      "matches the reference when the whole in_proj output (z included) is unpacked with the {other} layout on "
      "this {layout}-layout model", lambda c: dict(unpack=V.unpack_with(*[V.other_layout(c.layout)] * 3)),
      _multi_group),
    H("spec_ab_ungathered", "spec_token_gather",
      "matches when the spec tokens' gates use a/b rows by batch position (a[:n_spec]) instead of their own rows "
      "(a[spec_token_idx]): the spec path does not gather a / b", lambda c: dict(ab=True), _has("spec")),
    H("fresh_1token_prefill_as_decode", "state_init_fresh",
      "matches when a fresh 1-token prefill runs as a decode: it reads its slot's stale conv window and ssm state "
      "instead of zeros (query_len == 1 taken for a decode without checking for a context)",
      lambda c: dict(plans=_plans(c, _fresh_one_token_as_decode)), _fresh_one),
    H("zero_draft_reads_column_zero", "spec_zero_draft",
      "matches when a zero-draft decode after accepted drafts reads the state at column 0 and the conv window at "
      "offset 0 instead of at num_accepted - 1 (vllm #39273: the non-spec decode path's metadata points at "
      "block-table column 0)", lambda c: dict(plans=_plans(c, _zero_draft_column_zero)),
      lambda c: any(e.kind == "decode" and e.spec_read for s in c.sc.plan() for e in s)),
    H("spec_width_from_index_shape", "spec_ragged_width",
      "matches when each spec-path request's tokens are located at n * (num_spec + 1) (the width of the "
      "state-index tensor) instead of its own query_start_loc: ragged draft counts read their batch-mates' tokens",
      lambda c: dict(width=True),
      lambda c: any(e.spec_read and e.tokens < c.sc.num_spec + 1 for s in c.sc.plan() for e in s)),
    H("pad_sentinel_clamped_to_zero", "pad_slot0",
      "matches when padded rows (slot -1) run against slot 0 - the sentinel clamped to 0, as a reserved null block "
      "would be - while slot 0 belongs to a request: they decay and overwrite its state",
      lambda c: dict(plans=_plans(c, _pad_as_decode), ops=_recurrent_slots(lambda i, read: i.clamp(min=0))),
      lambda c: _has("pad")(c) and c.sc.pad_slot == "minus_one"),
    H("null_block_id_on_live_slot", "pad_slot0",
      "matches when slot 0 is taken for padding (NULL_BLOCK_ID: slot <= 0 is PAD) while it belongs to a request: "
      "the sequence in slot 0 is skipped by the recurrent kernel",
      lambda c: dict(ops=_recurrent_slots(_slot0_as_pad)),
      lambda c: any(0 in row for row in c.sc.slots.values())),
    H("ba_two_shards_on_interleaved", "weight_sharding",
      "matches when every rank's in_proj_ba holds the rows of sharding the interleaved [b_g a_g] weight as two "
      "sections [b | a] (the flat layout's rule; vllm #35504): the ranks' b / a differ from the full-weight TP=1 "
      "projections", lambda c: dict(ba_shards=True), lambda c: c.sc.tp > 1 and c.layout == "interleaved"),
    H("conv_weight_split_contiguous", "weight_sharding",
      "matches when each rank's conv1d weight is a contiguous 1/tp row slice of [q | k | v] instead of its share "
      "of every section", lambda c: dict(weights=_contiguous_conv(c)), lambda c: c.sc.tp > 1),
    H("fresh_prefill_reads_stale", "state_init_fresh",
      "matches when every fresh prefill reads its slot's stale conv window and ssm state (has_initial_state "
      "ignored)", lambda c: dict(plans=_plans(c, _fresh_reads_stale)), _has("prefill")),
    H("prefill_initial_state_zeroed", "state_init_chunked",
      "matches when a continued prefill (chunked prefill / prefill with history) starts its ssm state from zeros: "
      "the chunk kernel drops the gathered initial state",
      lambda c: dict(ops=V.state_variant("zero_init", scope="prefill")), _continued),
    H("prefill_history_dropped", "state_init_chunked",
      "matches when a continued prefill drops both its conv history and its ssm state (has_initial_state False)",
      lambda c: dict(plans=_plans(c, _history_dropped)), _continued),
    H("conv_history_ignored", "state_init_chunked",
      "matches when the prefill conv ignores has_initial_state and starts from zeros",
      lambda c: dict(ops=V.conv_history("zero")), _continued),
    H("ssm_accepted_plus_one", "spec_accepted_offset",
      "matches when the spec ssm state is read from slot [num_accepted] instead of [num_accepted - 1]",
      lambda c: dict(ops=V.accepted_shift(+1, conv=False)), _has("spec")),
    H("conv_accepted_plus_one", "spec_accepted_offset",
      "matches when the spec conv window starts at num_accepted instead of num_accepted - 1",
      lambda c: dict(ops=V.accepted_shift(+1, ssm=False)), _has("spec")),
    H("accepted_plus_one", "spec_accepted_offset",
      "matches when num_accepted_tokens is off by one (+1) in both the conv window and the ssm read slot",
      lambda c: dict(ops=V.accepted_shift(+1)), _has("spec")),
    H("accepted_minus_one", "spec_accepted_offset",
      "matches when num_accepted_tokens is off by one (-1) in both the conv window and the ssm read slot",
      lambda c: dict(ops=V.accepted_shift(-1)), _has("spec")),
    H("conv_state_frozen_on_decode", "conv_state",
      "matches when the decode conv never shifts its state window: conv state not updated on decode",
      lambda c: dict(ops=V.conv_frozen_on_decode()), _has("decode")),
    H("state_transposed", "ssm_state_layout",
      "matches when the recurrent kernel reads and writes the ssm state as a [K, V] tile inside the [V, K] pool",
      lambda c: dict(ops=V.state_variant("transposed", scope="decode")), _has("decode", "spec")),
    H("state_transposed_everywhere", "ssm_state_layout",
      "matches when every state read and write (prefill too) uses a [K, V] tile inside the [V, K] pool",
      lambda c: dict(ops=V.state_variant("transposed"))),
    H("state_stored_bf16", "state_precision",
      "matches when every ssm state written back is rounded to bfloat16 (the pool is {state_dtype})",
      lambda c: dict(ops=V.state_variant("bf16"))),
    H("state_stored_bf16_truncated", "state_precision",
      "matches when every ssm state written back is truncated to bfloat16 (the pool is {state_dtype})",
      lambda c: dict(ops=V.state_variant("bf16_trunc"))),
    H("state_stored_bf16_decode", "state_precision",
      "matches when the decode / spec (recurrent) kernel writes its states rounded to bfloat16 (the pool is "
      "{state_dtype})", lambda c: dict(ops=V.state_variant("bf16", scope="decode")), _has("decode", "spec")),
    H("state_stored_bf16_truncated_decode", "state_precision",
      "matches when the decode / spec (recurrent) kernel writes its states truncated to bfloat16 (the pool is "
      "{state_dtype})", lambda c: dict(ops=V.state_variant("bf16_trunc", scope="decode")), _has("decode", "spec")),
    H("qk_heads_tiled", "gva_head_mapping",
      "matches when value head hv uses q/k head hv % H (tiled) instead of hv // r (grouped): the GVA head mapping "
      "is wrong", lambda c: dict(ops=V.qk_variant("tiled"))),
    H("qk_heads_tiled_prefill", "gva_head_mapping",
      "matches when the prefill (chunked) path maps value head hv to q/k head hv % H instead of hv // r",
      lambda c: dict(ops=V.qk_variant("tiled", scope="prefill")), _has("prefill")),
    H("qk_heads_tiled_decode", "gva_head_mapping",
      "matches when the decode / spec path maps value head hv to q/k head hv % H instead of hv // r",
      lambda c: dict(ops=V.qk_variant("tiled", scope="decode")), _has("decode", "spec")),
    H("qk_l2norm_skipped", "qk_norm", "matches when the in-kernel q/k L2 norm is skipped",
      lambda c: dict(ops=V.qk_variant("norm_skipped"))),
    H("qk_l2norm_skipped_decode", "qk_norm",
      "matches when the decode / spec (recurrent) kernel skips the in-kernel q/k L2 norm",
      lambda c: dict(ops=V.qk_variant("norm_skipped", scope="decode")), _has("decode", "spec")),
    H("scale_on_k", "qk_scale", "matches when the K^-0.5 scale multiplies k instead of q",
      lambda c: dict(ops=V.qk_variant("scale_on_k"))),
    H("scale_on_k_decode", "qk_scale",
      "matches when the decode / spec (recurrent) kernel multiplies k instead of q by the K^-0.5 scale",
      lambda c: dict(ops=V.qk_variant("scale_on_k", scope="decode")), _has("decode", "spec")),
    H("softplus_linear", "gating_math", "matches when softplus(x) is taken as x (threshold inverted)",
      lambda c: dict(ops=V.gating_variant("linear_softplus"))),
    H("dt_bias_after_softplus", "gating_math", "matches when dt_bias is added after the softplus",
      lambda c: dict(ops=V.gating_variant("dt_bias_after"))),
    H("beta_rounded_bf16_decode", "gating_precision",
      "matches when the decode / spec (recurrent) kernel rounds beta to bfloat16 every step",
      lambda c: dict(ops=V.beta_bf16(scope="decode")), _has("decode", "spec")),
    H("beta_truncated_bf16_decode", "gating_precision",
      "matches when the decode / spec (recurrent) kernel truncates beta to bfloat16 every step",
      lambda c: dict(ops=V.beta_bf16(scope="decode", truncate=True)), _has("decode", "spec")),
    H("readout_buffer_fp16_decode", "output_precision",
      "matches when the decode / spec (recurrent) kernel's read-out o = S q goes through a float16 buffer "
      "(rounded to 11 bits, Inf past 65504) whatever the activation dtype",
      lambda c: dict(ops=V.readout_fp16(scope="decode")), _has("decode", "spec")),
    H("norm_gemma_weight", "gated_norm", "matches when RMSNormGated uses a Gemma-style (1 + w) weight",
      lambda c: dict(ops=V.norm_variant("gemma"))),
    H("norm_before_gate_flipped", "gated_norm", "matches when RMSNormGated's norm_before_gate is flipped",
      lambda c: dict(ops=V.norm_variant("flipped"))),
    H("chunk_tail_repeat", "chunk_boundary",
      "matches when a prefill's last partial 64-token chunk is padded with its last token (unmasked tail load)",
      lambda c: dict(ops=prefill_only(V.chunk_variant("tail_repeat"))), _has("prefill")),
]


def expected_of(h: H, c: LayerContext) -> Optional[Dict[str, torch.Tensor]]:
    spec = h.build(c)
    unpacked = _unpacked(c, spec["unpack"]["unpack_qkvz_ba"] if "unpack" in spec else None)
    if spec.get("ab"):
        unpacked = _spec_ab_by_position(c, unpacked)
    sc, inp = c.sc, c.inp
    hidden, plans, back, proj = inp.hidden, spec.get("plans") or sc.plan(), None, {}
    if spec.get("ba_shards"):
        unpacked, proj = _ba_two_shards(c, unpacked)
    if spec.get("width"):
        hidden, unpacked, plans, back = _uniform_width(c, unpacked)
    res = run_oracle(replace(sc, tp=1), spec.get("weights") or inp.weights, hidden, inp.conv_pool, inp.ssm_pool, tp=1,
                     unpacked=unpacked, device="cpu", ops=spec.get("ops"), plans=routed(plans))
    if back is not None:        # rows back to the batch rows they stand for (rows no request ran: zeros)
        for st, rows, h in zip(res.steps, back, inp.hidden):
            for key in ("core", "out"):
                full = st[key].new_zeros(h.shape[0], *st[key].shape[1:])
                full[rows] = st[key]
                st[key] = full
    return _named(c, res, proj)


def _named(c: LayerContext, res, proj: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """The oracle run `res` (and re-done projections `proj`, by (quantity, step)) as expected
    values of the layer check's comparisons, each found by what it is (its fields), keyed by
    its output name."""
    owned = {x for row in c.sc.slots.values() for x in row}
    spare = [x for x in range(c.sc.num_slots) if x not in owned]
    exp = {}
    for cmp in c.pairs:
        pool = {"conv": res.conv_pool, "ssm": res.ssm_pool}.get(cmp.cache)
        if cmp.kind == "out" and cmp.step is not None and cmp.quantity in ("out", "core") and cmp.step < len(res.steps):
            exp[cmp.output] = res.steps[cmp.step][cmp.quantity]
        elif cmp.kind == "out" and (cmp.quantity, cmp.step) in (proj or {}):
            exp[cmp.output] = proj[(cmp.quantity, cmp.step)]
        elif cmp.kind == "state" and pool is not None:
            exp[cmp.output] = pool
        elif cmp.kind == "untouched" and pool is not None and spare:
            exp[cmp.output] = pool[spare]
    return exp


PAD_ROWS = H("pad_rows_garbage", "pad_rows",
             "matches everywhere but the PAD rows, which hold garbage / NaN: the output buffer comes from torch.empty "
             "and PAD rows are never zeroed", lambda c: None, _has("pad"))


def pad_rows_expected(pairs, c: LayerContext, hyp: Optional[dict] = None) -> Optional[Dict[str, torch.Tensor]]:
    """The outputs with the PAD tokens' rows masked out (set to the oracle's, or to hypothesis `hyp`'s)."""
    return pad_rows_masked(pairs, c.sc, hyp)


def pad_rows_masked(pairs, sc: Scenario, hyp: Optional[dict] = None) -> Optional[Dict[str, torch.Tensor]]:
    """`pad_rows_expected` given the case's scenario alone."""
    plans = sc.plan()
    exp = {}
    for c in pairs:
        name, actual = c.output, c.actual
        e = (hyp or {}).get(name, c.expected)
        if c.step is None or isinstance(e, tuple):
            continue
        pad = [t for e_ in plans[c.step] if e_.kind == "pad" for t in range(e_.bos, e_.eos)]
        if not pad:
            continue
        if c.kind == "pad_rows":
            exp[name] = (e.to(actual), e)
        else:
            a = actual.clone()
            a[pad] = e[pad].to(actual)
            exp[name] = (a, e)
    return exp or None


UNTOUCHED = H("writes_outside_owned_slots", "pad_slots",
              "matches everywhere but in slots no sequence owns, which changed: a write through a PAD (-1) or "
              "out-of-batch slot index", lambda c: None, lambda c: c.sc.num_slots > len(
                  {x for row in c.sc.slots.values() for x in row}))


def untouched_expected(pairs, c: LayerContext) -> Optional[Dict[str, torch.Tensor]]:
    """The outputs with the unowned slots masked out of the pools."""
    owned = {x for row in c.sc.slots.values() for x in row}
    spare = [x for x in range(c.sc.num_slots) if x not in owned]
    exp = {}
    for cmp in pairs:
        name, actual, refv = cmp.output, cmp.actual, cmp.expected
        if cmp.kind == "untouched":
            exp[name] = (refv.to(actual.dtype), refv)
        elif cmp.kind == "state" and spare:
            a = actual.clone()
            a[spare] = refv[spare].to(actual.dtype)
            exp[name] = (a, refv)
    return exp or None


def fmt(c: LayerContext, state_dtype: str) -> dict:
    return dict(layout=c.layout, other=V.other_layout(c.layout), state_dtype=state_dtype,
                tile_right="[V, K]", tile_wrong="[K, V]")
