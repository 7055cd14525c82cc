"""Captions and questions composed from the world's event logs, the way LongVILA makes long-video SFT data.

LongVILA cuts a long video into short clips, captions each clip, then has a language model compose
questions about the whole video from the clip captions. Here:
- ``caption_clip(events, start, end)`` writes one sentence per event in a fixed grammar (and, for a clip
  of a longer video, one sentence per object already on screen when the clip starts);
- ``compose_questions(clips)`` takes the clip captions (strings, from ``caption_clip`` or from any
  captioning model) or the clips' events, parses the sentences it recognises back into facts, and composes
  summary, sub-event, order, temporal, counting, "what number was shown", colour, spatial and digit
  questions. Sentences it does not recognise still count for summary, sub-event and order questions.
- Each question has a short exact-match ``answer`` where possible and a 4-option multiple-choice form
  (``options`` as "A. ...", ``answer_letter``) for the VideoMME-format benchmark.

Design choice: questions are only asked when the facts make the answer unique (e.g. "where does the red
circle appear" only if exactly one red circle appears), so every answer is exact.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from longvila.data.vocab import COLORS, POSITIONS, SHAPES
from longvila.data.world import Event

LETTERS = "ABCD"
MC_HEADER = ("Select the best answer to the following multiple-choice question based on the video. "
             "Respond with only the letter (A, B, C, or D) of the correct option.")
QUESTION_TYPES = ("summary", "sub_event", "order", "temporal", "counting", "code", "color", "spatial", "digit")


@dataclass
class QA:
    """One question: ``answer`` is short and exact unless ``type`` is summary or sub_event."""

    type: str
    question: str
    answer: str
    options: list[str] | None = None  # ["A. ...", "B. ...", "C. ...", "D. ..."]
    answer_letter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _events(events: Sequence[Event | dict]) -> list[Event]:
    return [e if isinstance(e, Event) else Event.from_dict(e) for e in events]


def _a(word: str) -> str:
    return ("An " if word[0] in "aeiou" else "A ") + word


def _name(shape: str, color: str, digit: int | None) -> str:
    return f"{color} digit {digit}" if shape == "digit" else f"{color} {shape}"


def sentence(e: Event) -> str:
    """One caption sentence for an event."""
    if e.kind == "cut":
        return f"The scene cuts to a {e.background} background."
    if e.kind == "code":
        return f"A card shows the code {e.code}."
    name = _name(e.shape, e.color, e.digit)
    if e.kind == "appear":
        return f"{_a(name if e.shape == 'digit' else f'{e.size} {name}')} appears at the {e.position}."
    if e.kind == "move":
        return f"The {name} moves {e.direction} to the {e.position}."
    if e.kind == "color":
        return f"The {_name(e.shape, e.from_color, e.digit)} changes color to {e.color}."
    if e.kind == "leave":
        return f"The {name} leaves the {e.position}."
    raise ValueError(f"unknown event kind {e.kind!r}")


def caption_clip(events: Sequence[Event | dict], start: int | None = None, end: int | None = None) -> str:
    """Caption frames [start, end) of a video from its full event log (or caption all given events).

    With ``start`` given, objects on screen at ``start`` (from earlier events) are described first
    ("A red circle is at the top left."), so each clip's caption stands on its own.
    """
    evs = _events(events)
    start = 0 if start is None else start
    end = (max((e.frame for e in evs), default=0) + 1) if end is None else end
    present: dict[int, Event] = {}
    for e in evs:
        if e.frame >= start:
            break
        if e.kind == "cut":
            present.clear()
        elif e.kind == "leave":
            present.pop(e.obj, None)
        elif e.kind in ("appear", "move", "color"):
            present[e.obj] = e
    out = []
    clip = [e for e in evs if start <= e.frame < end]
    if not (clip and clip[0].kind == "cut" and clip[0].frame == start):
        out += [f"{_a(_name(e.shape, e.color, e.digit))} is at the {e.position}." for e in present.values()]
    out += [sentence(e) for e in clip]
    return " ".join(out) if out else "Nothing changes."


def caption_image(events: Sequence[Event | dict]) -> str:
    """Caption a still image (the frame-0 events of ``world.make_image``)."""
    evs = _events(events)
    bg = next((e.background for e in evs if e.kind == "cut"), None)
    objs = [_a(_name(e.shape, e.color, e.digit) if e.shape == "digit" else f"{e.size} {_name(e.shape, e.color, None)}")
            + f" at the {e.position}" for e in evs if e.kind == "appear"]
    text = " and ".join(o[0].lower() + o[1:] if i else o for i, o in enumerate(objs)) if objs else "Nothing"
    return text + (f" on a {bg} background." if bg else ".")


# ------------------------------------------------------------------------------------------ parsing
_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_P = "|".join(POSITIONS)
_OBJ = rf"(?P<color>{_C}) (?:(?P<shape>{_S})|digit (?P<digit>\d))"
_PATTERNS = [
    ("cut", re.compile(r"^The scene cuts to an? (?P<background>[a-z ]+) background\.$")),
    ("code", re.compile(r"^A card shows the code (?P<code>\d+)\.$")),
    ("appear", re.compile(rf"^An? (?:(?:small|medium|large) )?{_OBJ} appears at the (?P<position>{_P})\.$")),
    ("move", re.compile(rf"^The {_OBJ} moves (?P<direction>left|right|up|down) to the (?P<position>{_P})\.$")),
    ("color", re.compile(rf"^The (?P<from_color>{_C}) (?:(?P<shape>{_S})|digit (?P<digit>\d)) changes color to "
                         rf"(?P<color>{_C})\.$")),
    ("leave", re.compile(rf"^The {_OBJ} leaves the (?P<position>{_P})\.$")),
    ("present", re.compile(rf"^An? {_OBJ} is at the (?P<position>{_P})\.$")),
]


def split_sentences(caption: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]", caption) if s.strip()]


def parse_sentence(s: str) -> dict[str, Any] | None:
    """The fact a caption sentence states (kind + fields), or None when it is not in the world's grammar."""
    for kind, pat in _PATTERNS:
        m = pat.match(s)
        if m:
            d = {k: v for k, v in m.groupdict().items() if v is not None}
            if "digit" in d:
                d["shape"], d["digit"] = "digit", int(d["digit"])
            return {"kind": kind, **d}
    return None


