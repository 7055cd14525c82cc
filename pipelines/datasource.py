"""Training batches for a stage: the data part's webdataset sets -> packed MM-SP batches, resumable by index.

``stream(...)`` yields micro-batches in the loader contract of docs/design.md (``input_ids (1, L)``,
``labels (1, L)``, ``position_ids (1, L)`` restarting at each packed sample, ``pixel_values (N, 3, S, S)``,
``num_frames``, ``sample_ids``) plus ``skipped`` (samples dropped so far, with the reason logged once).

Design choices:
- Random access by position: the samples of the stage's sets (verified against their manifests) are held
  as raw bytes; epoch e visits them in a permutation seeded by (seed, e), dealt round-robin to the dp
  ranks. Micro-batch m of a rank is a pure function of (seed, rank, m), so a resumed run asks for
  micro-batch m directly instead of replaying the stream.
- A micro-batch of ``phase.batch`` samples is packed into one row (positions restart per sample), which is
  what the SP attention and the zigzag sharding expect; there is no padding.
- Frames: ``phase.frames`` sampled uniformly over the video (all frames of a shorter one). Event-aware: a
  needle card (``events`` of kind ``code``) lasts a frame or two and uniform sampling would miss it, making
  its question unanswerable, so the nearest sampled index is moved onto the card.
- Text-only samples are cut to ``seq_len`` tokens (counted in ``truncated``); visual samples are never cut.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import logging
import queue
import re
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longvila.pipelines.config import POINTER_FORMS, Phase

log = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"<video>|<image>")


@functools.lru_cache(maxsize=4)
def load_pool(data_root: str, sets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """Every sample of the sets (raw extension bytes + parsed json), in set and shard order."""
    from longvila.data.shards import iter_samples

    pool = []
    for name in sets:
        d = Path(data_root) / name
        if not (d / "manifest.json").is_file():
            raise FileNotFoundError(f"{d}: data set not found (no manifest.json); build it with `longvila data build`")
        for s in iter_samples(d):
            rec = s.get("json")
            if isinstance(rec, bytes | str):
                try:
                    rec = json.loads(rec)
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{d}: sample {s.get('__key__')}: malformed json ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
                raise ValueError(f"{d}: sample {s.get('__key__')}: json has no conversations list")
            pool.append({**s, "json": rec, "set": name})
    if not pool:
        raise ValueError(f"{data_root}: sets {list(sets)} hold no samples")
    return tuple(pool)


def frame_indices(total: int, want: int, events: list[dict] | None = None) -> np.ndarray:
    """``min(want, total)`` uniform indices into ``total`` frames, moved onto needle cards if missed."""
    n = max(1, min(want, total))
    idx = np.unique(np.linspace(0, total - 1, n).round().astype(int))
    for e in events or []:
        if e.get("kind") != "code":
            continue
        a, b = int(e["frame"]), int(e.get("end_frame") or e["frame"])
        if not ((idx >= a) & (idx <= b)).any():
            idx[np.abs(idx - a).argmin()] = a
            idx = np.unique(idx)
    return idx


@functools.lru_cache(maxsize=256)
def _decode(data: bytes) -> np.ndarray:
    from longvila.data.video_io import read_frames

    return read_frames(data)


@functools.lru_cache(maxsize=4096)
def _first_frame(data: bytes) -> np.ndarray:
    """Frame 0 of a video, (1, H, W, 3): all a one-frame haystack takes (``linspace(0, n - 1, 1)`` is frame 0
    whatever the length). Kept for many more videos than ``_decode`` keeps whole ones: a phase of one-frame
    needles draws from every video of the pool (1,430 in stage 5), and decoding each anew was two thirds of
    its data time."""
    return _decode.__wrapped__(data)[:1].copy()


def _image(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]


def pick_turns(conv: list[dict[str, str]], k: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Keep ``k`` random question/answer pairs of a conversation (in order); the visual placeholders of the
    dropped turns move to the first kept question, so the sample keeps all its media."""
    pairs = [conv[i:i + 2] for i in range(0, len(conv) - 1, 2)]
    if k <= 0 or len(pairs) <= k:
        return conv
    keep = sorted(rng.choice(len(pairs), k, replace=False).tolist())
    lead = "".join(_PLACEHOLDER.findall(" ".join(t["value"] for p in pairs[:keep[0] + 1] for t in p[:1])))
    moved = [{**pairs[keep[0]][0], "value": (lead + "\n" if lead else "") +
              _PLACEHOLDER.sub("", pairs[keep[0]][0]["value"]).lstrip()}, pairs[keep[0]][1]]
    out = moved
    for i in keep[1:]:
        out += pairs[i]
    later = _PLACEHOLDER.findall(" ".join(t["value"] for i, p in enumerate(pairs) if i not in keep and i > keep[0]
                                          for t in p[:1]))
    if later:
        raise ValueError("pick_turns: placeholders after the first kept turn are not supported")
    return out


