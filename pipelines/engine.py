"""DeepSpeed as the training engine: process group, ZeRO config, learning-rate schedule, SP loss scale.

Design choices:
- The process group is DeepSpeed's (``deepspeed.init_distributed``) with gloo on CPU and NCCL on GPU,
  always with a timeout, so a lost rank ends the job instead of hanging it. Under NCCL each process first
  selects its GPU (``LOCAL_RANK``), so the groups, the collectives' bookkeeping and the engine's model all
  land on the rank's own device. A single process without
  torchrun gets a one-rank group on a free local port, so the same code path runs everywhere.
- The DeepSpeed config is generated from the typed stage config and written beside the checkpoint
  (``ds_config.json``); at real scale it is the file to edit (ZeRO stage, bf16, offload).
- Optimizer: AdamW. On GPU DeepSpeed's fused Adam (``parallel.torch_adam`` keeps PyTorch's, e.g. to compare a
  GPU run with a CPU one); on CPU ``torch_adam`` (PyTorch's AdamW), which ZeRO
  1/2 partitions across ranks like any other. With ``optim.vision_lr_scale`` != 1 the vision tower's
  parameters form a second group at ``lr * vision_lr_scale`` (the schedule scales both groups alike).
- The learning-rate schedule is a plain ``LambdaLR`` (linear warmup, then cosine to ``min_lr_ratio`` or
  constant) handed to DeepSpeed, which steps it with the optimizer.
- Sequence parallelism: DeepSpeed averages gradients over all ``world = dp x sp`` ranks. An SP rank's loss
  is its local CE sum divided by the active tokens of its whole SP group, so the group's gradient is the
  SUM over its ranks; multiplying each rank's loss by ``sp`` turns the engine's world average into
  exactly "sum over sp, mean over dp" (``sp_loss_scale``; tested against one process).
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from typing import Any

import torch

from longvila.pipelines.config import StageConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int = 600) -> tuple[int, int]:
    """Initialise (once) the default process group; returns (rank, world size)."""
    import deepspeed

    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:  # plain `python`: a one-rank group
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # NOTE: before the group exists, so NCCL and every later tensor use this GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                   verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def ds_config(cfg: StageConfig, micro_batch: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config of a stage (the engine sees every rank as data parallel)."""
    o = cfg.optim
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.schedule.grad_accum,
        "train_batch_size": micro_batch * cfg.schedule.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": cfg.parallel.bf16},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay,
                       "torch_adam": cfg.parallel.torch_adam or not torch.cuda.is_available()},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return conf


def schedule_clock(cfg: StageConfig, step: int) -> int:
    """The schedule's position at optimizer step ``step``: the step itself, less the steps of the curriculum's
    holding phases (``Phase.hold``) before it (a held phase's steps all stand where the phase begins)."""
    held = {i for i, p in enumerate(cfg.data.curriculum) if p.hold}
    if not held:
        return step
    clock, start = 0, 0
    for i, p in enumerate(cfg.data.curriculum):
        if step < start + p.steps:
            return clock + (0 if i in held else step - start)
        start += p.steps
        clock += 0 if i in held else p.steps
    return clock + step - start


def lr_lambda(cfg: StageConfig):
    """step -> multiplier of the peak lr: linear warmup, then cosine to min_lr_ratio, or constant; the cosine
    runs on ``schedule_clock`` (held phases stay at the lr where they begin)."""
    warm, floor = cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio
    total = schedule_clock(cfg, cfg.total_steps)
    kind = cfg.schedule.kind

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, max(0.0, (schedule_clock(cfg, step) - warm) / max(1, total - warm)))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_engine(cfg: StageConfig, model: torch.nn.Module, micro_batch: int, world_size: int):
    """deepspeed.initialize over the trainable parameters; returns (engine, optimizer, scheduler, ds conf)."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"stage {cfg.stage}: no trainable parameters (model.train={cfg.model.train})")
    params: list = [p for _, p in named]
    vision = [p for n, p in named if n.startswith("vision_tower.")]
    if vision and cfg.optim.vision_lr_scale != 1.0:  # the vision tower in its own group, at a scaled lr
        rest = [p for n, p in named if not n.startswith("vision_tower.")]
        params = [g for g in ({"params": rest}, {"params": vision, "lr": cfg.optim.lr * cfg.optim.vision_lr_scale})
                  if g["params"]]
    conf = ds_config(cfg, micro_batch, world_size)
    lam = lr_lambda(cfg)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=params,
        config=conf,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lam),
    )
    return engine, optimizer, scheduler, conf


def sp_loss_scale(sp: int) -> float:
    """Factor on each rank's loss so that the engine's world-average gives sum over SP, mean over DP."""
    return float(sp)
