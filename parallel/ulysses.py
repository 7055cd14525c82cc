"""DeepSpeed-Ulysses style sequence parallelism: an all-to-all turns sequence shards with all heads into
the whole (Ulysses-group) sequence with a share of the heads, attention runs locally on those heads, and
the reverse all-to-all restores the sequence shards.

Design choices:
- GQA: K/V are communicated with their own head count. When the Ulysses degree U exceeds the KV heads,
  each KV head is replicated U / kv times first (the minimum so that every rank gets the KV head its
  query heads use); the replication's backward sums the gradients back.
- ``inner`` is the attention run on the gathered sequence: the zigzag ring over ``sp_ring`` (2D
  attention) or, with one ring rank, the same engine degenerating to a local causal call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .comm import all_gather, all_to_all, group_size


def ulysses_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, inner: Callable[..., torch.Tensor],
    segment_ids: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, S_local, D), k/v (B, Hkv, S_local, D), segment_ids (B, S_local) -> (B, H, S_local, D).

    ``inner(q, k, v, segment_ids=..., scale=...)`` sees (B, H/U, U*S_local, D) and (B, max(Hkv/U, 1), ...).
    """
    u = group_size(group)
    if u == 1:
        return inner(q, k, v, segment_ids=segment_ids, scale=scale)
    h, hkv = q.shape[1], k.shape[1]
    if h % u:
        raise ValueError(f"Ulysses degree {u} does not divide the {h} query heads")
    if hkv % u:
        if u % hkv:
            raise ValueError(f"Ulysses degree {u} and {hkv} KV heads: neither divides the other")
        k, v = k.repeat_interleave(u // hkv, dim=1), v.repeat_interleave(u // hkv, dim=1)
    q = all_to_all(q, group, scatter_dim=1, gather_dim=2)
    k, v = all_to_all(torch.stack([k, v]), group, scatter_dim=2, gather_dim=3).unbind(0)
    if segment_ids is not None:
        segment_ids = all_gather(segment_ids.contiguous(), group, dim=1)
    out = inner(q, k, v, segment_ids=segment_ids, scale=scale)
    return all_to_all(out, group, scatter_dim=2, gather_dim=1)
