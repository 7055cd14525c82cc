"""Attention backends: the dense kernels under the block kernel, chosen by device, dtype, head dimension and
the packages present (``parallel.attn_backend = auto | torch | flash_attn | ring_flash_attn``).

Every kernel has the block-kernel contract of ``kernels.py``: ``forward`` returns (out, lse fp32) of one
(q block, kv block) pair, ``backward`` is given the *final* out and LSE of the whole ring and returns that
block's share of the gradients. Tensors are (B, H, S, D), K/V with their own Hkv heads (GQA).

Design choices:
- ``torch`` is PyTorch's own kernels: on the CPU the flash op
  ``aten._scaled_dot_product_flash_attention_for_cpu``; on CUDA ``aten._scaled_dot_product_flash_attention``
  for fp16/bf16 and ``aten._scaled_dot_product_efficient_attention`` (with its log-sum-exp) for fp32, each
  with its backward op. A packed block that no per-sample plan covers takes a float mask: the CPU flash op
  takes it, on CUDA the efficient op takes it as ``attn_bias`` (the CUDA flash op has no mask).
- ``flash_attn`` (when installed) is ``flash_attn_func`` for plain blocks and one ``flash_attn_varlen_func``
  call for a packed block: the per-sample plan maps onto ``cu_seqlens``. Its backward functions
  (``_flash_attn_backward``, ``_flash_attn_varlen_backward``) changed their arguments between releases, so
  they are called by keyword with the arguments the installed release takes.
- ``ring_flash_attn`` (when installed) is a peer: its zigzag ring replaces ours inside the Ulysses
  all-to-all (``ring_flash_attn_inner``); its block kernel is flash-attn's.
- ``auto`` is flash-attn on CUDA when it is installed and takes the dtype and head dimension, else torch;
  it never picks ring-flash-attn (a comparison, not a default).
- Optional packages are looked up in ``sys.modules`` first, then imported once; a missing package is
  remembered, so the lookup costs nothing per layer. Tests put fake modules into ``sys.modules``.
- A choice that cannot run (a missing package, a CPU tensor on a CUDA-only backend, fp32 on flash, a head
  dimension a kernel refuses) is a ValueError naming the choice and the alternative.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from types import ModuleType

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "flash_attn", "ring_flash_attn")
HALF = (torch.float16, torch.bfloat16)
_MISSING: set[str] = set()
_aten = torch.ops.aten


def optional_module(name: str) -> ModuleType | None:
    """The module ``name`` if it is importable (``sys.modules`` first), else None (remembered)."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    if name in _MISSING:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        _MISSING.add(name)
        return None


