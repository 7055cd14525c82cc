"""The sequence-parallel attention function: causal attention on local (B, H, S_local, D) shards of a
zigzag-sharded sequence, over any layout (Ulysses x ring), with GQA and packed samples.

``sp_attention(q, k, v, mesh, segment_ids=None, scale=None)`` is the public entry. Layout:
Ulysses all-to-all over ``sp_ulysses`` (consecutive ranks) around the zigzag ring over ``sp_ring``
(strided ranks). On a one-rank mesh it is local causal attention; packed samples are computed sample by
sample (the block kernel's per-sample plans), never as one masked attention over the row.

Packed samples: ``segment_ids`` give each token's sample; ``segment_ids_from_positions`` derives them
from position ids that restart at 0 at each sample (sample id = global index - position), using the
zigzag layout to know each local token's global index. Tokens attend only inside their own sample.
"""

from __future__ import annotations

import functools
import math

import torch

from .comm import agree_shapes
from .mesh import SPMesh
from .ring_attn import zigzag_ring_attention
from .ring_basic import basic_ring_attention
from .ulysses import ulysses_attention
from .zigzag import zigzag_index

RINGS = {"zigzag": zigzag_ring_attention, "contiguous": basic_ring_attention}


def segment_ids_from_positions(position_ids: torch.Tensor, mesh: SPMesh, batch: int | None = None) -> torch.Tensor:
    """position_ids (B or 1, S_local) of this rank's zigzag shard -> sample ids (B, S_local), int64.

    Equal ids <=> same packed sample. A single unpacked sample gives all zeros (the fast path).
    """
    s_local = position_ids.shape[-1]
    gidx = zigzag_index(s_local * mesh.sp_size, mesh)
    seg = gidx.unsqueeze(0) - position_ids.reshape(-1, s_local).to(torch.int64)
    if batch is not None and seg.shape[0] != batch:
        seg = seg.expand(batch, -1)
    return seg.contiguous()


def logn_scale(q: torch.Tensor, positions: torch.Tensor, base: int) -> torch.Tensor:
    """Log-n attention scaling (Qwen's ``use_logn_attn``): q (B, H, S, D) at ``positions`` (B or 1, S),
    counted from 0 in each sample, times max(1, log(position + 1) / log(base)).

    A query that sees more keys than ``base`` gets proportionally sharper logits, which keeps the attention
    entropy near what training saw when the context grows past it; at or below ``base`` positions q is
    unchanged. The factor depends only on the token's own position, so it applies to local shards (zigzag,
    Ulysses) exactly as to the whole sequence.
    """
    if base < 2:
        raise ValueError(f"logn attention base must be >= 2 positions, got {base}")
    if positions.shape[-1] != q.shape[2]:
        raise ValueError(f"logn_scale: {positions.shape[-1]} positions for {q.shape[2]} queries")
    pos = positions.reshape(-1, 1, q.shape[2], 1).to(torch.float64)
    factor = torch.clamp(torch.log1p(pos) / math.log(base), min=1.0).to(q.dtype)
    return q * factor


def _check_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, H, S, D) and k, v (B, Hkv, S, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, s, d = q.shape
    if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not match (GQA needs H % Hkv == 0)")
    if seg is not None and tuple(seg.shape) != (b, s):
        raise ValueError(f"segment_ids shape {tuple(seg.shape)} != (B, S_local) = {(b, s)}")


def sp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mesh: SPMesh,
    segment_ids: torch.Tensor | None = None, scale: float | None = None, ring: str = "zigzag",
) -> torch.Tensor:
    """Causal attention of a zigzag-sharded sequence: q (B, H, S_local, D), k/v (B, Hkv, S_local, D),
    segment_ids (B, S_local) int64 or None -> (B, H, S_local, D).

    Collective over the SP group of ``mesh``; ``ring="contiguous"`` selects the basic-ring baseline (then
    the shards must be contiguous, not zigzag).
    """
    _check_local(q, k, v, segment_ids)
    if q.device.type != "cpu":
        raise NotImplementedError(
            f"sp_attention: the block kernel is PyTorch's CPU flash op; tensors on {q.device} are not supported "
            "(a flash-attn / ring-flash-attn backend for CUDA is not wired in yet)"
        )
    if ring not in RINGS:
        raise ValueError(f"unknown ring {ring!r}; choose from {sorted(RINGS)}")
    agree_shapes(q, mesh.sp_group, "sp_attention(q)")
    inner = functools.partial(RINGS[ring], group=mesh.ring_group)
    return ulysses_attention(q, k, v, mesh.ulysses_group, inner, segment_ids, scale)