def shuffled_options(qa: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], str]:
    """A four-option question's options in a new random order ("A. ...", ...) and the letter of its answer."""
    from longvila.data import questions as Q
    from longvila.eval.prompts import option_text

    texts = [option_text(o) for o in qa["options"]]
    answer = texts[Q.LETTERS.index(qa["answer_letter"])]
    texts = [texts[k] for k in rng.permutation(len(texts))]
    return [f"{Q.LETTERS[k]}. {t}" for k, t in enumerate(texts)], Q.LETTERS[texts.index(answer)]


def reask(conv: list[dict[str, str]], qas: list[dict[str, Any]], rng: np.random.Generator,
          mc_frac: float) -> list[dict[str, str]]:
    """The conversation with each question that has four options asked afresh: with probability ``mc_frac``
    in the four-option form (options in a new random order, answered with the letter), else open (answered
    with the short answer), whichever form the set was built with. Other turns, and the visual placeholders
    leading the first question, stay as they are."""
    from longvila.data import questions as Q

    by_q = {q["question"]: q for q in qas if len(q.get("options") or []) == 4 and q.get("answer_letter")}
    out = list(conv)
    for i in range(0, len(conv) - 1, 2):
        value = conv[i]["value"]
        lead = "".join(m + "\n" for m in _PLACEHOLDER.findall(value))
        body = _PLACEHOLDER.sub("", value).lstrip("\n")
        question = body.split("\n")[1] if body.startswith(Q.MC_HEADER + "\n") else body
        qa = by_q.get(question)
        if qa is None:
            continue
        if rng.random() < mc_frac:
            options, reply = shuffled_options(qa, rng)
            body = Q.mc_prompt(question, options)
        else:
            body, reply = question, qa["answer"]
        out[i], out[i + 1] = {**conv[i], "value": lead + body}, {**conv[i + 1], "value": reply}
    return out


def encode_sample(sample: dict[str, Any], frames: int, seq_len: int, processor, max_turns: int = 0,
                  rng: np.random.Generator | None = None, qa_mc_frac: float | None = None) -> dict[str, Any]:
    """One sample -> input_ids (L,), labels (L,), pixel_values (N, 3, S, S) or None, num_frames list.

    ``max_turns`` > 0 keeps that many random QA turns (``pick_turns``), which bounds the text of samples
    with many long answers. ``qa_mc_frac`` (None: as the set was built) asks the kept questions afresh, that
    share of them with four options (``reask``)."""
    rec = sample["json"]
    if max_turns:
        rec = {**rec, "conversations": pick_turns(rec["conversations"], max_turns,
                                                  rng or np.random.default_rng(0))}
    if qa_mc_frac is not None and rec.get("qa"):
        rec = {**rec, "conversations": reask(rec["conversations"], rec["qa"], rng or np.random.default_rng(0),
                                             qa_mc_frac)}
    text = " ".join(t.get("value", "") for t in rec["conversations"])
    kinds = _PLACEHOLDER.findall(text)
    pix, counts, n_img = [], [], 0
    for kind in kinds:
        if kind == "<video>":
            if "mp4" not in sample:
                raise ValueError(f"sample {sample['__key__']}: <video> placeholder but no mp4")
            allf = _decode(sample["mp4"])
            arr = allf[frame_indices(len(allf), frames, rec.get("events"))]
        else:
            key = "jpg" if "jpg" in sample and n_img == 0 else f"{n_img}.jpg"
            if key not in sample:
                raise ValueError(f"sample {sample['__key__']}: <image> #{n_img} but no {key}")
            arr = _image(sample[key])
            n_img += 1
        pix.append(processor.preprocess_frames(arr))
        counts.append(arr.shape[0])
    enc = processor.encode_conversation(rec["conversations"], counts)
    ids, labels = enc["input_ids"], enc["labels"]
    truncated = False
    if not kinds and ids.shape[0] > seq_len:
        ids, labels, truncated = ids[:seq_len], labels[:seq_len], True
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.cat(pix) if pix else None,
            "num_frames": counts, "id": str(rec.get("id", sample["__key__"])), "truncated": truncated}


