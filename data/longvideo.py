"""The long-video instruction set from a user's own videos: clips -> clip captions -> whole-video questions.

``longvila data longvideo --videos DIR|LIST --out OUT --captioner SPEC --writer SPEC [--clip-seconds S | --scenes]``
does what LongVILA did to build its stage-5 data: cut each video into clips (fixed length, or at the scene
cuts of ``data/scenes.py``), caption every clip with a video LLM, then have a language model write questions
about the whole video from the clip captions. The output is a ``long_sft`` set (``OUT/NAME``, default
``long_sft``): the same shards, manifest and records (``kind`` ``long_video_sft``, the video as ``mp4``) as the
synthetic set, so stage 5 trains on it unchanged.

Captioners (``--captioner``): ``ours:CKPT`` (this project's checkpoint) and ``hf:PATH`` (a Hugging Face video LLM:
Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT-Video) through ``eval.adapters.load_adapter``, asked
``CAPTION_PROMPT`` about ``--frames-per-clip`` frames sampled uniformly in the clip; or ``module:function``
called as ``fn(frames (n, H, W, 3) uint8, events) -> str`` (``events`` is ``[]``: real videos have no log).
Writers (``--writer``): ``hf:PATH``, any Hugging Face causal LM with a chat template, sent ``WRITER_PROMPT``
(summary, sub-event, temporal and counting questions as one JSON object), greedy and batched (on the GPU when
there is one); or ``rules``, ``questions.compose_questions``, which understands only the synthetic world's
caption grammar (a video whose captions it cannot parse is a counted skip).

Design choices:
- Every video is checked as ``data ingest`` checks it (``ingest.probe_video``: missing, empty, corrupt, shorter
  than ``--min-frames``, default 8); the video must be an mp4 (stage 5 reads ``mp4``) and fit the shard byte
  bound. Each failure is a counted skip with its reason, as is a video whose every clip caption is empty
  and a writer reply that is not exactly the JSON asked for (``parse_writer_output`` names what is wrong). A sample is written whole or not at all.
- Key = ``NAME-<index of the video in the sorted list>``; global shard g holds videos [g * per_shard, ...).
  With ``--shard-of R/W`` (or torchrun's RANK/WORLD_SIZE, or a Slurm array's task id/count) rank R builds the
  shards g = R, R + W, ... into ``OUT/NAME.parts/rank-R-of-W``, a complete set of its own; ``longvila data
  merge`` checks that the parts come from one build and cover every rank, and lays their shards out in global
  order with one manifest: the shards and samples a one-machine build makes.
- Resumable: shards are built by ``shards.build_set`` (atomic, verified, kept when intact). Captions are cached
  per video and clip under ``OUT/.captions/<captioner, prompt and frame-count hash>/``, written after every
  batch of clips, so a killed build does not caption again, nor does a new writer. Clip batches start at fixed
  clip indices, so a resumed build sends the models the very batches a fresh one does: the same manifest.
- Provenance in every record (``provenance``): captioner and writer specs with their weights' hashes, the
  sha256 of the prompts, how the clips were cut and their bounds (frames and seconds).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longvila.data import questions as Q
from longvila.data.ingest import VIDEO_EXTS, probe_video
from longvila.data.scenes import SceneConfig, detect_cuts, scene_bounds
from longvila.data.shards import build_set, load_manifest, shard_name, verify_set
from longvila.data.video_io import read_frames_at, sample_indices, video_meta
from longvila.utils import atomic_open, atomic_write_json, read_json, sha256_file

CAPTION_PROMPT = "Describe what happens in this video clip in one or two sentences."
WRITER_PROMPT = """You are given the captions of the consecutive clips of one video, in time order.

{clips}

Write questions and answers about the whole video from these captions, as long-video instruction data:
a summary of the video, sub-event questions (what happens in one clip), temporal questions (the order of
events: what happens before, after or first) and counting questions (how many times something happens or
appears). Use only what the captions say.
Reply with one JSON object and nothing else, in exactly this form:
{{"summary": "the whole video in a few sentences",
 "sub_event": [{{"clip": 1, "question": "...", "answer": "..."}}],
 "temporal": [{{"question": "...", "answer": "..."}}],
 "counting": [{{"question": "...", "answer": "2"}}]}}
