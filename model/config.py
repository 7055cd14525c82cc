"""LongVILA's typed configuration and the two named configurations (tiny default, paper scale).

``LongVILAConfig`` is a Hugging Face ``PreTrainedConfig`` (so ``save_pretrained``/``AutoConfig`` work) with
explicit fields; derived fields (``vision_hidden_size``, ``tokens_per_frame``) are computed here and, when
given (e.g. read back from ``config.json``), checked. Every inconsistency is a ``ValueError`` naming the
field at construction time, before any weight is allocated.

The tiny default, and why (the arithmetic):
- A frame is 32x32 RGB. The SigLIP-style ViT cuts it into 16x16 patches: 32/16 = 2, a 2x2 grid = 4 patch
  tokens of width 64 (2 layers, 2 heads).
- ``mlp_downsample`` concatenates each 2x2 neighbourhood (4 x 64 = 256 channels) and projects it to the
  LLM width: ceil(2/2)^2 = **1 token per frame**.
- So a 6,000-frame video is 6,000 visual tokens, plus ~30 prompt tokens. The LLM is Qwen2-shaped with
  hidden 128, 4 layers, 4 heads of 32, 2 KV heads (GQA), MLP 384, vocabulary = the shipped tokenizer (824).
  Its parameters: embeddings 824 x 128 = 105k (tied with the head) + 4 layers x (attention 2 x 128 x 128
  + 2 x 128 x 64 + biases = 49.5k, MLP 3 x 128 x 384 = 147k) = 0.89M in all (`longvila model info tiny`).
  One forward over 6,000 tokens is ~2 x 0.79M x 6,000 = 9.5 GFLOP of matmuls plus causal attention
  4 layers x 2 x 6,000^2 x 128 = 37 GFLOP. Measured on this machine's 2-core Xeon while ~10 other
  processes shared it (`longvila model bench-forward --tokens 6000`, best of 3): 1.9 s on one torch
  thread, 3.0-4.9 s on two (contention). Seconds, not minutes.
- rope_theta 1e4 and 2,048 positions for the short stages; the long-context stage raises both.

The paper-scale configuration: SigLIP-so400m-patch14-384 (hidden 1152, 27 layers, 16 heads, MLP 4304;
384 // 14 = 27, a 27x27 grid = 729 patches, the conv drops the last 6 pixels), ``mlp_downsample`` pads the
odd grid to 28 -> 14x14 = 196 tokens per frame, and a Qwen2-7B-shaped LLM (hidden 3584, 28 layers, 28
heads, 4 KV heads, MLP 18944, vocabulary 152064). It is built on the meta device only.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .tokenizer import EOS_TOKEN_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID

VISION_BACKENDS = ("siglip", "open_clip")
# projector name -> side of the square neighbourhood merged into one token (1 = no merge)
PROJECTOR_STRIDES = {"mlp_downsample": 2, "mlp_downsample_3x3": 3, "linear": 1}
TINY_VOCAB_SIZE = 824  # len(load_tokenizer()); a test keeps the two equal

# SiglipVisionConfig keys the vision_config dict of the siglip backend may carry.
_SIGLIP_KEYS = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
}
_OPEN_CLIP_KEYS = {"model_name", "hidden_size"}


def open_clip_vision_shape(model_name: str) -> tuple[int | None, int | None]:
    """(width, patch_size) of an open_clip architecture's vision tower, None where the config omits it."""
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"vision_config.model_name: unknown open_clip architecture {model_name!r}")
    vision = cfg.get("vision_cfg", {})
    return vision.get("width"), vision.get("patch_size")


