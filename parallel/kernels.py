"""The block kernel of ring attention: one (q block, kv block) attention with its log-sum-exp, its
backward against the *final* output and LSE, and the fp32 LSE merge.

Design choices:
- On CPU the kernel is PyTorch's flash SDPA op ``aten._scaled_dot_product_flash_attention_for_cpu``
  (returns (out, lse), memory linear in length) and its backward op. The backward is given the final
  output and LSE of the whole ring, so each step's recomputed probabilities are already globally
  normalised and the partial gradients simply add up.
- GQA: K/V arrive with their own (fewer) heads; they are expanded here, after communication, and the
  K/V gradients are summed back over each head group.
- Packed samples: ``q_seg``/``k_seg`` give each token's sample id (the global start index of its sample).
  If a block lies inside one sample the fast causal / full path runs. Otherwise the block is cut into one
  sub-block per sample (``segment_plan``): a sample's queries form one run of the block and its keys one
  run of the visiting block (local order follows global order, and a sample is a contiguous global
  range), so each sub-block is a plain full or causal kernel call and the work is sum(n_q x n_k) over the
  samples instead of Sq x Sk with a mask. Queries whose sample has no key in the block keep out = 0 and
  lse = -inf, which the merge ignores. Rows of a batch packed alike share one plan; rows packed
  differently get one plan each (``batch_plans``). Layouts no plan covers (a sample in several runs of a
  block) fall back to a float block mask (same-sample AND causal); the flash op reports lse = 0 for a fully
  masked row, which is set to -inf.
- The merge keeps the running output and LSE in fp32 whatever the input dtype.
- Device-generic: the dense kernels come from ``backends.py`` (PyTorch's CPU or CUDA ops, flash-attn), and
  every tensor made here is made on the device of the inputs.
- Plans are made on the host once per step: ``plan_block`` reads a CPU copy of the segment ids and returns
  a ``BlockPlan`` (plain, split into per-sample sub-blocks, or masked); the ring computes one per step of
  its schedule before the first block (``ring_core.ring_plans``) and reuses them in backward, so no block
  of the hot path reads device values (no ``.tolist()``/``.item()`` per block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import Kernel, resolve


def _packed(q_seg: torch.Tensor | None, k_seg: torch.Tensor | None) -> bool:
    """True when the block holds more than one sample (otherwise the plain kernel is exact)."""
    if q_seg is None or k_seg is None:
        return False
    first = q_seg.reshape(-1)[:1]
    return not (bool((q_seg == first).all()) and bool((k_seg == first).all()))


def block_mask(
    q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, causal: bool, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(float mask (B, 1, Sq, Sk) of 0 / -inf or None, fully-masked rows (B, 1, Sq) bool or None).

    None means "no packing inside this block": use the kernel's own causal flag.
    """
    if not _packed(q_seg, k_seg):
        return None, None
    return _mask_of(q_seg, k_seg, causal, dtype)


def _mask_of(q_seg: torch.Tensor, k_seg: torch.Tensor, causal: bool, dtype: torch.dtype):
    """``block_mask`` of a block known to be packed: built on the segs' device, reading no value."""
    allowed = q_seg[:, :, None] == k_seg[:, None, :]
    if causal:
        sq, sk = allowed.shape[1:]
        allowed = allowed & torch.ones(sq, sk, dtype=torch.bool, device=allowed.device).tril()
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    return mask.unsqueeze(1), (~allowed.any(-1)).unsqueeze(1)


def segment_runs(seg: torch.Tensor) -> list[tuple[int, int, int]]:
    """seg (S,) on the host -> [(id, start, end), ...]: maximal runs of equal ids in order."""
    change = torch.ones(seg.shape[0], dtype=torch.bool)
    change[1:] = seg[1:] != seg[:-1]
    starts = change.nonzero().flatten().tolist()
    ids = seg[starts].tolist()
    return list(zip(ids, starts, [*starts[1:], seg.shape[0]], strict=True))


Plan = list[tuple[int, int, int, int, bool]]


def _row_plan(q_seg: torch.Tensor, k_seg: torch.Tensor, causal: bool) -> Plan | None:
    """The sub-blocks of one row's segs (Sq,)/(Sk,), or None when a sample is in two runs (masked fallback)."""
    if causal and (q_seg.shape != k_seg.shape or not bool((q_seg == k_seg).all())):
        return None
    keys = {}
    for sid, a, b in segment_runs(k_seg):
        if sid in keys:
            return None  # a sample in two runs of the keys
        keys[sid] = (a, b)
    plan, seen = [], set()
    for sid, a, b in segment_runs(q_seg):
        if sid in seen:
            return None
        seen.add(sid)
        if sid in keys:
            plan.append((a, b, *keys[sid], causal))
    return plan


