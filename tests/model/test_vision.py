"""Vision towers (SigLIP, open_clip) and projectors: shapes, neighbour order, local weights."""

import json

import pytest
import torch

from longvila.model import LongVILAForCausalLM, build_projector, build_vision_tower, tiny_config
from longvila.model.projector import neighbourhood_concat

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_arch(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("oc") / "longvila-test-vit.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(path)
    return "longvila-test-vit"


def test_siglip_patch_tokens():
    tower = build_vision_tower(tiny_config())
    out = tower(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 4, 64)  # 2x2 patches, no CLS, no pooled token


def test_open_clip_backend(open_clip_arch, tmp_path):
    import open_clip

    cfg = tiny_config(vision_config={"backend": "open_clip", "model_name": open_clip_arch})
    assert cfg.vision_hidden_size == 48
    model = LongVILAForCausalLM(cfg).eval()
    pv = torch.randn(2, 3, 32, 32)
    assert model.vision_tower(pv).shape == (2, 4, 48)
    assert model.encode_frames(pv).shape == (2, 1, 128)
    # a local open_clip checkpoint (full CLIP state dict, safetensors) is loaded into the tower
    from safetensors.torch import save_file

    torch.manual_seed(1)
    clip = open_clip.create_model(open_clip_arch, pretrained=None)
    ckpt = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, ckpt)
    loaded = LongVILAForCausalLM.from_parts(cfg, vision_pretrained=ckpt).eval()
    for k, v in clip.visual.state_dict().items():
        torch.testing.assert_close(loaded.vision_tower.visual.state_dict()[k], v, rtol=0, atol=0)
    clip.visual.output_tokens = True
    torch.testing.assert_close(loaded.vision_tower(pv), clip.visual(pv)[1])
    with pytest.raises(FileNotFoundError, match="no open_clip checkpoint"):
        LongVILAForCausalLM.from_parts(cfg, vision_pretrained=tmp_path / "missing.pt")


def test_siglip_and_llm_from_parts(tmp_path):
    torch.manual_seed(3)
    donor = LongVILAForCausalLM(tiny_config())
    donor.vision_tower.model.save_pretrained(tmp_path / "siglip")
    donor.language_model.save_pretrained(tmp_path / "llm")
    torch.manual_seed(4)
    model = LongVILAForCausalLM.from_parts(tiny_config(), vision_pretrained=tmp_path / "siglip",
                                           llm_pretrained=tmp_path / "llm")
    for part in ("vision_tower", "language_model"):
        want, got = getattr(donor, part).state_dict(), getattr(model, part).state_dict()
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    big = LongVILAForCausalLM(tiny_config(image_size=64))
    big.vision_tower.model.save_pretrained(tmp_path / "siglip64")
    with pytest.raises(ValueError, match="siglip64"):
        LongVILAForCausalLM.from_parts(tiny_config(), vision_pretrained=tmp_path / "siglip64")


def _concat_by_loops(x, k):
    n, p, c = x.shape
    g = int(p**0.5)
    grid = x.reshape(n, g, g, c)
    b = -(-g // k)
    out = torch.zeros(n, b * b, k * k * c)
    for bi in range(b):
        for bj in range(b):
            for ki in range(k):
                for kj in range(k):
                    i, j = bi * k + ki, bj * k + kj
                    if i < g and j < g:  # outside the grid stays zero (padding)
                        slot = (ki * k + kj) * c
                        out[:, bi * b + bj, slot : slot + c] = grid[:, i, j]
    return out


@pytest.mark.parametrize(("g", "k"), [(2, 2), (4, 2), (27, 2), (5, 2), (6, 3), (7, 3), (1, 3)])
def test_neighbourhood_concat_against_loops(g, k):
    x = torch.randn(2, g * g, 3)
    torch.testing.assert_close(neighbourhood_concat(x, k), _concat_by_loops(x, k), rtol=0, atol=0)


def test_projector_shapes_and_unknown_name():
    for name, tokens in [("mlp_downsample", 4), ("mlp_downsample_3x3", 4), ("linear", 16)]:
        cfg = tiny_config(projector=name, image_size=64)
        proj = build_projector(cfg)
        assert proj(torch.randn(2, 16, 64)).shape == (2, tokens, 128) == (2, cfg.tokens_per_frame, 128)
    cfg = tiny_config()
    cfg.projector = "perceiver"
    with pytest.raises(ValueError, match=r"projector: unknown projector 'perceiver'; known: \['linear'"):
        build_projector(cfg)
    with pytest.raises(ValueError, match="square grid"):
        neighbourhood_concat(torch.randn(1, 6, 4), 2)


def test_open_clip_timm_tower(tmp_path):
    """A timm-trunk open_clip tower: patch tokens without the CLS prefix, width from vision_config."""
    import open_clip

    arch = {"embed_dim": 32,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 32},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "longvila-test-timm.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / "longvila-test-timm.json")
    with pytest.raises(ValueError, match="vision_config.hidden_size"):
        tiny_config(vision_config={"backend": "open_clip", "model_name": "longvila-test-timm"})
    cfg = tiny_config(vision_config={"backend": "open_clip", "model_name": "longvila-test-timm", "hidden_size": 192})
    tower = build_vision_tower(cfg).eval()
    pv = torch.randn(2, 3, 32, 32)
    tokens = tower(pv)
    assert tokens.shape == (2, 4, 192)
    with torch.no_grad():
        full = tower.visual.trunk.forward_features(pv)  # (N, 1 + 4, C): CLS first
    torch.testing.assert_close(tokens, full[:, 1:])
