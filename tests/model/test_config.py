"""Configs: derived fields, bad configs fail at construction naming the field, paper scale on meta."""

import pytest
import torch
from transformers import AutoConfig

from longvila.model import LongVILAConfig, LongVILAForCausalLM, paper_config, tiny_config


def test_tiny_derived_fields_and_json_round_trip(tmp_path):
    cfg = tiny_config()
    assert (cfg.grid_size, cfg.tokens_per_frame, cfg.vision_hidden_size) == (2, 1, 64)
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, LongVILAConfig)
    assert _without_paths(back.to_dict()) == _without_paths(cfg.to_dict())


def _without_paths(d):
    if isinstance(d, dict):
        return {k: _without_paths(v) for k, v in d.items() if k != "_name_or_path"}
    return d


@pytest.mark.parametrize(
    ("projector", "image_size", "patch_size", "tokens"),
    [("mlp_downsample", 32, 16, 1), ("mlp_downsample", 48, 16, 4), ("mlp_downsample_3x3", 48, 16, 1),
     ("mlp_downsample_3x3", 64, 16, 4), ("linear", 32, 16, 4), ("linear", 48, 8, 36)],
)
def test_tokens_per_frame(projector, image_size, patch_size, tokens):
    cfg = tiny_config(projector=projector, image_size=image_size, patch_size=patch_size)
    assert cfg.tokens_per_frame == tokens
    model = LongVILAForCausalLM(cfg)
    assert model.encode_frames(torch.randn(2, 3, image_size, image_size)).shape == (2, tokens, 128)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vision_config": {"backend": "resnet"}}, "vision_config.backend"),
        ({"projector": "qformer"}, "projector"),
        ({"projector_hidden_size": 256}, "projector_hidden_size"),
        ({"image_size": 40}, "image_size"),
        ({"tokens_per_frame": 4}, "tokens_per_frame"),
        ({"vision_config": {"backend": "siglip", "hidden_size": 64, "hidden_sizee": 3}}, "vision_config"),
        ({"vision_config": {"backend": "siglip", "image_size": 64}}, "vision_config.image_size"),
        ({"vision_config": {"backend": "open_clip"}}, "vision_config.model_name"),
        ({"vision_config": {"backend": "open_clip", "model_name": "no-such-net"}}, "vision_config.model_name"),
        ({"vision_config": {"backend": "open_clip", "model_name": "ViT-S-32"}}, "patch_size"),
        ({"image_token_id": 5000}, "image_token_id"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        tiny_config(**overrides)


def test_bad_config_raises_before_building():
    with pytest.raises(ValueError, match="projector"):
        LongVILAForCausalLM(LongVILAConfig(projector="nope"))


def _siglip_params(c, image_size, patch, layers, mlp):
    grid = image_size // patch
    embed = 3 * patch * patch * c + c + grid * grid * c
    layer = 2 * 2 * c + 4 * (c * c + c) + (c * mlp + mlp) + (mlp * c + c)
    return embed + layers * layer + 2 * c


def _projector_params(c, d, k=2):
    return 2 * k * k * c + (k * k * c * d + d) + (d * d + d)


def _qwen2_params(vocab, d, layers, heads, kv_heads, mlp, tied):
    head_dim = d // heads
    kv = kv_heads * head_dim
    attn = (d * d + d) + 2 * (d * kv + kv) + d * d
    layer = attn + 3 * d * mlp + 2 * d
    return vocab * d * (1 if tied else 2) + layers * layer + d


def test_paper_scale_on_meta():
    cfg = paper_config()
    assert cfg.tokens_per_frame == 196 and cfg.grid_size == 27
    with torch.device("meta"):
        model = LongVILAForCausalLM(cfg)
        visual = model.encode_frames(torch.empty(2, 3, 384, 384))
    assert visual.shape == (2, 196, 3584)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.vision_tower) == _siglip_params(1152, 384, 14, 27, 4304)
    assert count(model.mm_projector) == _projector_params(1152, 3584)
    llm = _qwen2_params(152064, 3584, 28, 28, 4, 18944, tied=False)
    assert llm == 7_615_616_512  # Qwen2-7B's published parameter count
    assert count(model.language_model) == llm
    assert count(model) == llm + _siglip_params(1152, 384, 14, 27, 4304) + _projector_params(1152, 3584)


def test_tiny_parameter_count():
    model = LongVILAForCausalLM(tiny_config())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.vision_tower) == _siglip_params(64, 32, 16, 2, 256)
    assert count(model.mm_projector) == _projector_params(64, 128)
    assert count(model.language_model) == _qwen2_params(824, 128, 4, 4, 2, 384, tied=True)
