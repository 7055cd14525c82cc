"""The sequence-parallel attention function: causal attention on local (B, H, S_local, D) shards of a
zigzag-sharded sequence, over any layout (Ulysses x ring), with GQA and packed samples.

``sp_attention(q, k, v, mesh, segment_ids=None, scale=None)`` is the public entry. Layout:
Ulysses all-to-all over ``sp_ulysses`` (consecutive ranks) around the zigzag ring over ``sp_ring``
(strided ranks). On a one-rank mesh it is local causal attention; packed samples are computed sample by
sample (the block kernel's per-sample plans), never as one masked attention over the row.

Packed samples: ``segment_ids`` give each token's sample; ``segment_ids_from_positions`` derives them
from position ids that restart at 0 at each sample (sample id = global index - position), using the
zigzag layout to know each local token's global index. Tokens attend only inside their own sample.

Design choices:
- The backend (``backends.BACKENDS``: auto, torch, flash_attn, ring_flash_attn) is resolved from the
  tensors' device, dtype and head dimension at the call; ``ring_flash_attn`` puts ring-flash-attn's zigzag
  ring where ours runs (same zigzag layout), inside the same Ulysses all-to-all.
- Host-side planning once per step: the block plan of every ring step (``SPPlan``) is made on the host.
  ``plan_from_positions`` makes it from the *global* position ids the caller holds on the host (the MM-SP
  step, SP prefill and scoring): no collective and no device read at all. ``plan_attention`` makes it from
  device segment ids (one all-gather over the SP group, one device-to-host copy). ``sp_attention`` takes raw
  segment ids (then it plans at the call) or an ``SPPlan``; ``use_plan(plan)`` hands one to the HF
  attention of every layer of a forward; the ring reuses the same plans in backward.
- Every tensor made here (global indices, segment ids, log-n factors) is made on the inputs' device.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from dataclasses import dataclass, field

import torch

from .backends import Kernel, resolve
from .comm import agree_shapes
from .kernels import MASK, BlockPlan
from .mesh import SPMesh
from .ring_attn import zigzag_ring_attention, zigzag_schedule
from .ring_basic import basic_ring_attention, contiguous_schedule
from .ring_core import ring_plans
from .ulysses import ulysses_attention
from .zigzag import zigzag_index

RINGS = {"zigzag": zigzag_ring_attention, "contiguous": basic_ring_attention}
SCHEDULES = {"zigzag": zigzag_schedule, "contiguous": contiguous_schedule}


@dataclass
class SPPlan:
    """The host-side plan of one step's attention on this rank (made by ``plan_from_positions`` or
    ``plan_attention``, reused by every layer and by the backward).

    - ``shape``: (B, S_local) it was made for; ``ring``: the ring it plans;
    - ``steps``: the ``BlockPlan`` of each step of this rank's ring schedule (None: a skipped step);
    - ``segment_ids``: (B, S_local), kept only when a step needs the masked fallback (made from positions it
      is on the host and copied to the device once, at the first call);
    - ``ring_segs``: every ring rank's (post-Ulysses) segment ids (B, U*S_local) on the host, or None when
      the sequence is one sample.
    """

    shape: tuple[int, int]
    ring: str
    steps: list[BlockPlan | None]
    segment_ids: torch.Tensor | None = None
    ring_segs: list[torch.Tensor] | None = None
    cache: dict = field(default_factory=dict)  # device copies derived from the plan (e.g. cu_seqlens)

    @property
    def packed(self) -> bool:
        return self.ring_segs is not None


_ACTIVE: contextvars.ContextVar[SPPlan | None] = contextvars.ContextVar("longvila_sp_plan", default=None)


@contextlib.contextmanager
def use_plan(plan: SPPlan | None):
    """Within the block, the HF attention (``hf.py``) uses ``plan`` for every layer whose local shape it fits."""
    token = _ACTIVE.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE.reset(token)


def active_plan() -> SPPlan | None:
    return _ACTIVE.get()


def _plan_from_segs(host: torch.Tensor, mesh: SPMesh, ring: str, device_seg) -> SPPlan:
    """host (sp_size, B, S_local): every SP rank's segment ids -> this rank's plan."""
    n, u = mesh.ring_size, mesh.ulysses_size
    schedule = SCHEDULES[ring]
    shape = tuple(host.shape[1:])
    if bool((host == host.reshape(-1)[0]).all()):  # one sample over the whole group: the plain kernel
        return SPPlan(shape, ring, ring_plans(None, schedule, mesh.ring_rank, n))
    ring_segs = [torch.cat([host[j * u + i] for i in range(u)], dim=1) for j in range(n)]
    steps = ring_plans(ring_segs, schedule, mesh.ring_rank, n)
    need_mask = any(p is not None and p.kind == MASK for p in steps)
    seg = None
    if need_mask:
        seg = device_seg if device_seg is not None else host[mesh.sp_rank]
    return SPPlan(shape, ring, steps, seg, ring_segs)


def plan_from_positions(position_ids: torch.Tensor | None, mesh: SPMesh, batch: int = 1) -> SPPlan:
    """The zigzag plan of a step from the *global* position ids (B or 1, L_pad) on the host (L_pad a multiple
    of 2 x sp_size, positions restarting at 0 per packed sample), or None (one sample of any length).

    No collective and no device read: every rank holds the whole batch, so it derives every rank's shard."""
    if position_ids is None:
        return SPPlan((-1, -1), "zigzag", ring_plans(None, zigzag_schedule, mesh.ring_rank, mesh.ring_size))
    pos = position_ids.cpu().reshape(-1, position_ids.shape[-1]).to(torch.int64)
    total = pos.shape[1]
    seg = torch.arange(total).unsqueeze(0) - pos
    if seg.shape[0] != batch:
        seg = seg.expand(batch, -1)
    host = torch.stack([seg[:, zigzag_index(total, mesh, p)] for p in range(mesh.sp_size)])
    return _plan_from_segs(host, mesh, "zigzag", None)


