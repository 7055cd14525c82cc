"""The needle grid with its long forward pass sharded over ranks (MM-SP inference), on local processes.

``run_sharded(cfg, ckpt)`` loads the adapter named by ``cfg.model_type`` and encodes (or finds cached) the
haystack embeddings once in the calling process, then starts ``cfg.nproc`` gloo processes with
``longvila.parallel.launch.run_distributed``. Every rank loads the same adapter from the same spec (model type
and checkpoint), shards its LLM over a ring of all ranks (``VideoLM.shard``: the sequence-parallel attention
through ``apply_sequence_parallel``), and runs the same grid (``needle.run`` with a mesh): each cell's
teacher-forced forward pass is zigzag-sharded over the ranks (``parallel.inference.sp_score``), and rank 0
writes the cell files, so resume works as on one process. An adapter that cannot be sharded (one that runs
its model's own forward at frame level) is refused before any process starts. A failing or hanging rank ends
the run with an error naming it (run_distributed's watchdog).
"""

from __future__ import annotations

import dataclasses
import os

from longvila.eval import needle
from longvila.eval.adapters import load_adapter


def _worker(rank: int, world: int, cfg_dict: dict, ckpt: str) -> dict | None:
    from longvila.parallel.mesh import ParallelDims, build_mesh

    cfg = needle.NeedleConfig(**{**cfg_dict, "depths": tuple(cfg_dict["depths"])})
    lm = load_adapter(cfg.model_type, ckpt)
    mesh = build_mesh(ParallelDims(dp=1, sp_ulysses=1, sp_ring=world, world_size=world))
    summary = needle.run(cfg, lm=lm, mesh=mesh, rank=rank)
    return summary if rank == 0 else None


def run_sharded(cfg: needle.NeedleConfig, ckpt: str | os.PathLike, timeout: float = 6 * 3600.0) -> dict:
    """Run (or resume) the grid on ``cfg.nproc`` ranks; returns rank 0's summary."""
    from longvila.parallel.launch import run_distributed

    if cfg.nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {cfg.nproc}")
    lm = load_adapter(cfg.model_type, ckpt)
    level = needle.resolve_level(cfg, lm)
    if not lm.can_shard:
        lm.shard(None)  # raises, saying why
    if level != "embedding":
        raise ValueError(f"needle: the sharded grid (--nproc {cfg.nproc}) runs at embedding level, not {level!r}")
    cache = cfg.cache_dir or os.path.join(cfg.out, "cache")
    lm.cached_visual(cache, needle._haystack_key(cfg), cfg.frames, lambda: needle._haystack_frames(cfg, cfg.frames),
                     level)
    del lm
    threads = max(1, (os.cpu_count() or 1) // cfg.nproc)
    results = run_distributed(_worker, cfg.nproc, dataclasses.asdict(cfg), str(ckpt), timeout=timeout,
                              threads=threads)
    return results[0]
