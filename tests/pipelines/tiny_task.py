"""A tiny Hugging Face Qwen2 task for trainer tests: synthetic, learnable token sequences.

Run as a script (``python tiny_task.py OUT STEPS STAGE [k=v ...]``, or under torchrun)
it trains one stage and prints nothing; tests read the stage folder and metrics.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from longvila.pipelines.config import (
    CheckpointCfg,
    DataCfg,
    ModelCfg,
    OptimCfg,
    ParallelCfg,
    ScheduleCfg,
    StageConfig,
    apply_overrides,
)
from longvila.pipelines.trainer import Task

VOCAB = 64


def build(init, ctx):
    if init is not None:
        return Qwen2ForCausalLM.from_pretrained(init)
    torch.manual_seed(123)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg)


def modules(model):
    return {"vision_tower": model.model.embed_tokens, "mm_projector": model.lm_head,
            "language_model": model.model.layers}


def batches(pi, phase, skip, ctx, seed=0):
    i = skip
    while True:
        g = torch.Generator().manual_seed(seed * 7919 + pi * 1009 + i * 31 + ctx.dp_rank * 100003)
        start = torch.randint(0, VOCAB, (phase.batch, 1), generator=g)
        step = torch.randint(1, 4, (phase.batch, 1), generator=g)
        ids = (start + step * torch.arange(phase.frames)) % VOCAB  # arithmetic progressions: learnable
        i += 1
        yield ids


def loss(engine, ids, ctx):
    out = engine(input_ids=ids, labels=ids)
    return out.loss, ids.numel()


def save(model, folder):
    model.save_pretrained(folder)


TASK = Task(build_model=build, modules=modules, batches=batches, loss=loss, save=save)


def tiny_stage(steps: int = 6) -> StageConfig:
    return StageConfig(
        stage=1, name="tiny",
        model=ModelCfg(train=("mm_projector", "language_model")),
        data=DataCfg(sets=("synthetic",), frames=16, batch=4),
        optim=OptimCfg(lr=3e-3),
        schedule=ScheduleCfg(steps=steps, warmup_steps=2),
        parallel=ParallelCfg(zero_stage=1),
        checkpoint=CheckpointCfg(every_steps=2, keep=2),
    )


if __name__ == "__main__":
    from longvila.pipelines.trainer import train

    out, steps, stage, *over = sys.argv[1:]
    cfg = apply_overrides(dataclasses.replace(tiny_stage(int(steps)), stage=int(stage)), over)
    train(cfg, TASK, out, Path(out) / f"stage{cfg.stage - 1}" if cfg.stage > 1 else None)