def encode_question(processor, media: str, question: str, answer: str, num_frames: list[int],
                    form: str = "videomme") -> dict[str, torch.Tensor]:
    """One question turn after its media placeholder(s) ``media`` ("<video>", "<image>") and its answer ->
    {"input_ids", "labels"}. A four-option question (``questions.mc_prompt``) is asked in ``form``
    (``POINTER_FORMS``): the VideoMME chat prompt as written, "no-header" without its instruction line, or
    "oneline": the question and its options on one plain line without the chat template, then the letter
    (``processor.encode_plain``), as pointer questions are; any other question keeps the chat prompt."""
    from longvila.data import questions as Q

    if form not in POINTER_FORMS:
        raise ValueError(f"question form {form!r}: choose one of {', '.join(POINTER_FORMS)}")
    if form != "videomme" and question.startswith(Q.MC_HEADER + "\n"):
        question = question.removeprefix(Q.MC_HEADER + "\n")
        if form == "oneline":
            return processor.encode_plain(f"{media} " + " ".join(question.split("\n")[:-1]), f" {answer}",
                                          num_frames)
    conv = [{"from": "human", "value": f"{media}\n{question}"}, {"from": "gpt", "value": answer}]
    return processor.encode_conversation(conv, num_frames)


def needle_sample(pool: tuple[dict[str, Any], ...], frames: int, rng: np.random.Generator, processor,
                  code_digits: int = 3, mc_frac: float = 0.0, hand_frac: float = 0.5,
                  repeat_frac: float = 0.0, form: str = "videomme",
                  videos: list[int] | None = None, near_frac: float = 0.0) -> dict[str, Any]:
    """A synthetic needle-in-a-haystack sample: ``frames`` haystack frames (uniform samples of the pool's
    videos, several videos if one is too short) with a code card (handwritten with train-split digits with
    probability ``hand_frac``, else printed) inserted at a random depth, and the question the needle
    evaluation asks, with probability ``mc_frac`` in the four-option form (``code_question``) asked in ``form``
    (``encode_question``); with probability ``repeat_frac`` the code repeats a digit (``world.random_code``).
    ``near_frac``: see ``code_question``. ``videos``: the indices of the pool's videos, when the caller has
    listed them once. Returns what ``encode_sample`` returns."""
    from longvila.data.world import random_card

    if videos is None:
        videos = [i for i, s in enumerate(pool) if "mp4" in s]
    if not videos:
        raise ValueError("needle samples need videos in the stage's sets")
    parts, need = [], frames
    while need > 0:
        data = pool[videos[int(rng.integers(len(videos)))]]["mp4"]
        if need == 1:
            take = _first_frame(data)
        else:
            allf = _decode(data)
            take = allf[np.unique(np.linspace(0, len(allf) - 1, min(need, len(allf))).round().astype(int))]
        parts.append(take)
        need -= len(take)
    hay = np.concatenate(parts)[:frames]
    code, card = random_card(rng, "train", hay.shape[1], hay.shape[2], hand_frac, code_digits, repeat_frac)
    at = int(rng.integers(0, len(hay) + 1))
    video = np.concatenate([hay[:at], card[None], hay[at:]])
    question, answer = code_question(code, rng, mc_frac, near_frac)
    enc = encode_question(processor, "<video>", question, answer, [len(video)], form)
    return {"input_ids": enc["input_ids"], "labels": enc["labels"], "pixel_values": processor.preprocess_frames(video),
            "num_frames": [len(video)], "id": f"needle-{code}-{at}of{len(video)}", "truncated": False}


def near_codes(code: str, rng: np.random.Generator) -> set[str]:
    """Codes one digit away from ``code``: every place rewritten with another of the code's own digits (the
    misreadings a reader makes when it guesses a cell from the digits it has written: "474" -> "477", "444")
    and, for each place, one random other digit."""
    out = {code[:i] + d + code[i + 1:] for i in range(len(code)) for d in set(code) if d != code[i]}
    for i in range(len(code)):
        d = str((int(code[i]) + int(rng.integers(1, 10))) % 10)
        out.add(code[:i] + d + code[i + 1:])
    return out


