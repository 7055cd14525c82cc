"""One stage-5 training step through the trainer's engine, written out as gradients (run under torchrun).

``python -m torch.distributed.run --nproc_per_node=W mmsp_grad_check.py OUT_DIR``: runs two layouts in
turn: ``sp`` puts all ranks in one SP group on the same sample; ``dp`` gives each rank its own sample
(sp=1). Rank 0 writes every trainable parameter's gradient after DeepSpeed's reduction (ZeRO stage 0 keeps
them in .grad) to OUT_DIR/<mode>.safetensors.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from safetensors.torch import save_file

from longvila.pipelines.config import apply_overrides, stage5
from longvila.pipelines.engine import build_engine, init_distributed, sp_loss_scale
from longvila.pipelines.stages import build_model, make_mesh, mmsp_loss, modules, setup
from longvila.pipelines.trainer import Context, _freeze


def sample(i: int, frames: int = 6) -> dict:
    from longvila.model import LongVILAProcessor

    model_cfg = build_model(stage5(), None).config
    proc = LongVILAProcessor.from_config(model_cfg)
    conv = [{"from": "human", "value": f"<video>\nWhat is shown in video {i}?"},
            {"from": "gpt", "value": f"a red circle and the number {i}{i + 3}"}]
    enc = proc.encode_conversation(conv, [frames])
    g = torch.Generator().manual_seed(100 + i)
    return {"input_ids": enc["input_ids"][None], "labels": enc["labels"][None],
            "position_ids": torch.arange(enc["input_ids"].shape[0])[None],
            "pixel_values": torch.randn(frames, 3, 32, 32, generator=g)}


def step(out: str, mode: str) -> None:
    rank, world = init_distributed(120)
    sp = world if mode == "sp" else 1
    cfg = apply_overrides(stage5(), [f"parallel.sp_ring={sp}", "parallel.zero_stage=0", "optim.grad_clip=0"])
    ctx = Context(rank=rank, world=world, dp=world // sp, sp=sp, dp_rank=rank // sp, sp_rank=rank % sp)
    ctx.mesh = make_mesh(cfg, world)
    model = build_model(cfg, None)
    _freeze(model, modules(model), cfg.model.train)
    setup(model, ctx)
    engine, *_ = build_engine(dataclasses.replace(cfg), model, 1, world)
    loss, _ = mmsp_loss(engine, sample(ctx.dp_rank), ctx)
    engine.backward(loss * sp_loss_scale(sp))
    if rank == 0:
        save_file({n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    for mode in ("sp", "dp"):
        step(f"{sys.argv[1]}/{mode}.safetensors", mode)
