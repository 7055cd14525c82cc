"""One builder per training set of the five-stage recipe, plus the held-out short-video QA set.

| set | stage | samples (``json["kind"]``) |
| --- | --- | --- |
| ``align`` | 1 | image-caption pairs (``image_caption``), jpg |
| ``pretrain`` | 2 | image-caption pairs and interleaved image-text documents (``interleaved``, ``0.jpg``...) |
| ``short_sft`` | 3 | image QA (``image_qa``) and short-video QA (``short_video_qa``, 8-32 frames, mp4) |
| ``context_ext`` | 4 | long text documents (``long_text``): narrated event logs whose question's answer sits far back |
| ``long_sft`` | 5 | long-video instruction data (``long_video_sft``): clips -> captions -> whole-video questions |
| ``short_sft_eval`` | eval | held-out short-video QA with exact answers (eval seeds and eval digits) |

Design choices:
- Every sample is a pure function of (set, build seed, index): world seed = split base + seed x 10^7 +
  set number x 10^6 + index (set numbers in ``SET_NUMBER``; eval sets use ``world.EVAL_SEED_BASE``), so
  shards build in any order and in parallel, and the sets never share a world seed.
- Records are LLaVA-style (``id``, ``conversations``) plus ground truth (``events``, ``qa``) and ``media``:
  the visual inputs in placeholder order (``{"ext": "mp4", "type": "video", "num_frames": n}``).
- Long SFT follows LongVILA: cut the video into ``clip_frames`` clips, caption each clip (ground truth by
  default, or a user captioner ``"module:function"`` called as ``fn(frames (n, H, W, 3) uint8, events) ->
  str``), then compose the questions from the clip captions only (``questions.compose_questions``).
- Context-extension lengths are measured with the shipped tokenizer (``longvila.model``'s
  ``tokenizer.json``): ``num_tokens`` is the whole chat-templated conversation, in [min_tokens, max_tokens].
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longvila.data import questions as Q
from longvila.data import world
from longvila.data.video_io import encode_mp4

SET_NUMBER = {"align": 0, "pretrain": 1, "short_sft": 2, "context_ext": 3, "long_sft": 4, "short_sft_eval": 5}
CONTEXT_PROMPT = "Write the log of a video, then answer the question at its end."
TEMPLATE_TOKENS = 10  # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n ... <|im_end|>\n
INTERLEAVED_SEED_BASE = 2**40  # the images of interleaved documents: seeds apart from every set
EXACT_TYPES = ("counting", "code", "color", "spatial", "digit", "order", "temporal")


@dataclass
class AlignConfig:
    num_samples: int = 12000
    per_shard: int = 2000
    # share of code cards ("A card shows the code 471."): the only images whose caption needs the tower to
    # read handwriting, which the needle evaluation and the code questions depend on
    code_frac: float = 0.5


@dataclass
class PretrainConfig:
    num_samples: int = 2000
    per_shard: int = 500
    code_frac: float = 0.25  # share of the single-image samples that are code cards (see AlignConfig)
    interleaved_frac: float = 0.5
    images_per_doc: tuple[int, int] = (2, 4)


@dataclass
class ShortSFTConfig:
    num_samples: int = 2000
    per_shard: int = 250
    frames: tuple[int, int] = (8, 32)
    image_frac: float = 0.3
    turns: tuple[int, int] = (1, 3)
    mc_frac: float = 0.3  # questions asked in the 4-option multiple-choice form
    code_prob: float = 0.25  # short videos with a code card ("what number was shown")


@dataclass
class ShortSFTEvalConfig:
    num_samples: int = 400
    per_shard: int = 200
    frames: tuple[int, int] = (8, 32)
    code_prob: float = 0.25


@dataclass
class ContextExtConfig:
    num_samples: int = 24
    per_shard: int = 4
    min_tokens: int = 4096
    max_tokens: int = 8192
    keys: int = 8  # "remember the key" entries planted; the question asks for the first


@dataclass
class LongSFTConfig:
    num_samples: int = 40
    per_shard: int = 4
    min_frames: int = 64
    max_frames: int = 1500
    clip_frames: int = 32
    per_type: int = 1
    mc_frac: float = 0.3
    code_prob: float = 0.5
    captioner: str | None = None  # "module:function"; None = ground-truth captions


@dataclass
class BuildConfig:
    """Everything ``longvila data build`` makes; defaults fit ``make data`` in <= 5 min on 2 cores."""

    seed: int = 0
    height: int = 32
    width: int = 32
    fps: float = 2.0
    # share of code cards written by hand (held-out writers in the eval sets); the rest are printed
    # (``world.code_image``): the needle evaluation asks for both
    card_hand_frac: float = 0.5
    align: AlignConfig = field(default_factory=AlignConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    short_sft: ShortSFTConfig = field(default_factory=ShortSFTConfig)
    context_ext: ContextExtConfig = field(default_factory=ContextExtConfig)
    long_sft: LongSFTConfig = field(default_factory=LongSFTConfig)
    short_sft_eval: ShortSFTEvalConfig = field(default_factory=ShortSFTEvalConfig)

    def set_config(self, name: str):
        if name not in SET_NUMBER:
            raise ValueError(f"unknown set {name!r}; known: {list(SET_NUMBER)}")
        return getattr(self, name)

    def world_opts(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "fps": self.fps}

    def card_style(self, rng: np.random.Generator) -> str:
        """The style of one code card: "hand" with probability ``card_hand_frac``, else "print"."""
        return world.card_style(rng, self.card_hand_frac)


def world_seed(cfg: BuildConfig, set_name: str, index: int) -> int:
    base = world.EVAL_SEED_BASE if set_name.endswith("_eval") else world.TRAIN_SEED_BASE
    return base + cfg.seed * 10_000_000 + SET_NUMBER[set_name] * 1_000_000 + index


def split_of(set_name: str) -> str:
    return "eval" if set_name.endswith("_eval") else "train"


def encode_jpg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _rec(set_name: str, index: int, seed: int, kind: str, conversations, media, **extra) -> dict[str, Any]:
    return {"id": f"{set_name}-{index:08d}", "set": set_name, "kind": kind, "seed": seed,
            "split": split_of(set_name), "conversations": conversations, "media": media, **extra}


def _ask(qa: Q.QA, rng: np.random.Generator, mc_frac: float) -> tuple[str, str]:
    """A question as asked in a conversation: short answer, or multiple choice answered with a letter."""
    if qa.options is not None and rng.random() < mc_frac:
        return Q.mc_prompt(qa.question, qa.options), qa.answer_letter
    return qa.question, qa.answer


def _conversation(placeholder: str, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": (placeholder + "\n" if i == 0 and placeholder else "") + q})
        conv.append({"from": "gpt", "value": a})
    return conv


# --------------------------------------------------------------------------------------------- builders
def sample_align(cfg: BuildConfig, index: int, set_name: str = "align") -> dict[str, Any]:
    seed = world_seed(cfg, set_name, index)
    rng = np.random.default_rng([seed, 3])
    if rng.random() < cfg.set_config(set_name).code_frac:  # a code card: its caption is its code
        code, frame = world.random_card(rng, split_of(set_name), cfg.height, cfg.width, cfg.card_hand_frac)
        events = [world.Event(frame=0, time=0.0, kind="code", code=code, end_frame=0)]
        cap = Q.sentence(events[0])
    else:
        im = world.make_image(seed, split_of(set_name), **cfg.world_opts())
        frame, events, cap = im.frames[0], im.events, Q.caption_image(im.events)
    conv = _conversation("<image>", [("Describe the image.", cap)])
    rec = _rec(set_name, index, seed, "image_caption", conv, [{"ext": "jpg", "type": "image"}],
               events=[e.to_dict() for e in events])
    return {"__key__": rec["id"], "json": rec, "jpg": encode_jpg(frame)}


def sample_pretrain(cfg: BuildConfig, index: int) -> dict[str, Any]:
    c = cfg.pretrain
    rng = np.random.default_rng(world_seed(cfg, "pretrain", index))
    if rng.random() >= c.interleaved_frac:
        return sample_align(cfg, index, "pretrain")
    seed = world_seed(cfg, "pretrain", index)
    n = int(rng.integers(c.images_per_doc[0], c.images_per_doc[1] + 1))
    sample: dict[str, Any] = {}
    turns, media = [], []
    for j in range(n):  # an interleaved document: image, its text, image, its text, ...
        im = world.make_image(INTERLEAVED_SEED_BASE + seed * 8 + j, "train", **cfg.world_opts())
        sample[f"{j}.jpg"] = encode_jpg(im.frames[0])
        media.append({"ext": f"{j}.jpg", "type": "image"})
        turns.append(("<image>\n" + ("Describe the image." if j == 0 else "And this one?"), Q.caption_image(im.events)))
    conv = _conversation("", turns)
    rec = _rec("pretrain", index, seed, "interleaved", conv, media)
    return {"__key__": rec["id"], "json": rec, **sample}


def _short_video(cfg: BuildConfig, set_name: str, index: int, frames_range, code_prob):
    seed = world_seed(cfg, set_name, index)
    rng = np.random.default_rng([seed, 1])
    n = int(rng.integers(frames_range[0], frames_range[1] + 1))
    code = "".join(map(str, rng.integers(0, 10, 3))) if rng.random() < code_prob else None
    v = world.make_video(seed, n, split_of(set_name), code=code, code_style=cfg.card_style(rng), digit_prob=0.35,
                         **cfg.world_opts())
    return seed, rng, v


def sample_short_sft(cfg: BuildConfig, index: int) -> dict[str, Any]:
    c = cfg.short_sft
    seed = world_seed(cfg, "short_sft", index)
    rng = np.random.default_rng([seed, 0])
    if rng.random() < c.image_frac:
        im = world.make_image(seed, "train", digit_prob=0.35, **cfg.world_opts())
        qas = Q.image_questions(im.events, seed=seed)
        k = min(len(qas), int(rng.integers(c.turns[0], c.turns[1] + 1)))
        turns = [_ask(qas[i], rng, c.mc_frac) for i in sorted(rng.choice(len(qas), k, replace=False))]
        rec = _rec("short_sft", index, seed, "image_qa", _conversation("<image>", turns),
                   [{"ext": "jpg", "type": "image"}], events=[e.to_dict() for e in im.events],
                   qa=[q.to_dict() for q in qas])
        return {"__key__": rec["id"], "json": rec, "jpg": encode_jpg(im.frames[0])}
    seed, vrng, v = _short_video(cfg, "short_sft", index, c.frames, c.code_prob)
    qas = Q.compose_questions([Q.caption_clip(v.events)], seed=seed, types=EXACT_TYPES)
    qas.append(Q.QA("caption", "Describe the video.", Q.caption_clip(v.events)))
    k = min(len(qas), int(rng.integers(c.turns[0], c.turns[1] + 1)))
    turns = [_ask(qas[i], rng, c.mc_frac) for i in sorted(rng.choice(len(qas), k, replace=False))]
    rec = _rec("short_sft", index, seed, "short_video_qa", _conversation("<video>", turns),
               [{"ext": "mp4", "type": "video", "num_frames": v.num_frames}], events=[e.to_dict() for e in v.events],
               fps=v.fps, qa=[q.to_dict() for q in qas])
    return {"__key__": rec["id"], "json": rec, "mp4": encode_mp4(v.frames, v.fps)}


def sample_short_sft_eval(cfg: BuildConfig, index: int) -> dict[str, Any]:
    c = cfg.short_sft_eval
    seed, rng, v = _short_video(cfg, "short_sft_eval", index, c.frames, c.code_prob)
    qas = Q.compose_questions([Q.caption_clip(v.events)], seed=seed, types=EXACT_TYPES)
    types = sorted({q.type for q in qas})  # a type first, then a question of it: a balanced mix
    t = types[int(rng.integers(len(types)))]
    of_t = [q for q in qas if q.type == t]
    qa = of_t[int(rng.integers(len(of_t)))]
    rec = _rec("short_sft_eval", index, seed, "short_video_qa", _conversation("<video>", [(qa.question, qa.answer)]),
               [{"ext": "mp4", "type": "video", "num_frames": v.num_frames}], events=[e.to_dict() for e in v.events],
               fps=v.fps, qa=[qa.to_dict()], question=qa.question, answer=qa.answer, options=qa.options,
               answer_letter=qa.answer_letter, type=qa.type)
    return {"__key__": rec["id"], "json": rec, "mp4": encode_mp4(v.frames, v.fps)}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The shipped tokenizer's ``tokenizer.json`` through ``tokenizers`` (same ids as
    ``longvila.model.load_tokenizer()`` without special tokens, minus the seconds of importing transformers)."""
    import importlib.util
    from pathlib import Path

    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("longvila.model")
    path = Path(spec.submodule_search_locations[0]) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shipped tokenizer (run `longvila model build-tokenizer`)")
    return Tokenizer.from_file(str(path))


