"""LongVILAForCausalLM: vision tower + projector + a plain Hugging Face causal LM (LLaVA's split).

Design choices:
- Three parts, named as the rest of the project expects: ``vision_tower`` (``vision.py``), ``mm_projector``
  (``projector.py``) and ``language_model`` (any ``AutoModelForCausalLM``, Qwen2 by default). The parts are
  frozen/unfrozen per stage by the training pipeline, and sequence parallelism is applied to
  ``language_model`` from outside (its attention is whatever ``config.text_config`` selects; "sdpa" by
  default, and ``language_model.set_attn_implementation(name)`` switches it to a registered one).
- Placeholders are pre-expanded ids (``processing.py``): ``merge_visual_tokens`` only has to check that the
  number of ``<image>`` ids equals N x T and scatter the visual tokens there, in order. The sequence
  length is known before the vision tower runs (what MM-SP needs).
- The loss is computed here, not by the LLM: mean cross-entropy (fp32) of ``logits[:, :-1]`` against
  ``labels[:, 1:]`` over labels != -100 (0 when a batch has no label, rather than NaN).
- ``generate`` is GenerationMixin's: ``pixel_values`` is consumed on the prefill step only (transformers
  drops it afterwards), decode steps embed the new ids; it runs inside ``rope.rope_for_length`` with the
  prompt plus ``max_new_tokens``, so a prompt longer than the model trained on gets dynamic-YaRN RoPE.
- Checkpoints: ``save_pretrained`` writes the whole VLM (``config.json`` + ``model.safetensors``) and also
  the LLM alone in ``<dir>/language_model/`` so ``AutoModelForCausalLM.from_pretrained(dir/"language_model")``
  loads it without this package. ``from_pretrained`` reads the top-level files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import LongVILAConfig
from .kv_cache import OLD as OLD_CACHE_KW
from .kv_cache import cache_kwargs, output_cache, output_field
from .projector import build_projector
from .vision import build_vision_tower

IGNORE_INDEX = -100
LLM_SUBFOLDER = "language_model"


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits (B, L, V) at t scored against labels (B, L) at t+1.

    Positions whose label is -100 are ignored; with no label at all the loss is 0 (connected to the graph).
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = (target != IGNORE_INDEX).sum()
    return total / count.clamp(min=1)


class LongVILAPreTrainedModel(PreTrainedModel):
    config_class = LongVILAConfig
    config: LongVILAConfig
    base_model_prefix = ""
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class LongVILAForCausalLM(LongVILAPreTrainedModel, GenerationMixin):
    """The VLM. Parts: ``vision_tower``, ``mm_projector``, ``language_model``."""

    def __init__(self, config: LongVILAConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config)
        self.mm_projector = build_projector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_parts(cls, config: LongVILAConfig, vision_pretrained: str | os.PathLike | None = None,
                   llm_pretrained: str | os.PathLike | None = None, **llm_kwargs) -> LongVILAForCausalLM:
        """A VLM whose vision tower and/or LLM come from local weights (the projector starts random).

        ``vision_pretrained``: a SigLIP folder (siglip backend) or an open_clip checkpoint file.
        ``llm_pretrained``: a folder ``AutoModelForCausalLM.from_pretrained`` reads; its config replaces
        ``config.text_config`` and must keep the hidden size.
        """
        config = copy.deepcopy(config)
        llm = None
        if llm_pretrained is not None:
            llm = AutoModelForCausalLM.from_pretrained(str(llm_pretrained), **llm_kwargs)
            if llm.config.hidden_size != config.text_config.hidden_size:
                raise ValueError(
                    f"{llm_pretrained}: LLM hidden size {llm.config.hidden_size} != "
                    f"text_config.hidden_size {config.text_config.hidden_size}"
                )
            config.text_config = llm.config
            config.validate_fields()
        model = cls(config)
        # NOTE: the loaded parts are attached after construction: post_init() re-initialises every module
        # it finds, which would overwrite weights loaded before it.
        if llm is not None:
            model.language_model = llm
        if vision_pretrained is not None:
            model.vision_tower = build_vision_tower(config, vision_pretrained)
        return model

    # -- embeddings plumbing (GenerationMixin, resize_token_embeddings) ----------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    # -- the multimodal steps ----------------------------------------------------------------------------
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, S, S) -> visual tokens (N, T, D) (vision tower, then projector)."""
        s = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (s, s):
            raise ValueError(f"pixel_values: expected (N, 3, {s}, {s}), got {tuple(pixel_values.shape)}")
        dtype = next(self.mm_projector.parameters()).dtype
        patches = self.vision_tower(pixel_values.to(dtype))
        want = self.config.grid_size ** 2
        if patches.shape[1] != want or patches.shape[2] != self.config.vision_hidden_size:
            raise ValueError(
                f"vision tower: gave patch tokens {tuple(patches.shape)}, config says ({want}, "
                f"{self.config.vision_hidden_size}) per frame (check image_size/patch_size/vision_hidden_size)"
            )
        return self.mm_projector(patches)

    def merge_visual_tokens(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Text embeddings of input_ids (B, L) with the ``<image>`` positions replaced, in row-major order,
        by visual (N, T, D) flattened to (N*T, D). Returns inputs_embeds (B, L, D).

        The number of ``<image>`` ids must equal N*T (ValueError naming both numbers).
        """
        embeds = self.get_input_embeddings()(input_ids)
        mask = input_ids == self.config.image_token_id
        n_slots, n_tokens = int(mask.sum()), visual.shape[0] * visual.shape[1]
        if n_slots != n_tokens:
            raise ValueError(
                f"placeholder mismatch: {n_slots} <image> ids in input_ids but {visual.shape[0]} frames x "
                f"{visual.shape[1]} tokens per frame = {n_tokens} visual tokens"
            )
        flat = visual.reshape(-1, visual.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), flat)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, L), pixel_values (N, 3, S, S) for the N*T ``<image>`` ids, labels (B, L) -> logits (B, L, V).

        ``loss`` = mean CE over labels != -100 (shifted inside). Either input_ids or inputs_embeds. ``cache``
        (``past_key_values`` is accepted too, transformers' name before 5.x renamed it) continues decoding.
        """
        if OLD_CACHE_KW in kwargs:
            if cache is not None:
                raise ValueError("forward: pass the KV cache once, as `cache` (or the older `past_key_values`)")
            cache = kwargs.pop(OLD_CACHE_KW)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("forward: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            if pixel_values is not None:
                inputs_embeds = self.merge_visual_tokens(input_ids, self.encode_frames(pixel_values))
            else:
                prefill = cache is None or cache.get_seq_length() == 0
                if prefill and bool((input_ids == self.config.image_token_id).any()):
                    n = int((input_ids == self.config.image_token_id).sum())
                    raise ValueError(f"placeholder mismatch: {n} <image> ids in input_ids but no pixel_values")
                inputs_embeds = self.get_input_embeddings()(input_ids)
        elif pixel_values is not None:
            raise ValueError("forward: pixel_values cannot be combined with inputs_embeds (merge first)")
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache_kwargs(self.language_model, cache),
            logits_to_keep=0 if labels is not None else logits_to_keep,
            **kwargs,
        )
        loss = causal_lm_loss(out.logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(
            loss=loss, logits=out.logits, hidden_states=out.hidden_states, attentions=out.attentions,
            **{output_field(CausalLMOutputWithPast): output_cache(out)},
        )

    def generate(self, *args, **kwargs):
        """GenerationMixin's ``generate``, with dynamic-YaRN RoPE (``model.rope``) for the whole length: the
        prompt (``input_ids`` or ``inputs_embeds``) plus ``max_new_tokens``."""
        from longvila.model.rope import rope_for_length

        prompt = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        new = kwargs.get("max_new_tokens") or getattr(kwargs.get("generation_config") or self.generation_config,
                                                      "max_new_tokens", None) or 0
        with rope_for_length(self.language_model, (prompt.shape[1] if prompt is not None else 0) + int(new)):
            return super().generate(*args, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """The VLM (config.json + model.safetensors) and, in ``language_model/``, the LLM on its own."""
        super().save_pretrained(save_directory, *args, **kwargs)
        self.language_model.save_pretrained(Path(save_directory) / LLM_SUBFOLDER, *args, **kwargs)


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``model_type = "longvila"`` (idempotent)."""
    try:
        AutoConfig.register(LongVILAConfig.model_type, LongVILAConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(LongVILAConfig, LongVILAForCausalLM)
    except ValueError:
        pass