Every list has at least one item; "clip" is a clip number above; a counting answer is a whole number."""
WRITER_FIELDS = {"summary": None, "sub_event": {"clip", "question", "answer"}, "temporal": {"question", "answer"},
                 "counting": {"question", "answer"}}
SUMMARY_QUESTION = "Summarize the events in the video in order."
MP4_EXTS = {".mp4", ".m4v", ".mov"}  # ISO media files: what stage 5 reads as ``mp4``
RULES_VERSION = "questions.compose_questions v1"


def prompts_sha256() -> str:
    """sha256 of every prompt the pipeline sends (caption, writer, rules version): a change rebuilds."""
    return hashlib.sha256("\0".join([CAPTION_PROMPT, WRITER_PROMPT, RULES_VERSION]).encode()).hexdigest()


@dataclass
class LongVideoConfig:
    captioner: str
    writer: str
    name: str = "long_sft"
    clip_seconds: float | None = 10.0  # fixed-length clips; with scenes: the longest clip (None: whole scenes)
    scenes: bool = False
    scene: SceneConfig = field(default_factory=SceneConfig)
    frames_per_clip: int = 8  # frames the captioner sees per clip (all of a shorter clip)
    min_frames: int = 8  # shorter videos are counted skips (ingest's rule)
    per_shard: int = 1  # videos per shard: resume is per video; the writer batches over a shard's videos
    batch: int = 8  # clips per captioner call, videos per writer call
    caption_tokens: int = 64
    writer_tokens: int = 768
    mc_frac: float = 0.3  # rules writer: share of questions asked in the four-option form (as the world's set)
    seed: int = 0
    max_shard_bytes: int = 1 << 30
    shard_of: tuple[int, int] = (0, 1)


# ------------------------------------------------------------------------------------------- inputs
def list_videos(videos: str | os.PathLike) -> tuple[Path, list[str]]:
    """(root, sorted relative paths): every video file under a folder, or the lines of a list file (paths
    relative to the list's folder; blank lines and ``#`` comments ignored)."""
    p = Path(videos)
    if p.is_dir():
        rel = sorted(str(f.relative_to(p)) for f in p.rglob("*")
                     if f.is_file() and f.suffix.lower().lstrip(".") in VIDEO_EXTS)
        if not rel:
            raise ValueError(f"{p}: no video files ({', '.join(sorted(VIDEO_EXTS))})")
        return p, rel
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such folder or list file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start})") from None
    rel = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not rel:
        raise ValueError(f"{p}: the list names no videos")
    return p.parent, rel


def shard_of(text: str | None = None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world) from ``--shard-of R/W``, else torchrun's RANK/WORLD_SIZE, else a Slurm array, else (0, 1)."""
    env = os.environ if env is None else env
    if text:
        m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not m or not 0 <= int(m[1]) < int(m[2]):
            raise ValueError(f"--shard-of {text!r}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4")
        return int(m[1]), int(m[2])
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def _weights_hash(path: str | os.PathLike) -> str:
    from longvila.eval.runner import model_hash

    return model_hash(path)


# ------------------------------------------------------------------------------------------- captioners
class FunctionCaptioner:
    """``module:function``, called as ``fn(frames, [])`` per clip."""

    def __init__(self, spec: str):
        mod, _, fn = spec.partition(":")
        try:
            self.fn = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"--captioner: cannot load {spec!r} ({e})") from None
        self.spec, self.weights = spec, ""

    def caption(self, clips: list[np.ndarray]) -> list[str]:
        return [str(self.fn(f, [])) for f in clips]


