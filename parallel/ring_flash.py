"""ring-flash-attn as a peer backend: its zigzag ring in place of ours, behind the same ``sp_attention``.

ring-flash-attn's zigzag layout is ours: ring rank r holds chunks r and 2n-1-r of the sequence, so after
our Ulysses all-to-all its ``zigzag_ring_flash_attn_func`` takes the local shard as it is, transposed to
its (B, S, H, D) layout, over our ring group.

Design choices:
- Packed rows: its varlen zigzag (``zigzag_ring_flash_attn_varlen_func``) expects every *sample* to be
  zigzag-split over the ring on its own, whereas MM-SP zigzags the whole packed row. The two agree on one
  ring rank (each sample is then one contiguous run), where the per-sample plan maps onto ``cu_seqlens``
  (computed once per step on the host, copied to the device once); packed rows over a ring of more
  ranks are an error that names the alternatives.
- GQA is native (flash-attn takes fewer K/V heads); the scale defaults to D ** -0.5 as in our kernels.
"""

from __future__ import annotations

import torch

from .backends import optional_module
from .comm import group_size


def _module():
    mod = optional_module("ring_flash_attn")
    if mod is None:
        raise ValueError("attn_backend='ring_flash_attn': the package ring-flash-attn is not installed; install it "
                         "or use attn_backend='torch' or 'flash_attn'")
    return mod


def _cu_seqlens(plan, device: torch.device) -> tuple[torch.Tensor, int]:
    """cu_seqlens (int32, on ``device``) of the samples of a one-ring-rank plan, rows one after the other,
    and the longest sample; cached in the plan."""
    hit = plan.cache.get(("ring_flash_cu", str(device)))
    if hit is not None:
        return hit
    from .kernels import segment_runs

    seg = plan.ring_segs[0]
    lengths = [b - a for row in seg for _, a, b in segment_runs(row)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32).to(device)
    plan.cache[("ring_flash_cu", str(device))] = (cu, max(lengths))
    return cu, max(lengths)


def ring_flash_attn_inner(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids=None, scale=None, *,
                          group, plan) -> torch.Tensor:
    """The ``inner`` of ``ulysses_attention``: q (B, H, S, D), k/v (B, Hkv, S, D) zigzag shards of the ring
    group -> (B, H, S, D), through ring-flash-attn. ``plan`` is the step's ``attention.SPPlan``."""
    mod = _module()
    b, h, s, d = q.shape
    sm = d ** -0.5 if scale is None else scale
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if not plan.packed:
        out = mod.zigzag_ring_flash_attn_func(qt, kt, vt, dropout_p=0.0, softmax_scale=sm, causal=True, group=group)
        return out.transpose(1, 2)
    n = group_size(group)
    if n > 1:
        raise ValueError(f"attn_backend='ring_flash_attn': packed rows over a ring of {n} ranks are not supported "
                         "(its varlen zigzag splits each sample over the ring, MM-SP splits the whole row); use "
                         "attn_backend='flash_attn' or 'torch', or sp_ring=1")
    cu, longest = _cu_seqlens(plan, q.device)
    out = mod.zigzag_ring_flash_attn_varlen_func(
        qt.reshape(b * s, h, d), kt.reshape(b * s, k.shape[1], d), vt.reshape(b * s, v.shape[1], d), cu, longest,
        dropout_p=0.0, softmax_scale=sm, causal=True, group=group)
    return out.view(b, s, h, d).transpose(1, 2)
