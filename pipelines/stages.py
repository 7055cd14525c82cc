"""The real stage task: LongVILA model + MM-SP step + the data part's sets, for ``trainer.train``.

Design choices:
- One task for all five stages; the stage config says what differs (sets, frames, frozen modules, RoPE,
  SP degree). Every stage trains through ``longvila.parallel.mmsp_forward`` on a dp x sp mesh (with one
  SP rank it is plain packed-sequence training with the same loss), so stage 4 and stage 5 use the very
  code path that the single-process tests check.
- The model comes from ``--from`` (the previous stage's save_pretrained folder) or, for stage 1 without
  one, from the tiny config with a fixed seed; its random vision tower is then pretrained first
  (``vision_pretrain.py``) unless ``model.vision_pretrained`` gives SigLIP weights. Stage 4 writes its RoPE row (rope_theta and
  max_position_embeddings) into the LLM's config before loading, so the saved config carries it.
- Tokens reported per step are counted once per SP group (by its sp_rank 0).
- The held-out evaluation leaves sequence parallelism (a one-rank mesh) and splits questions over ranks.
- ``parallel.attn_backend`` picks the block kernels of the SP attention (``longvila.parallel.backends``);
  the engine puts the model on the rank's GPU and ``to_model_device`` every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from longvila.pipelines.config import DataCfg, Phase, StageConfig
from longvila.pipelines.trainer import Context, Task


def stream_args(d: DataCfg) -> dict[str, Any]:
    """The data group's fields that ``datasource.stream`` takes, by its argument names (the trainer's micro-batches
    and ``bench_batches`` build them alike)."""
    return dict(seq_len=d.seq_len, needle_frac=d.needle_frac, max_turns=d.max_turns, needle_mc_frac=d.needle_mc_frac,
                loss_weighting=d.loss_weighting, mc_text_frac=d.mc_text_frac, needle_hand_frac=d.needle_hand_frac,
                cards=d.cards, code_repeat_frac=d.code_repeat_frac, pointer_text_frac=d.pointer_text_frac,
                pointers=d.pointers, code_near_frac=d.code_near_frac)


def set_rope(config, max_positions: int, theta: float) -> None:
    """Write a RoPE row into a LongVILAConfig's text config (transformers 5 ``rope_parameters``)."""
    tc = config.text_config
    params = dict(getattr(tc, "rope_parameters", None) or {"rope_type": "default"})
    params["rope_theta"] = float(theta)
    tc.rope_parameters = params
    tc.max_position_embeddings = int(max_positions)


def set_logn(config, base: int) -> None:
    """Turn on log-n attention scaling from ``base`` positions in a LongVILAConfig's text config."""
    from longvila.parallel.hf import LOGN_KEY

    if base < 2:
        raise ValueError(f"model.logn_base must be >= 2 positions (0 keeps the checkpoint's), got {base}")
    setattr(config.text_config, LOGN_KEY, int(base))


def set_dynamic_yarn(config, positions: int) -> None:
    """Turn on dynamic YaRN past ``positions`` in a LongVILAConfig's text config (see ``model.rope``)."""
    from longvila.model.rope import DYNAMIC_YARN_KEY

    setattr(config.text_config, DYNAMIC_YARN_KEY, int(positions))


def _write_llm_settings(cfg: StageConfig, config) -> None:
    """The stage's RoPE row, log-n base and dynamic-YaRN length, into the config the model is built from."""
    if cfg.rope():
        set_rope(config, *cfg.rope())
    if cfg.model.logn_base:
        set_logn(config, cfg.model.logn_base)
    if cfg.model.dynamic_yarn_positions:
        set_dynamic_yarn(config, cfg.model.dynamic_yarn_positions)


def build_model(cfg: StageConfig, init: Path | None):
    from longvila.model import LongVILAConfig, LongVILAForCausalLM, paper_config, tiny_config

    if init is None:
        presets = {"tiny": tiny_config, "paper": paper_config}
        if cfg.model.name not in presets:
            raise ValueError(f"model.name={cfg.model.name!r}: choose one of {sorted(presets)}")
        config = presets[cfg.model.name]()
        _write_llm_settings(cfg, config)
        torch.manual_seed(cfg.seed)
        if cfg.model.vision_pretrained or cfg.model.llm_pretrained:  # real scale: SigLIP + Qwen2 weights
            return LongVILAForCausalLM.from_parts(config, vision_pretrained=cfg.model.vision_pretrained or None,
                                                  llm_pretrained=cfg.model.llm_pretrained or None)
        return LongVILAForCausalLM(config)
    config = LongVILAConfig.from_pretrained(init)
    _write_llm_settings(cfg, config)
    return LongVILAForCausalLM.from_pretrained(init, config=config)