def expand_kv(k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, heads, S, D), each KV head repeated for its query-head group."""
    g = heads // k.shape[1]
    return k if g == 1 else k.repeat_interleave(g, dim=1)


def reduce_kv_grad(dk: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, S, D) gradient of expanded K/V -> (B, kv_heads, S, D), summed over each head group."""
    b, h, s, d = dk.shape
    return dk if h == kv_heads else dk.view(b, kv_heads, h // kv_heads, s, d).sum(2)


class Kernel:
    """Dense block kernels. ``forward(q (B, H, Sq, D), k/v (B, Hkv, Sk, D), causal, scale)`` -> (out
    (B, H, Sq, D), lse (B, H, Sq) fp32); ``backward(dout, q, k, v, out, lse, causal, scale)`` -> (dq, dk, dv)
    with dk/dv (B, Hkv, Sk, D); ``masked_*`` take a float mask (B, 1, Sq, Sk) of 0 / -inf instead of the
    causal flag; ``split_*`` run a per-sample plan (``kernels.BlockPlan.parts``). ``causal`` aligns top-left."""

    name = "?"

    def forward(self, q, k, v, causal, scale):
        raise NotImplementedError

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        raise NotImplementedError

    def masked_forward(self, q, k, v, mask, scale):
        raise NotImplementedError

    def masked_backward(self, dout, q, k, v, out, lse, mask, scale):
        raise NotImplementedError

    def split_forward(self, q, k, v, parts, scale):
        """Sub-block by sub-block: out (B, H, Sq, D) in q's dtype, lse fp32; queries of no sub-block keep
        out = 0 and lse = -inf."""
        h = q.shape[1]
        k, v = expand_kv(k, h), expand_kv(v, h)
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        for r, plan in parts:
            for qa, qb, ka, kb, c in plan:
                o, l_ = self.forward(q[r, :, qa:qb], k[r, :, ka:kb], v[r, :, ka:kb], c, scale)
                out[r, :, qa:qb], lse[r, :, qa:qb] = o, l_
        return out, lse

    def split_backward(self, dout, q, k, v, out, lse, parts, scale):
        h, hkv = q.shape[1], k.shape[1]
        ke, ve = expand_kv(k, h), expand_kv(v, h)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(ke), torch.zeros_like(ve)
        dout, out, lse = dout.contiguous(), out.contiguous(), lse.contiguous()
        for r, plan in parts:
            for qa, qb, ka, kb, c in plan:
                gq, gk, gv = self.backward(dout[r, :, qa:qb], q[r, :, qa:qb], ke[r, :, ka:kb], ve[r, :, ka:kb],
                                           out[r, :, qa:qb], lse[r, :, qa:qb], c, scale)
                dq[r, :, qa:qb] += gq
                dk[r, :, ka:kb] += gk
                dv[r, :, ka:kb] += gv
        return dq, reduce_kv_grad(dk, hkv), reduce_kv_grad(dv, hkv)


class TorchCPU(Kernel):
    """PyTorch's CPU flash op (any float dtype; masks as ``attn_mask``)."""

    name = "torch-cpu-flash"

    def forward(self, q, k, v, causal, scale, mask=None):
        h = q.shape[1]
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
            q, expand_kv(k, h), expand_kv(v, h), 0.0, causal, attn_mask=mask, scale=scale)
        return out, lse.float()

    def backward(self, dout, q, k, v, out, lse, causal, scale, mask=None):
        h, hkv = q.shape[1], k.shape[1]
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.contiguous(), q, expand_kv(k, h), expand_kv(v, h), out.contiguous(), lse.contiguous(), 0.0,
            causal, attn_mask=mask, scale=scale)
        return dq, reduce_kv_grad(dk, hkv), reduce_kv_grad(dv, hkv)

    def masked_forward(self, q, k, v, mask, scale):
        return self.forward(q, k, v, False, scale, mask)

    def masked_backward(self, dout, q, k, v, out, lse, mask, scale):
        return self.backward(dout, q, k, v, out, lse, False, scale, mask)


