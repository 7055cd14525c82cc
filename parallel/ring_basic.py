"""Basic ring attention on a contiguous split (the paper's "ring-style SP" baseline, for the benchmark).

Ring rank r holds chunk r. Step 0 is causal on the own chunk; a visiting block from src < r is attended
in full, one from src > r is skipped. The last rank works at every step while the first works once: the
causal imbalance that the zigzag split removes.
"""

from __future__ import annotations

import torch

from .ring_core import Plan, ring_attention

_ALL = slice(None)


def contiguous_schedule(step: int, rank: int, n: int, s_local: int) -> Plan:
    if step == 0:
        return _ALL, _ALL, True
    return (_ALL, _ALL, False) if (rank - step) % n < rank else None


def basic_ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group,
    segment_ids: torch.Tensor | None = None, scale: float | None = None, plans=None, kernel=None,
) -> torch.Tensor:
    """Causal attention over a ring group on contiguous shards: q (B, H, S_local, D), k/v (B, Hkv, S_local, D)
    -> (B, H, S_local, D). ``plans``/``kernel``: see ``ring_core.ring_attention``."""
    return ring_attention(q, k, v, group, contiguous_schedule, segment_ids, scale, plans, kernel)