class AdapterCaptioner:
    """``ours:CKPT`` / ``hf:PATH`` through ``eval.adapters`` (``VideoLM.describe``, one clip at a time)."""

    def __init__(self, spec: str, tokens: int):
        from longvila.eval.adapters import load_adapter

        kind, _, path = spec.partition(":")
        if not path:
            raise ValueError(f"--captioner {spec!r}: give the checkpoint folder after '{kind}:'")
        self.vlm = load_adapter("longvila" if kind == "ours" else "auto", path)
        self.spec, self.weights, self.tokens = spec, self.vlm.model_hash, tokens

    def caption(self, clips: list[np.ndarray]) -> list[str]:
        return [self.vlm.describe(f, CAPTION_PROMPT, self.tokens) for f in clips]


def load_captioner(spec: str, tokens: int = 64):
    if spec.startswith(("ours:", "hf:")):
        return AdapterCaptioner(spec, tokens)
    if ":" in spec:
        return FunctionCaptioner(spec)
    raise ValueError(f"--captioner {spec!r}: expected ours:CKPT, hf:PATH or module:function")


# ------------------------------------------------------------------------------------------- writers
def writer_prompt(captions: list[str], bounds_s: list[tuple[float, float]]) -> str:
    clips = "\n".join(f"Clip {i + 1} ({a:.1f}-{b:.1f} s): {c}" for i, (c, (a, b)) in
                      enumerate(zip(captions, bounds_s, strict=True)))
    return WRITER_PROMPT.format(clips=clips)


def _qa(type_: str, question: str, answer: str, **extra) -> dict[str, Any]:
    return {"type": type_, "question": question, "answer": answer, "options": None, "answer_letter": None, **extra}


def parse_writer_output(text: str, num_clips: int) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The questions of a writer's reply, or (None, reason). Strict: one JSON object (optionally inside one
    fenced ```json block), exactly the fields of ``WRITER_FIELDS``, non-empty strings, clip numbers in range,
    whole-number counting answers. Reasons name the field, never the item, so that they count together."""
    s = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*\n(.*)\n```", s, flags=re.S)
    if fence:
        s = fence[1]
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        return None, "writer output: not valid JSON"
    if not isinstance(obj, dict):
        return None, "writer output: not a JSON object"
    for k in WRITER_FIELDS:
        if k not in obj:
            return None, f"writer output: missing field {k!r}"
    for k in obj:
        if k not in WRITER_FIELDS:
            return None, f"writer output: unknown field {k!r}"
    ok = lambda v: isinstance(v, str) and v.strip()  # noqa: E731
    if not ok(obj["summary"]):
        return None, "writer output: bad field 'summary'"
    out = [_qa("summary", SUMMARY_QUESTION, obj["summary"].strip())]
    for k in ("sub_event", "temporal", "counting"):
        items = obj[k]
        if not isinstance(items, list) or not items:
            return None, f"writer output: bad field {k!r}"
        for it in items:
            if not isinstance(it, dict) or set(it) != WRITER_FIELDS[k] or not ok(it["question"]):
                return None, f"writer output: bad field {k!r}"
            ans = it["answer"]
            if k == "counting":
                if isinstance(ans, int) and not isinstance(ans, bool) and ans >= 0:
                    ans = str(ans)
                if not (isinstance(ans, str) and ans.strip().isdigit()):
                    return None, "writer output: bad field 'counting'"
            if not ok(ans):
                return None, f"writer output: bad field {k!r}"
            extra = {}
            if k == "sub_event":
                c = it["clip"]
                if not (isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= num_clips):
                    return None, "writer output: bad field 'sub_event'"
                extra["clip"] = c
            out.append(_qa(k, it["question"].strip(), ans.strip(), **extra))
    return out, None


class RulesWriter:
    """``rules``: ``questions.compose_questions`` on captions in the synthetic world's grammar."""

    spec, weights = "rules", ""

    def write(self, items: list[dict[str, Any]]) -> list[tuple[list[dict] | None, str | None]]:
        out = []
        for it in items:
            if not any(Q.parse_sentence(s) for c in it["captions"] for s in Q.split_sentences(c)):
                out.append((None, "rules writer: captions not in the world's grammar"))
                continue
            out.append(([q.to_dict() for q in Q.compose_questions(it["captions"], seed=it["seed"])], None))
        return out


