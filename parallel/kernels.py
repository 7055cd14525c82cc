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
  If a block lies inside one sample the fast causal / full path runs; otherwise a float block mask
  (same-sample AND causal) is built. The flash op reports lse = 0 for a fully masked row; we set it to
  -inf so that the merge ignores the row.
- The merge keeps the running output and LSE in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch

_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _expand_kv(k: torch.Tensor, heads: int) -> torch.Tensor:
    g = heads // k.shape[1]
    return k if g == 1 else k.repeat_interleave(g, dim=1)


def _reduce_kv_grad(dk: torch.Tensor, kv_heads: int) -> torch.Tensor:
    b, h, s, d = dk.shape
    return dk if h == kv_heads else dk.view(b, kv_heads, h // kv_heads, s, d).sum(2)


def block_mask(
    q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, causal: bool, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(float mask (B, 1, Sq, Sk) of 0 / -inf or None, fully-masked rows (B, 1, Sq) bool or None).

    None means "no packing inside this block": use the kernel's own causal flag.
    """
    if q_seg is None or k_seg is None:
        return None, None
    first = q_seg.reshape(-1)[:1]
    if bool((q_seg == first).all()) and bool((k_seg == first).all()):
        return None, None
    allowed = q_seg[:, :, None] == k_seg[:, None, :]
    if causal:
        sq, sk = allowed.shape[1:]
        allowed = allowed & torch.ones(sq, sk, dtype=torch.bool).tril()
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    return mask.unsqueeze(1), (~allowed.any(-1)).unsqueeze(1)


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None,
    q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Sq, D), k/v (B, Hkv, Sk, D), segs (B, Sq)/(B, Sk) -> out (B, H, Sq, D) in q's dtype,
    lse (B, H, Sq) fp32. ``causal`` aligns top-left (used with Sq == Sk)."""
    h = q.shape[1]
    mask, empty = block_mask(q_seg, k_seg, causal, q.dtype)
    out, lse = _fwd(
        q, _expand_kv(k, h), _expand_kv(v, h), 0.0, causal and mask is None, attn_mask=mask, scale=scale
    )
    lse = lse.float()
    if empty is not None:
        lse = lse.masked_fill(empty, float("-inf"))
    return out, lse


def block_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, causal: bool, scale: float | None = None,
    q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one block given the final ``out`` (B, H, Sq, D) and ``lse`` (B, H, Sq):
    -> dq (B, H, Sq, D), dk, dv (B, Hkv, Sk, D)."""
    h, hkv = q.shape[1], k.shape[1]
    mask, _ = block_mask(q_seg, k_seg, causal, q.dtype)
    dq, dk, dv = _bwd(
        dout.contiguous(), q, _expand_kv(k, h), _expand_kv(v, h), out.contiguous(), lse.contiguous(), 0.0,
        causal and mask is None, attn_mask=mask, scale=scale,
    )
    return dq, _reduce_kv_grad(dk, hkv), _reduce_kv_grad(dv, hkv)


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