def segment_plan(q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, causal: bool) -> Plan | None:
    """Sub-blocks (q_start, q_end, k_start, k_end, causal) of a packed block whose rows are packed alike, one
    per sample with queries in it, or None when the plain kernel (no packing inside the block) must run or
    the rows are packed differently (see ``batch_plans``) or a sample is in two runs (masked fallback).

    Holds for the ring schedules: a causal block has the same tokens as queries and keys; in a non-causal
    block every key precedes every query, so a sample's queries see all its keys.
    """
    if not _packed(q_seg, k_seg):
        return None
    if q_seg.shape[0] > 1 and not (bool((q_seg == q_seg[:1]).all()) and bool((k_seg == k_seg[:1]).all())):
        return None
    return _row_plan(q_seg[0], k_seg[0], causal)


def batch_plans(q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, causal: bool
                ) -> list[tuple[slice, Plan]] | None:
    """(rows, plan) pairs covering the batch: the whole batch under one plan when its rows are packed alike,
    else one plan per row; None when the plain kernel or the masked fallback must run."""
    if not _packed(q_seg, k_seg):
        return None
    plan = segment_plan(q_seg, k_seg, causal)
    if plan is not None:
        return [(slice(None), plan)]
    if q_seg.shape[0] == 1:
        return None
    plans = [(slice(r, r + 1), _row_plan(q_seg[r], k_seg[r], causal)) for r in range(q_seg.shape[0])]
    return None if any(p is None for _, p in plans) else plans


PLAIN, SPLIT, MASK = "plain", "split", "mask"


@dataclass(frozen=True)
class BlockPlan:
    """How one (q block, kv block) pair is computed, decided on the host: ``plain`` (one sample: the kernel's
    own causal flag), ``split`` (``parts`` = (rows, Plan) pairs, see ``batch_plans``) or ``mask`` (the float
    block mask, built on the device from the device segment ids)."""

    kind: str
    parts: tuple[tuple[slice, Plan], ...] = ()


BLOCK_PLAIN = BlockPlan(PLAIN)


def plan_block(q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, causal: bool) -> BlockPlan:
    """Host segment ids (B, Sq) / (B, Sk) (or None: one sample) -> the block's ``BlockPlan``."""
    if not _packed(q_seg, k_seg):
        return BLOCK_PLAIN
    plans = batch_plans(q_seg, k_seg, causal)
    return BlockPlan(MASK) if plans is None else BlockPlan(SPLIT, tuple(plans))


def _plan_of(plan: BlockPlan | None, q_seg, k_seg, causal) -> BlockPlan:
    if plan is not None:
        return plan
    if q_seg is None or k_seg is None:
        return BLOCK_PLAIN
    return plan_block(q_seg.cpu(), k_seg.cpu(), causal)  # a direct call: plan now (one host copy)


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None,
    q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None,
    plan: BlockPlan | None = None, kernel: Kernel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Sq, D), k/v (B, Hkv, Sk, D), segs (B, Sq)/(B, Sk) -> out (B, H, Sq, D) in q's dtype,
    lse (B, H, Sq) fp32. ``causal`` aligns top-left (used with Sq == Sk). ``plan`` (from ``plan_block``)
    skips the planning; the segs are then read only by a ``mask`` plan. ``kernel`` defaults to
    ``backends.resolve("auto", ...)`` for q."""
    kernel = kernel or resolve("auto", q.device, q.dtype, q.shape[-1])
    plan = _plan_of(plan, q_seg, k_seg, causal)
    if plan.kind == SPLIT:
        return kernel.split_forward(q, k, v, plan.parts, scale)
    if plan.kind == MASK:
        mask, empty = _mask_of(q_seg, k_seg, causal, q.dtype)
        out, lse = kernel.masked_forward(q, k, v, mask, scale)
        return out, lse.float().masked_fill(empty, float("-inf"))
    out, lse = kernel.forward(q, k, v, causal, scale)
    return out, lse.float()


def block_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, causal: bool, scale: float | None = None,
    q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None,
    plan: BlockPlan | None = None, kernel: Kernel | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one block given the final ``out`` (B, H, Sq, D) and ``lse`` (B, H, Sq):
    -> dq (B, H, Sq, D), dk, dv (B, Hkv, Sk, D). ``plan``/``kernel`` as in ``block_forward`` (the ring
    passes the forward's plan again)."""
    kernel = kernel or resolve("auto", q.device, q.dtype, q.shape[-1])
    plan = _plan_of(plan, q_seg, k_seg, causal)
    if plan.kind == SPLIT:
        return kernel.split_backward(dout, q, k, v, out, lse, plan.parts, scale)
    if plan.kind == MASK:
        mask, _ = _mask_of(q_seg, k_seg, causal, q.dtype)
        return kernel.masked_backward(dout, q, k, v, out, lse, mask, scale)
    return kernel.backward(dout, q, k, v, out, lse, causal, scale)


def merge(
    out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine a running (out fp32 (B, H, S, D), lse fp32 (B, H, S)) with a block's result, in fp32.

    Rows whose LSE is -inf on both sides stay (0, -inf) instead of becoming NaN.
    """
    bo, bl = block_out.float(), block_lse.float()
    if out is None:
        return bo, bl
    new = torch.logaddexp(lse, bl)
    safe = new.masked_fill(torch.isinf(new), 0.0)
    wa, wb = torch.exp(lse - safe), torch.exp(bl - safe)
    return out * wa.unsqueeze(-1) + bo * wb.unsqueeze(-1), new