def count_tokens(text: str) -> int:
    """Tokens of ``text`` with the shipped tokenizer (no special tokens added)."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def warm_up(with_tokenizer: bool) -> None:
    """Load the digits, images and codecs once in the parent, so forked workers inherit them."""
    world._digits()
    for name in world.TEXTURES + world.PHOTOS:
        world._asset(name)
    encode_mp4(np.zeros((1, 32, 32, 3), np.uint8))
    encode_jpg(np.zeros((32, 32, 3), np.uint8))
    if with_tokenizer:
        _tokenizer()


def sample_context_ext(cfg: BuildConfig, index: int) -> dict[str, Any]:
    """A narrated event log of ``target`` tokens with keys planted; the question asks for the earliest."""
    c = cfg.context_ext
    if not 0 < c.min_tokens <= c.max_tokens:
        raise ValueError(f"context_ext: need 0 < min_tokens <= max_tokens, got {c.min_tokens}, {c.max_tokens}")
    seed = world_seed(cfg, "context_ext", index)
    rng = np.random.default_rng(seed)
    target = int(rng.integers(c.min_tokens, c.max_tokens + 1))
    header = f"Log of video {index}.\n"
    lines: list[str] = []
    keys = {}  # entry number -> key
    entries = sorted(rng.choice(np.arange(1, 10 * c.keys), c.keys, replace=False).tolist())
    tokens, part = count_tokens(header), 0
    # room for the question and answer, the user turn and the chat template around both turns
    budget = target - 40 - count_tokens(CONTEXT_PROMPT) - TEMPLATE_TOKENS
    while tokens < budget:
        v = world.make_video(seed * 100 + part, 400, "train", render=False)
        part += 1
        for e in v.events:
            t = round(part * 400 / cfg.fps + e.time, 1)
            line = f"At {t} seconds: {Q.sentence(e)}"
            if len(keys) < c.keys and (not keys or rng.random() < 0.04 * (2 if len(lines) < 20 else 1)):
                n = entries[len(keys)]
                keys[n] = "".join(map(str, rng.integers(0, 10, 4)))
                line += f" Log entry {n}: remember the key {keys[n]}."
            lines.append(line)
            tokens += count_tokens(line + "\n")
            if tokens >= budget:
                break
    first = min(keys)
    qa = f"Question: What was the key in log entry {first}?\nAnswer: {keys[first]}"
    doc = header + "\n".join(lines) + "\n" + qa
    conv = [{"from": "human", "value": CONTEXT_PROMPT},
            {"from": "gpt", "value": doc}]
    rec = _rec("context_ext", index, seed, "long_text", conv, [],
               num_tokens=count_tokens(doc) + count_tokens(CONTEXT_PROMPT) + TEMPLATE_TOKENS,
               question=f"What was the key in log entry {first}?", answer=keys[first],
               answer_char_offset=doc.index(f"remember the key {keys[first]}"), keys=keys)
    return {"__key__": rec["id"], "json": rec}


def load_captioner(spec: str | None):
    """``"module:function"`` -> the function (None -> None); a bad spec is a ValueError naming it."""
    if spec is None:
        return None
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"long_sft.captioner: cannot load {spec!r} ({e})") from None


def clip_bounds(num_frames: int, clip_frames: int) -> list[tuple[int, int]]:
    return [(s, min(num_frames, s + clip_frames)) for s in range(0, num_frames, clip_frames)]


def sample_long_sft(cfg: BuildConfig, index: int, captioner=None) -> dict[str, Any]:
    c = cfg.long_sft
    if not 1 <= c.min_frames <= c.max_frames:
        raise ValueError(f"long_sft: need 1 <= min_frames <= max_frames, got {c.min_frames}, {c.max_frames}")
    seed = world_seed(cfg, "long_sft", index)
    rng = np.random.default_rng([seed, 0])
    n = int(round(np.exp(rng.uniform(np.log(c.min_frames), np.log(c.max_frames)))))
    code = "".join(map(str, rng.integers(0, 10, 3))) if rng.random() < c.code_prob else None
    v = world.make_video(seed, n, "train", code=code, code_style=cfg.card_style(rng), **cfg.world_opts())
    captioner = captioner or load_captioner(c.captioner)
    bounds = clip_bounds(n, c.clip_frames)
    if captioner is None:
        caps = [Q.caption_clip(v.events, a, b) for a, b in bounds]
    else:
        caps = [str(captioner(v.frames[a:b], [e for e in v.events if a <= e.frame < b])) for a, b in bounds]
    qas = Q.compose_questions(caps, seed=seed, per_type=c.per_type)
    turns = [_ask(q, rng, c.mc_frac) for q in qas]
    rec = _rec("long_sft", index, seed, "long_video_sft", _conversation("<video>", turns),
               [{"ext": "mp4", "type": "video", "num_frames": n}], events=[e.to_dict() for e in v.events],
               fps=v.fps, clips=[list(b) for b in bounds], clip_captions=caps, qa=[q.to_dict() for q in qas],
               captioner=c.captioner or "ground_truth")
    return {"__key__": rec["id"], "json": rec, "mp4": encode_mp4(v.frames, v.fps)}


BUILDERS = {"align": sample_align, "pretrain": sample_pretrain, "short_sft": sample_short_sft,
            "context_ext": sample_context_ext, "long_sft": sample_long_sft, "short_sft_eval": sample_short_sft_eval}


def make_shard(cfg: BuildConfig, set_name: str, k: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Samples of shard ``k`` of a set (the ``shards.ShardMaker`` for the builders)."""
    sc = cfg.set_config(set_name)
    lo, hi = k * sc.per_shard, min(sc.num_samples, (k + 1) * sc.per_shard)
    return [BUILDERS[set_name](cfg, i) for i in range(lo, hi)], {}


def num_shards(cfg: BuildConfig, set_name: str) -> int:
    sc = cfg.set_config(set_name)
    if sc.num_samples < 1 or sc.per_shard < 1:
        raise ValueError(f"{set_name}: num_samples and per_shard must be >= 1")
    return -(-sc.num_samples // sc.per_shard)


def to_dict(cfg: BuildConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def build(cfg: BuildConfig, out_dir, sets=tuple(SET_NUMBER), workers: int = 2) -> dict[str, dict[str, Any]]:
    """Build (or resume) the given sets under ``out_dir/<set>/``; returns each set's manifest."""
    from pathlib import Path

    from longvila.data.shards import build_set

    unknown = [s for s in sets if s not in SET_NUMBER]
    if unknown:
        raise ValueError(f"unknown sets {unknown}; known: {list(SET_NUMBER)}")
    warm_up("context_ext" in sets)
    out = {}
    for name in sets:
        set_cfg = {"set": dataclasses.asdict(cfg.set_config(name)), "world": cfg.world_opts()}
        out[name] = build_set(Path(out_dir) / name, name, num_shards(cfg, name),
                              functools.partial(make_shard, cfg, name), set_cfg, cfg.seed, workers=workers)
    return out