class HFWriter:
    """``hf:PATH``: an ``AutoModelForCausalLM`` with its tokenizer's chat template; batched greedy decoding
    (left padding) on the GPU when there is one."""

    def __init__(self, spec: str, tokens: int, batch: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = spec.partition(":")[2]
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"--writer {spec!r}: {path}: not a model folder (no config.json)")
        self.tok = AutoTokenizer.from_pretrained(path)
        if not self.tok.chat_template:
            raise ValueError(f"--writer {spec!r}: the tokenizer has no chat template")
        self.tok.padding_side = "left"
        self.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().to(self.device)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id or self.model.config.eos_token_id or self.tok.eos_token_id
        self.eos = eos if isinstance(eos, list) else [eos]
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos[0]
        self.spec, self.weights, self.tokens, self.batch = spec, _weights_hash(path), tokens, batch

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        texts = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.tokens, do_sample=False, eos_token_id=self.eos,
                                      pad_token_id=self.pad)
        return [self.tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]

    def write(self, items: list[dict[str, Any]]) -> list[tuple[list[dict] | None, str | None]]:
        prompts = [writer_prompt(it["captions"], it["bounds_s"]) for it in items]
        fits = [self.context is None or len(self.tok(p)["input_ids"]) + 32 + self.tokens <= self.context
                for p in prompts]
        replies: dict[int, str] = {}
        todo = [i for i, f in enumerate(fits) if f]
        for a in range(0, len(todo), self.batch):
            chunk = todo[a:a + self.batch]
            replies.update(zip(chunk, self._generate([prompts[i] for i in chunk]), strict=True))
        return [parse_writer_output(replies[i], len(it["captions"])) if fits[i] else
                (None, "writer: prompt longer than the writer's context") for i, it in enumerate(items)]


def load_writer(spec: str, tokens: int = 768, batch: int = 8):
    if spec == "rules":
        return RulesWriter()
    if spec.startswith("hf:"):
        return HFWriter(spec, tokens, batch)
    raise ValueError(f"--writer {spec!r}: expected hf:PATH or rules")