# ------------------------------------------------------------------------------------------ composing
def mc_prompt(question: str, options: list[str]) -> str:
    """The VideoMME-style prompt text for a multiple-choice question."""
    return f"{MC_HEADER}\n{question}\n" + "\n".join(options) + "\nThe best answer is:"


def mc_options(rng: np.random.Generator, answer: str, pool: Sequence[str]) -> tuple[list[str], str] | None:
    """Four options ("A. ..." ... "D. ...") with ``answer`` at a random letter among three distractors drawn
    from ``pool``, and its letter; None when the pool has fewer than three other answers."""
    distract = sorted({p for p in pool if p != answer})
    if len(distract) < 3:
        return None
    picks = [distract[i] for i in rng.choice(len(distract), 3, replace=False)]
    pos = int(rng.integers(4))
    opts = picks[:pos] + [answer] + picks[pos:]
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)], LETTERS[pos]


def _qa(rng, type_, question, answer, pool) -> QA:
    mc = mc_options(rng, answer, pool)
    return QA(type_, question, answer, *(mc if mc else (None, None)))


def compose_questions(clips: Sequence[str] | Sequence[Sequence[Event | dict]], seed: int = 0,
                      per_type: int = 1, types: Sequence[str] = QUESTION_TYPES) -> list[QA]:
    """Questions about a whole video from its clips' captions (or the clips' events, captioned first).

    ``clips``: one caption string per clip in time order, or one event list per clip. Returns up to
    ``per_type`` questions of each requested type whose answer the captions make unique.
    """
    unknown = set(types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question types {sorted(unknown)}; known: {list(QUESTION_TYPES)}")
    caps = [c if isinstance(c, str) else caption_clip(c) for c in clips]
    if not caps:
        raise ValueError("compose_questions needs at least one clip")
    rng = np.random.default_rng(seed)
    sents = [(ci, s) for ci, c in enumerate(caps) for s in split_sentences(c)]
    facts = [(ci, s, f) for ci, s in sents if (f := parse_sentence(s)) is not None]
    events_only = [(ci, s, f) for ci, s, f in facts if f["kind"] != "present"]
    out: list[QA] = []
    pick = lambda n: rng.permutation(n)[:per_type]  # noqa: E731

    for t in types:
        if t == "summary":
            # state sentences ("A red circle is at the left.") repeat what earlier clips said: left out
            summary = " ".join(s for _, s in sents if (f := parse_sentence(s)) is None or f["kind"] != "present")
            out.append(QA("summary", "Summarize the events in the video in order.", summary))
        elif t == "sub_event" and len(caps) > 1:
            for k in pick(len(caps)):
                out.append(_qa(rng, "sub_event", f"Describe clip {k + 1} of {len(caps)} of the video.",
                               caps[k], caps))
        elif t == "order":
            # events whose sentence is unique in the video (else "before" would be ambiguous)
            once = Counter(s for _, s, _ in events_only)
            uniq = [(ci, s) for ci, s, f in events_only if once[s] == 1 and f["kind"] != "cut"]
            pairs = [(a, b) for a in uniq for b in uniq if a[0] < b[0]]
            for i in pick(len(pairs)):
                (_, sa), (_, sb) = pairs[i]
                if rng.integers(2):
                    q, ans = f'Does "{sb}" happen before or after "{sa}"?', "after"
                else:
                    q, ans = f'Does "{sa}" happen before or after "{sb}"?', "before"
                out.append(QA("order", q, ans))
            by_clip: dict[int, str] = {}
            for ci, s in uniq:
                by_clip.setdefault(ci, s)
            if len(by_clip) >= 4:
                for _ in range(per_type):
                    chosen = sorted(rng.choice(sorted(by_clip), 4, replace=False))
                    first = by_clip[chosen[0]]
                    out.append(_qa(rng, "order", "Which of these happens first in the video?", first,
                                   [by_clip[c] for c in chosen]))
        elif t == "temporal":
            nxt = [(s, events_only[i + 1][1]) for i, (_, s, f) in enumerate(events_only[:-1])
                   if f["kind"] not in ("cut",)]
            counts = Counter(s for s, _ in nxt)
            nxt = [(a, b) for a, b in nxt if counts[a] == 1]
            for i in pick(len(nxt)):
                a, b = nxt[i]
                out.append(_qa(rng, "temporal", f"What happens right after this: {a}", b,
                               [s for _, s in sents if s != b and s != a]))
        elif t == "counting":
            appear = Counter((f["color"], f["shape"], f.get("digit")) for _, _, f in events_only
                             if f["kind"] == "appear")
            qs = [(f"How many times does a {_name(s, c, d)} appear in the video?", n)
                  for (c, s, d), n in sorted(appear.items(), key=str)]
            scenes = sum(f["kind"] == "cut" for _, _, f in events_only)
            if scenes:
                qs.append(("How many scenes are in the video?", scenes))
            # always asked first: in a short clip every kind of object appears once, so the questions above
            # all answer 1, while the number of appearances of any object varies from clip to clip
            total = [("How many times does an object appear in the video?", sum(appear.values()))] if appear else []
            for q, n in (total + [qs[i] for i in pick(len(qs))])[:per_type]:
                out.append(_qa(rng, "counting", q, str(n), [str(k) for k in range(max(1, n - 3), n + 5)]))
        elif t == "code":
            codes = [f["code"] for _, _, f in events_only if f["kind"] == "code"]
            if len(codes) == 1:
                c = codes[0]
                pool = {c[::-1], *("".join(str(x) for x in rng.integers(0, 10, len(c))) for _ in range(6))}
                out.append(_qa(rng, "code", "What is the secret code shown in the video?", c, sorted(pool)))
        elif t == "color":
            ch = Counter((f["from_color"], f["shape"], f.get("digit")) for _, _, f in events_only
                         if f["kind"] == "color")
            qs = [(f"What color does the {_name(f['shape'], f['from_color'], f.get('digit'))} change to?",
                   f["color"]) for _, _, f in events_only
                  if f["kind"] == "color" and ch[(f["from_color"], f["shape"], f.get("digit"))] == 1]
            for i in pick(len(qs)):
                out.append(_qa(rng, "color", qs[i][0], qs[i][1], COLORS))
        elif t == "spatial":
            ap = Counter((f["color"], f["shape"], f.get("digit")) for _, _, f in events_only if f["kind"] == "appear")
            qs = [(f"Where does the {_name(f['shape'], f['color'], f.get('digit'))} appear?", f["position"])
                  for _, _, f in events_only if f["kind"] == "appear"
                  and ap[(f["color"], f["shape"], f.get("digit"))] == 1]
            for i in pick(len(qs)):
                out.append(_qa(rng, "spatial", qs[i][0], qs[i][1], POSITIONS))
        elif t == "digit":
            dg = [f for _, _, f in events_only if f["kind"] == "appear" and f["shape"] == "digit"]
            by_pos = Counter(f["position"] for f in dg)
            qs = [(f"Which digit appears at the {f['position']}?", str(f["digit"])) for f in dg
                  if by_pos[f["position"]] == 1]
            for i in pick(len(qs)):
                out.append(_qa(rng, "digit", qs[i][0], qs[i][1], [str(d) for d in range(10)]))
    return out


def image_questions(events: Sequence[Event | dict], seed: int = 0) -> list[QA]:
    """Exact-answer questions about a still image (frame-0 ``appear`` events of ``world.make_image``)."""
    rng = np.random.default_rng(seed)
    objs = [e for e in _events(events) if e.kind == "appear"]
    out = [_qa(rng, "counting", "How many objects are in the image?", str(len(objs)), [str(k) for k in range(1, 10)])]
    shapes = Counter(e.shape for e in objs if e.shape != "digit")
    colors = Counter(e.color for e in objs)
    for e in objs:
        name = _name(e.shape, e.color, e.digit)
        out.append(_qa(rng, "spatial", f"Where is the {name}?", e.position, POSITIONS))
        if e.shape == "digit":
            out.append(_qa(rng, "digit", f"What digit is shown at the {e.position}?", str(e.digit),
                           [str(d) for d in range(10)]))
        elif shapes[e.shape] == 1:
            out.append(_qa(rng, "color", f"What color is the {e.shape}?", e.color, COLORS))
        if colors[e.color] == 1 and e.shape != "digit":
            out.append(_qa(rng, "shape", f"Which shape is {e.color}?", e.shape, SHAPES))
    return out


__all__ = ["QA", "QUESTION_TYPES", "caption_clip", "caption_image", "compose_questions", "image_questions",
           "mc_options", "mc_prompt", "parse_sentence", "sentence", "split_sentences"]