def modules(model) -> dict[str, torch.nn.Module]:
    return {"vision_tower": model.vision_tower, "mm_projector": model.mm_projector,
            "language_model": model.language_model}


def make_mesh(cfg: StageConfig, world: int):
    from longvila.parallel.mesh import ParallelDims, build_mesh

    dims = ParallelDims(dp=world // cfg.sp, sp_ulysses=cfg.parallel.sp_ulysses, sp_ring=cfg.parallel.sp_ring,
                        world_size=world)
    return build_mesh(dims, timeout_s=cfg.parallel.timeout_s)


def setup(model, ctx: Context, attn_backend: str = "auto") -> None:
    """Sequence-parallel attention on the stage's mesh with the configured block kernels
    (``parallel.attn_backend``; a missing package is an error naming the alternative)."""
    from longvila.parallel.hf import apply_sequence_parallel

    apply_sequence_parallel(model, ctx.mesh, attn_backend)


def mmsp_loss(model, batch: dict, ctx: Context, labelled_logits: bool = False) -> tuple[torch.Tensor, int]:
    """The rank's MM-SP loss (local CE sum / the SP group's active targets) and its token count
    (``labelled_logits``: the LM head at labelled positions only, ``parallel.labelled_logits``)."""
    from longvila.parallel.mmsp import mmsp_forward

    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    out = mmsp_forward(module, to_model_device(batch, module), ctx.mesh, labelled_logits=labelled_logits)
    return out.loss, (out.num_active if ctx.sp_rank == 0 else 0)


def to_model_device(batch: dict, model: torch.nn.Module) -> dict:
    """The batch's tensors on the device of the model's parameters (DeepSpeed puts the model on the rank's
    GPU; the data stream builds batches on the CPU). Other values pass through; a no-op on CPU."""
    device = next(model.parameters()).device
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and v.device != device else v
            for k, v in batch.items()}


def save(model, folder: Path) -> None:
    from longvila.model import LongVILAProcessor

    model.save_pretrained(folder)
    LongVILAProcessor.from_config(model.config).save_pretrained(folder)


def make_task(cfg: StageConfig, data_root: str | Path) -> Task:
    from longvila.pipelines import datasource

    data_root = Path(data_root)
    state: dict[str, Any] = {}
    info: dict[str, Any] = {}  # extra summary entries (the vision pretraining's metrics)

    def build(init: Path | None, ctx: Context):
        from longvila.model import LongVILAProcessor

        model = build_model(cfg, init)
        state["processor"] = LongVILAProcessor.from_config(model.config)
        if init is None and cfg.vision_pretrain.steps and not cfg.model.vision_pretrained:
            from longvila.pipelines.vision_pretrain import pretrain_vision_tower

            info["vision_pretrain"] = pretrain_vision_tower(
                model.vision_tower, model.config.vision_hidden_size, model.config.text_config.vocab_size,
                data_root, state["processor"], cfg.vision_pretrain, seed=cfg.seed)
        return model

    def batches(pi: int, phase: Phase, skip: int, ctx: Context) -> Iterator[dict[str, Any]]:
        def make(start: int, stride: int) -> Iterator[dict[str, Any]]:
            return datasource.stream(
                data_root, cfg.data.sets, phase, seed=cfg.seed * 1000 + pi, skip=start, stride=stride,
                dp_rank=ctx.dp_rank, dp=ctx.dp, processor=state["processor"], **stream_args(cfg.data))

        # the ranks of an SP group train on the same micro-batches: each builds 1/sp of them (identical batches)
        # (a one-rank SP group builds its own: shared_stream is then make(skip, 1))
        share = cfg.parallel.share_batches and ctx.mesh is not None
        if share:
            return datasource.shared_stream(make, skip, ctx.mesh.sp_group, prefetch=cfg.data.prefetch)
        return datasource.Prefetch(make(skip, 1), cfg.data.prefetch) if cfg.data.prefetch else make(skip, 1)

    def evaluate(model, ctx: Context) -> dict[str, Any]:
        from longvila.pipelines.evaluate import pointer_qa, short_video_qa

        out = short_video_qa(model, data_root / cfg.eval.set, cfg.eval.frames, cfg.eval.limit, ctx)
        if cfg.eval.pointer:
            out["pointer"] = pointer_qa(model, data_root / cfg.eval.set, cfg.eval.pointer, ctx)
        return out

    return Task(
        build_model=build,
        modules=modules,
        batches=batches,
        loss=lambda model, batch, ctx: mmsp_loss(model, batch, ctx, cfg.parallel.labelled_logits),
        save=save,
        evaluate=evaluate if cfg.eval.set else None,
        setup=lambda model, ctx: setup(model, ctx, cfg.parallel.attn_backend),
        make_mesh=make_mesh,
        info=info,
    )
