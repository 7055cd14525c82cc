"""The ring engine shared by the zigzag ring (ours) and the contiguous ring (the baseline): K/V blocks
travel around the ring group, each step attends the local queries to the visiting block, results merge
through their LSE; the backward recomputes each step and sends dK/dV around the ring with the blocks.

A *schedule* says, for step s on ring rank r of n with local length S, which query rows attend which
key rows of the visiting block and whether the block is causal (or None to skip the compute; the block
still travels on).

Design choices:
- The next block's send/recv is posted before the current block's compute (``RingComm``), so transfer
  and compute overlap.
- The forward keeps out/LSE in fp32; the backward accumulates dq and the travelling dK/dV in fp32 (bf16
  error otherwise grows with the ring size).
- Packed samples: the plans of every step (``kernels.BlockPlan``) are made on the host before the first
  block, from a CPU copy of the segment ids of every ring rank (``ring_plans``), and saved for the
  backward. Segment ids travel with their K/V block only when some step needs the masked fallback.
- Every buffer is made on the device of q; the block kernel comes from ``backends`` (``kernel``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .backends import Kernel, resolve
from .comm import RingComm, group_rank, group_size
from .kernels import BLOCK_PLAIN, MASK, BlockPlan, block_backward, block_forward, merge, plan_block

Plan = tuple[slice, slice, bool] | None
Schedule = Callable[[int, int, int, int], Plan]


def _seg(seg: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if seg is None else seg[:, sl]


def ring_plans(ring_segs: list[torch.Tensor] | None, schedule: Schedule, rank: int, n: int
               ) -> list[BlockPlan | None]:
    """The block plan of every step of ``schedule`` on ring ``rank`` of ``n``: ``ring_segs[j]`` is ring rank
    j's segment ids (B, S) on the host (None: no packing). None marks a step the schedule skips."""
    plans: list[BlockPlan | None] = []
    for step in range(n):
        sch = schedule(step, rank, n, 0 if ring_segs is None else ring_segs[rank].shape[1])
        if sch is None:
            plans.append(None)
        elif ring_segs is None:
            plans.append(BLOCK_PLAIN)
        else:
            qs, ks, causal = sch
            plans.append(plan_block(ring_segs[rank][:, qs], ring_segs[(rank - step) % n][:, ks], causal))
    return plans


class RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seg, group, scale, schedule: Schedule, plans, kernel: Kernel):
        comm = RingComm(group)
        n, r, s_len = comm.size, comm.rank, q.shape[2]
        travel = seg is not None and any(p is not None and p.kind == MASK for p in plans)
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        kv, kseg = torch.stack([k, v]), seg
        for step in range(n):
            if step + 1 < n:
                nxt = comm.send_recv([kv] + ([kseg] if travel else []))
            sch = schedule(step, r, n, s_len)
            if sch is not None:
                qs, ks, causal = sch
                bo, bl = block_forward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], causal, scale, _seg(seg, qs),
                                       _seg(kseg, ks), plan=plans[step], kernel=kernel)
                out[:, :, qs], lse[:, :, qs] = merge(out[:, :, qs], lse[:, :, qs], bo, bl)
            if step + 1 < n:
                comm.wait()
                kv, kseg = nxt[0], (nxt[1] if travel else None)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, seg)
        ctx.group, ctx.scale, ctx.schedule, ctx.plans, ctx.kernel, ctx.travel = (
            group, scale, schedule, plans, kernel, travel)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, seg = ctx.saved_tensors
        comm, dcomm = RingComm(ctx.group), RingComm(ctx.group)
        n, r, s_len = comm.size, comm.rank, q.shape[2]
        travel = ctx.travel
        dout = dout.contiguous().to(q.dtype)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv, kseg = torch.stack([k, v]), seg
        dkv = drecv = None
        for step in range(n):
            if step + 1 < n:
                nxt = comm.send_recv([kv] + ([kseg] if travel else []))
            blk = torch.zeros(kv.shape, dtype=torch.float32, device=q.device)
            sch = ctx.schedule(step, r, n, s_len)
            if sch is not None:
                qs, ks, causal = sch
                dq_b, dk_b, dv_b = block_backward(
                    dout[:, :, qs], q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], out[:, :, qs], lse[:, :, qs],
                    causal, ctx.scale, _seg(seg, qs), _seg(kseg, ks), plan=ctx.plans[step], kernel=ctx.kernel,
                )
                dq[:, :, qs] += dq_b
                blk[0][:, :, ks] += dk_b
                blk[1][:, :, ks] += dv_b
            if n == 1:
                dkv = blk
            else:
                if step > 0:
                    dcomm.wait()
                    blk += drecv[0]
                drecv = dcomm.send_recv([blk], tag=16)
            if step + 1 < n:
                comm.wait()
                kv, kseg = nxt[0], (nxt[1] if travel else None)
        if n > 1:
            dcomm.wait()
            dkv = drecv[0]
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None, None


def gather_ring_segs(segment_ids: torch.Tensor | None, group) -> list[torch.Tensor] | None:
    """Every ring rank's segment ids (B, S) on the host, in ring order (collective over ``group``; one
    device-to-host copy). None stays None."""
    if segment_ids is None:
        return None
    n = group_size(group)
    if n == 1:
        return [segment_ids.cpu()]
    import torch.distributed as dist

    seg = segment_ids.contiguous()
    buf = torch.empty((n * seg.shape[0], *seg.shape[1:]), dtype=seg.dtype, device=seg.device)
    dist.all_gather_into_tensor(buf, seg, group=group)
    return list(buf.cpu().view(n, *seg.shape).unbind(0))


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, schedule: Schedule,
    segment_ids: torch.Tensor | None = None, scale: float | None = None,
    plans: list[BlockPlan | None] | None = None, kernel: Kernel | None = None,
) -> torch.Tensor:
    """q (B, H, S, D), k/v (B, Hkv, S, D), segment_ids (B, S) or None -> out (B, H, S, D).

    ``plans`` (from ``ring_plans``) are made here when not given (one all-gather of the segment ids and one
    host copy); ``kernel`` defaults to ``backends.resolve("auto", ...)``."""
    if plans is None:
        plans = ring_plans(gather_ring_segs(segment_ids, group), schedule, group_rank(group), group_size(group))
    if len(plans) != group_size(group):
        raise ValueError(f"ring_attention: {len(plans)} step plans for a ring of {group_size(group)}")
    kernel = kernel or resolve("auto", q.device, q.dtype, q.shape[-1])
    return RingAttention.apply(q, k, v, segment_ids, group, scale, schedule, plans, kernel)
