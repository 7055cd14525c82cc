"""Stand-ins for flash-attn and ring-flash-attn (not installable on a CPU machine), computed on the CPU with
PyTorch's CPU flash op, with the upstream call signatures and layouts: (B, S, H, D) or packed (total, H, D)
tensors, native GQA, LSE (B, H, S) or (H, total). The backward keeps the two argument styles of flash-attn
releases (``window_size_left/right`` for the dense one, one ``window_size`` pair for the varlen one), so both
branches of ``backends._call`` run. ``calls`` records what was called, so tests can see which path ran."""

from __future__ import annotations

import types

import torch

from longvila.parallel.backends import TorchCPU

_CPU = TorchCPU()


def _bhsd(t):
    return t.transpose(0, 1).unsqueeze(0)  # (S, H, D) -> (1, H, S, D)


def make_flash_attn(calls: list) -> types.ModuleType:
    fa = types.ModuleType("flash_attn")
    iface = types.ModuleType("flash_attn.flash_attn_interface")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        calls.append("flash_attn_func")
        assert dropout_p == 0.0 and return_attn_probs
        out, lse = _CPU.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, softmax_scale)
        return out.transpose(1, 2), lse, None

    def _flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
                             window_size_left, window_size_right, softcap, alibi_slopes, deterministic,
                             rng_state=None):
        calls.append("_flash_attn_backward")
        assert (window_size_left, window_size_right) == (-1, -1)
        g = _CPU.backward(*(t.transpose(1, 2) for t in (dout, q, k, v, out)), softmax_lse, causal, softmax_scale)
        for buf, t in zip((dq, dk, dv), g, strict=True):
            buf.copy_(t.transpose(1, 2))
        return dq, dk, dv, None

    def _seqs(cu_q, cu_k):
        cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
        return list(zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False))

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        calls.append("flash_attn_varlen_func")
        assert cu_seqlens_q.dtype == torch.int32 and return_attn_probs
        out = torch.zeros_like(q)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"))
        for qa, qb, ka, kb in _seqs(cu_seqlens_q, cu_seqlens_k):
            assert qb - qa <= max_seqlen_q and kb - ka <= max_seqlen_k
            o, l_ = _CPU.forward(_bhsd(q[qa:qb]), _bhsd(k[ka:kb]), _bhsd(v[ka:kb]), causal, softmax_scale)
            out[qa:qb], lse[:, qa:qb] = o[0].transpose(0, 1), l_[0]
        return out, lse, None

    def _flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                    alibi_slopes, deterministic, rng_state=None):
        calls.append("_flash_attn_varlen_backward")
        for qa, qb, ka, kb in _seqs(cu_seqlens_q, cu_seqlens_k):
            g = _CPU.backward(_bhsd(dout[qa:qb]), _bhsd(q[qa:qb]), _bhsd(k[ka:kb]), _bhsd(v[ka:kb]),
                              _bhsd(out[qa:qb]), softmax_lse[None, :, qa:qb], causal, softmax_scale)
            dq[qa:qb], dk[ka:kb], dv[ka:kb] = (t[0].transpose(0, 1) for t in g)
        return dq, dk, dv, None

    fa.flash_attn_func, fa.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    iface._flash_attn_backward, iface._flash_attn_varlen_backward = _flash_attn_backward, _flash_attn_varlen_backward
    fa.flash_attn_interface = iface
    fa.__version__ = "2.7.0"
    return fa


class _Causal(torch.autograd.Function):
    """Causal attention per sequence of ``cu`` (one ring rank), differentiable, for the ring-flash-attn fake."""

    @staticmethod
    def forward(ctx, q, k, v, cu, scale):
        out, lses = torch.zeros_like(q), []
        for a, b in zip(cu[:-1], cu[1:], strict=True):
            o, l_ = _CPU.forward(_bhsd(q[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]), True, scale)
            out[a:b] = o[0].transpose(0, 1)
            lses.append(l_)
        ctx.save_for_backward(q, k, v, out)
        ctx.cu, ctx.scale, ctx.lses = cu, scale, lses
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (a, b), l_ in zip(zip(ctx.cu[:-1], ctx.cu[1:], strict=True), ctx.lses, strict=True):
            g = _CPU.backward(_bhsd(dout[a:b]), _bhsd(q[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]), _bhsd(out[a:b]), l_,
                              True, ctx.scale)
            dq[a:b], dk[a:b], dv[a:b] = (t[0].transpose(0, 1) for t in g)
        return dq, dk, dv, None, None


def make_ring_flash_attn(calls: list) -> types.ModuleType:
    """One ring rank only (group None or of size 1): the ring is then causal attention per sequence."""
    rfa = types.ModuleType("ring_flash_attn")

    def zigzag_ring_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, group=None):
        calls.append("zigzag_ring_flash_attn_func")
        assert causal
        b, s, h, d = q.shape
        flat = [t.reshape(b * s, t.shape[2], d) for t in (q, k, v)]
        return _Causal.apply(*flat, list(range(0, b * s + 1, s)), softmax_scale).view(b, s, h, d)

    def zigzag_ring_flash_attn_varlen_func(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                                           causal=False, window_size=(-1, -1), alibi_slopes=None,
                                           deterministic=False, return_attn_probs=False, group=None):
        calls.append("zigzag_ring_flash_attn_varlen_func")
        assert causal and cu_seqlens.dtype == torch.int32
        cu = cu_seqlens.tolist()
        assert max(b - a for a, b in zip(cu, cu[1:], strict=False)) == max_seqlen
        return _Causal.apply(q, k, v, cu, softmax_scale)

    rfa.zigzag_ring_flash_attn_func = zigzag_ring_flash_attn_func
    rfa.zigzag_ring_flash_attn_varlen_func = zigzag_ring_flash_attn_varlen_func
    return rfa
