"""Qwen3.5's LoRA arrangement: separate in_proj_qkv and in_proj_z modules.

With LoRA enabled vLLM keeps in_proj_qkv (MergedColumnParallel over q | k | v) and
in_proj_z (ColumnParallel) as two modules, each sharded on its own and each with an
optional low-rank delta ``scaling * B @ A`` (A replicated, B sharded like the module's
output rows). Their outputs concatenated give the flat layout's mixed_qkvz, so a layer
with the deltas folded into its weights must produce the same outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

import torch

from ..config import GDNDims
from ..errors import check_tensor
from .tp import shard_rows, shard_sections
from .weights import GDNWeights


@dataclass
class LoraDelta:
    A: torch.Tensor          # [rank, hidden]
    B: torch.Tensor          # [out_features, rank]
    scaling: float = 1.0

    def full(self) -> torch.Tensor:
        return self.scaling * (self.B @ self.A)


def fold_lora(w: GDNWeights, dims: GDNDims, deltas: Dict[str, LoraDelta]) -> GDNWeights:
    """Canonical weights with the deltas of ``"qkv"`` and / or ``"z"`` added in."""
    out = w
    if "qkv" in deltas:
        d = deltas["qkv"]
        check_tensor("lora.qkv.B", d.B, shape=(dims.conv_dim, None))
        dq, dk, dv = torch.split(d.full(), [dims.key_dim, dims.key_dim, dims.value_dim], 0)
        out = replace(out, wq=out.wq + dq, wk=out.wk + dk, wv=out.wv + dv)
    if "z" in deltas:
        d = deltas["z"]
        check_tensor("lora.z.B", d.B, shape=(dims.value_dim, None))
        out = replace(out, wz=out.wz + d.full())
    return out


class LoraProjection:
    """One TP rank's in_proj_qkv + in_proj_z (+ deltas), as vLLM builds them under LoRA."""

    def __init__(self, w: GDNWeights, dims: GDNDims, tp: int = 1, rank: int = 0,
                 deltas: Optional[Dict[str, LoraDelta]] = None):
        kd, vd = dims.key_dim, dims.value_dim
        self.sections = [kd, kd, vd]
        dims.check_tp(tp)
        self.tp, self.rank = tp, rank
        self.w_qkv = shard_sections(torch.cat([w.wq, w.wk, w.wv], 0), self.sections, tp, rank)
        self.w_z = shard_rows(w.wz, tp, rank)
        self.deltas = {}
        for name, d in (deltas or {}).items():
            B = (shard_sections(d.B, self.sections, tp, rank) if name == "qkv"
                 else shard_rows(d.B, tp, rank))
            self.deltas[name] = LoraDelta(A=d.A, B=B, scaling=d.scaling)

    def _module(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ weight.T
        d = self.deltas.get(name)
        if d is not None:
            y = y + d.scaling * ((x @ d.A.T) @ d.B.T)
        return y

    def mixed_qkvz(self, x: torch.Tensor) -> torch.Tensor:
        """The rank's flat ``[q_r | k_r | v_r | z_r]`` projection of hidden states ``x``."""
        return torch.cat([self._module(x, self.w_qkv, "qkv"), self._module(x, self.w_z, "z")], -1)
