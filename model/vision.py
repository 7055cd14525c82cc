"""Vision towers: frames in, patch tokens out, behind one small factory with two real backends.

- ``siglip``: Hugging Face ``SiglipVisionModel`` built from ``config.vision_config`` (random init), or
  ``from_pretrained(path)`` for users who have SigLIP weights on disk. The pooling head is not built
  (``vision_use_head=False``): LongVILA uses the patch tokens, and SigLIP has no CLS token.
- ``open_clip``: the vision tower (``.visual``) of any open_clip architecture, random init or a local
  checkpoint. ViTs return their patch tokens (``output_tokens``; the CLS token is dropped), timm trunks
  return ``forward_features`` without prefix tokens (NCHW maps of conv nets are flattened row-major).

Every tower maps ``pixel_values (N, 3, S, S)`` to ``(N, P, C)`` with P = grid^2 patch tokens in row-major
order and C = ``config.vision_hidden_size``; the projector relies on that order to merge neighbours.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import LongVILAConfig


class SiglipTower(nn.Module):
    """SigLIP ViT; ``forward(pixel_values (N, 3, S, S)) -> (N, P, C)`` (the last layer, post-LayerNorm)."""

    def __init__(self, config: LongVILAConfig, pretrained: str | os.PathLike | None = None):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if pretrained is not None:
            self.model = SiglipVisionModel.from_pretrained(str(pretrained), attn_implementation="sdpa")
            got = (self.model.config.image_size, self.model.config.patch_size, self.model.config.hidden_size)
            want = (config.image_size, config.patch_size, config.vision_hidden_size)
            if got != want:
                raise ValueError(
                    f"{pretrained}: SigLIP (image_size, patch_size, hidden_size)={got} but the config asks {want}"
                )
        else:
            kwargs = {k: v for k, v in config.vision_config.items() if k != "backend"}
            vcfg = SiglipVisionConfig(
                **kwargs, image_size=config.image_size, patch_size=config.patch_size, vision_use_head=False
            )
            vcfg._attn_implementation = "sdpa"
            self.model = SiglipVisionModel(vcfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


class OpenClipTower(nn.Module):
    """The vision part of an open_clip model; ``forward(pixel_values (N, 3, S, S)) -> (N, P, C)``."""

    def __init__(self, config: LongVILAConfig, pretrained: str | os.PathLike | None = None):
        super().__init__()
        import open_clip

        name = config.vision_config["model_name"]
        if pretrained is not None and not os.path.isfile(pretrained):
            raise FileNotFoundError(f"{pretrained}: no open_clip checkpoint file here")
        # A local checkpoint is a full open_clip (image + text) state dict, .safetensors or a weights-only
        # torch file, as open_clip writes them; random init otherwise (nothing is downloaded).
        clip = open_clip.create_model(
            name, pretrained=str(pretrained) if pretrained is not None else None,
            force_image_size=config.image_size, pretrained_text=False, require_pretrained=pretrained is not None,
        )
        self.visual = clip.visual
        del clip  # the text tower is not needed
        from open_clip.transformer import VisionTransformer

        if isinstance(self.visual, VisionTransformer):
            self.visual.output_tokens = True
            self.kind = "vit"
        elif hasattr(self.visual, "trunk") and hasattr(self.visual.trunk, "forward_features"):
            self.kind = "timm"
        else:
            raise ValueError(
                f"vision_config.model_name: open_clip {name!r} has a {type(self.visual).__name__} tower, "
                "which gives no patch tokens (use a ViT or timm architecture)"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "vit":
            _, tokens = self.visual(pixel_values)
            return tokens
        feats = self.visual.trunk.forward_features(pixel_values)
        if feats.ndim == 4:  # (N, C, h, w) -> (N, h*w, C), row-major
            return feats.flatten(2).transpose(1, 2)
        return feats[:, getattr(self.visual.trunk, "num_prefix_tokens", 0):]


VISION_TOWERS = {"siglip": SiglipTower, "open_clip": OpenClipTower}


def build_vision_tower(config: LongVILAConfig, pretrained: str | os.PathLike | None = None) -> nn.Module:
    """The vision tower named by ``config.vision_config["backend"]`` (random init, or weights at ``pretrained``).

    Returns a module mapping ``(N, 3, S, S) -> (N, P, C)``.
    """
    backend = config.vision_config["backend"]
    if backend not in VISION_TOWERS:
        raise ValueError(f"vision_config.backend: unknown vision backend {backend!r}; known: {sorted(VISION_TOWERS)}")
    return VISION_TOWERS[backend](config, pretrained)