def _gather_sp(seg: torch.Tensor, mesh: SPMesh) -> torch.Tensor:
    """(B, S_local) on every SP rank -> (sp_size, B, S_local) on the host, in sp_rank order."""
    if mesh.sp_size == 1:
        return seg.cpu()[None]
    import torch.distributed as dist

    seg = seg.contiguous()
    buf = torch.empty((mesh.sp_size * seg.shape[0], *seg.shape[1:]), dtype=seg.dtype, device=seg.device)
    dist.all_gather_into_tensor(buf, seg, group=mesh.sp_group)
    return buf.cpu().view(mesh.sp_size, *seg.shape)


def plan_attention(segment_ids: torch.Tensor | None, mesh: SPMesh, ring: str = "zigzag",
                   q: torch.Tensor | None = None) -> SPPlan:
    """Plan one step: segment_ids (B, S_local) of this rank (or None: one sample) -> ``SPPlan``.

    Collective over the SP group (one all-gather and one device-to-host copy). Given ``q`` (B, H, S_local,
    D), the ranks first agree on its shape (an error on every rank instead of a hang)."""
    if ring not in RINGS:
        raise ValueError(f"unknown ring {ring!r}; choose from {sorted(RINGS)}")
    if q is not None:
        agree_shapes(q, mesh.sp_group, "sp_attention(q)")
    if segment_ids is None:
        return SPPlan((-1, -1), ring, ring_plans(None, SCHEDULES[ring], mesh.ring_rank, mesh.ring_size))
    return _plan_from_segs(_gather_sp(segment_ids, mesh), mesh, ring, segment_ids)


def segment_ids_from_positions(position_ids: torch.Tensor, mesh: SPMesh, batch: int | None = None) -> torch.Tensor:
    """position_ids (B or 1, S_local) of this rank's zigzag shard -> sample ids (B, S_local), int64.

    Equal ids <=> same packed sample. A single unpacked sample gives all zeros (the fast path).
    """
    s_local = position_ids.shape[-1]
    gidx = zigzag_index(s_local * mesh.sp_size, mesh).to(position_ids.device)
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


def _check_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, H, S, D) and k, v (B, Hkv, S, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, s, d = q.shape
    if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not match (GQA needs H % Hkv == 0)")
    shape = seg.shape if isinstance(seg, SPPlan) else (None if seg is None else tuple(seg.shape))
    if shape is not None and tuple(shape) not in ((b, s), (-1, -1)):
        raise ValueError(f"segment_ids shape {tuple(shape)} != (B, S_local) = {(b, s)}")


def sp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mesh: SPMesh,
    segment_ids: torch.Tensor | SPPlan | None = None, scale: float | None = None, ring: str = "zigzag",
    backend: str | Kernel = "auto",
) -> torch.Tensor:
    """Causal attention of a zigzag-sharded sequence: q (B, H, S_local, D), k/v (B, Hkv, S_local, D),
    segment_ids (B, S_local) int64, an ``SPPlan`` from ``plan_attention``, or None -> (B, H, S_local, D).

    Collective over the SP group of ``mesh``; ``ring="contiguous"`` selects the basic-ring baseline (then
    the shards must be contiguous, not zigzag). ``backend``: a name of ``backends.BACKENDS`` or a
    ``backends.Kernel``.
    """
    _check_local(q, k, v, segment_ids)
    if ring not in RINGS:
        raise ValueError(f"unknown ring {ring!r}; choose from {sorted(RINGS)}")
    name = backend if isinstance(backend, str) else backend.name
    kernel = resolve(backend, q.device, q.dtype, q.shape[-1]) if isinstance(backend, str) else backend
    if isinstance(segment_ids, SPPlan):
        plan = segment_ids
        if plan.ring != ring:
            raise ValueError(f"sp_attention: the plan was made for ring={plan.ring!r}, called with ring={ring!r}")
    else:
        plan = plan_attention(segment_ids, mesh, ring, q)
    if name == "ring_flash_attn":
        from .ring_flash import ring_flash_attn_inner

        if ring != "zigzag":
            raise ValueError(f"attn_backend='ring_flash_attn' runs its zigzag ring only, got ring={ring!r}; use "
                             "attn_backend='torch' for the contiguous baseline")
        inner = functools.partial(ring_flash_attn_inner, group=mesh.ring_group, plan=plan)
    else:
        inner = functools.partial(RINGS[ring], group=mesh.ring_group, plans=plan.steps, kernel=kernel)
    seg = plan.segment_ids
    if seg is not None and seg.device != q.device:  # a host plan's ids, for the masked fallback
        key = ("segment_ids", str(q.device))
        seg = plan.cache[key] if key in plan.cache else plan.cache.setdefault(key, seg.to(q.device))
    return ulysses_attention(q, k, v, mesh.ulysses_group, inner, seg, scale)