def code_question(code: str, rng: np.random.Generator, mc_frac: float = 0.0,
                  near_frac: float = 0.0) -> tuple[str, str]:
    """(question, answer) asking for a card's code: the needle evaluation's own question, answered with the code,
    or with probability ``mc_frac`` the same question in the four-option form (the reversed code and random
    codes as distractors) answered with the letter, as the data sets ask their questions. With probability
    ``near_frac`` (drawn only when it is set) a four-option question takes close distractors instead: codes one
    digit away (``near_codes``) from a centre that is the code or one of its neighbours, so that the letter needs
    every digit read and the most central option is no cue."""
    from longvila.data.questions import mc_options, mc_prompt
    from longvila.eval.prompts import needle_question  # the very question the needle evaluation asks

    if mc_frac and rng.random() < mc_frac:
        if near_frac and rng.random() < near_frac:
            # four codes one digit apart, around a centre that is the code one time in four: the option closest
            # to all the others is then no cue to the answer
            near = sorted(near_codes(code, rng))
            centre = code if rng.random() < 0.25 else near[int(rng.integers(len(near)))]
            ring = sorted(near_codes(centre, rng) - {code})
            others = set(near) if centre == code else {centre, *(ring[i] for i in rng.choice(len(ring), 2, replace=False))}
        else:
            others = {code[::-1], *("".join(str(int(d)) for d in rng.integers(0, 10, len(code))) for _ in range(6))}
        mc = mc_options(rng, code, sorted(others - {code}))
        if mc is not None:
            return mc_prompt(needle_question(), mc[0]), mc[1]
    return needle_question(), code


CARD_PROMPT = "Describe the image."  # the align set's captioning prompt


def card_caption(code: str) -> str:
    """The align set's caption of a card of ``code`` ("A card shows the code 471.")."""
    from longvila.data.questions import sentence
    from longvila.data.world import Event

    return sentence(Event(frame=0, time=0.0, kind="code", code=code))


def card_sample(rng: np.random.Generator, processor, size: int, hand_frac: float = 0.5,
                code_digits: int = 3, mc_frac: float = 0.0, repeat_frac: float = 0.0,
                form: str = "videomme", near_frac: float = 0.0) -> dict[str, Any]:
    """A freshly drawn code card (training split; handwritten with probability ``hand_frac``, else printed) as
    an image-caption sample in the align set's form ("A card shows the code 471.") or, with probability
    ``mc_frac``, asked for its code in the four-option form (``code_question``, in ``form``; ``near_frac``
    there). Unlike the align set's fixed cards, every call renders a new code, typeface or handwriting, size
    and offset, so reading is learnt from unlimited renderings. Returns what ``encode_sample`` returns (one
    frame of ``size`` x ``size``)."""
    from longvila.data.world import random_card

    code, card = random_card(rng, "train", size, size, hand_frac, code_digits, repeat_frac)
    question, answer = code_question(code, rng, 1.0, near_frac) if mc_frac and rng.random() < mc_frac else (
        CARD_PROMPT, card_caption(code))
    enc = encode_question(processor, "<image>", question, answer, [1], form)
    return {"input_ids": enc["input_ids"], "labels": enc["labels"], "pixel_values": processor.preprocess_frames(card[None]),
            "num_frames": [1], "id": f"card-{code}", "truncated": False}


LOSS_WEIGHTING = {"token": 0.0, "square": 0.5, "sample": 1.0}  # exponent p: a sample's tokens weigh n ** -p


