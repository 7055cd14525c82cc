"""The needle grid with its long forward pass sharded over ranks (MM-SP inference), on local processes.

``run_sharded(cfg, ckpt)`` encodes (or finds cached) the haystack embeddings once in the calling process,
then starts ``cfg.nproc`` gloo processes with ``longvila.parallel.launch.run_distributed``. Every rank
loads the model, applies the sequence-parallel attention to its LLM over a ring of all ranks, and runs the
same grid (``needle.run`` with a mesh): each cell's teacher-forced forward pass is zigzag-sharded over the
ranks (``parallel.inference.sp_score``), and rank 0 writes the cell files, so resume works as on one process.
A failing or hanging rank ends the run with an error naming it (run_distributed's watchdog).
"""

from __future__ import annotations

import dataclasses
import os

from longvila.eval import needle, runner


def _worker(rank: int, world: int, cfg_dict: dict, ckpt: str) -> dict | None:
    from longvila.parallel.hf import apply_sequence_parallel
    from longvila.parallel.mesh import ParallelDims, build_mesh

    cfg = needle.NeedleConfig(**{**cfg_dict, "depths": tuple(cfg_dict["depths"])})
    lm = runner.load_model(ckpt)
    mesh = build_mesh(ParallelDims(dp=1, sp_ulysses=1, sp_ring=world, world_size=world))
    apply_sequence_parallel(lm.model.language_model, mesh)
    summary = needle.run(cfg, lm=lm, mesh=mesh, rank=rank)
    return summary if rank == 0 else None


def run_sharded(cfg: needle.NeedleConfig, ckpt: str | os.PathLike, timeout: float = 6 * 3600.0) -> dict:
    """Run (or resume) the grid on ``cfg.nproc`` ranks; returns rank 0's summary."""
    from longvila.parallel.launch import run_distributed

    if cfg.nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {cfg.nproc}")
    lm = runner.load_model(ckpt)
    cache = cfg.cache_dir or os.path.join(cfg.out, "cache")
    runner.cached_embeddings(lm, cache, needle._haystack_key(cfg), cfg.frames,
                             lambda: needle._haystack_frames(cfg, cfg.frames))
    del lm
    threads = max(1, (os.cpu_count() or 1) // cfg.nproc)
    results = run_distributed(_worker, cfg.nproc, dataclasses.asdict(cfg), str(ckpt), timeout=timeout,
                              threads=threads)
    return results[0]
