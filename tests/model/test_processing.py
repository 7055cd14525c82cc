"""The processor: chat template snapshot, placeholder expansion, label masking, frames, persistence."""

import numpy as np
import pytest
import torch

from longvila.model import LongVILAProcessor, tiny_config

CONV = [
    {"from": "human", "value": "<video>\nWhat color is the circle?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "<image>\nWhat digit is shown?"},
    {"from": "gpt", "value": "7"},
]
SNAPSHOT = (
    "<|im_start|>user\n<video>\nWhat color is the circle?<|im_end|>\n"
    "<|im_start|>assistant\nred<|im_end|>\n"
    "<|im_start|>user\n<image>\nWhat digit is shown?<|im_end|>\n"
    "<|im_start|>assistant\n7<|im_end|>\n"
)


def test_chat_template_snapshot(processor):
    assert processor.render(CONV) == SNAPSHOT
    assert processor.render(CONV[:1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_encode_matches_template_tokenisation(processor):
    enc = processor.encode_conversation(CONV, [3, 1])
    tok = processor.tokenizer
    template_ids = tok(SNAPSHOT, add_special_tokens=False)["input_ids"]
    video, image = tok.convert_tokens_to_ids(["<video>", "<image>"])
    expanded = []
    for t in template_ids:
        expanded += [image] * 3 if t == video else [t]
    assert enc["input_ids"].tolist() == expanded


def test_labels_only_assistant_tokens_and_im_end(processor):
    enc = processor.encode_conversation(CONV, [3, 1])
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids.shape == labels.shape and ids.dtype == labels.dtype == torch.long
    labelled = labels != -100
    assert torch.equal(labels[labelled], ids[labelled])
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    want = tok("red", add_special_tokens=False)["input_ids"] + [im_end]
    want += tok("7", add_special_tokens=False)["input_ids"] + [im_end]
    assert ids[labelled].tolist() == want
    assert tok.decode(ids[labelled]) == "red<|im_end|>7<|im_end|>"


def test_placeholder_expansion_counts(processor):
    enc = processor.encode_conversation(CONV, [5, 1])
    assert int((enc["input_ids"] == processor.settings.image_token_id).sum()) == 6
    assert int((enc["input_ids"] == processor.settings.video_token_id).sum()) == 0
    with pytest.raises(ValueError, match=r"2 <video>/<image> placeholders .* 1 frame counts \[5\]"):
        processor.encode_conversation(CONV, [5])
    with pytest.raises(ValueError, match="still image counts 1"):
        processor.encode_conversation(CONV, [5, 2])
    with pytest.raises(ValueError, match=r"conversations\[1\].from"):
        processor.encode_conversation([CONV[0], {"from": "robot", "value": "x"}], [1])


def test_build_prompt(processor):
    ids = processor.build_prompt("What color is the circle?", 4)
    text = processor.decode(ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\n" + "<image>" * 4 + "\nWhat color is the circle?<|im_end|>\n<|im_start|>assistant\n"
    assert processor.decode(processor.build_prompt("hi", None), skip_special_tokens=False).count("<image>") == 0


def test_preprocess_frames():
    p = LongVILAProcessor.from_config(tiny_config())
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0] = 255
    frames[1, :, :, 0] = 255
    x = p.preprocess_frames(frames)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.ones(3, 32, 32))
    torch.testing.assert_close(x[1, 0], torch.ones(32, 32))
    torch.testing.assert_close(x[1, 1:], -torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        p.preprocess_frames(frames.astype(np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        p.preprocess_frames(np.zeros((0, 32, 32, 3), np.uint8))


def test_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    back = LongVILAProcessor.from_pretrained(tmp_path)
    assert back.settings == processor.settings
    enc_a = processor.encode_conversation(CONV, [2, 1])
    enc_b = back.encode_conversation(CONV, [2, 1])
    assert torch.equal(enc_a["input_ids"], enc_b["input_ids"]) and torch.equal(enc_a["labels"], enc_b["labels"])
    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="processor_config.json"):
        LongVILAProcessor.from_pretrained(tmp_path)


def test_settings_must_match_tokenizer(processor):
    from longvila.model.processing import ProcessorSettings

    bad = ProcessorSettings(image_size=32, tokens_per_frame=1, image_token_id=7, video_token_id=4)
    with pytest.raises(ValueError, match="image_token_id: the config says 7"):
        LongVILAProcessor(processor.tokenizer, bad)
