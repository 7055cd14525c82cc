"""Every prompt the evaluations send to the model, and the answer extraction that reads the replies.

Design choices:
- One place for all prompt text, so a change shows in one snapshot test (tests/eval/test_prompts.py) and
  the needle, the VideoMME sweep and the lmms-eval plugin cannot drift apart.
- The VideoMME prompt is the one long-video VLMs report with (select the best answer, letter only,
  question, options, "The best answer is:"); its words are in the world vocabulary, so the tokenizer
  encodes it compactly.
- Letter extraction is deliberately strict: the first standalone option letter after stripping the usual
  answer prefixes, the article "A" excepted; a reply with no letter scores as wrong (``""``), never as a
  guess.
- Likelihood scoring (a diagnostic beside the letter protocol): the question is asked without options, as
  the open-ended training questions are, and the option whose text the model finds most likely wins; it
  separates knowing the answer from mapping it to a letter.
"""

from __future__ import annotations

import re

NEEDLE_QUESTION = "What is the secret code shown in the video?"

VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_ANSWER_CUE = "The best answer is:"
OPTION_LETTERS = ("A", "B", "C", "D")


def needle_question() -> str:
    """The question that follows the haystack; its answer is the needle's digit code."""
    return NEEDLE_QUESTION


def videomme_prompt(question: str, options: list[str]) -> str:
    """The VideoMME multiple-choice prompt (text only; the processor adds the video placeholder).

    ``options`` are in the Video-MME form ``["A. ...", "B. ...", ...]``.
    """
    if not options:
        raise ValueError("videomme_prompt: no options given")
    lines = [VIDEOMME_INSTRUCTION, question.strip(), *[o.strip() for o in options], VIDEOMME_ANSWER_CUE]
    return "\n".join(lines)


_PREFIXES = (
    "the best answer is", "the correct answer is", "the answer is", "best answer:", "answer:",
    "the best option is", "the correct option is", "option",
)
_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
_ARTICLE = re.compile(r"A (?=[a-z])")  # "A medium red circle ...": the article, not option A


def extract_letter(reply: str, letters: tuple[str, ...] = OPTION_LETTERS) -> str:
    """The option letter a reply chooses, or ``""`` when it names none.

    ``"B"``, ``"B."``, ``"(B) a red circle"``, ``"The best answer is B"`` -> ``"B"``; ``"blue"`` -> ``""``.
    NOTE: "A" followed by a lowercase word is read as the English article ("A medium red circle appears")
    and skipped, so a caption-like reply does not count as choosing option A.
    """
    s = reply.strip()
    low = s.lower()
    for p in _PREFIXES:
        if low.startswith(p):
            s = s[len(p):].strip()
            low = s.lower()
    for m in _LETTER.finditer(s):
        if m.group(1) == "A" and _ARTICLE.match(s, m.start()):
            continue
        if m.group(1) in letters:
            return m.group(1)
    return ""


_OPTION = re.compile(r"^\s*\(?([A-D])[.):]\s*")


def option_text(option: str) -> str:
    """An option without its letter: ``"B. a red circle"`` -> ``"a red circle"`` (the answer as the model
    would write it to the open question; used by likelihood scoring)."""
    return _OPTION.sub("", option, count=1).strip()
