"""The stage trainer: one loop for all five stages, under torchrun, with DeepSpeed, resumable.

``train(cfg, task, out)`` runs one stage. What differs between stages (which model, which modules are
frozen, which batches, how a batch becomes a loss, what to evaluate) comes in a ``Task``; the loop only
knows optimizer steps, micro-batches, checkpoints and logs. Tests drive it with a tiny Hugging Face
Qwen2 and synthetic tensors; ``longvila.pipelines.stages`` builds the real tasks.

Design choices:
- Data position is the optimizer step: a task's batch stream is deterministic given (seed, phase,
  micro-batch index), so resuming at step s asks the task for the stream of s's phase starting at the
  right micro-batch; with the restored optimizer, scheduler and RNG the resumed loss curve equals the
  uninterrupted one (tested).
- Checkpoints every ``checkpoint.every_steps`` (collective: every rank writes its optimizer partition,
  rank 0 the model and trainer state, then the manifest, then the rename). The finished stage is a
  separate Hugging Face folder published atomically at the end; then the run folder is removed.
- ``LONGVILA_KILL_AFTER_STEP=k`` ends the process abruptly after step k (fault injection for the resume
  test, the same as a kill -9 between two steps).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from longvila.pipelines import checkpoint as ck
from longvila.pipelines.config import ConfigError, Phase, StageConfig, validate
from longvila.pipelines.engine import build_engine, init_distributed, sp_loss_scale
from longvila.pipelines.logs import MetricsLog, plot_loss, summarize
from longvila.utils import atomic_write_json, progress, seed_everything, utc_now


@dataclasses.dataclass
class Context:
    """Where this process sits: global rank/world and its dp / sp coordinates."""

    rank: int
    world: int
    dp: int
    sp: int
    dp_rank: int
    sp_rank: int
    mesh: Any = None  # the parallel mesh (longvila.parallel) when the task uses one


@dataclasses.dataclass
class Task:
    """What a stage trains. All callables run on every rank.

    - ``build_model(init: Path | None, ctx) -> nn.Module``: weights from ``init`` (a save_pretrained
      folder) or fresh; the trainer then freezes per ``cfg.model.train`` via ``modules(model)``.
    - ``modules(model) -> dict[name, nn.Module]``: the freezable parts (vision_tower, ...).
    - ``batches(phase_index, phase, skip, ctx) -> Iterator``: this dp rank's endless micro-batch stream of
      a curriculum phase, starting after ``skip`` micro-batches.
    - ``loss(model, batch, ctx) -> (loss, n_tokens)``: the rank's loss; over an SP group the ranks' losses
      SUM to the group's mean CE (each is local CE sum / the group's active tokens).
    - ``save(model, folder)``: save_pretrained (+ processor).
    - ``evaluate(model, ctx) -> dict`` (optional): held-out metrics, after training.
    - ``info``: extra summary entries (e.g. what ``build_model`` did before training).
    """

    build_model: Callable[[Path | None, Context], torch.nn.Module]
    modules: Callable[[torch.nn.Module], dict[str, torch.nn.Module]]
    batches: Callable[[int, Phase, int, Context], Iterator[Any]]
    loss: Callable[[torch.nn.Module, Any, Context], tuple[torch.Tensor, int]]
    save: Callable[[torch.nn.Module, Path], None]
    evaluate: Callable[[torch.nn.Module, Context], dict[str, Any]] | None = None
    setup: Callable[[torch.nn.Module, Context], None] | None = None  # e.g. apply_sequence_parallel
    make_mesh: Callable[[StageConfig, int], Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra entries for the stage summary, filled by build_model


def stage_dir(out: Path, stage: int) -> Path:
    return Path(out) / f"stage{stage}"


def is_finished(out: Path, stage: int) -> bool:
    try:
        ck.verify(stage_dir(out, stage), deep=False)
        return True
    except ck.CheckpointError:
        return False


def _freeze(model: torch.nn.Module, parts: dict[str, torch.nn.Module], train: tuple[str, ...]) -> None:
    missing = [t for t in train if t not in parts]
    if missing:
        raise ConfigError(f"model.train names {missing}, which the model does not have ({sorted(parts)})")
    model.requires_grad_(False)
    for name in train:
        parts[name].requires_grad_(True)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _all_sum(values: list[float]) -> list[float]:
    from longvila.parallel.comm import collective_device

    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _save_step(cfg, ctx, run_dir, step, model, task, optimizer, scheduler, trainer_state) -> None:
    root = run_dir / "ckpt"
    tmp = root / f".tmp-step-{step:06d}"
    if ctx.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    ck.save_rank_state(tmp / "state" / f"rank{ctx.rank:05d}.pt", optimizer)
    if ctx.rank == 0:
        task.save(model, tmp / "model")
        atomic_write_json(tmp / "state" / "trainer.json",
                          {**trainer_state, "scheduler": scheduler.state_dict()})
    _barrier()
    if ctx.rank == 0:
        ck.write_manifest(tmp, {"step": step, "world_size": ctx.world, "config": cfg.to_dict()})
        ck.publish(tmp, root / f"step-{step:06d}")
        ck.prune(root, cfg.checkpoint.keep)
    _barrier()


def train(cfg: StageConfig, task: Task, out: str | os.PathLike, init: str | os.PathLike | None) -> dict:
    """Run (or resume) one stage; returns its summary. ``init``: the previous stage's folder or None."""
    out = Path(out)
    rank, world = init_distributed(cfg.parallel.timeout_s)
    validate(cfg, world)
    if init is not None:
        ck.verify(init)  # refuse a missing / partial / corrupt previous stage before any work
    sp = cfg.sp
    ctx = Context(rank=rank, world=world, dp=world // sp, sp=sp, dp_rank=rank // sp, sp_rank=rank % sp)
    if task.make_mesh is not None:
        ctx.mesh = task.make_mesh(cfg, world)
    final = stage_dir(out, cfg.stage)
    run_dir = out / f"stage{cfg.stage}.run"

    # ---- resume point
    resume = ck.latest_step_checkpoint(run_dir / "ckpt")
    start_step, trainer_state = 0, {}
    if resume is not None:
        manifest = ck.verify(resume)
        diff = ck.config_diff(manifest["config"], cfg.to_dict())
        if diff:
            raise ck.CheckpointError(f"{resume}: stale checkpoint written with a different config "
                                     f"(fields {', '.join(diff)}); remove {run_dir} to start over")
        if manifest["world_size"] != world:
            raise ck.CheckpointError(f"{resume}: written by {manifest['world_size']} ranks, now {world}")
        trainer_state = ck.read_json(resume / "state" / "trainer.json")
        start_step = trainer_state["step"]

    seed_everything(cfg.seed)
    model = task.build_model(resume / "model" if resume else (Path(init) if init else None), ctx)
    _freeze(model, task.modules(model), cfg.model.train)
    if task.setup is not None:
        task.setup(model, ctx)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _, first_phase = cfg.phase_at(start_step)
    engine, optimizer, scheduler, ds_conf = build_engine(cfg, model, first_phase.batch, world)
    if resume is not None:
        states = ck.load_rank_states(resume / "state", world)
        ck.restore_optimizer(optimizer, states)
        scheduler.load_state_dict(trainer_state["scheduler"])
        torch.set_rng_state(states[rank]["rng"])
    else:
        torch.manual_seed(cfg.seed * 1000 + rank)

    # ---- held-out evaluation of the starting model, so the summary shows what the stage changed; kept in the
    # run folder, so a resumed run reports the same figures
    eval_before: dict[str, Any] = {}
    if task.evaluate is not None and cfg.eval.set:
        before_path = run_dir / "eval_before.json"
        if before_path.is_file():
            eval_before = ck.read_json(before_path)
        elif start_step == 0:
            engine.eval()
            with torch.no_grad():
                eval_before = task.evaluate(model, ctx)
            if rank == 0:
                atomic_write_json(before_path, eval_before)
            _barrier()

    log = MetricsLog(run_dir, start_step, enabled=rank == 0)
    elapsed0 = log.records[-1]["elapsed_s"] if log.records else 0.0
    t0 = time.perf_counter()
    kill_after = int(os.environ.get("LONGVILA_KILL_AFTER_STEP", "-1"))
    total, ga, scale = cfg.total_steps, cfg.schedule.grad_accum, sp_loss_scale(sp)
    phase_index, stream, phase_start = -1, None, 0
    bar = progress(range(start_step, total), desc=f"stage {cfg.stage} {cfg.name}", total=total - start_step,
                   unit="step") if rank == 0 else range(start_step, total)
    engine.train()
    for step in bar:
        pi, phase = cfg.phase_at(step)
        if pi != phase_index:
            phase_index = pi
            if stream is not None and hasattr(stream, "close"):
                stream.close()  # stops the phase's background batch building (``data.prefetch``)
            phase_start = sum(p.steps for p in cfg.data.curriculum[:pi]) if cfg.data.curriculum else 0
            stream = task.batches(pi, phase, (step - phase_start) * ga, ctx)
        loss_sum, tokens = 0.0, 0
        for _ in range(ga):
            batch = next(stream)
            loss, n_tok = task.loss(engine, batch, ctx)
            engine.backward(loss * scale)
            engine.step()
            loss_sum += float(loss.detach()) / ga
            tokens += int(n_tok)
        g_loss, g_tok = _all_sum([loss_sum, float(tokens)])
        done = step + 1
        record = {"step": done, "loss": g_loss / ctx.dp, "lr": scheduler.get_last_lr()[0], "tokens": int(g_tok),
                  "frames": phase.frames, "batch": phase.batch,
                  **({"skipped": int(batch["skipped"])} if isinstance(batch, dict) and "skipped" in batch else {}),
                  "elapsed_s": round(elapsed0 + time.perf_counter() - t0, 3)}
        if done % cfg.log_every == 0 or done == total:
            log.log(record)
        if rank == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{record['loss']:.3f}", frames=phase.frames)
        # NOTE: also at the last step, so a failure in the evaluation or the publishing does not cost training
        if done % cfg.checkpoint.every_steps == 0 or done == total:
            _save_step(cfg, ctx, run_dir, done, model, task, optimizer, scheduler, {"step": done})
        if done == kill_after:
            os._exit(17)
    if stream is not None and hasattr(stream, "close"):
        stream.close()
    seconds = elapsed0 + time.perf_counter() - t0

    # ---- frozen modules must be bit-for-bit unchanged
    for n, p in model.named_parameters():
        if n in frozen_before and not torch.equal(frozen_before[n], p.detach()):
            raise RuntimeError(f"stage {cfg.stage}: frozen parameter {n} changed during training")
    del frozen_before

    metrics = {}
    if task.evaluate is not None and cfg.eval.set:
        engine.eval()
        with torch.no_grad():
            metrics = task.evaluate(model, ctx)
    log.close()

    summary = {}
    if rank == 0:
        tmp = out / f".stage{cfg.stage}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        task.save(model, tmp)
        summary = summarize(log.records, seconds, {
            "stage": cfg.stage, "name": cfg.name, "world_size": world, "dp": ctx.dp, "sp": sp,
            "trainable": list(cfg.model.train), "init": str(init) if init else None, "date": utc_now(),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "eval_before": eval_before, "eval": metrics, **task.info,
        })
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_json(tmp / "stage_config.json", cfg.to_dict())
        atomic_write_json(tmp / "ds_config.json", ds_conf)
        shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        shutil.copytree(run_dir / "tensorboard", tmp / "tensorboard")
        plot_loss(log.records, tmp / "loss.png", f"stage {cfg.stage} ({cfg.name})")
        ck.write_manifest(tmp, {"stage": cfg.stage, "world_size": world, "config": cfg.to_dict()})
        ck.publish(tmp, final)
        shutil.rmtree(run_dir, ignore_errors=True)
    _barrier()
    return summary