def loss_weights(labels: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-token loss weights (L,) of one sample: ``n ** -p`` on its n labelled tokens, 0 elsewhere.

    "token" (p = 0) is the plain mean over all answer tokens of a batch; "sample" (p = 1) gives every sample
    the same weight; "square" (p = 0.5, InternVL 2.5's square averaging) sits between, so that a one-word
    answer is not drowned by the long captions packed beside it."""
    if weighting not in LOSS_WEIGHTING:
        raise ValueError(f"loss weighting {weighting!r}: choose one of {sorted(LOSS_WEIGHTING)}")
    active = labels != -100
    n = int(active.sum())
    return active.float() * (float(n) ** -LOSS_WEIGHTING[weighting] if n else 0.0)


MC_TEXT_LEAD = "Read the description, then answer."


def mc_text_sample(pool: tuple[dict[str, Any], ...], rng: np.random.Generator, processor,
                   candidates: tuple[tuple[int, int], ...] | None = None) -> dict[str, Any]:
    """A text-only multiple-choice sample that teaches the answer format, not the perception: a record's
    ground-truth description (its caption, from its events) followed by one of its questions in the VideoMME
    four-option form, the options shuffled afresh, answered with the letter. Returns what ``encode_sample``
    returns (no frames). ``candidates``: ``mc_candidates(pool)``, when the caller has computed it once."""
    from longvila.data import questions as Q

    cands = mc_candidates(pool) if candidates is None else candidates
    if not cands:
        raise ValueError("text multiple-choice samples need records with events and four-option questions "
                         "(the short_sft set)")
    i, j = cands[int(rng.integers(len(cands)))]
    rec = pool[i]["json"]
    qa = rec["qa"][j]
    options, letter = shuffled_options(qa, rng)
    caption = (Q.caption_image if rec.get("kind") == "image_qa" else Q.caption_clip)(rec["events"])
    conv = [{"from": "human", "value": f"{MC_TEXT_LEAD}\n{caption}\n{Q.mc_prompt(qa['question'], options)}"},
            {"from": "gpt", "value": letter}]
    enc = processor.encode_conversation(conv, [])
    return {"input_ids": enc["input_ids"], "labels": enc["labels"], "pixel_values": None, "num_frames": [],
            "id": f"mc-text-{rec.get('id')}-{j}", "truncated": False}


POINTER_QUESTION = "Which option is {}?"


@functools.lru_cache(maxsize=1)
def pointer_words() -> tuple[str, ...]:
    """The single words pointer questions choose among at their first level: the world's colours, shapes and
    number words (39; plain words, so any tokenizer encodes them)."""
    from longvila.data.vocab import COLORS, NUMBER_WORDS, SHAPES

    return tuple(dict.fromkeys([*COLORS, *SHAPES, *NUMBER_WORDS]))


def option_texts(pool: tuple[dict[str, Any], ...]) -> tuple[str, ...]:
    """The distinct option texts of the pool's four-option questions (the answers videos are asked about:
    "a small red circle", "top left", "471", ...), sorted; pointer questions over real option texts."""
    from longvila.eval.prompts import option_text

    out = set()
    for s in pool:
        for qa in s["json"].get("qa") or []:
            out.update(option_text(o) for o in qa.get("options") or [])
    return tuple(sorted(t for t in out if t))


def pointer_sample(rng: np.random.Generator, processor, texts: tuple[str, ...], form: str = "videomme") -> dict[str, Any]:
    """A text pointer question: four options drawn from ``texts``, "Which option is W?" for one of them,
    answered with its letter; the loss falls on the letter alone (the end-of-turn token is not a label). It
    teaches the letter binding of the multiple-choice protocol (find the option that says W, answer the letter
    written before it) on its own, apart from perception; plain text, so it carries to any tokenizer and LLM.
    ``form`` (``POINTER_FORMS``): "videomme" is the VideoMME chat prompt; "no-header" leaves out its instruction
    line; "oneline" is one line without chat template or line breaks ("which option is W? A. w1 B. w2 C. w3
    D. w4" then " A"), the form a randomly initialised LLM leaves the chance plateau in (docs/recipe.md).
    Returns what ``encode_sample`` returns (no frames)."""
    from longvila.data import questions as Q

    if form not in POINTER_FORMS:
        raise ValueError(f"pointer question form {form!r}: choose one of {', '.join(POINTER_FORMS)}")
    if len(texts) < 4:
        raise ValueError(f"pointer questions need at least 4 option texts, got {len(texts)}")
    opts = [texts[i] for i in rng.choice(len(texts), 4, replace=False)]
    k = int(rng.integers(4))
    sid = f"pointer-{Q.LETTERS[k]}-{opts[k]}"
    if form == "oneline":
        text = f"which option is {opts[k]}? " + " ".join(f"{Q.LETTERS[i]}. {o}" for i, o in enumerate(opts))
        ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        letter = processor.tokenizer(f" {Q.LETTERS[k]}", add_special_tokens=False)["input_ids"]
        return {"input_ids": torch.tensor(ids + letter), "labels": torch.tensor([-100] * len(ids) + letter),
                "pixel_values": None, "num_frames": [], "id": sid, "truncated": False}
    options = [f"{Q.LETTERS[i]}. {o}" for i, o in enumerate(opts)]
    prompt = Q.mc_prompt(POINTER_QUESTION.format(opts[k]), options)
    if form == "no-header":
        prompt = prompt.removeprefix(Q.MC_HEADER + "\n")
    conv = [{"from": "human", "value": prompt},
            {"from": "gpt", "value": Q.LETTERS[k]}]
    enc = processor.encode_conversation(conv, [])
    labels = enc["labels"].clone()
    from longvila.model.tokenizer import IM_END

    labels[labels == processor.tokenizer.convert_tokens_to_ids(IM_END)] = -100
    return {"input_ids": enc["input_ids"], "labels": labels, "pixel_values": None, "num_frames": [],
            "id": sid, "truncated": False}


def mc_candidates(pool: tuple[dict[str, Any], ...]) -> tuple[tuple[int, int], ...]:
    """(record, question) pairs of the pool's short records (image and short-video QA) with events and a
    four-option question whose options differ."""
    from longvila.eval.prompts import option_text

    out = []
    for i, s in enumerate(pool):
        rec = s["json"]
        if rec.get("kind") not in ("image_qa", "short_video_qa") or not rec.get("events"):
            continue
        for j, qa in enumerate(rec.get("qa") or []):
            opts = qa.get("options") or []
            if (len(opts) == 4 and qa.get("answer_letter") and all(". " in o for o in opts)
                    and len({option_text(o) for o in opts}) == 4):
                out.append((i, j))
    return tuple(out)


def pack(items: list[dict[str, Any]], weighting: str = "token") -> dict[str, Any]:
    """Samples -> one packed row (1, L) with restarting position ids, frames concatenated in order; with a
    ``weighting`` other than "token", ``loss_weights`` (1, L) too (see ``loss_weights``)."""
    pix = [it["pixel_values"] for it in items if it["pixel_values"] is not None]
    extra = {} if weighting == "token" else {
        "loss_weights": torch.cat([loss_weights(it["labels"], weighting) for it in items])[None]}
    return {**extra,
        "input_ids": torch.cat([it["input_ids"] for it in items])[None],
        "labels": torch.cat([it["labels"] for it in items])[None],
        "position_ids": torch.cat([torch.arange(it["input_ids"].shape[0]) for it in items])[None],
        "pixel_values": torch.cat(pix) if pix else None,
        "num_frames": [n for it in items for n in it["num_frames"]],
        "sample_ids": [it["id"] for it in items],
    }


def rank_order(n: int, seed: int, dp_rank: int, dp: int, start: int, count: int) -> list[int]:
    """Sample indices at positions [start, start+count) of a dp rank's endless shuffled stream."""
    per_epoch = n // dp if n >= dp else 1
    out = []
    for pos in range(start, start + count):
        epoch, k = divmod(pos, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perm[(k * dp + dp_rank) % n]))
    return out


def stream(data_root: str | Path, sets: tuple[str, ...], phase: Phase, seed: int, skip: int, dp_rank: int,
           dp: int, seq_len: int, processor, needle_frac: float = 0.0, max_turns: int = 0,
           needle_mc_frac: float = 0.0, loss_weighting: str = "token",
           mc_text_frac: float = 0.0, needle_hand_frac: float = 0.5,
           cards: int = 0, code_repeat_frac: float = 0.0,
           pointer_text_frac: float = 0.0, pointers: int = 0, stride: int = 1,
           code_near_frac: float = 0.0) -> Iterator[dict[str, Any]]:
    """Endless micro-batches of a dp rank, starting at micro-batch ``skip`` (see the module docstring), every
    ``stride``-th one (``shared_stream`` deals a stream's micro-batches over the ranks of an SP group).

    Micro-batch m holds the samples at stream positions [m*B, (m+1)*B); a sample that fails to decode is
    dropped from its batch and counted in ``skipped`` (a batch left empty takes the next positions).
    ``needle_frac``: the fraction of each micro-batch replaced by ``needle_sample``s (rounded per batch), a
    ``needle_mc_frac`` share of them in the multiple-choice form and a ``needle_hand_frac`` share handwritten.
    ``loss_weighting``: see ``pack``.
    ``mc_text_frac``: the fraction replaced by ``mc_text_sample``s (multiple choice on a written description).
    ``cards``: freshly drawn code cards added to every micro-batch of a phase with frames (``card_sample``;
    handwritten at ``needle_hand_frac``, asked in the multiple-choice form at ``needle_mc_frac``); a text-only
    phase (``frames=0``) has none.
    ``code_repeat_frac``: the share of needle and fresh-card codes that repeat a digit (``world.random_code``).
    ``code_near_frac``: the share of four-option needle and card questions whose distractors are one digit away
    from the code (``code_question``).
    ``phase.pointer``: the fraction replaced by ``pointer_sample``s, a ``pointer_text_frac`` share of them over the
    sets' option texts (``option_texts``), the rest over single words (``pointer_words``), in ``phase.form``.
    ``pointers``: pointer questions added to every micro-batch besides (the same mix and form), which keep the
    binding through phases that teach something else.
    ``phase.needle_frac``, ``phase.needle_mc_frac``, ``phase.cards``, ``phase.code_near_frac``: where set, they
    replace the arguments of the same names for this phase; ``phase.cards_mc_frac``: where set, the cards'
    multiple-choice share instead of the phase's needle one; ``phase.qa_mc_frac``: where set, the sets'
    questions are asked afresh, that share of them in the four-option form (``reask``). (``phase.hold`` is the
    lr schedule's, ``engine.schedule_clock``.)
    """
    from longvila.data.video_io import VideoError

    # a phase's own needle share, multiple-choice share and fresh cards replace the stage's
    needle_frac, needle_mc_frac, cards, code_near_frac = (
        d if getattr(phase, k) is None else getattr(phase, k) for k, d in (
            ("needle_frac", needle_frac), ("needle_mc_frac", needle_mc_frac), ("cards", cards),
            ("code_near_frac", code_near_frac)))
    cards_mc_frac = needle_mc_frac if phase.cards_mc_frac is None else phase.cards_mc_frac
    pool = load_pool(str(data_root), tuple(sets))
    mc_cands = mc_candidates(pool) if mc_text_frac else ()
    videos = [i for i, s in enumerate(pool) if "mp4" in s]
    asks_pointers = bool(phase.pointer or pointers)
    ptr_texts = option_texts(pool) if asks_pointers and pointer_text_frac else ()
    if asks_pointers and pointer_text_frac and len(ptr_texts) < 4:
        raise ValueError(f"{data_root}: pointer questions over option texts need four-option questions in {sets}")
    if not phase.frames:  # a text-only phase draws no videos: no needles, no fresh cards
        needle_frac, cards = 0.0, 0
    m, skipped, truncated, seen = skip, 0, 0, 0
    while True:
        items = []
        rng = np.random.default_rng([seed, dp_rank, m, 7])
        n_needle = int(needle_frac * phase.batch + rng.random()) if needle_frac else 0
        for _ in range(n_needle):
            items.append(needle_sample(pool, phase.frames, rng, processor, mc_frac=needle_mc_frac,
                                       hand_frac=needle_hand_frac, repeat_frac=code_repeat_frac, form=phase.form,
                                       videos=videos, near_frac=code_near_frac))
        n_mc = min(int(mc_text_frac * phase.batch + rng.random()), phase.batch - n_needle) if mc_text_frac else 0
        for _ in range(n_mc):
            items.append(mc_text_sample(pool, rng, processor, mc_cands))
        n_ptr = min(int(phase.pointer * phase.batch + rng.random()), phase.batch - n_needle - n_mc) \
            if phase.pointer else 0
        for _ in range(n_ptr + pointers):
            items.append(pointer_sample(rng, processor, ptr_texts if rng.random() < pointer_text_frac
                                        else pointer_words(), phase.form))
        for _ in range(cards):
            items.append(card_sample(rng, processor, processor.settings.image_size, needle_hand_frac,
                                     mc_frac=cards_mc_frac, repeat_frac=code_repeat_frac, form=phase.form,
                                     near_frac=code_near_frac))
        for i in rank_order(len(pool), seed, dp_rank, dp, m * phase.batch, phase.batch - n_needle - n_mc - n_ptr):
            seen += 1
            try:
                it = encode_sample(pool[i], phase.frames, seq_len, processor, max_turns, rng, phase.qa_mc_frac)
            except (VideoError, ValueError) as e:
                skipped += 1
                log.warning("skipped sample %s (%s)", pool[i].get("__key__"), e)
                if skipped > 20 and skipped > seen // 2:
                    raise RuntimeError(f"{data_root}: more than half of the samples fail ({e})") from None
                continue
            truncated += it["truncated"]
            items.append(it)
        m += stride
        if items:
            yield {**pack(items, loss_weighting), "skipped": skipped, "truncated": truncated}


class Prefetch:
    """The items of an iterator, built ``depth`` ahead by a daemon thread while the caller works on the current
    one (the trainer's forward and backward; torch's kernels and the collectives' waits release the GIL).

    The items and their order are those of the iterator itself: a micro-batch is a pure function of (seed,
    rank, position), and the data path touches no global random state. An exception raised while building is
    raised by the ``next`` that reaches it, with the builder's traceback; ``close`` (also on garbage
    collection) stops the thread after the item it is on. Threads still running at exit are stopped and
    joined then (a daemon thread inside a decoder's C++ code while the interpreter finalises aborts the
    process), so the trainer need not close its streams, though it does.
    """

    def __init__(self, it: Iterator[Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._end: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(it, self._queue, self._stop), daemon=True,
                                        name="longvila-prefetch")
        self._thread.start()
        _LIVE_PREFETCH[self._thread] = self._stop

    @staticmethod
    def _run(it: Iterator[Any], q: queue.Queue, stop: threading.Event) -> None:
        def put(entry) -> bool:
            while not stop.is_set():
                try:
                    q.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for item in it:
                if not put((True, item)):
                    return
            put((False, StopIteration()))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, e))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        if self._end is not None:
            raise self._end
        while True:
            try:
                ok, value = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    try:  # its last entry may have landed between the wait and this check
                        ok, value = self._queue.get_nowait()
                        break
                    except queue.Empty:  # closed, or ended without a word (not short of the interpreter)
                        self._end = RuntimeError("next() on a closed Prefetch" if self._stop.is_set() else
                                                 "the prefetching thread ended without handing over its batches")
                        raise self._end from None
        if ok:
            return value
        self._end = value
        raise value

    def close(self) -> None:
        """Stop building (the thread ends after the item it is on)."""
        self._stop.set()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # None: __init__ refused its arguments
        if stop is not None:
            stop.set()


