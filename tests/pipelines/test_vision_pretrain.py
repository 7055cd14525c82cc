"""Vision-tower pretraining (SigLIP sigmoid loss) that stands in for a pretrained SigLIP when training from scratch."""

import math

import pytest
import torch
import torch.nn.functional as F

from longvila.pipelines.config import (
    ConfigError,
    VisionPretrainCfg,
    apply_overrides,
    stage1,
    stage2,
    stage3,
    stage5,
)
from longvila.pipelines.vision_pretrain import sigmoid_loss


@pytest.fixture(scope="module")
def align_data(tmp_path_factory):
    from longvila.data import sets as S

    out = tmp_path_factory.mktemp("data")
    cfg = S.BuildConfig()
    cfg.align.num_samples = cfg.align.per_shard = 640
    S.build(cfg, out, sets=("align",), workers=1)
    return out


def test_sigmoid_loss_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    log_t, b = torch.tensor(math.log(10.0)), torch.tensor(-3.0)
    want = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            logit = math.exp(log_t.item()) * float(img[i] @ txt[j]) + b.item()
            want += math.log1p(math.exp(-z * logit))
    assert sigmoid_loss(img, txt, log_t, b).item() == pytest.approx(want / 5, rel=1e-5)


def test_stage_configs_and_validation():
    assert stage1().vision_pretrain.steps > 0 and stage2().vision_pretrain.steps == 0
    assert stage3().optim.vision_lr_scale == stage5().optim.vision_lr_scale == 0.1
    assert apply_overrides(stage1(), ["vision_pretrain.steps=0"]).vision_pretrain.steps == 0
    with pytest.raises(ConfigError, match="vision_pretrain"):
        apply_overrides(stage1(), ["vision_pretrain.batch=1"])
    with pytest.raises(ConfigError, match="vision_pretrain"):
        apply_overrides(stage1(), ["vision_pretrain.steps=-1"])
    assert stage1().vision_pretrain.fresh_cards > 0
    for bad in ("vision_pretrain.fresh_cards=-1", "vision_pretrain.hand_frac=1.5"):
        with pytest.raises(ConfigError, match="fresh_cards >= 0 and hand_frac"):
            apply_overrides(stage1(), [bad])


def test_fresh_cards_extend_each_batch_with_new_captioned_cards():
    """fresh_cards: n freshly rendered cards with their align-style captions follow the batch's own pairs."""
    import numpy as np

    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.vision_pretrain import _with_fresh_cards

    proc = LongVILAProcessor.from_config(tiny_config())
    pix, caps = torch.zeros(3, 3, 32, 32), [torch.tensor([1, 2])] * 3
    rng = np.random.default_rng(0)
    captions = {}
    p2, c2 = _with_fresh_cards(pix, caps, 5, rng, proc, 0.5, captions)
    assert p2.shape == (8, 3, 32, 32) and torch.equal(p2[:3], pix) and c2[:3] == caps
    texts = [proc.decode(c.tolist()) for c in c2[3:]]
    assert all(t.startswith("A card shows the code ") for t in texts), texts
    assert len({t for t in texts}) > 1 and not torch.equal(p2[3], p2[4])
    p3, _ = _with_fresh_cards(pix, caps, 5, rng, proc, 0.5, captions)
    assert not torch.equal(p2[3:], p3[3:])  # every batch draws new cards
    # the same draws as a fresh card sample of the training streams
    from longvila.pipelines.datasource import card_sample

    one = card_sample(np.random.default_rng(1), proc, 32)
    p4, c4 = _with_fresh_cards(pix, caps, 1, np.random.default_rng(1), proc, 0.5, {})
    assert torch.equal(p4[3:], one["pixel_values"]) and torch.equal(c4[3], one["input_ids"][one["labels"] != -100])


@pytest.mark.slow
def test_pretraining_makes_images_retrievable(align_data):
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config
    from longvila.pipelines.vision_pretrain import pretrain_vision_tower

    torch.manual_seed(0)
    model = LongVILAForCausalLM(tiny_config())
    proc = LongVILAProcessor.from_config(model.config)
    cfg = VisionPretrainCfg(steps=300, batch=128, lr=2e-3, heldout=64)
    before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    r = pretrain_vision_tower(model.vision_tower, model.config.vision_hidden_size,
                              model.config.text_config.vocab_size, align_data, proc, cfg, seed=0)
    assert r["pairs"] == 640 - 64 and r["chance"] == pytest.approx(1 / 64)
    assert r["loss_last"] < 0.5 * r["loss_first"]
    # held-out image -> caption retrieval well above chance (random tower: about chance)
    assert r["retrieval"] > 10 * r["chance"] and r["retrieval"] > r["retrieval_before"] + 0.1, r
    assert any(not torch.equal(before[k], v) for k, v in model.vision_tower.state_dict().items())