class LongVILAConfig(PreTrainedConfig):
    """Configuration of ``LongVILAForCausalLM`` (vision tower + projector + causal LM).

    Fields:
      vision_config: dict with ``backend`` ("siglip" | "open_clip") and the backend's arguments
        (siglip: SiglipVisionConfig fields; open_clip: ``model_name``, and ``hidden_size`` for towers whose
        open_clip config does not state a width). Weights are not part of the config: random init, or
        ``LongVILAForCausalLM.from_parts(...)`` / ``build_vision_tower(config, pretrained=path)``.
      text_config: the LLM's Hugging Face config (dict or config; model_type ``qwen2`` by default).
      projector: a name in ``PROJECTOR_STRIDES``.
      image_size, patch_size: frame side and patch side in pixels (a patch grid of image_size // patch_size).
      allow_partial_patches: accept an image size that is not a multiple of the patch size (the patch conv
        then drops the remainder, as SigLIP-so400m-384 does). False by default, so a typo is an error.
      tokens_per_frame: derived from the grid and the projector; if given it must match.
      image_token_id, video_token_id: the placeholder ids in the tokenizer.
      projector_hidden_size: the projector's output width; None means the LLM's hidden size, anything
        else must equal it.
      image_mean, image_std: per-channel normalisation of frames scaled to [0, 1].
    """

    model_type = "longvila"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}

    vision_config: dict | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector: str = "mlp_downsample"
    image_size: int = 32
    patch_size: int = 16
    allow_partial_patches: bool = False
    tokens_per_frame: int | None = None
    vision_hidden_size: int | None = None
    projector_hidden_size: int | None = None
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.vision_config = copy.deepcopy(self.vision_config) if self.vision_config is not None else {}
        self.vision_config.setdefault("backend", "siglip")
        self.image_mean = list(self.image_mean) if self.image_mean is not None else [0.5, 0.5, 0.5]
        self.image_std = list(self.image_std) if self.image_std is not None else [0.5, 0.5, 0.5]
        self.validate_fields()

    # -- validation (each message names the field) ---------------------------------------------------
    def validate_fields(self) -> None:
        """Check every field and fill the derived ones; ValueError naming the first bad field."""
        v = self.vision_config
        backend = v["backend"]
        if backend not in VISION_BACKENDS:
            raise ValueError(f"vision_config.backend: unknown vision backend {backend!r}; known: {list(VISION_BACKENDS)}")
        if self.projector not in PROJECTOR_STRIDES:
            raise ValueError(f"projector: unknown projector {self.projector!r}; known: {sorted(PROJECTOR_STRIDES)}")
        allowed = _SIGLIP_KEYS if backend == "siglip" else _OPEN_CLIP_KEYS
        unknown = sorted(set(v) - allowed - {"backend"})
        if unknown:
            raise ValueError(f"vision_config: unknown keys {unknown} for backend {backend!r}; allowed: {sorted(allowed)}")
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
            if name in v and v[name] != value:
                raise ValueError(f"vision_config.{name}={v[name]} disagrees with {name}={value}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size: {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.image_size % self.patch_size and not self.allow_partial_patches:
            raise ValueError(
                f"image_size: {self.image_size} is not divisible by patch_size {self.patch_size} "
                "(set allow_partial_patches=True to let the patch conv drop the remainder)"
            )
        if backend == "siglip":
            width = v.get("hidden_size", 768)
        else:
            if "model_name" not in v:
                raise ValueError("vision_config.model_name: required for the open_clip backend")
            oc_width, oc_patch = open_clip_vision_shape(v["model_name"])
            if oc_patch is not None and oc_patch != self.patch_size:
                raise ValueError(
                    f"patch_size: {self.patch_size} but open_clip {v['model_name']} has patch size {oc_patch}"
                )
            width = v.get("hidden_size", oc_width)
            if width is None:
                raise ValueError(f"vision_config.hidden_size: required, open_clip {v['model_name']} does not state it")
        if self.vision_hidden_size is None:
            self.vision_hidden_size = width
        elif self.vision_hidden_size != width:
            raise ValueError(f"vision_hidden_size: {self.vision_hidden_size} but the vision tower has width {width}")
        derived = self.derived_tokens_per_frame()
        if self.tokens_per_frame is None:
            self.tokens_per_frame = derived
        elif self.tokens_per_frame != derived:
            raise ValueError(
                f"tokens_per_frame: {self.tokens_per_frame} is inconsistent with a {self.grid_size}x"
                f"{self.grid_size} patch grid and projector {self.projector!r} ({derived})"
            )
        hidden = self.text_config.hidden_size
        if self.projector_hidden_size is not None and self.projector_hidden_size != hidden:
            raise ValueError(
                f"projector_hidden_size: projector output width {self.projector_hidden_size} != LLM hidden "
                f"size text_config.hidden_size={hidden}"
            )
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "video_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(f"{name}: {getattr(self, name)} is outside the vocabulary (size {vocab})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean/image_std: need 3 values each, std > 0")

    @property
    def grid_size(self) -> int:
        """Patch grid side: image_size // patch_size."""
        return self.image_size // self.patch_size

    def derived_tokens_per_frame(self) -> int:
        stride = PROJECTOR_STRIDES[self.projector]
        return math.ceil(self.grid_size / stride) ** 2


# -- named configurations ----------------------------------------------------------------------------
def _qwen2(**overrides: Any) -> dict:
    cfg = dict(
        model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, use_cache=True,
        bos_token_id=None, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID,
    )
    cfg.update(overrides)
    return cfg


def tiny_config(**overrides: Any) -> LongVILAConfig:
    """The tiny default (1 token per 32x32 frame, 0.9M-parameter Qwen2 LLM); see the module docstring.

    ``overrides`` replace top-level fields (e.g. ``projector="linear"``).
    """
    fields: dict[str, Any] = dict(
        vision_config=dict(
            backend="siglip", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, layer_norm_eps=1e-6,
        ),
        text_config=_qwen2(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        ),
        projector="mlp_downsample", image_size=32, patch_size=16, tie_word_embeddings=True,
    )
    fields.update(overrides)
    return LongVILAConfig(**fields)


def paper_config(**overrides: Any) -> LongVILAConfig:
    """SigLIP-so400m-patch14-384 + mlp_downsample (196 tokens/frame) + a Qwen2-7B-shaped LLM.

    Meant for ``with torch.device("meta"): LongVILAForCausalLM(paper_config())`` (shapes, parameter
    counts), or with ``LongVILAForCausalLM.from_parts`` and local SigLIP / Qwen2 weights.
    """
    fields: dict[str, Any] = dict(
        vision_config=dict(
            backend="siglip", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
            num_attention_heads=16, layer_norm_eps=1e-6,
        ),
        text_config=_qwen2(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
            eos_token_id=None, pad_token_id=None,
        ),
        projector="mlp_downsample", image_size=384, patch_size=14, allow_partial_patches=True,
        image_token_id=151646, video_token_id=151647,
    )
    fields.update(overrides)
    return LongVILAConfig(**fields)
