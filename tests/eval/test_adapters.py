"""Model adapters: this project's model and tiny random-init Hugging Face video LLMs behind one VideoLM.

The HF models are built offline from configs (eval/tiny_hf.py); their accuracy is at chance, so these tests
check what does not depend on training: prompts (snapshots of each model's template), positions and the
video path (the adapter's scores against the model's own forward and generate), the needle's frame, the
sequence arithmetic, and every refusal.
"""

import json

import numpy as np
import pytest
import torch

from longvila.eval import adapters, needle
from longvila.eval.adapters import load_adapter

HF = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video")
QUESTION = "What is the secret code shown in the video?"


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hf_lms(tiny_hf):
    return {a: load_adapter("auto", tiny_hf(a)) for a in HF}


PROMPTS = {  # the rendered chat prompt each architecture's template gives for a one-video question
    "qwen2_vl": "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n",
    "qwen2_5_vl": "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n",
    "llava_onevision": "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n",
    "llava_next_video": "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n",
    "longvila": "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("arch", HF)
def test_prompt_snapshot_and_types(hf_lms, arch):
    lm = hf_lms[arch]
    assert lm.model_type == arch and type(lm.model).__name__.lower().startswith(arch.replace("_", "")[:5])
    assert lm.prompt_text("Q?", 4) == PROMPTS[arch]
    assert lm.prompt_text("Q?", None) == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert len(lm.model_hash) == 16 and lm.input_size == (32, 32)


def test_our_prompt_snapshot(tiny_lm):
    lm = adapters.as_video_lm(tiny_lm)
    assert lm.prompt_text("Q?", 4) == PROMPTS["longvila"] and lm.levels == ("embedding", "frame")
    # the rendered template is what the processor expands: one <video> becomes frames x tokens <image> ids
    ids = lm.lm.processor.build_prompt("Q?", 4).tolist()
    assert lm.sequence_length("Q?", 4) == len(ids)


@pytest.mark.parametrize("arch", HF)
def test_visual_token_arithmetic_matches_the_processor(hf_lms, arch):
    lm = hf_lms[arch]
    got = [lm.visual_tokens(n) for n in range(1, 10)]
    want = [lm._measured_tokens(n) for n in range(1, 10)]
    assert got == want
    # per-architecture facts: Qwen2-VL merges two frames per temporal patch (an odd count is padded),
    # LLaVA-OneVision adds one newline token per video
    if arch.startswith("qwen"):
        assert got[0] == got[1] and got[2] == got[3] == 2 * got[1]
    elif arch == "llava_onevision":
        assert got[1] - got[0] == got[0] - 1
    ids = lm._inputs("Q?", _frames(6))["input_ids"]
    assert lm.sequence_length("Q?", 6) == ids.shape[1]


def test_frame_count_beyond_context_is_refused_with_the_largest_that_fits(hf_lms):
    lm = hf_lms["llava_onevision"]  # max_position_embeddings 4096, 4 tokens a frame + 1
    fit = lm.max_frames(QUESTION, 3, upto=10_000)
    assert lm.sequence_length(QUESTION, fit, 3) <= 4096 < lm.sequence_length(QUESTION, fit + 1, 3)
    lm.check_fits(QUESTION, fit, 3)
    with pytest.raises(ValueError, match=rf"beyond the model's context of 4,096 .* largest frame count that fits is {fit}"):
        lm.check_fits(QUESTION, 6000, 3)


def test_needle_grid_beyond_context_refused_before_work(hf_lms, tmp_path):
    cfg = needle.NeedleConfig(out=str(tmp_path / "n"), frames=6000, steps=2, needles=1)
    with pytest.raises(ValueError, match="needle grid at 6000 frames: 6001 frames make .* fits is 1"):
        needle.run(cfg, lm=hf_lms["llava_onevision"])
    assert not (tmp_path / "n" / "cells").exists()


def test_unknown_model_type_and_mismatched_checkpoint(tiny_ckpt, tiny_hf, tmp_path):
    with pytest.raises(ValueError, match="unknown model type 'gpt4v'; known: longvila, qwen2_vl, qwen2_5_vl, "
                                         "llava_onevision, llava_next_video"):
        load_adapter("gpt4v", tiny_ckpt)
    with pytest.raises(ValueError, match="the checkpoint is a 'longvila' model, not 'qwen2_vl'"):
        load_adapter("qwen2_vl", tiny_ckpt)
    with pytest.raises(ValueError, match="is a 'qwen2_vl' model, not 'llava_onevision' .use --model qwen2_vl"):
        load_adapter("llava_onevision", tiny_hf("qwen2_vl"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_adapter("auto", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' has no adapter"):
        load_adapter("auto", tmp_path)


@pytest.mark.parametrize("arch", HF)
def test_scores_are_the_models_own_forward_and_generate(hf_lms, arch):
    """Teacher forcing equals the model's own forward on the processor's inputs with the answer's ids appended,
    and reproduces the model's own greedy generation (both through the model's positions: 3-D M-RoPE for
    Qwen2-VL, whose cached decoding offsets positions by the video's rope deltas)."""
    lm = hf_lms[arch]
    frames = _frames(5, seed=1)
    text = lm.prompt_text(QUESTION, 5)
    inputs = lm.processor(text=[text], videos=[frames], return_tensors="pt", do_sample_frames=False)
    with torch.no_grad():
        gen = lm.model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None,
                                pad_token_id=lm.tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:]
    answer = gen.tolist()
    pred = lm.teacher_forced(QUESTION, [frames], torch.tensor([answer]))
    assert pred[0].tolist() == answer
    full = {k: v for k, v in inputs.items()}
    n = len(answer)
    full["input_ids"] = torch.cat([inputs["input_ids"], gen[None]], 1)
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(1, n, dtype=torch.long)], 1)
    if "mm_token_type_ids" in full:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, n, dtype=torch.long)], 1)
    with torch.no_grad():
        ref = lm.model(**full).logits[0, -n - 1:-1]
    got = lm.logits(QUESTION, frames, answer, keep=n + 1)[0, :n]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    lp = lm.option_logprobs(QUESTION, frames, [answer, answer[:1]])
    want = torch.log_softmax(ref.double(), -1).gather(-1, gen[:, None])[:, 0]
    assert lp == pytest.approx([float(want.sum()), float(want[0])], rel=1e-6, abs=1e-6)
    # the video matters: other frames give other logits
    assert not torch.allclose(lm.logits(QUESTION, _frames(5, seed=2), answer, keep=n + 1)[0, :n], ref)