def test_text_tower_tells_digit_order_apart():
    from longvila.pipelines.vision_pretrain import PairHeads

    torch.manual_seed(0)
    heads = PairHeads(64, 100, 16, patches=4)
    a, b, c = torch.tensor([5, 7, 1, 4]), torch.tensor([5, 4, 1, 7]), torch.tensor([5, 7, 1, 4])
    e = heads.embed_texts([a, b, c])
    assert torch.allclose(e[0], e[2]) and not torch.allclose(e[0], e[1], atol=1e-3)
    # a plain bag (the token half alone) cannot: same tokens, same vector
    bag = heads.text_emb(torch.cat([a, b]), torch.tensor([0, 4]))
    assert torch.allclose(bag[0], bag[1])


def test_skipped_with_pretrained_siglip_or_checkpoint(align_data, tmp_path):
    from longvila.model import LongVILAForCausalLM, tiny_config
    from longvila.pipelines.stages import make_task

    torch.manual_seed(1)
    siglip = LongVILAForCausalLM(tiny_config()).vision_tower.model
    siglip.save_pretrained(tmp_path / "siglip")
    cfg = apply_overrides(stage1(), [f"model.vision_pretrained={tmp_path / 'siglip'}"])
    task = make_task(cfg, align_data)
    model = task.build_model(None, None)
    assert "vision_pretrain" not in task.info
    for k, v in siglip.state_dict().items():
        assert torch.equal(model.vision_tower.model.state_dict()[k], v), k
    # from a checkpoint folder (a resumed or later stage) there is no pretraining either
    model.save_pretrained(tmp_path / "ck")
    task = make_task(stage1(), align_data)
    task.build_model(tmp_path / "ck", None)
    assert "vision_pretrain" not in task.info


def test_too_few_caption_pairs_is_a_clear_error(tmp_path):
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config
    from longvila.pipelines.vision_pretrain import pretrain_vision_tower

    model = LongVILAForCausalLM(tiny_config())
    with pytest.raises(FileNotFoundError, match="no manifest"):
        pretrain_vision_tower(model.vision_tower, 64, model.config.text_config.vocab_size, tmp_path,
                              LongVILAProcessor.from_config(model.config), VisionPretrainCfg(steps=1))


_ENGINE_SCRIPT = """
import json, sys, torch
from longvila.model import LongVILAForCausalLM, tiny_config
from longvila.pipelines.config import apply_overrides, stage3
from longvila.pipelines.engine import build_engine, init_distributed
init_distributed()
cfg = apply_overrides(stage3(), sys.argv[1:])
model = LongVILAForCausalLM(tiny_config())
engine, opt, sched, _ = build_engine(cfg, model, 1, 1)
ids = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
# ZeRO keeps each group's original parameters in bit16_groups (param_groups hold flat partitions)
groups = [{"lr": g["lr"], "parts": sorted({ids[id(p)] for p in ps})} for g, ps in zip(opt.param_groups, opt.bit16_groups)]
print(json.dumps(groups))
"""


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_vision_tower_lr_scale_gives_its_own_param_group(scale):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGVILA_QUIET": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path(__file__).parents[2] / ".torch_extensions"))}
    p = subprocess.run([sys.executable, "-c", _ENGINE_SCRIPT, f"optim.vision_lr_scale={scale}"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    groups = json.loads(p.stdout.strip().splitlines()[-1])
    if scale == 1.0:
        assert len(groups) == 1 and groups[0]["parts"] == ["language_model", "mm_projector", "vision_tower"]
    else:
        assert len(groups) == 2
        (other,), (vis,) = ([g for g in groups if ("vision_tower" in g["parts"]) == v] for v in (False, True))
        assert vis["parts"] == ["vision_tower"] and vis["lr"] == pytest.approx(scale * other["lr"])
