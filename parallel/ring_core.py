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
- Packed-sample ids travel with their K/V block, so masks never need the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .comm import RingComm
from .kernels import block_backward, block_forward, merge

Plan = tuple[slice, slice, bool] | None
Schedule = Callable[[int, int, int, int], Plan]


def _seg(seg: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if seg is None else seg[:, sl]


class RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seg, group, scale, schedule: Schedule):
        comm = RingComm(group)
        n, r, s_len = comm.size, comm.rank, q.shape[2]
        out = lse = None
        kv, kseg = torch.stack([k, v]), seg
        for step in range(n):
            if step + 1 < n:
                nxt = comm.send_recv([kv] + ([kseg] if seg is not None else []))
            plan = schedule(step, r, n, s_len)
            if plan is not None:
                qs, ks, causal = plan
                bo, bl = block_forward(
                    q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], causal, scale, _seg(seg, qs), _seg(kseg, ks)
                )
                if out is None:
                    out = torch.zeros(q.shape, dtype=torch.float32)
                    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32)
                out[:, :, qs], lse[:, :, qs] = merge(out[:, :, qs], lse[:, :, qs], bo, bl)
            if step + 1 < n:
                comm.wait()
                kv, kseg = nxt[0], (nxt[1] if seg is not None else None)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, seg)
        ctx.group, ctx.scale, ctx.schedule = group, scale, schedule
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, seg = ctx.saved_tensors
        comm, dcomm = RingComm(ctx.group), RingComm(ctx.group)
        n, r, s_len = comm.size, comm.rank, q.shape[2]
        dout = dout.contiguous().to(q.dtype)
        dq = torch.zeros(q.shape, dtype=torch.float32)
        kv, kseg = torch.stack([k, v]), seg
        dkv = drecv = None
        for step in range(n):
            if step + 1 < n:
                nxt = comm.send_recv([kv] + ([kseg] if seg is not None else []))
            blk = torch.zeros(kv.shape, dtype=torch.float32)
            plan = ctx.schedule(step, r, n, s_len)
            if plan is not None:
                qs, ks, causal = plan
                dq_b, dk_b, dv_b = block_backward(
                    dout[:, :, qs], q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], out[:, :, qs], lse[:, :, qs],
                    causal, ctx.scale, _seg(seg, qs), _seg(kseg, ks),
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
                kv, kseg = nxt[0], (nxt[1] if seg is not None else None)
        if n > 1:
            dcomm.wait()
            dkv = drecv[0]
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, schedule: Schedule,
    segment_ids: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, S, D), k/v (B, Hkv, S, D), segment_ids (B, S) or None -> out (B, H, S, D)."""
    return RingAttention.apply(q, k, v, segment_ids, group, scale, schedule)