def test_qwen2_vl_positions_are_mrope(hf_lms):
    """The adapter's logits use Qwen2-VL's 3-D positions: 1-D positions over the same embeddings give others."""
    lm = hf_lms["qwen2_vl"]
    frames = _frames(4)
    inputs = lm._inputs(QUESTION, frames)
    with torch.no_grad():
        own = lm.model(**inputs).logits
        pos = torch.arange(inputs["input_ids"].shape[1])[None]
        one_d = lm.model(**inputs, position_ids=pos).logits  # the same 1-D position on every M-RoPE axis
    torch.testing.assert_close(lm.logits(QUESTION, frames), own)
    assert (own - one_d).abs().max() > 1e-4


def test_frame_level_rows_hold_the_needle_at_its_frame(hf_lms):
    """At frame level the needle image is one of the frames the model's processor receives, at its depth."""
    lm = hf_lms["llava_onevision"]
    hay = lm.visual(_frames(10), "frame")
    card = np.full((32, 32, 3), 255, np.uint8)
    for depth, want in [(0.0, 0), (0.5, 5), (1.0, 10)]:
        row, i = needle.insert_needle(hay, card, depth)
        assert i == want and row.shape == (11, 32, 32, 3)
        assert (row[i] == 255).all() and int((row == 255).all(axis=(1, 2, 3)).sum()) == 1
        px = lm._inputs(QUESTION, row)["pixel_values_videos"][0]  # (frames, 3, H, W), normalised
        assert px.shape[0] == 11 and torch.argmax(px.mean(dim=(1, 2, 3))) == i
    with pytest.raises(ValueError, match="level 'embedding' is not supported"):
        lm.visual(_frames(2), "embedding")


def test_our_two_levels_give_the_same_answers(tiny_lm, tmp_path):
    """Our model at embedding level (haystack encoded once, the card's tokens swapped in) and at frame level
    (the card among the frames, every row encoded again) predicts the same answer in every cell."""
    runs = {}
    for level in ("embedding", "frame"):
        cfg = needle.NeedleConfig(out=str(tmp_path / level), frames=24, steps=3, depths=(0.0, 0.5, 1.0), needles=3,
                                  reference_cards=0, level=level)
        runs[level] = needle.run(cfg, lm=tiny_lm)
        assert runs[level]["level"] == level
    for f in sorted((tmp_path / "embedding" / "cells").glob("*.json")):
        a, b = (json.loads((tmp_path / lv / "cells" / f.name).read_text()) for lv in ("embedding", "frame"))
        assert a["predicted"] == b["predicted"] and a["needle_frame"] == b["needle_frame"], f.name
    assert runs["embedding"]["grid"] == runs["frame"]["grid"]


def test_string_match():
    assert needle.string_match("The code is 123.", "123")
    assert needle.string_match(" 1 2 3", "1 2 3") and needle.string_match("A Red Ball!", "red ball")
    assert not needle.string_match("1234", "123") and not needle.string_match("", "123")
    assert not needle.string_match("ball red", "red ball")


def test_sharded_grid_refuses_an_adapter_that_cannot_shard(tiny_hf, tmp_path):
    from longvila.eval import needle_sp

    cfg = needle.NeedleConfig(out=str(tmp_path), frames=8, steps=2, needles=1, nproc=2, model_type="qwen2_vl")
    with pytest.raises(ValueError, match=r"qwen2_vl: the sharded grid \(--nproc > 1\) needs embedding-level"):
        needle_sp.run_sharded(cfg, tiny_hf("qwen2_vl"))
