"""Prompt snapshots and answer extraction: an accidental change to what the model is asked shows here."""

import pytest

from longvila.eval import prompts

VIDEOMME_SNAPSHOT = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
    "What is the secret code shown in the video?\n"
    "A. 123\n"
    "B. 456\n"
    "C. 789\n"
    "D. 012\n"
    "The best answer is:"
)


def test_videomme_prompt_snapshot():
    got = prompts.videomme_prompt("What is the secret code shown in the video? ",
                                  ["A. 123", "B. 456", "C. 789", "D. 012"])
    assert got == VIDEOMME_SNAPSHOT


def test_needle_question_snapshot():
    assert prompts.needle_question() == "What is the secret code shown in the video?"


def test_chat_prompt_snapshot(tiny_lm):
    """The full rendered prompt (chat template + video placeholder expanded to one <image> per frame)."""
    from longvila.eval import runner

    ids = runner.prompt_ids(tiny_lm, prompts.needle_question(), 3)
    text = tiny_lm.tokenizer.decode(ids, skip_special_tokens=False)
    assert text == ("<|im_start|>user\n<image><image><image>\nWhat is the secret code shown in the video?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    blind = tiny_lm.tokenizer.decode(runner.prompt_ids(tiny_lm, "Q?", None), skip_special_tokens=False)
    assert blind == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_videomme_prompt_needs_options():
    with pytest.raises(ValueError, match="no options"):
        prompts.videomme_prompt("Q?", [])


@pytest.mark.parametrize("reply,letter", [
    ("B", "B"), ("B.", "B"), (" C) a red circle", "C"), ("(D)", "D"), ("The best answer is A", "A"),
    ("The best answer is: B. 456", "B"), ("Answer: C", "C"), ("blue", ""), ("", ""), ("E", ""),
    ("Best answer: d", ""), ("ABCD", ""), ("A medium magenta diamond", ""), ("A. a red circle", "A"),
    ("A", "A"), ("A cyan digit 2 appears. B", "B"),
])
def test_extract_letter(reply, letter):
    assert prompts.extract_letter(reply) == letter
