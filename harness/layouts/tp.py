"""Tensor-parallel sharding of every GDN weight, for both layouts, and the reduce.

Rules (vLLM):

* interleaved: in_proj_qkvz and in_proj_ba are ColumnParallel, one shard each, a
  contiguous 1/tp row slice (= the rank's H/tp key-head groups).
* flat: q, k, v, z (and b, a) are MergedColumnParallel: every section is sharded on
  its own and the rank packs ``[q_r | k_r | v_r | z_r]`` / ``[b_r | a_r]``.
* ``ba="replicated"``: every rank holds the whole in_proj_ba and slices its HV/tp
  heads of b and a after unpacking.
* conv1d.weight ``[conv_dim, W]``: split per q | k | v section.
* A_log, dt_bias: a slice of HV; norm.weight replicated; out_proj RowParallel (a
  slice of its input columns), partial outputs summed by `reduce_partials`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..config import GDNDims
from ..errors import ConfigError, InputError
from .projection import check_layout, pack_qkvz_ba, unpack_ba
from .weights import GDNWeights

BA_MODES = ("sharded", "replicated")


def shard_rows(w: torch.Tensor, tp: int, rank: int, dim: int = 0) -> torch.Tensor:
    """One contiguous 1/tp slice along `dim` (a ColumnParallel / RowParallel shard)."""
    n = w.shape[dim]
    if n % tp:
        raise InputError("weight", f"dim {dim} divisible by tp={tp}", f"multiple of {tp}", n)
    size = n // tp
    return w.narrow(dim, rank * size, size).contiguous()


def shard_sections(w: torch.Tensor, sections: Sequence[int], tp: int, rank: int,
                   dim: int = 0) -> torch.Tensor:
    """MergedColumnParallel: shard each section separately and concatenate the rank's parts."""
    if sum(sections) != w.shape[dim]:
        raise InputError("weight", f"dim {dim} size (sum of sections {list(sections)})",
                         sum(sections), w.shape[dim])
    parts = torch.split(w, list(sections), dim=dim)
    return torch.cat([shard_rows(p, tp, rank, dim) for p in parts], dim=dim)


@dataclass
class RankParams:
    """What one TP rank's GDN layer holds: packed projections in its layout, local dims."""
    dims: GDNDims                 # global dims
    local: GDNDims                # this rank's dims
    layout: str
    tp: int
    rank: int
    w_qkvz: torch.Tensor          # [local qkvz_dim, hidden], packed in `layout` order
    w_ba: torch.Tensor            # [2*HV_local, hidden], or [2*HV, hidden] when replicated
    ba_heads: Optional[Tuple[int, int]]  # (start, count) of b/a heads to keep; replicated ba
    conv_weight: torch.Tensor     # [local conv_dim, W], channels [q_r | k_r | v_r]
    conv_bias: Optional[torch.Tensor]
    A_log: torch.Tensor           # [HV_local]
    dt_bias: torch.Tensor         # [HV_local]
    norm_weight: torch.Tensor     # [V]
    out_proj: torch.Tensor        # [hidden, HV_local*V]

    def to(self, *args, **kwargs) -> "RankParams":
        moved = {k: (v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return RankParams(**moved)


def shard_params(w: GDNWeights, dims: GDNDims, layout: str, tp: int = 1, rank: int = 0,
                 ba: str = "sharded", packed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> RankParams:
    """The `rank`-th of `tp` shards of a layer, following the layout's vLLM rules (`packed`:
    ``w.packed_in_proj(dims, layout)``, when the caller has it)."""
    check_layout(layout)
    if ba not in BA_MODES:
        raise ConfigError("ba", f"unknown ba sharding {ba!r}; known: {list(BA_MODES)}")
    local = dims.local(tp)
    if not 0 <= rank < tp:
        raise ConfigError("rank", f"must be in [0, {tp}), got {rank}")
    w_qkvz, w_ba = packed if packed is not None else w.packed_in_proj(dims, layout)
    kd, vd, HV = dims.key_dim, dims.value_dim, dims.HV
    if layout == "interleaved":
        w_qkvz = shard_rows(w_qkvz, tp, rank)
        w_ba_r = shard_rows(w_ba, tp, rank)
    else:
        w_qkvz = shard_sections(w_qkvz, [kd, kd, vd, vd], tp, rank)
        w_ba_r = shard_sections(w_ba, [HV, HV], tp, rank)
    ba_heads = None
    if ba == "replicated":
        w_ba_r, ba_heads = w_ba.clone(), (rank * local.HV, local.HV)
    return RankParams(
        dims=dims, local=local, layout=layout, tp=tp, rank=rank,
        w_qkvz=w_qkvz, w_ba=w_ba_r, ba_heads=ba_heads,
        conv_weight=shard_sections(w.conv_weight, [kd, kd, vd], tp, rank),
        conv_bias=None if w.conv_bias is None else shard_sections(w.conv_bias, [kd, kd, vd], tp, rank),
        A_log=shard_rows(w.A_log, tp, rank), dt_bias=shard_rows(w.dt_bias, tp, rank),
        norm_weight=w.norm_weight.clone(),
        out_proj=shard_rows(w.out_proj, tp, rank, dim=1))


def all_ranks(w: GDNWeights, dims: GDNDims, layout: str, tp: int, ba: str = "sharded",
              packed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> List[RankParams]:
    if packed is None:      # once for all ranks: at full dims packing is most of the sharding
        packed = w.packed_in_proj(dims, layout)
    return [shard_params(w, dims, layout, tp, r, ba, packed) for r in range(tp)]


def reduce_partials(partials: Sequence[torch.Tensor]) -> torch.Tensor:
    """RowParallel out_proj: the layer output is the sum of the ranks' partial outputs."""
    if not partials:
        raise InputError("partials", "count", ">= 1", 0)
    out = partials[0].clone()
    for p in partials[1:]:
        out += p
    return out


def gather_heads(per_rank: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Per-rank tensors over local value heads (ssm state, core output) -> all heads."""
    return torch.cat(list(per_rank), dim=dim)


def gather_conv_channels(per_rank: Sequence[torch.Tensor], dims: GDNDims, dim: int) -> torch.Tensor:
    """Per-rank conv channels ``[q_r | k_r | v_r]`` along `dim` -> global ``[q | k | v]``."""
    tp = len(per_rank)
    local = dims.local(tp)
    sections = [local.key_dim, local.key_dim, local.value_dim]
    split = [torch.split(t, sections, dim=dim) for t in per_rank]
    return torch.cat([torch.cat([s[i] for s in split], dim=dim) for i in range(3)], dim=dim)


def local_mixed_ba(p: RankParams, mixed_ba: torch.Tensor) -> torch.Tensor:
    """The rank's ``[..., 2*HV_local]`` mixed_ba: itself when ba is sharded; with the
    replicated variant, the rank's heads of b and a cut from the full projection and
    packed back in the layout (vLLM's split_ba)."""
    if p.ba_heads is None:
        return mixed_ba
    b, a = unpack_ba(mixed_ba, p.dims, p.layout)
    start, count = p.ba_heads
    lead = mixed_ba.shape[:-1]
    b, a = b[..., start:start + count], a[..., start:start + count]
    zeros = lambda n, d: mixed_ba.new_zeros(*lead, n, d)
    loc = p.local
    _, ba = pack_qkvz_ba(zeros(loc.H, loc.K), zeros(loc.H, loc.K), zeros(loc.HV, loc.V), zeros(loc.HV, loc.V),
                         b, a, loc, p.layout)
    return ba