_LIVE_PREFETCH: weakref.WeakKeyDictionary[threading.Thread, threading.Event] = weakref.WeakKeyDictionary()


@atexit.register
def _stop_prefetching(wait: float = 60.0) -> None:
    """At exit: stop every prefetching thread still running and wait for each to leave its current item."""
    live = list(_LIVE_PREFETCH.items())
    for _, stop in live:
        stop.set()
    for thread, _ in live:
        thread.join(wait)


def shared_stream(make: Any, skip: int, group: Any, prefetch: int = 0) -> Iterator[dict[str, Any]]:
    """The micro-batches ``make(skip, 1)`` yields, built once per sequence-parallel group instead of once per
    rank: rank r of the n ranks of ``group`` builds micro-batches skip + r, skip + r + n, ... (``make(start,
    stride)``, a ``stream`` with those arguments) and the group exchanges them
    (``longvila.parallel.comm.exchange``), so every rank yields the same sequence as before with 1/n of the
    data work. ``skipped`` and ``truncated`` are summed over the ranks' streams. A micro-batch whose samples
    all fail is replaced by the next of the same rank's stream (n positions on, not one). ``prefetch``: the
    rank's own micro-batches are built that many ahead in a background thread (``Prefetch``); the exchange,
    a collective, stays on the caller's thread."""
    from longvila.parallel.comm import exchange, group_rank, group_size

    n = group_size(group)
    own = make(skip + group_rank(group), n) if n > 1 else make(skip, 1)
    if prefetch:
        own = Prefetch(own, prefetch)
    try:
        if n == 1:
            yield from own
            return
        while True:
            got = exchange(next(own), group)
            counts = {k: sum(int(b.get(k, 0)) for b in got) for k in ("skipped", "truncated")}
            for b in got:
                yield {**b, **counts}
    finally:  # the trainer closes a phase's stream when it moves on: stop building ahead
        if isinstance(own, Prefetch):
            own.close()
