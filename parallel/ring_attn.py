"""Zigzag ring attention (causal): the ring schedule for the zigzag split of ``longvila.parallel.zigzag``.

Ring rank r holds chunks (r, 2n-1-r), each of S/2 tokens. Step 0 is causal on the local pair. At step s
the visiting block comes from rank src = (r - s) mod n:
- src < r: every local query attends the *first* half of the visiting block (chunk src precedes both of
  ours; chunk 2n-1-src follows both);
- src > r: only the *second* half of the local queries (chunk 2n-1-r) attends, to the whole block.
Each step therefore costs the same on every rank: half a block-pair of work.
"""

from __future__ import annotations

import torch

from .comm import group_size
from .ring_core import Plan, ring_attention

_ALL = slice(None)


def zigzag_schedule(step: int, rank: int, n: int, s_local: int) -> Plan:
    if step == 0:
        return _ALL, _ALL, True
    c = s_local // 2
    src = (rank - step) % n
    if src < rank:
        return _ALL, slice(0, c), False
    return slice(c, None), _ALL, False


def zigzag_ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group,
    segment_ids: torch.Tensor | None = None, scale: float | None = None, plans=None, kernel=None,
) -> torch.Tensor:
    """Causal attention over a ring group on zigzag shards: q (B, H, S_local, D), k/v (B, Hkv, S_local, D),
    segment_ids (B, S_local) -> (B, H, S_local, D). ``plans``/``kernel``: see ``ring_core.ring_attention``."""
    if group_size(group) > 1 and q.shape[2] % 2:
        raise ValueError(f"zigzag shards have an even local length, got {q.shape[2]}")
    return ring_attention(q, k, v, group, zigzag_schedule, segment_ids, scale, plans, kernel)
