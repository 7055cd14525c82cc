"""longvila.parallel: multi-modal sequence parallelism (MM-SP) on torch.distributed.

Public API (names kept stable; imported lazily so that ``longvila parallel plan`` stays fast):
- layout: ``ParallelDims``, ``SPMesh``, ``build_mesh``, ``plan_layout``
- processes: ``init_distributed`` (torchrun), ``run_distributed`` (local gloo processes)
- sharding: ``zigzag_shard``, ``zigzag_unshard``, ``padded_length``
- attention on local (B, H, S_local, D) shards: ``sp_attention``, ``segment_ids_from_positions``; the
  host-made plan of a step: ``plan_from_positions``, ``use_plan``
- Hugging Face: ``apply_sequence_parallel``, ``remove_sequence_parallel``
- training step: ``mmsp_forward``, ``reduce_sp_gradients``
- inference: ``sp_prefill``, ``sp_generate``, ``sp_score``
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ParallelDims": "mesh", "SPMesh": "mesh", "build_mesh": "mesh", "plan_layout": "planner",
    "init_distributed": "comm", "run_distributed": "launch",
    "zigzag_shard": "zigzag", "zigzag_unshard": "zigzag", "padded_length": "zigzag",
    "sp_attention": "attention", "segment_ids_from_positions": "attention",
    "plan_from_positions": "attention", "use_plan": "attention",
    "apply_sequence_parallel": "hf", "remove_sequence_parallel": "hf",
    "mmsp_forward": "mmsp", "reduce_sp_gradients": "mmsp",
    "sp_prefill": "inference", "sp_generate": "inference", "sp_score": "inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'longvila.parallel' has no attribute {name!r}")
