"""Zigzag sharding of a sequence over a sequence-parallel mesh (the causal load balance of MM-SP).

With R ring ranks the (padded) sequence is cut into 2R chunks; ring rank r holds chunks r and 2R-1-r, so
every rank does the same causal attention work. With U Ulysses ranks inside each ring rank, that pair of
chunks is further cut into U contiguous pieces, one per Ulysses rank (the Ulysses all-to-all gathers them
back in order). SP rank ``p = ring_rank * U + ulysses_rank``.

Lengths that do not divide by 2 x R x U are padded at the end (``pad_value``), never truncated;
``zigzag_unshard(..., length=L)`` strips the padding again. Padding at the end is harmless under causal
attention: no real token attends to it, and its labels are ignored. Indices are computed on the host (they
depend on the layout only) and moved to the tensor's device for the gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .comm import all_gather
from .mesh import SPMesh


def padded_length(length: int, mesh: SPMesh) -> int:
    """The smallest length >= ``length`` that divides into 2 x sp_size equal chunks."""
    m = 2 * mesh.sp_size
    return -(-length // m) * m


def zigzag_index(total: int, mesh: SPMesh, sp_rank: int | None = None) -> torch.Tensor:
    """Global positions (S_local,) held by ``sp_rank`` (default: this rank) of a padded length ``total``."""
    R, U = mesh.ring_size, mesh.ulysses_size
    if R * U == 1:
        return torch.arange(total)
    if total % (2 * R * U):
        raise ValueError(f"length {total} is not a multiple of 2 x sp_size = {2 * R * U}; pad it first")
    p = mesh.sp_rank if sp_rank is None else sp_rank
    r, u = divmod(p, U)
    c = total // (2 * R)
    pair = torch.cat([torch.arange(r * c, (r + 1) * c), torch.arange((2 * R - 1 - r) * c, (2 * R - r) * c)])
    piece = 2 * c // U
    return pair[u * piece : (u + 1) * piece]


def pad_to(x: torch.Tensor, dim: int, length: int, value: float = 0) -> torch.Tensor:
    extra = length - x.shape[dim]
    if extra < 0:
        raise ValueError(f"cannot pad dim {dim} of size {x.shape[dim]} down to {length}")
    if extra == 0:
        return x
    dim = dim % x.dim()
    return F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, extra], value=value)


def zigzag_shard(x: torch.Tensor, dim: int, mesh: SPMesh, pad_value: float = 0) -> torch.Tensor:
    """This rank's zigzag shard of the full sequence ``x`` along ``dim``: (..., S, ...) ->
    (..., S_pad / sp_size, ...). Differentiable (index_select)."""
    total = padded_length(x.shape[dim], mesh)
    return pad_to(x, dim, total, pad_value).index_select(dim, zigzag_index(total, mesh).to(x.device))


def zigzag_unshard(x: torch.Tensor, dim: int, mesh: SPMesh, length: int | None = None) -> torch.Tensor:
    """Inverse of ``zigzag_shard`` (collective over the SP group, autograd-aware): local
    (..., S_local, ...) -> full (..., length or S_local * sp_size, ...)."""
    n = mesh.sp_size
    total = x.shape[dim] * n
    full = all_gather(x, mesh.sp_group, dim) if n > 1 else x
    order = torch.cat([zigzag_index(total, mesh, p) for p in range(n)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(total)
    out = full.index_select(dim, inverse.to(x.device))
    return out if length is None else out.narrow(dim, 0, length)
