"""The words of the embedded synthetic video world, and the text corpus the tokenizer is trained on.

The world (``longvila.data.world``) describes its scenes, captions, questions and narrated event logs
with these words only, so the byte-level BPE tokenizer shipped in ``model/tokenizer/`` (trained on
``tokenizer_corpus()``) encodes them compactly. Byte-level BPE still encodes any other text (a user's own
captions), just in more tokens. Adding words here means rebuilding the tokenizer: ``make tokenizer``.

NOTE: digits are kept as single characters in the tokenizer (one token each), so a k-digit answer is
exactly k tokens; the needle evaluation relies on it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

COLORS = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "gray"]
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star"]
SIZES = ["small", "medium", "large"]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMBER_WORDS = DIGIT_WORDS + ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                              "seventeen", "eighteen", "nineteen", "twenty"]
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right"]
DIRECTIONS = ["left", "right", "up", "down"]
MOTIONS = ["appears", "moves", "leaves", "changes color", "grows", "shrinks", "stays", "spins"]
BACKGROUNDS = ["black", "dark blue", "dark green", "gray", "textured", "photo"]
SCENE_WORDS = ["scene", "cut", "frame", "clip", "video", "image", "picture", "object", "objects", "digit",
               "number", "code", "shown", "first", "last", "then", "after", "before", "while", "during",
               "beginning", "middle", "end", "times", "how", "many", "what", "which", "where", "when",
               "is", "are", "was", "were", "the", "a", "an", "and", "of", "in", "on", "to", "from", "at",
               "it", "there", "this", "that", "color", "shape", "answer", "question", "option", "options",
               "best", "letter", "only", "with", "select", "describe", "summarize", "count", "order",
               "events", "event", "happens", "happened", "background", "second", "seconds", "minute",
               "yes", "no", "none", "secret", "hidden", "remember", "document", "log", "entry", "note",
               "step", "time", "value", "key", "said", "says", "reads", "written", "handwritten"]

QA_TEMPLATES = [
    "What color is the {shape}?",
    "Which shape is {color}?",
    "How many objects are in the {noun}?",
    "What digit is shown at the {position}?",
    "Where is the {color} {shape}?",
    "What happens after the {color} {shape} {motion}?",
    "How many times does a {color} {shape} appear in the video?",
    "What is the secret code shown in the video?",
    "Describe the video.",
    "Summarize the events in the video in order.",
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.",
    "The best answer is:",
]

CAPTION_TEMPLATES = [
    "A {size} {color} {shape} {motion} at the {position}.",
    "The digit {digit} is written in {color} at the {position}.",
    "A {color} {shape} moves {direction} on a {background} background.",
    "The scene cuts to a {background} background with {count} objects.",
    "At {t} seconds the {color} {shape} {motion}.",
    "Log entry {t}: the {color} {shape} {motion}; remember the key {code}.",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        shape=rng.choice(SHAPES), color=rng.choice(COLORS), size=rng.choice(SIZES),
        position=rng.choice(POSITIONS), motion=rng.choice(MOTIONS), direction=rng.choice(DIRECTIONS),
        background=rng.choice(BACKGROUNDS), digit=rng.randrange(10), count=rng.choice(NUMBER_WORDS),
        noun=rng.choice(["frame", "image", "scene", "clip"]), t=rng.randrange(0, 3600),
        code="".join(str(rng.randrange(10)) for _ in range(rng.randint(1, 6))),
    )


def tokenizer_corpus(num_lines: int = 20000, seed: int = 0) -> Iterator[str]:
    """Deterministic lines of world text (captions, questions, answers, word lists) for BPE training."""
    rng = random.Random(seed)
    words = COLORS + SHAPES + SIZES + NUMBER_WORDS + POSITIONS + DIRECTIONS + MOTIONS + BACKGROUNDS
    yield " ".join(words + SCENE_WORDS)
    for i in range(num_lines):
        kind = i % 3
        if kind == 0:
            yield _fill(rng.choice(CAPTION_TEMPLATES), rng)
        elif kind == 1:
            yield _fill(rng.choice(QA_TEMPLATES), rng)
        else:
            letter = rng.choice("ABCD")
            yield f"{letter}. {_fill(rng.choice(CAPTION_TEMPLATES), rng)} The answer is {letter}."
