"""Parallel layout: the degrees (dp x sp_ring x sp_ulysses) and the process groups that realise them.

Design choices:
- Three named mesh axes, outermost first: ``dp``, ``sp_ring``, ``sp_ulysses``. A global rank is
  ``dp_idx * (R * U) + ring_idx * U + ulysses_idx``, so a Ulysses group is U *consecutive* ranks (inside a
  node, where all-to-all is cheap) and a ring group is *strided* by U (across nodes, point to point).
- Plain ``torch.distributed.new_group`` groups rather than a DeviceMesh: every group carries the timeout
  we pass, so no collective can wait for ever.
- A one-rank mesh (``SPMesh.single()``) needs no process group at all; every algorithm here degrades to
  plain local attention on it, which is what a single-process trainer uses for packed batches.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import torch.distributed as dist

AXES = ("dp", "sp_ring", "sp_ulysses")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of the three mesh axes; ``world_size`` (if given) must equal their product."""

    dp: int = 1
    sp_ulysses: int = 1
    sp_ring: int = 1
    world_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("dp", "sp_ulysses", "sp_ring"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ParallelDims.{name} must be a positive integer, got {v!r}")
        if self.world_size is not None and self.dp * self.sp_ulysses * self.sp_ring != self.world_size:
            raise ValueError(
                f"impossible layout: dp={self.dp} x sp_ring={self.sp_ring} x sp_ulysses={self.sp_ulysses} = "
                f"{self.dp * self.sp_ring * self.sp_ulysses} ranks, but the world has {self.world_size}"
            )

    @property
    def sp(self) -> int:
        return self.sp_ulysses * self.sp_ring

    @property
    def total(self) -> int:
        return self.dp * self.sp

    def validate_heads(self, num_heads: int, num_kv_heads: int | None = None) -> None:
        """Check that Ulysses can split the heads: ``num_heads % U == 0`` and KV heads either split evenly
        (``kv % U == 0``) or are replicated (``U % kv == 0``)."""
        u = self.sp_ulysses
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % kv:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={kv}")
        if num_heads % u:
            raise ValueError(
                f"sp_ulysses={u} does not divide num_heads={num_heads}: Ulysses gives each rank num_heads/U "
                f"heads; use a Ulysses degree that divides {num_heads} and put the rest on sp_ring"
            )
        if kv % u and u % kv:
            raise ValueError(
                f"sp_ulysses={u} and num_kv_heads={kv}: KV heads must split evenly (kv % U == 0) or be "
                f"replicated (U % kv == 0)"
            )

    def coords(self, rank: int) -> dict[str, int]:
        """Mesh coordinates of a global rank, by axis name."""
        if not 0 <= rank < self.total:
            raise ValueError(f"rank {rank} outside a world of {self.total}")
        u = rank % self.sp_ulysses
        r = (rank // self.sp_ulysses) % self.sp_ring
        d = rank // self.sp
        return {"dp": d, "sp_ring": r, "sp_ulysses": u}

    def rank_of(self, dp: int, sp_ring: int, sp_ulysses: int) -> int:
        return dp * self.sp + sp_ring * self.sp_ulysses + sp_ulysses


@dataclass
class SPMesh:
    """The process groups of one rank. ``sp_rank = ring_rank * U + ulysses_rank`` within its SP group."""

    dims: ParallelDims
    rank: int = 0
    sp_group: object | None = None
    ring_group: object | None = None
    ulysses_group: object | None = None
    dp_group: object | None = None
    coords: dict[str, int] = field(default_factory=lambda: {"dp": 0, "sp_ring": 0, "sp_ulysses": 0})

    @staticmethod
    def single() -> SPMesh:
        """A degenerate one-rank mesh (no process groups)."""
        return SPMesh(ParallelDims(1, 1, 1, 1))

    @property
    def sp_size(self) -> int:
        return self.dims.sp

    @property
    def ring_size(self) -> int:
        return self.dims.sp_ring

    @property
    def ulysses_size(self) -> int:
        return self.dims.sp_ulysses

    @property
    def ring_rank(self) -> int:
        return self.coords["sp_ring"]

    @property
    def ulysses_rank(self) -> int:
        return self.coords["sp_ulysses"]

    @property
    def sp_rank(self) -> int:
        return self.ring_rank * self.ulysses_size + self.ulysses_rank


def build_mesh(dims: ParallelDims, timeout_s: float = 120.0) -> SPMesh:
    """Create every group of the layout (collective: all ranks call it with the same ``dims``).

    Needs an initialised default process group whose size equals ``dims.total``.
    """
    if not dist.is_available() or not dist.is_initialized():
        if dims.total == 1:
            return SPMesh.single()
        raise RuntimeError("build_mesh needs torch.distributed initialised (see longvila.parallel.comm)")
    world, rank = dist.get_world_size(), dist.get_rank()
    ParallelDims(dims.dp, dims.sp_ulysses, dims.sp_ring, world)  # validates against the real world size
    timeout = _dt.timedelta(seconds=timeout_s)
    mesh = SPMesh(dims=dims, rank=rank, coords=dims.coords(rank))
    d, r, u = dims.dp, dims.sp_ring, dims.sp_ulysses
    # NOTE: new_group is collective over the whole world: every rank creates every group, in the same order.
    for di in range(d):
        ranks = [dims.rank_of(di, ri, ui) for ri in range(r) for ui in range(u)]
        g = dist.new_group(ranks, timeout=timeout)
        if rank in ranks:
            mesh.sp_group = g
    for di in range(d):
        for ri in range(r):
            ranks = [dims.rank_of(di, ri, ui) for ui in range(u)]
            g = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                mesh.ulysses_group = g
    for di in range(d):
        for ui in range(u):
            ranks = [dims.rank_of(di, ri, ui) for ri in range(r)]
            g = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                mesh.ring_group = g
    for ri in range(r):
        for ui in range(u):
            ranks = [dims.rank_of(di, ri, ui) for di in range(d)]
            g = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                mesh.dp_group = g
    return mesh
