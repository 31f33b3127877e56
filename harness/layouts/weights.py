"""Layer weights in a canonical (layout-free) form, and checkpoint conversion both ways.

Checkpoint names are those under ``model.layers.N.linear_attn.``:

* Qwen3-Next (interleaved): ``in_proj_qkvz.weight``, ``in_proj_ba.weight``
* Qwen3.5 (flat): ``in_proj_qkv.weight``, ``in_proj_z.weight``, ``in_proj_b.weight``,
  ``in_proj_a.weight``

and, in both, ``conv1d.weight [conv_dim, 1, W]`` (+ optional ``conv1d.bias``), ``A_log``,
``dt_bias``, ``norm.weight [V]``, ``out_proj.weight [hidden, HV*V]``. Conversion only
permutes rows, so a converted layer computes bit-identical outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Optional

import torch

from ..config import GDNDims
from ..errors import InputError, check_tensor
from .projection import check_layout, pack_qkvz_ba, unpack_qkvz_ba


@dataclass
class GDNWeights:
    """Canonical weights: one matrix per projection, heads in natural order."""
    wq: torch.Tensor            # [H*K, hidden]
    wk: torch.Tensor            # [H*K, hidden]
    wv: torch.Tensor            # [HV*V, hidden]
    wz: torch.Tensor            # [HV*V, hidden]
    wb: torch.Tensor            # [HV, hidden]
    wa: torch.Tensor            # [HV, hidden]
    conv_weight: torch.Tensor   # [conv_dim, W], channels [q | k | v]
    conv_bias: Optional[torch.Tensor]  # [conv_dim] or None
    A_log: torch.Tensor         # [HV]
    dt_bias: torch.Tensor       # [HV]
    norm_weight: torch.Tensor   # [V]
    out_proj: torch.Tensor      # [hidden, HV*V]

    def check(self, dims: GDNDims) -> "GDNWeights":
        d = dims
        expect = dict(wq=(d.key_dim, d.hidden), wk=(d.key_dim, d.hidden),
                      wv=(d.value_dim, d.hidden), wz=(d.value_dim, d.hidden),
                      wb=(d.HV, d.hidden), wa=(d.HV, d.hidden), conv_weight=(d.conv_dim, d.W),
                      conv_bias=(d.conv_dim,), A_log=(d.HV,), dt_bias=(d.HV,),
                      norm_weight=(d.V,), out_proj=(d.hidden, d.value_dim))
        for name, shape in expect.items():
            t = getattr(self, name)
            if t is None and name == "conv_bias":
                continue
            check_tensor(f"weights.{name}", t, shape=shape)
        return self

    def tensors(self):
        """Every tensor it holds (an absent conv_bias left out)."""
        return [t for t in (getattr(self, f.name) for f in fields(self)) if t is not None]

    def map(self, fn) -> "GDNWeights":
        """Apply `fn` to every tensor (e.g. a dtype or device move)."""
        return replace(self, **{f.name: (None if getattr(self, f.name) is None
                                          else fn(getattr(self, f.name)))
                                 for f in fields(self)})

    def to(self, *args, **kwargs) -> "GDNWeights":
        return self.map(lambda t: t.to(*args, **kwargs))

    def packed_in_proj(self, dims: GDNDims, layout: str):
        """(w_qkvz, w_ba): the fused projection matrices in `layout` order."""
        hid = self.wq.shape[1]
        qkvz_t, ba_t = pack_qkvz_ba(
            self.wq.T.reshape(hid, dims.H, dims.K), self.wk.T.reshape(hid, dims.H, dims.K),
            self.wv.T.reshape(hid, dims.HV, dims.V), self.wz.T.reshape(hid, dims.HV, dims.V),
            self.wb.T, self.wa.T, dims, layout)
        return qkvz_t.T.contiguous(), ba_t.T.contiguous()


def _unpack_in_proj(w_qkvz, w_ba, dims: GDNDims, layout: str):
    q, k, v, z, b, a = unpack_qkvz_ba(w_qkvz.T, w_ba.T, dims, layout)
    hid = w_qkvz.shape[1]
    return [t.reshape(hid, -1).T.contiguous() for t in (q, k, v, z, b, a)]


def to_checkpoint(w: GDNWeights, dims: GDNDims, layout: str) -> Dict[str, torch.Tensor]:
    """Canonical weights -> checkpoint tensors (names relative to ``linear_attn.``)."""
    check_layout(layout)
    w.check(dims)
    sd: Dict[str, torch.Tensor] = {}
    if layout == "interleaved":
        sd["in_proj_qkvz.weight"], sd["in_proj_ba.weight"] = w.packed_in_proj(dims, layout)
    else:
        sd["in_proj_qkv.weight"] = torch.cat([w.wq, w.wk, w.wv], 0)
        sd["in_proj_z.weight"] = w.wz.clone()
        sd["in_proj_b.weight"] = w.wb.clone()
        sd["in_proj_a.weight"] = w.wa.clone()
    sd["conv1d.weight"] = w.conv_weight.unsqueeze(1).clone()
    if w.conv_bias is not None:
        sd["conv1d.bias"] = w.conv_bias.clone()
    sd["A_log"] = w.A_log.clone()
    sd["dt_bias"] = w.dt_bias.clone()
    sd["norm.weight"] = w.norm_weight.clone()
    sd["out_proj.weight"] = w.out_proj.clone()
    return sd


def _need(sd, key, layout):
    if key not in sd:
        raise InputError(f"checkpoint[{key!r}]", f"key for the {layout} layout", key,
                         f"absent (keys: {sorted(sd)})")
    return sd[key]


def detect_layout(sd: Dict[str, torch.Tensor]) -> str:
    """'interleaved' if the checkpoint has a fused in_proj_qkvz, 'flat' if split in_proj_qkv."""
    if any(k.endswith("in_proj_qkvz.weight") for k in sd):
        return "interleaved"
    if any(k.endswith("in_proj_qkv.weight") for k in sd):
        return "flat"
    raise InputError("checkpoint", "in_proj key", "in_proj_qkvz.weight or in_proj_qkv.weight",
                     sorted(sd))


def from_checkpoint(sd: Dict[str, torch.Tensor], dims: GDNDims,
                    layout: Optional[str] = None) -> GDNWeights:
    """Checkpoint tensors (either layout) -> canonical weights."""
    layout = check_layout(layout or detect_layout(sd))
    if layout == "interleaved":
        wq, wk, wv, wz, wb, wa = _unpack_in_proj(_need(sd, "in_proj_qkvz.weight", layout),
                                                 _need(sd, "in_proj_ba.weight", layout),
                                                 dims, layout)
    else:
        qkv = check_tensor("in_proj_qkv.weight", _need(sd, "in_proj_qkv.weight", layout),
                           shape=(dims.conv_dim, dims.hidden))
        wq, wk, wv = (t.clone() for t in torch.split(qkv, [dims.key_dim, dims.key_dim,
                                                           dims.value_dim], 0))
        wz = _need(sd, "in_proj_z.weight", layout).clone()
        wb = _need(sd, "in_proj_b.weight", layout).clone()
        wa = _need(sd, "in_proj_a.weight", layout).clone()
    conv = check_tensor("conv1d.weight", _need(sd, "conv1d.weight", layout),
                        shape=(dims.conv_dim, 1, dims.W))
    bias = sd.get("conv1d.bias")
    return GDNWeights(wq=wq, wk=wk, wv=wv, wz=wz, wb=wb, wa=wa,
                      conv_weight=conv[:, 0].clone(),
                      conv_bias=None if bias is None else bias.clone(),
                      A_log=_need(sd, "A_log", layout).clone(),
                      dt_bias=_need(sd, "dt_bias", layout).clone(),
                      norm_weight=_need(sd, "norm.weight", layout).clone(),
                      out_proj=_need(sd, "out_proj.weight", layout).clone()).check(dims)


def convert_checkpoint(sd: Dict[str, torch.Tensor], dims: GDNDims, to_layout: str):
    """Qwen3-Next in_proj_qkvz / in_proj_ba <-> Qwen3.5 in_proj_qkv, _z, _b, _a."""
    return to_checkpoint(from_checkpoint(sd, dims), dims, to_layout)