# ------------------------------------------------------------------------------------------- building
class Builder:
    """The shard maker of one build (in-process: models are loaded once, on first use)."""

    def __init__(self, cfg: LongVideoConfig, root: Path, videos: list[str], cache_root: Path, config: dict):
        self.cfg, self.root, self.videos, self.config = cfg, root, videos, config
        self.cache_root = cache_root
        self.stats = {"clips_captioned": 0, "clips_cached": 0}
        rank, world = cfg.shard_of
        total = -(-len(videos) // cfg.per_shard)
        self.shards = list(range(rank, total, world))  # global shard of each local one

    @functools.cached_property
    def captioner(self):
        return load_captioner(self.cfg.captioner, self.cfg.caption_tokens)

    @functools.cached_property
    def writer(self):
        return load_writer(self.cfg.writer, self.cfg.writer_tokens, self.cfg.batch)

    def _bounds(self, path: Path, n: int, fps: float) -> list[tuple[int, int]]:
        c = self.cfg
        most = max(1, round(c.clip_seconds * fps)) if c.clip_seconds else None
        cuts = detect_cuts(path, c.scene) if c.scenes else []
        return scene_bounds(n, cuts, most)

    def _captions(self, path: Path, sha: str, bounds: list[tuple[int, int]]) -> list[str]:
        key = hashlib.sha256(json.dumps([self.captioner.spec, self.captioner.weights, CAPTION_PROMPT,
                                         self.cfg.frames_per_clip, self.cfg.caption_tokens]).encode()).hexdigest()
        cache = self.cache_root / key[:16] / f"{sha[:32]}.json"
        try:
            got = read_json(cache)["clips"] if cache.is_file() else {}
        except (ValueError, KeyError, TypeError):
            got = {}  # a damaged cache file is recomputed
        names = [f"{a}-{b}" for a, b in bounds]
        for j in range(0, len(bounds), self.cfg.batch):  # batches start at fixed clip indices (see the docstring)
            part = names[j:j + self.cfg.batch]
            if all(isinstance(got.get(k), str) for k in part):
                self.stats["clips_cached"] += len(part)
                continue
            idx = [a + sample_indices(b - a, min(self.cfg.frames_per_clip, b - a)) for a, b in bounds[j:j + len(part)]]
            frames = read_frames_at(path, np.concatenate(idx))
            clips = np.split(frames, np.cumsum([len(i) for i in idx])[:-1])
            got.update(zip(part, self.captioner.caption(list(clips)), strict=True))
            self.stats["clips_captioned"] += len(part)
            atomic_write_json(cache, {"captioner": self.captioner.spec, "video_sha256": sha, "clips": got}, indent=None)
        return [got[k] for k in names]

    def _prepare(self, i: int) -> tuple[dict | None, str | None]:
        rel = self.videos[i]
        path = self.root / rel
        reason = probe_video(path, self.cfg.min_frames)
        if reason:
            return None, reason
        if path.suffix.lower() not in MP4_EXTS:
            return None, "not an mp4 file (remux it: ffmpeg -i IN -c copy OUT.mp4)"
        if path.stat().st_size > self.cfg.max_shard_bytes:
            return None, f"larger than the shard bound ({self.cfg.max_shard_bytes >> 20} MiB)"
        n, fps = video_meta(path)
        bounds = self._bounds(path, n, fps)
        sha = sha256_file(path)
        caps = self._captions(path, sha, bounds)
        if not any(c.strip() for c in caps):
            return None, "captioner: every clip caption is empty"
        return {"i": i, "rel": rel, "path": path, "sha": sha, "n": n, "fps": fps, "bounds": bounds,
                "bounds_s": [(round(a / fps, 3), round(b / fps, 3)) for a, b in bounds], "captions": caps,
                "seed": self.cfg.seed * 10_000_000 + i}, None

    def _record(self, it: dict, qas: list[dict]) -> dict[str, Any]:
        from longvila.data.sets import _ask, _conversation

        c = self.cfg
        key = f"{c.name}-{it['i']:08d}"
        rng = np.random.default_rng([it["seed"], 1])
        turns = [_ask(Q.QA(**{k: q[k] for k in ("type", "question", "answer", "options", "answer_letter")}), rng,
                      c.mc_frac) for q in qas]
        cut = ({"scenes": asdict(c.scene), "max_clip_seconds": c.clip_seconds} if c.scenes
               else {"clip_seconds": c.clip_seconds})
        rec = {"id": key, "set": c.name, "kind": "long_video_sft", "source": it["rel"], "source_sha256": it["sha"],
               "conversations": _conversation("<video>", turns),
               "media": [{"ext": "mp4", "type": "video", "num_frames": it["n"]}], "fps": it["fps"],
               "clips": [list(b) for b in it["bounds"]], "clip_captions": it["captions"], "qa": qas,
               "captioner": c.captioner, "writer": c.writer,
               "provenance": {"captioner": c.captioner, "captioner_weights": self.captioner.weights,
                              "writer": c.writer, "writer_weights": self.writer.weights,
                              "prompts_sha256": prompts_sha256(), "frames_per_clip": c.frames_per_clip,
                              "cut": cut, "clip_frames": [list(b) for b in it["bounds"]],
                              "clip_seconds": [list(b) for b in it["bounds_s"]]}}
        return {"__key__": key, "json": rec, "mp4": it["path"].read_bytes()}

    def __call__(self, k: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        g, per = self.shards[k], self.cfg.per_shard
        skipped: dict[str, int] = {}
        ready = []
        for i in range(g * per, min(len(self.videos), (g + 1) * per)):
            it, reason = self._prepare(i)
            if it is None:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                ready.append(it)
        samples = []
        for it, (qas, reason) in zip(ready, self.writer.write(ready) if ready else [], strict=True):
            if qas is None:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                samples.append(self._record(it, qas))
        return samples, skipped


def part_dir(out: str | os.PathLike, name: str, rank: int, world: int) -> Path:
    """Where a build writes: ``OUT/NAME`` on one machine, ``OUT/NAME.parts/rank-R-of-W`` for a rank of W."""
    return Path(out) / name if world == 1 else Path(out) / f"{name}.parts" / f"rank-{rank:05d}-of-{world:05d}"


def build(videos: str | os.PathLike, out: str | os.PathLike, cfg: LongVideoConfig) -> tuple[dict, dict]:
    """Build (or resume) this rank's part of the set; returns (manifest, caption counts)."""
    if cfg.clip_seconds is None and not cfg.scenes:
        raise ValueError("give --clip-seconds S or --scenes")
    if cfg.clip_seconds is not None and cfg.clip_seconds <= 0:
        raise ValueError(f"--clip-seconds must be > 0, not {cfg.clip_seconds}")
    if cfg.per_shard < 1 or cfg.batch < 1 or cfg.frames_per_clip < 1:
        raise ValueError("--per-shard, --batch and --frames-per-clip must be >= 1")
    root, rel = list_videos(videos)
    rank, world = cfg.shard_of
    listing = hashlib.sha256(json.dumps(rel).encode()).hexdigest()
    config = {"longvideo": asdict(cfg), "videos": str(videos), "num_videos": len(rel), "videos_sha256": listing,
              "prompts_sha256": prompts_sha256()}
    builder = Builder(cfg, root, rel, Path(out) / ".captions", config)
    m = build_set(part_dir(out, cfg.name, rank, world), cfg.name, len(builder.shards), builder, config,
                  seed=cfg.seed, workers=1, max_shard_bytes=cfg.max_shard_bytes)
    return m, builder.stats


# ------------------------------------------------------------------------------------------- merging
def merge(parts: list[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """One set in ``out`` from the rank parts of a ``--shard-of`` build (each verified first); returns the manifest.

    ``parts``: part folders, or folders holding them (``OUT/NAME.parts``). The parts must share one build
    configuration (all but ``shard_of``) and be exactly ranks 0..W-1 of W; shards are copied (hard-linked when
    possible) to their global names, then the manifest is written last."""
    dirs: list[Path] = []
    for p in map(Path, parts):
        found = [p] if (p / "manifest.json").is_file() else sorted(q.parent for q in p.glob("*/manifest.json"))
        if not found:
            raise FileNotFoundError(f"{p}: no manifest.json in it or its sub-folders")
        dirs += found
    mans = {d: verify_set(d) for d in dirs}
    ranks: dict[int, Path] = {}
    base = None
    for d, m in mans.items():
        lv = dict(m["config"].get("longvideo") or {})
        if not lv:
            raise ValueError(f"{d}: not a part of a `longvila data longvideo` build")
        r, w = lv.pop("shard_of")
        this = {**m["config"], "longvideo": lv, "world": w}
        if base is None:
            base = this
        elif this != base:
            raise ValueError(f"{d}: made with another configuration than {dirs[0]}; merge parts of one build")
        if r in ranks:
            raise ValueError(f"{d}: rank {r} given twice (also {ranks[r]})")
        ranks[r] = d
    world = base["world"]
    missing = sorted(set(range(world)) - set(ranks))
    if missing:
        raise ValueError(f"missing ranks {missing} of {world}: merge needs every part")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    shards, samples, skipped = {}, {}, {}
    for r, d in ranks.items():
        m = mans[d]
        for k, s in enumerate(m["shards"]):
            g = r + k * world
            dst = out / shard_name(g)
            if not (dst.is_file() and sha256_file(dst) == s["sha256"]):
                dst.unlink(missing_ok=True)
                try:
                    os.link(d / s["name"], dst)
                except OSError:
                    with atomic_open(dst, "wb") as f:
                        f.write((d / s["name"]).read_bytes())
            shards[g] = {**s, "name": dst.name}
            keys = [key for key in m["samples"] if key in _keys_of(d / s["name"])]
            samples[g] = {key: m["samples"][key] for key in keys}
        for reason, n in m["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    order = sorted(shards)
    if order != list(range(len(order))):
        raise ValueError(f"parts' shards do not cover 0..{len(order) - 1}")
    config = {k: v for k, v in base.items() if k != "world"}
    config["merged_from"] = world
    m0 = next(iter(mans.values()))
    manifest = {"set": m0["set"], "format": m0["format"], "num_samples": sum(s["num_samples"] for s in shards.values()),
                "num_shards": len(order), "shards": [shards[g] for g in order],
                "samples": {k: v for g in order for k, v in samples[g].items()},
                "skipped": dict(sorted(skipped.items())), "config": config, "seed": m0["seed"],
                "determinism": m0["determinism"]}
    atomic_write_json(out / "manifest.json", manifest)
    load_manifest(out)
    return manifest


def _keys_of(tar: Path) -> set[str]:
    import tarfile

    with tarfile.open(tar) as tf:
        return {m.name.split(".", 1)[0] for m in tf if m.isfile()}


# ------------------------------------------------------------------------------------------- command line
def add_parsers(sub) -> None:
    p = sub.add_parser("longvideo", help="your long videos -> clips -> captions -> whole-video questions (long_sft)")
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively) or a list file")
    p.add_argument("--out", required=True, help="output root: the set goes to OUT/NAME")
    p.add_argument("--captioner", required=True, help="ours:CKPT | hf:PATH | module:function")
    p.add_argument("--writer", required=True, help="hf:PATH | rules")
    p.add_argument("--name", default="long_sft")
    p.add_argument("--clip-seconds", type=float, default=None, help="fixed clips of S seconds (default 10 "
                   "without --scenes; with it, the longest clip)")
    p.add_argument("--scenes", action="store_true", help="cut at detected scene cuts (data/scenes.py)")
    p.add_argument("--frames-per-clip", type=int, default=8)
    p.add_argument("--min-frames", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=1, help="videos per shard (default 1: a killed build redoes "
                   "one video); the writer batches over the videos of a shard, so raise it on a GPU")
    p.add_argument("--batch", type=int, default=8, help="clips per captioner call, videos per writer call")
    p.add_argument("--caption-tokens", type=int, default=64)
    p.add_argument("--writer-tokens", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-of", help="RANK/WORLD (default: torchrun's RANK/WORLD_SIZE or a Slurm array, else 0/1)")
    g = sub.add_parser("merge", help="one manifest from the rank parts of `data longvideo --shard-of`")
    g.add_argument("parts", nargs="+", help="part folders, or OUT/NAME.parts")
    g.add_argument("--out", required=True, help="the merged set's folder (e.g. OUT/NAME)")


def _summary(m: dict, where) -> str:
    reasons = ", ".join(f"{r}: {n}" for r, n in m["skipped"].items())
    return (f"{m['set']}: {m['num_samples']} samples in {m['num_shards']} shards -> {where}\n"
            f"skipped {sum(m['skipped'].values())}" + (f": {reasons}" if reasons else ""))


def run_cli(args) -> int:
    try:
        cfg = LongVideoConfig(captioner=args.captioner, writer=args.writer, name=args.name,
                              clip_seconds=args.clip_seconds if (args.clip_seconds or args.scenes) else 10.0,
                              scenes=args.scenes, frames_per_clip=args.frames_per_clip, min_frames=args.min_frames,
                              per_shard=args.per_shard, batch=args.batch, caption_tokens=args.caption_tokens,
                              writer_tokens=args.writer_tokens, seed=args.seed, shard_of=shard_of(args.shard_of))
        m, stats = build(args.videos, args.out, cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"longvila data longvideo: {e}", file=sys.stderr)
        return 2
    print(_summary(m, part_dir(args.out, cfg.name, *cfg.shard_of)))
    print(f"clips captioned: {stats['clips_captioned']}, from the cache: {stats['clips_cached']}")
    if cfg.shard_of[1] > 1:
        print(f"rank {cfg.shard_of[0]} of {cfg.shard_of[1]}; when every rank is done: longvila data merge "
              f"{Path(args.out) / (cfg.name + '.parts')} --out {Path(args.out) / cfg.name}")
    return 0


def run_merge(args) -> int:
    try:
        m = merge(args.parts, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"longvila data merge: {e}", file=sys.stderr)
        return 2
    print(_summary(m, args.out))
    return 0
