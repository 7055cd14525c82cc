"""Tiny random-init instances of the Hugging Face video LLMs the evaluations take, saved with a local processor.

No weights can be downloaded here, so the model adapters (``eval/adapters.py``), the lmms-eval tasks and the
long-video data pipeline are tested on miniature models of the real architectures, built from configs and
saved with ``save_pretrained``: the same folder layout a user's downloaded checkpoint has (``config.json``,
``model.safetensors``, tokenizer, processor and chat template), loadable with ``AutoProcessor`` and
``AutoModelForImageTextToText`` (``AutoModelForCausalLM`` for ``qwen2``).

Design choices:
- The tokenizer is the project's shipped BPE (digits are single tokens) plus the architecture's own special
  tokens (Qwen2-VL's ``<|vision_start|>``, ``<|video_pad|>`` ...; LLaVA's ``<image>`` and ``<video>`` are
  already in it). The chat templates render the architecture's prompt format (Qwen's ``<|im_start|>`` turns;
  the vision markers where the model's template puts them), so a prompt snapshot shows what a real
  checkpoint of that family is sent.
- Frames are 32x32 (the synthetic world's size); patch sizes are chosen so each architecture keeps its own
  visual-token arithmetic: Qwen2-VL merges 2 frames per temporal patch and 2x2 patches per token (8 tokens a
  frame), LLaVA-OneVision pools 2x2 per frame and appends one newline token per video (4 a frame + 1),
  LLaVA-NeXT-Video pools 2x2 after dropping CLIP's class token (4 a frame).
- Seeded: the same call writes the same weights (``torch.manual_seed(seed)`` before construction).
- Untied input and output embeddings: a tied random model mostly predicts the token it was given (its
  hidden state stays close to the input embedding), so its replies would be blank lines whatever the video;
  untied, the replies depend on the input, and two harnesses' replies can be compared token for token.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ARCHS = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "qwen2")
FRAME_SIZE = 32

_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen-family chat format; the vision markers are the model's own (Qwen2-VL: start/pad/end, LLaVA: <video>\n).
_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- IMAGE -}}"
    "{%- elif part['type'] == 'video' -%}{{- VIDEO -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
QWEN_TEMPLATE = (_TEMPLATE.replace("IMAGE", "'<|vision_start|><|image_pad|><|vision_end|>'")
                 .replace("VIDEO", "'<|vision_start|><|video_pad|><|vision_end|>'"))
LLAVA_TEMPLATE = _TEMPLATE.replace("IMAGE", "'<image>\\n'").replace("VIDEO", "'<video>\\n'")

_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=4096, tie_word_embeddings=False)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               image_size=FRAME_SIZE, patch_size=8)


def _tokenizer(extra: tuple[str, ...] = ()):
    from longvila.model.tokenizer import load_tokenizer

    tok = load_tokenizer()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
    return tok


def _ids(tok, names) -> dict[str, int]:
    return {n: tok.convert_tokens_to_ids(n) for n in names}


def _qwen_vl(arch: str):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _tokenizer(_QWEN_VISION)
    ids = _ids(tok, _QWEN_VISION)
    text = {**_TEXT, "vocab_size": len(tok), "bos_token_id": None, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tok.pad_token_id,
            # M-RoPE: the rotary half-dimensions (head dim 16 -> 8) split over time, height and width
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, in_chans=3, mlp_ratio=2)
    if arch == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                      fullatt_block_indexes=[1])
    cfg_cls, model_cls, proc_cls = ((Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
                                    if arch == "qwen2_vl" else
                                    (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor))
    cfg = cfg_cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    pix = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=FRAME_SIZE ** 2, max_pixels=FRAME_SIZE ** 2)
    proc = proc_cls(image_processor=Qwen2VLImageProcessor(**pix),
                    video_processor=Qwen2VLVideoProcessor(**pix, do_sample_frames=False),
                    tokenizer=tok, chat_template=QWEN_TEMPLATE)
    return model_cls(cfg), proc


def _llava(arch: str):
    from transformers import (
        CLIPVisionConfig,
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = _tokenizer()
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    text = Qwen2Config(**_TEXT, vocab_size=len(tok), rope_theta=1e6, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=tok.pad_token_id)
    size = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    common = dict(text_config=text, image_token_index=image_id, video_token_index=video_id, vision_feature_layer=-1,
                  image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], tie_word_embeddings=False)
    tokens = dict(tokenizer=tok, chat_template=LLAVA_TEMPLATE, image_token="<image>", video_token="<video>")
    if arch == "llava_onevision":  # SigLIP tower, every patch kept ("full"), 2x2 bilinear pooling per frame
        cfg = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**_VISION), vision_feature_select_strategy="full",
                                   **common)
        proc = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size, crop_size=size,
                                                         image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]]),
            video_processor=LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False),
            num_image_tokens=(FRAME_SIZE // _VISION["patch_size"]) ** 2, vision_feature_select_strategy="full", **tokens)
        return LlavaOnevisionForConditionalGeneration(cfg), proc
    # LLaVA-NeXT-Video: CLIP tower (its class token dropped: "default"), 2x2 average pooling per frame
    cfg = LlavaNextVideoConfig(vision_config=CLIPVisionConfig(**_VISION), vision_feature_select_strategy="default",
                               spatial_pool_stride=2, spatial_pool_mode="average", **common)
    proc = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=size, do_sample_frames=False),
        image_processor=LlavaNextImageProcessor(size=size, crop_size=size, image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]]),
        patch_size=_VISION["patch_size"], vision_feature_select_strategy="default", num_additional_image_tokens=1,
        **tokens)
    return LlavaNextVideoForConditionalGeneration(cfg), proc


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from longvila.model.tokenizer import CHAT_TEMPLATE

    tok = _tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    cfg = Qwen2Config(**_TEXT, vocab_size=len(tok), rope_theta=1e6, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(cfg), tok


def save_tiny(arch: str, out: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny random-init ``arch`` (one of ``ARCHS``) and save model + processor (or tokenizer) to ``out``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    if arch in ("qwen2_vl", "qwen2_5_vl"):
        model, proc = _qwen_vl(arch)
    elif arch == "qwen2":
        model, proc = _qwen2()
    else:
        model, proc = _llava(arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    proc.save_pretrained(out)
    return out