def _efficient_bias(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Float mask (B, 1, Sq, Sk) -> (B, H, Sq, Sk) view of a buffer whose rows are padded to 16 elements
    (the efficient kernel's alignment), as PyTorch's own SDPA lays its bias out."""
    b, _, sq, sk = mask.shape
    buf = mask.new_zeros(b, 1, sq, -(-sk // 16) * 16)
    buf[..., :sk] = mask
    return buf[..., :sk].expand(b, heads, sq, sk)


class TorchEfficient(Kernel):
    """PyTorch's CUDA memory-efficient op (fp32, fp16, bf16; masks as ``attn_bias``)."""

    name = "torch-cuda-efficient"

    def forward(self, q, k, v, causal, scale, mask=None):
        h = q.shape[1]
        bias = None if mask is None else _efficient_bias(mask, h)
        out, lse, _, _ = _aten._scaled_dot_product_efficient_attention(
            q, expand_kv(k, h), expand_kv(v, h), bias, True, 0.0, causal, scale=scale)
        return out, lse[..., : q.shape[2]]  # the op pads the LSE rows to a multiple of 32

    def backward(self, dout, q, k, v, out, lse, causal, scale, mask=None):
        h, hkv = q.shape[1], k.shape[1]
        sq = q.shape[2]
        bias = None if mask is None else _efficient_bias(mask, h)
        lse = F.pad(lse.float(), (0, -(-sq // 32) * 32 - sq)).contiguous()  # the op's padded LSE layout
        seed = torch.empty((), dtype=torch.int64, device=q.device)  # unused without dropout
        dq, dk, dv, _ = _aten._scaled_dot_product_efficient_attention_backward(
            dout.contiguous(), q, expand_kv(k, h), expand_kv(v, h), bias, out.contiguous(), lse, seed, seed, 0.0,
            [True, True, True, False], causal, scale=scale)
        return dq, reduce_kv_grad(dk, hkv), reduce_kv_grad(dv, hkv)

    def masked_forward(self, q, k, v, mask, scale):
        return self.forward(q, k, v, False, scale, mask)

    def masked_backward(self, dout, q, k, v, out, lse, mask, scale):
        return self.backward(dout, q, k, v, out, lse, False, scale, mask)


class TorchFlash(TorchEfficient):
    """PyTorch's CUDA flash op (fp16/bf16); masked blocks go to the efficient op."""

    name = "torch-cuda-flash"

    def forward(self, q, k, v, causal, scale):
        h = q.shape[1]
        out, lse, *_ = _aten._scaled_dot_product_flash_attention(
            q, expand_kv(k, h), expand_kv(v, h), 0.0, causal, False, scale=scale)
        return out, lse

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        h, hkv = q.shape[1], k.shape[1]
        dev = q.device
        cum = torch.empty(0, dtype=torch.int32, device=dev)  # dense batch: no cumulative lengths
        seed = torch.empty(2, dtype=torch.uint64, device=dev)  # rng state, unused without dropout
        offset = torch.empty((), dtype=torch.uint64, device=dev)
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_backward(
            dout.contiguous(), q, expand_kv(k, h), expand_kv(v, h), out.contiguous(), lse.float().contiguous(), cum,
            cum, q.shape[2], k.shape[2], 0.0, causal, seed, offset, scale=scale)
        return dq, reduce_kv_grad(dk, hkv), reduce_kv_grad(dv, hkv)

    def masked_forward(self, q, k, v, mask, scale):
        return TorchEfficient.forward(self, q, k, v, False, scale, mask)

    def masked_backward(self, dout, q, k, v, out, lse, mask, scale):
        return TorchEfficient.backward(self, dout, q, k, v, out, lse, False, scale, mask)


def _call(fn, **kwargs):
    """Call a flash-attn function with the keyword arguments its signature takes (``window_size`` as one
    pair or as ``window_size_left/right``); a required argument we do not know is a TypeError naming it."""
    params = inspect.signature(fn).parameters
    if "window_size" not in params and "window_size_left" in params:
        left, right = kwargs.pop("window_size")
        kwargs.update(window_size_left=left, window_size_right=right)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise TypeError(f"{fn.__module__}.{fn.__name__}: this flash-attn release wants {missing}, which "
                        "longvila does not know; use attn_backend='torch'")
    return fn(**{n: v for n, v in kwargs.items() if n in params})


_FA_COMMON = dict(dropout_p=0.0, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                  rng_state=None)


class FlashAttn(TorchFlash):
    """flash-attn 2: (B, S, H, D) layout, native GQA, one varlen call per packed block; masked blocks go to
    PyTorch's efficient op."""

    name = "flash_attn"

    def __init__(self, module: ModuleType):
        self.fa = module
        self.iface = getattr(module, "flash_attn_interface", None) or importlib.import_module(
            f"{module.__name__}.flash_attn_interface")

    @staticmethod
    def _scale(scale, d):
        return d ** -0.5 if scale is None else scale

    def forward(self, q, k, v, causal, scale):
        out, lse, _ = self.fa.flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0,
            softmax_scale=self._scale(scale, q.shape[-1]), causal=causal, return_attn_probs=True)
        return out.transpose(1, 2), lse.float()

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        dq, dk, dv = torch.empty_like(qt), torch.empty_like(kt), torch.empty_like(vt)
        _call(self.iface._flash_attn_backward, dout=dout.transpose(1, 2).contiguous(), q=qt, k=kt, v=vt,
              out=out.transpose(1, 2).contiguous(), softmax_lse=lse.float().contiguous(), dq=dq, dk=dk, dv=dv,
              softmax_scale=self._scale(scale, q.shape[-1]), causal=causal, **_FA_COMMON)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)

    def split_forward(self, q, k, v, parts, scale):
        b, h, sq, d = q.shape
        vl = varlen_layout(parts, b, sq, k.shape[2], q.device)
        qf = q.transpose(1, 2).reshape(b * sq, h, d).index_select(0, vl.q_idx)
        kf, vf = (t.transpose(1, 2).reshape(-1, t.shape[1], d).index_select(0, vl.k_idx) for t in (k, v))
        o, lse, _ = self.fa.flash_attn_varlen_func(
            qf, kf, vf, vl.cu_q, vl.cu_k, vl.max_q, vl.max_k, dropout_p=0.0, softmax_scale=self._scale(scale, d),
            causal=vl.causal, return_attn_probs=True)
        if lse.dim() != 2:
            raise ValueError(f"flash_attn: varlen LSE of shape {tuple(lse.shape)}; longvila needs flash-attn >= 2.6 "
                             "((H, total) LSE); upgrade it or use attn_backend='torch'")
        out = q.new_zeros(b * sq, h, d).index_copy_(0, vl.q_idx, o)
        full = torch.full((h, b * sq), float("-inf"), dtype=torch.float32, device=q.device)
        full.index_copy_(1, vl.q_idx, lse.float())
        return out.view(b, sq, h, d).transpose(1, 2), full.view(h, b, sq).transpose(0, 1)

    def split_backward(self, dout, q, k, v, out, lse, parts, scale):
        b, h, sq, d = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        vl = varlen_layout(parts, b, sq, sk, q.device)

        def rows(t, idx):  # (B, H', S, D) -> the plan's token rows (N, H', D)
            return t.transpose(1, 2).reshape(-1, t.shape[1], d).index_select(0, idx)

        qf, dof, of = rows(q, vl.q_idx), rows(dout, vl.q_idx), rows(out, vl.q_idx)
        kf, vf = rows(k, vl.k_idx), rows(v, vl.k_idx)
        lf = lse.float().transpose(0, 1).reshape(h, b * sq).index_select(1, vl.q_idx).contiguous()
        dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
        _call(self.iface._flash_attn_varlen_backward, dout=dof, q=qf, k=kf, v=vf, out=of, softmax_lse=lf, dq=dq,
              dk=dk, dv=dv, cu_seqlens_q=vl.cu_q, cu_seqlens_k=vl.cu_k, max_seqlen_q=vl.max_q,
              max_seqlen_k=vl.max_k, softmax_scale=self._scale(scale, d), causal=vl.causal, **_FA_COMMON)
        gq = q.new_zeros(b * sq, h, d).index_copy_(0, vl.q_idx, dq).view(b, sq, h, d).transpose(1, 2)
        gk = k.new_zeros(b * sk, hkv, d).index_copy_(0, vl.k_idx, dk).view(b, sk, hkv, d).transpose(1, 2)
        gv = v.new_zeros(b * sk, hkv, d).index_copy_(0, vl.k_idx, dv).view(b, sk, hkv, d).transpose(1, 2)
        return gq, gk, gv


class VarlenLayout:
    """A per-sample plan as flash-attn's varlen arguments: token rows of the flattened (B*Sq) queries and
    (B*Sk) keys in sub-block order (``q_idx``, ``k_idx`` int64), ``cu_q``/``cu_k`` int32 cumulative lengths,
    the longest sub-block, and the (shared) causal flag. Built on the host, copied to the device once."""

    def __init__(self, parts, sq: int, sk: int, batch_rows: list[int]):
        qi, ki, lq, lk, causal = [], [], [0], [0], set()
        for rows, plan in parts:
            for r in batch_rows[rows]:
                for qa, qb, ka, kb, c in plan:
                    qi.append(torch.arange(r * sq + qa, r * sq + qb))
                    ki.append(torch.arange(r * sk + ka, r * sk + kb))
                    lq.append(lq[-1] + qb - qa)
                    lk.append(lk[-1] + kb - ka)
                    causal.add(c)
        if len(causal) > 1:
            raise ValueError("a varlen block mixes causal and full sub-blocks")
        self.q_idx, self.k_idx = torch.cat(qi), torch.cat(ki)
        self.cu_q, self.cu_k = torch.tensor(lq, dtype=torch.int32), torch.tensor(lk, dtype=torch.int32)
        self.max_q = max(b - a for a, b in zip(lq, lq[1:], strict=False))
        self.max_k = max(b - a for a, b in zip(lk, lk[1:], strict=False))
        self.causal = causal.pop()

    def to(self, device: torch.device) -> VarlenLayout:
        new = object.__new__(VarlenLayout)
        new.__dict__.update(self.__dict__)
        for n in ("q_idx", "k_idx", "cu_q", "cu_k"):
            setattr(new, n, getattr(self, n).to(device, non_blocking=True))
        return new


_VARLEN_CACHE: dict = {}


def varlen_layout(parts, batch: int, sq: int, sk: int, device: torch.device) -> VarlenLayout:
    """The varlen layout of a plan on ``device``, built once per plan object (plans live for one step and are
    reused by every block and by the backward)."""
    key = (id(parts), batch, sq, sk, str(device))
    hit = _VARLEN_CACHE.get(key)
    if hit is not None and hit[0] is parts:
        return hit[1]
    layout = VarlenLayout(parts, sq, sk, list(range(batch))).to(device)
    if len(_VARLEN_CACHE) > 256:
        _VARLEN_CACHE.clear()
    _VARLEN_CACHE[key] = (parts, layout)
    return layout


def _check_head_dim(choice: str, kernel: str, d: int, multiple: int, largest: int | None) -> None:
    if d % multiple or (largest is not None and d > largest):
        limit = f"a multiple of {multiple}" + (f" up to {largest}" if largest else "")
        raise ValueError(f"attn_backend={choice!r}: {kernel} takes head dimensions {limit}, got {d}; "
                         "use attn_backend='torch' on the CPU or pad the heads")


def resolve(choice: str, device: torch.device | str, dtype: torch.dtype, head_dim: int) -> Kernel:
    """The kernel for ``choice`` on tensors of ``device``/``dtype`` with ``head_dim``; errors name the choice
    and the alternative. ``ring_flash_attn`` resolves to flash-attn's block kernel (its ring is
    ``ring_flash_attn_inner``)."""
    if choice not in BACKENDS:
        raise ValueError(f"attn_backend={choice!r}: choose one of {list(BACKENDS)}")
    device = torch.device(device)
    if device.type == "cpu":
        if choice in ("flash_attn", "ring_flash_attn"):
            raise ValueError(f"attn_backend={choice!r} runs on CUDA tensors only, got {device}; use "
                             "attn_backend='torch' (or 'auto') on the CPU")
        return TORCH_CPU
    if device.type != "cuda":
        raise ValueError(f"attn_backend={choice!r}: tensors on {device}; the kernels run on 'cpu' or 'cuda'")
    if choice in ("flash_attn", "ring_flash_attn"):
        for pkg in ("flash_attn",) + (("ring_flash_attn",) if choice == "ring_flash_attn" else ()):
            if optional_module(pkg) is None:
                raise ValueError(f"attn_backend={choice!r}: the package {pkg.replace('_', '-')} is not installed; "
                                 f"install it or use attn_backend='torch' (PyTorch's own CUDA kernels)")
        if dtype not in HALF:
            raise ValueError(f"attn_backend={choice!r}: flash-attn takes fp16/bf16, got {dtype}; use "
                             "attn_backend='torch' (PyTorch's efficient kernel runs fp32) or train in bf16")
        _check_head_dim(choice, "flash-attn", head_dim, 8, 256)
        return FlashAttn(optional_module("flash_attn"))
    if choice == "auto" and dtype in HALF and optional_module("flash_attn") is not None \
            and head_dim % 8 == 0 and head_dim <= 256:
        return FlashAttn(optional_module("flash_attn"))
    if dtype in HALF:
        if head_dim % 8 == 0 and head_dim <= 256:
            return TORCH_FLASH
        _check_head_dim(choice, "PyTorch's efficient kernel (fp16/bf16)", head_dim, 8, None)
        return TORCH_EFFICIENT
    if dtype == torch.float32:
        _check_head_dim(choice, "PyTorch's efficient kernel (fp32)", head_dim, 4, None)
        return TORCH_EFFICIENT
    raise ValueError(f"attn_backend={choice!r}: no CUDA attention kernel for {dtype}; use fp32, fp16 or bf16")


def check_choice(choice: str) -> None:
    """Validate a configured backend before any tensor exists: a known name whose packages are installed."""
    if choice not in BACKENDS:
        raise ValueError(f"attn_backend={choice!r}: choose one of {list(BACKENDS)}")
    need = {"flash_attn": ("flash_attn",), "ring_flash_attn": ("flash_attn", "ring_flash_attn")}.get(choice, ())
    for pkg in need:
        if optional_module(pkg) is None:
            raise ValueError(f"attn_backend={choice!r}: the package {pkg.replace('_', '-')} is not installed; "
                             "install it or use attn_backend='auto' or 'torch'")


TORCH_CPU, TORCH_FLASH, TORCH_EFFICIENT = TorchCPU(), TorchFlash(), TorchEfficient()
