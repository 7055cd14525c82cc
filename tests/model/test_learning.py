"""Learning check: the tiny VLM learns a toy frame task (two frame colours -> "red then blue") end to end.

It only can if placeholder expansion, the merge (in frame order), the label masking and the gradients
through projector and vision tower all work: the answer is in the pixels, never in the text.
"""

import numpy as np
import pytest
import torch

from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config

PALETTE = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "cyan": (30, 210, 220), "magenta": (210, 30, 200), "white": (240, 240, 240), "gray": (120, 120, 120)}
QUESTION = "What color is the first frame, and then?"


def _batch(processor, rng, n):
    """n two-frame videos of two different colours; the answer names them in order ("red then blue")."""
    names = list(PALETTE)
    pairs = [rng.choice(len(names), 2, replace=False) for _ in range(n)]
    frames = np.stack([np.full((32, 32, 3), PALETTE[names[k]], np.float32) for pair in pairs for k in pair])
    frames = np.clip(frames + rng.normal(0, 25, frames.shape), 0, 255).astype(np.uint8)
    encs = [processor.encode_conversation([{"from": "human", "value": f"<video>\n{QUESTION}"},
                                           {"from": "gpt", "value": f"{names[a]} then {names[b]}"}], [2])
            for a, b in pairs]
    length = max(len(e["input_ids"]) for e in encs)
    ids = torch.zeros(n, length, dtype=torch.long)  # pad with <|endoftext|>, unlabelled
    labels = torch.full((n, length), -100)
    for i, e in enumerate(encs):
        ids[i, : len(e["input_ids"])] = e["input_ids"]
        labels[i, : len(e["labels"])] = e["labels"]
    return ids, labels, processor.preprocess_frames(frames)


def _answer_accuracy(model, ids, labels, pixel_values):
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixel_values).logits
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    correct = ((pred == target) | ~mask).all(dim=1)  # every answer token (and <|im_end|>) right
    return correct.float().mean().item()


@pytest.fixture
def one_thread():
    # A 1M-parameter model is fastest on one thread (no sync overhead, no spinning on a shared machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_tiny_vlm_learns_frame_colours(one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = LongVILAForCausalLM(tiny_config())
    processor = LongVILAProcessor.from_config(model.config)
    test = _batch(processor, np.random.default_rng(99), 128)
    before = _answer_accuracy(model.eval(), *test)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(150):
        ids, labels, pv = _batch(processor, rng, 16)
        loss = model(input_ids=ids, pixel_values=pv, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = _answer_accuracy(model.eval(), *test)
    print(f"answer accuracy {before:.3f} -> {after:.3f}; loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    assert before < 0.1  # 8 x 7 ordered colour pairs: chance is 1/56
    assert after >= 0.9
    assert np.mean(losses[-10:]) < 0.2 * losses[0]
