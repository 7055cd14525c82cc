"""Needle in a haystack for video: can the model find one frame among thousands?

The haystack is a long held-out video of the synthetic world (``split="eval"``; or any video file the user
names) sampled to N frames. A needle is a card with a 3-digit code handwritten with held-out digits
(``world.code_image``; chance of a guess 1 in 1,000) inserted at depth d, so the model sees N + 1 frames;
the question "What is the secret code shown in the video?" follows the video.

Design choices:
- Frames are encoded once: the haystack at the largest frame count, cached as safetensors keyed by
  (video, frame count, model hash); a smaller count N takes N of those embeddings spread uniformly (linspace),
  exactly as sampling N frames from the same video would. Needle cards are encoded per cell (a handful).
- Score: teacher-forced exact match (``VideoLM.teacher_forced``): correct when the argmax at every
  code digit equals the digit, which is what greedy generation would produce. All needles of a cell share
  one prompt length and go through the LLM as one batch.
- Controls in the same run: for every frame count, the same codes asked of the haystack with no needle
  (must stay near chance, 0.1%), so a high score cannot come from a prior over codes; and the same cards
  in a short haystack (``reference_frames``, 32: the clip length stage 3 trains on; card at mid-depth),
  where finding the card is easy, the reading reference (``read_accuracy``, ``acc_read``): handwriting by
  unseen writers is not always legible to the model, and the grid is read against it. (With no haystack at
  all, ``reference_frames=0``, the tiny model read 35% of the cards it read 71% of the time in 8-128
  frames: a lone frame is not what it was trained on.) ``if_read_accuracy`` (``acc_if_read``) is retrieval
  apart from reading: the grid accuracy over the needles whose card (the very same image) the model reads
  right in the reference cell; ``if_read_per_frames`` gives it per frame count, so where retrieval falls off
  is not hidden by which five cards a column happened to draw.
- A reference reader for the same cards: an RBF SVM on pixels, per digit place, trained on cards written by
  the training split's writers (``reference_reader_accuracy``, ``acc_ref_reader``). Held-out writers are hard:
  it says how far the reading reference could go for any reader trained on the same writers.
- Each cell is one JSON file written atomically as soon as it is scored, tagged with a signature of
  everything that decides it (model hash, haystack, codes); a rerun skips cells whose file matches, so an
  interrupted run resumes and a changed model recomputes.
- With ``--nproc > 1`` the long forward pass is sharded over ranks by ``longvila.parallel`` (MM-SP
  inference); rank 0 writes the files.
- Any video LLM, through its adapter (``eval/adapters.py``, ``--model``): at embedding level where the adapter
  encodes frames independently (the haystack encoded and cached once, the needle's tokens swapped in at each
  depth), at frame level for every model (the needle image placed among the sampled frames, the row encoded
  again by the model's own video path). Cards are rendered at the model's input size. A grid whose largest
  frame count does not fit the model's context is refused before any work, naming the largest count that fits.
- Your own needles (``needle_set``): a folder with a table of (image, question, answer) rows; see
  :func:`load_needle_set`. Beside the teacher-forced exact match, ``string_match`` scores greedy replies by
  normalised string match (the answer's words, in order, among the reply's), which tokenizers that group digits
  and free-text answers need; it is on by default for every model but this project's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from longvila.eval import base, prompts, stats
from longvila.eval.adapters import VideoLM, as_video_lm, load_adapter
from longvila.utils import atomic_write_json, progress, read_json, save_figure

CODE_DIGITS = 3


@dataclass
class NeedleConfig:
    out: str = "artifacts/eval/needle"
    frames: int = 6000  # largest frame count of the grid
    steps: int = 20  # frame counts frames/steps, 2*frames/steps, ..., frames
    depths: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    needles: int = 5  # needles (codes) per cell
    seed: int = 0
    video: str | None = None  # a user video file as the haystack (default: a held-out world video)
    haystack_seed: int = 7  # eval-split world seed of the default haystack
    cache_dir: str | None = None  # frame-embedding cache (default: <out>/cache)
    controls: bool = True
    nproc: int = 1
    publish: bool = False  # also write the leaderboard result (leaderboards/results or $LONGVILA_RESULTS_DIR)
    result_name: str | None = None  # its name when publishing (default needle-<frames>); "" skips it
    command: str | None = None
    min_frames: int | None = None  # smallest count (default frames/steps)
    # training cards of the reference reader (a pixel SVM, see reference_reader_accuracy); 0 skips it
    reference_cards: int = 4000
    reference_frames: int = 32  # haystack frames of the reading reference cells (0: the card alone)
    style: str = "print"  # needle cards printed, or handwritten by the held-out writers ("hand")
    model_type: str = "longvila"  # the adapter (eval/adapters.py MODEL_TYPES, or auto)
    level: str = "auto"  # "embedding", "frame", or auto: embedding where the adapter supports it
    needle_set: str | None = None  # a folder of your own needles (load_needle_set); default: code cards
    string_match: bool | None = None  # also score greedy replies by normalised string match (None: not for longvila)


def default_result_name(cfg: NeedleConfig) -> str:
    """needle-<frames> for printed cards, needle-<frames>-hand for handwritten ones."""
    return f"needle-{cfg.frames}" + ("" if cfg.style == "print" else f"-{cfg.style}")


def frame_counts(cfg: NeedleConfig) -> list[int]:
    """Grid frame counts: ``steps`` evenly spaced counts ending at ``frames`` (6000, 20 -> 300, 600, ..., 6000)."""
    if cfg.frames < 1 or cfg.steps < 1:
        raise ValueError(f"frames ({cfg.frames}) and steps ({cfg.steps}) must be >= 1")
    lo = cfg.min_frames or max(1, cfg.frames // cfg.steps)
    counts = np.linspace(lo, cfg.frames, cfg.steps).round().astype(int)
    return sorted({int(c) for c in counts})


def needle_index(depth: float, n: int) -> int:
    """Position of the needle among the N + 1 frames: depth 0 -> first frame, 1 -> last, else round(d * N)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], not {depth}")
    return int(round(depth * n))


def sample_indices(total: int, n: int) -> np.ndarray:
    """Uniform (linspace) sample of n frame indices out of ``total`` (n <= total)."""
    if n > total:
        raise ValueError(f"cannot sample {n} frames from a video of {total} frames")
    return np.linspace(0, total - 1, n).round().astype(int)


def insert_needle(haystack, needle, depth: float):
    """haystack (N, ...) + needle (...) -> (N + 1, ...) and the needle's frame index: visual tokens (N, T, D) at
    embedding level, uint8 frames (N, H, W, 3) at frame level (torch tensors or numpy arrays)."""
    i = needle_index(depth, haystack.shape[0])
    if isinstance(haystack, np.ndarray):
        return np.concatenate([haystack[:i], needle[None], haystack[i:]]), i
    return torch.cat([haystack[:i], needle[None], haystack[i:]]), i


def cell_codes(seed: int, n: int, needles: int) -> list[str]:
    """Distinct 3-digit codes for the cells at frame count n (shared by its depths and its control)."""
    rng = np.random.default_rng([seed, n, 17])
    picks = rng.choice(10**CODE_DIGITS, size=needles, replace=False)
    return [f"{int(c):0{CODE_DIGITS}d}" for c in picks]


def _haystack_frames(cfg: NeedleConfig, num_frames: int) -> np.ndarray:
    """uint8 (num_frames, H, W, 3): the default eval-split world video, or the user's video sampled."""
    if cfg.video:
        from longvila.eval.videomme import read_video_frames

        return read_video_frames(cfg.video, num_frames)
    from longvila.data import world

    return world.make_video(world.EVAL_SEED_BASE + cfg.haystack_seed, num_frames, split="eval").frames


def _haystack_key(cfg: NeedleConfig) -> str:
    if cfg.video:
        p = Path(cfg.video)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: haystack video not found")
        st = p.stat()
        return f"file:{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return f"world:eval:{cfg.haystack_seed}"


# Cell kinds: a needle at a depth in a haystack; the control (the haystack, no needle); the reading reference
# (the needle card at mid-depth in a short haystack of reference_frames frames).
GRID, CONTROL, READ = "grid", "control", "read"


@dataclass(frozen=True)
class Unit:
    """One cell of work: ``frames`` haystack frames, its ``kind``, and the needle depth (grid cells only)."""

    frames: int
    kind: str
    depth: float | None = None

    def path(self, cells_dir: Path) -> Path:
        tag = f"d{self.depth:.2f}" if self.kind == GRID else self.kind
        return cells_dir / f"f{self.frames:05d}-{tag}.json"


def work_units(cfg: NeedleConfig, counts: list[int]) -> list[Unit]:
    """The grid (every frame count x depth), then with ``controls`` the no-needle and reading-reference cells."""
    units = [Unit(n, GRID, float(d)) for n in counts for d in cfg.depths]
    if cfg.controls:
        units += [Unit(n, CONTROL) for n in counts] + [Unit(n, READ) for n in counts]
    return units


def needle_cards(cfg: NeedleConfig, n: int, codes: list[str], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """The cards of the cells of n frames (uint8 (len(codes), H, W, 3), ``size`` = (H, W): the model's input
    size) in ``cfg.style`` (handwriting: the held-out writers), one image per (seed, frame count, code), shared
    by the depths and the reading reference cell."""
    from longvila.data import world

    return np.stack([world.code_image(c, "eval", np.random.default_rng([cfg.seed, n, int(c)]), *size, style=cfg.style)
                     for c in codes])


@dataclass(frozen=True)
class Needle:
    """One needle: its image (uint8 (H, W, 3)), the question that follows the video, and the answer."""

    id: str
    question: str
    answer: str
    image: np.ndarray = field(repr=False, compare=False)


NEEDLE_SET_TABLES = ("needles.json", "needles.jsonl", "needles.parquet")


def load_needle_set(root: str | os.PathLike) -> list[Needle]:
    """Your own needles: a folder with ``needles.json`` (a list), ``needles.jsonl`` or ``needles.parquet`` whose
    rows have ``image`` (a path relative to the folder, or ``{"bytes": ...}`` / ``{"path": ...}`` as a Hugging
    Face Image column stores it, e.g. an exported ``v_niah_needles`` set), ``question`` and ``answer``
    (``id`` optional). Every fault names the file, the row and the field."""
    import io

    from PIL import Image

    root = Path(root)
    tables = [root / t for t in NEEDLE_SET_TABLES if (root / t).is_file()]
    if not tables:
        raise FileNotFoundError(f"{root}: no needle table ({', '.join(NEEDLE_SET_TABLES)})")
    table = tables[0]
    rows = base.read_rows(table, "needle table")
    out = []
    for i, r in enumerate(rows):
        where = f"{table} row {i}"
        for f in ("image", "question", "answer"):
            if f not in r or r[f] is None or (isinstance(r[f], str) and not r[f].strip()):
                raise ValueError(f"{where}: missing field {f!r}")
        img = r["image"]
        try:
            if isinstance(img, dict) and img.get("bytes") is not None:
                pil = Image.open(io.BytesIO(img["bytes"]))
            else:
                path = root / (img.get("path") if isinstance(img, dict) else str(img))
                if not path.is_file():
                    raise FileNotFoundError(f"{where}: field 'image': {path} not found")
                pil = Image.open(path)
            image = np.asarray(pil.convert("RGB"))
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL's errors for a corrupt image
            raise ValueError(f"{where}: field 'image' is not a readable image ({e})") from None
        out.append(Needle(str(r.get("id", i)), str(r["question"]).strip(), str(r["answer"]).strip(), image))
    if len({n.id for n in out}) != len(out):
        raise ValueError(f"{table}: field 'id' repeats")
    return out


def set_needles(needles: list[Needle], seed: int, n: int, count: int) -> list[Needle]:
    """The needles of the cells at frame count n: ``count`` of the set drawn without replacement (all if fewer)."""
    if count >= len(needles):
        return list(needles)
    rng = np.random.default_rng([seed, n, 19])
    return [needles[i] for i in sorted(rng.choice(len(needles), size=count, replace=False))]


_WORD = re.compile(r"[0-9a-z]+")


def string_match(reply: str, answer: str) -> bool:
    """Normalised string match: the answer's words (lowercased alphanumeric runs) appear, in order and
    contiguous, among the reply's. ``"The code is 123."`` matches ``"123"``; ``"1234"`` does not."""
    want, got = _WORD.findall(answer.lower()), _WORD.findall(reply.lower())
    return bool(want) and any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def reference_reader_accuracy(cards: np.ndarray, codes: list[str], train_cards: int = 4000, seed: int = 0,
                              style: str = "print") -> float:
    """Share of ``cards`` whose whole code a classic reader gets right: an RBF SVM on the pixels of a card's
    digit cells (``world.card_cells``), trained on the cells of ``train_cards`` cards of the same style made
    with the *training* split (handwriting: the writers the model learns from). It says how legible the cards
    are to a reader that has never seen them: the ceiling a model trained on the same data is read against."""
    from sklearn.svm import SVC

    from longvila.data import world

    if len(cards) != len(codes) or not len(codes):
        raise ValueError(f"reference reader: {len(cards)} cards for {len(codes)} codes")
    rng = np.random.default_rng([seed, 23])
    train_codes = [f"{int(c):0{CODE_DIGITS}d}" for c in rng.integers(0, 10**CODE_DIGITS, train_cards)]
    x = np.stack([world.code_image(c, "train", rng, *cards.shape[1:3], style=style) for c in train_codes])
    cells = world.card_cells(x, CODE_DIGITS)  # (places, cards, pixels)
    svm = SVC(C=10.0, gamma="scale").fit(cells.reshape(-1, cells.shape[-1]),
                                         [c[p] for p in range(CODE_DIGITS) for c in train_codes])
    ok = np.ones(len(codes), bool)
    for place, cells in enumerate(world.card_cells(cards, CODE_DIGITS)):
        ok &= svm.predict(cells) == np.array([c[place] for c in codes])
    return float(ok.mean())


def _signature(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def score_cell(lm: VideoLM, hay, needles: list[tuple[str, str]], depth: float | None, needle_vis=None,
               with_string: bool = False) -> dict:
    """Score every needle of one cell, batched by question and answer length.

    hay: the haystack's visual at the cell's level ((N, T, D) tokens or (N, H, W, 3) frames); ``needles``:
    (question, answer) pairs; needle_vis: one visual per needle ((B, T, D) or (B, H, W, 3)), or None for the
    control (no needle). Returns per-needle ``correct`` (teacher-forced exact match), ``predicted`` (decoded
    argmax), ``needle_frame`` (empty for the control) and, with ``with_string``, ``replies`` and
    ``string_correct`` (greedy reply, normalised string match).
    """
    rows, where = [], []
    for b in range(len(needles)):
        if depth is None:
            rows.append(hay)
        else:
            vis, i = insert_needle(hay, needle_vis[b], depth)
            rows.append(vis)
            where.append(i)
    answers = [lm.answer_ids(a) for _, a in needles]
    if any(not a for a in answers):
        raise ValueError("a needle's answer encodes to no tokens")
    groups: dict[tuple[str, int], list[int]] = {}
    for b, (q, _) in enumerate(needles):
        groups.setdefault((q, len(answers[b])), []).append(b)
    preds: list[list[int]] = [[] for _ in needles]
    for (q, _), idx in groups.items():
        # rows of a group are equal up to the needle's frame (the control: entirely)
        shared = min(where[b] for b in idx) if where else None
        pred = lm.teacher_forced(q, [rows[b] for b in idx], torch.tensor([answers[b] for b in idx]), shared)
        for j, b in enumerate(idx):
            preds[b] = pred[j].tolist()
    cell = {"correct": [p == a for p, a in zip(preds, answers, strict=True)],
            "predicted": [lm.tokenizer.decode(p) for p in preds], "needle_frame": where}
    if with_string:
        replies = [lm.generate(q, rows[b], max_new_tokens=len(answers[b]) + 8) for b, (q, _) in enumerate(needles)]
        cell["replies"] = replies
        cell["string_correct"] = [string_match(r, a) for r, (_, a) in zip(replies, needles, strict=True)]
    return cell


def resolve_level(cfg: NeedleConfig, lm: VideoLM) -> str:
    """The level the grid runs at: ``cfg.level``, or with ``auto`` embedding level where the adapter has it."""
    if cfg.level == "auto":
        return "embedding" if "embedding" in lm.levels else "frame"
    if cfg.level not in lm.levels:
        raise ValueError(f"needle: level {cfg.level!r} is not supported by the {lm.model_type} adapter "
                         f"(it supports {', '.join(lm.levels)})")
    return cfg.level


def run(cfg: NeedleConfig, lm: VideoLM | None = None, ckpt: str | None = None,
        mesh=None, rank: int = 0) -> dict:
    """Run (or resume) the grid; returns the summary written to ``<out>/needle.json``.

    ``lm``: a loaded adapter (or this project's ``runner.LoadedModel``), or ``ckpt`` loaded with the adapter
    ``cfg.model_type``. ``mesh``: an MM-SP mesh
    (``longvila.parallel``) to shard the forward pass over; every rank of it calls ``run`` with the same config,
    and rank 0 writes the files (see ``needle_sp.run_sharded``).
    """
    if lm is None:
        if ckpt is None:
            raise ValueError("needle.run: give a loaded model or a checkpoint folder")
        lm = load_adapter(cfg.model_type, ckpt)
    lm = as_video_lm(lm)
    if mesh is not None:
        lm.shard(mesh)
    level = resolve_level(cfg, lm)
    with_string = cfg.string_match if cfg.string_match is not None else lm.model_type != "longvila"
    out = Path(cfg.out)
    cells_dir = out / "cells"
    counts = frame_counts(cfg)
    own = load_needle_set(cfg.needle_set) if cfg.needle_set else None

    def cell_needles(n: int) -> list[Needle]:
        if own is not None:
            return set_needles(own, cfg.seed, n, cfg.needles)
        codes = cell_codes(cfg.seed, n, cfg.needles)
        cards = needle_cards(cfg, n, codes, lm.input_size)
        return [Needle(c, prompts.needle_question(), c, card) for c, card in zip(codes, cards, strict=True)]

    # refuse before any work a grid the model's context cannot hold (the largest count, plus the needle frame)
    longest = max(cell_needles(cfg.frames), key=lambda x: len(lm.answer_ids(x.question)) + len(lm.answer_ids(x.answer)))
    lm.check_fits(longest.question, cfg.frames + 1, len(lm.answer_ids(longest.answer)),
                  what=f"needle grid at {cfg.frames} frames")
    hay_key = _haystack_key(cfg)
    t0 = time.time()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    full, hit = lm.cached_visual(cache, hay_key, cfg.frames, lambda: _haystack_frames(cfg, cfg.frames), level)
    units = work_units(cfg, counts)
    # what decides a cell beyond today's default (cells of the default run keep their signatures)
    extra = [x for x in (None if lm.model_type == "longvila" else lm.model_type,
                         None if level == "embedding" else level, cfg.needle_set and str(Path(cfg.needle_set).resolve()),
                         "string" if with_string else None) if x]

    def signature(u: Unit) -> str:
        ids = [x.id for x in cell_needles(u.frames)] if own is not None else cell_codes(cfg.seed, u.frames, cfg.needles)
        return _signature(lm.model_hash, hay_key, cfg.frames, u.frames, u.kind, u.depth, ids, cfg.seed, cfg.style,
                          cfg.reference_frames if u.kind == READ else None, *extra)

    done = {}  # finished cells, read once before any work so that every rank skips the same ones
    for u in units:
        path = u.path(cells_dir)
        try:
            cell = read_json(path) if path.is_file() else None
        except ValueError:
            cell = None  # a corrupt cell file is recomputed
        if cell is not None and cell.get("signature") == signature(u):
            done[u] = cell
    cells = []
    for u in progress(units, desc="needle grid", unit="cell"):
        if u in done:
            cells.append(done[u])
            continue
        needles = cell_needles(u.frames)
        # the reading reference: the same needles as the cells of n frames, in a short haystack (0: none)
        n_hay = min(cfg.reference_frames, cfg.frames) if u.kind == READ else u.frames
        hay = full[sample_indices(cfg.frames, n_hay)]
        needle_vis = None
        if u.kind != CONTROL:
            needle_vis = lm.visual(np.stack([x.image for x in needles]), level)
        depth = {GRID: u.depth, CONTROL: None, READ: 0.5}[u.kind]
        scored = score_cell(lm, hay, [(x.question, x.answer) for x in needles], depth, needle_vis, with_string)
        cell = {"frames": u.frames, "depth": u.depth, "control": u.kind == CONTROL,
                "read": u.kind == READ, "codes": [x.id for x in needles], **scored,
                "accuracy": base.accuracy(sum(scored["correct"]), len(needles)), "signature": signature(u)}
        if with_string:
            cell["string_accuracy"] = base.accuracy(sum(scored["string_correct"]), len(needles))
        if rank == 0:
            atomic_write_json(u.path(cells_dir), cell)
        cells.append(cell)
    computed = len(units) - len(done)
    summary = summarize(cfg, cells, counts)
    if cfg.controls and cfg.reference_cards and own is None and rank == 0:
        per_count = [(n, cell_codes(cfg.seed, n, cfg.needles)) for n in counts]
        cards = np.concatenate([needle_cards(cfg, n, codes) for n, codes in per_count])  # the reader reads 32x32
        summary["reference_reader_accuracy"] = reference_reader_accuracy(
            cards, [c for _, codes in per_count for c in codes], cfg.reference_cards, cfg.seed, cfg.style)
    summary.update(computed_cells=computed, reused_cells=len(units) - computed, embeddings_cached=hit,
                   seconds=round(time.time() - t0, 2), model_hash=lm.model_hash, model_type=lm.model_type,
                   level=level, haystack=hay_key)
    if own is not None:
        summary["chance"] = None  # free-text answers: no closed-form chance
    if rank == 0:
        write_outputs(cfg, summary, lm)
    return summary


def summarize(cfg: NeedleConfig, cells: list[dict], counts: list[int]) -> dict:
    grid = [[None] * len(counts) for _ in cfg.depths]
    per_frames = {}
    grid_cells = [c for c in cells if not c["control"] and not c.get("read")]
    for c in grid_cells:
        grid[list(cfg.depths).index(c["depth"])][counts.index(c["frames"])] = c["accuracy"]
    for n in counts:
        col = [c for c in grid_cells if c["frames"] == n]
        k = sum(sum(c["correct"]) for c in col)
        per_frames[str(n)] = base.accuracy(k, sum(len(c["correct"]) for c in col))
    hits = [x for c in grid_cells for x in c["correct"]]
    ctrl = [x for c in cells if c["control"] for x in c["correct"]]
    ref = [x for c in cells if c.get("read") for x in c["correct"]]
    # retrieval apart from reading: the grid needles whose card the model reads in the reference cell (the
    # same card image: cards depend on the frame count and the code only)
    read = {(c["frames"], code) for c in cells if c.get("read")
            for code, ok in zip(c["codes"], c["correct"], strict=True) if ok}
    # per frame count too: where retrieval falls off, apart from which cards happen to be legible
    if_read_at = {n: [x for c in grid_cells if c["frames"] == n
                      for code, x in zip(c["codes"], c["correct"], strict=True) if (n, code) in read] for n in counts}
    if_read = [x for xs in if_read_at.values() for x in xs]
    if_read_per_frames = {str(n): base.accuracy(sum(xs), len(xs)) if xs else None for n, xs in if_read_at.items()}
    strings = {}
    if grid_cells and "string_correct" in grid_cells[0]:  # greedy replies scored by normalised string match
        def rate(cs):
            xs = [x for c in cs for x in c["string_correct"]]
            return base.accuracy(sum(xs), len(xs)) if xs else None

        strings = {"string_accuracy": rate(grid_cells),
                   "string_accuracy_per_frames": {str(n): rate([c for c in grid_cells if c["frames"] == n]) for n in counts},
                   "string_control_accuracy": rate([c for c in cells if c["control"]]),
                   "string_read_accuracy": rate([c for c in cells if c.get("read")])}
    return {**strings, "frame_counts": counts, "depths": list(cfg.depths), "grid": grid, "accuracy_per_frames": per_frames,
            "accuracy": base.accuracy(sum(hits), len(hits)), "trials": len(hits),
            # how far the rate can move by the needles drawn alone (Wilson, eval.stats), and by the codes drawn:
            # a code is asked at every depth of its frame count and a misread one is missed at most of them, so
            # (frame count, code) is resampled as a whole
            "accuracy_ci": [round(x, 4) for x in stats.wilson(sum(hits), len(hits))],
            "accuracy_ci_by_code": [round(x, 4) for x in stats.cluster_interval(
                hits, [(c["frames"], code) for c in grid_cells for code in c["codes"]])] if hits else None,
            "control_accuracy": base.accuracy(sum(ctrl), len(ctrl)), "control_trials": len(ctrl),
            "read_accuracy": base.accuracy(sum(ref), len(ref)) if ref else None, "read_trials": len(ref),
            "if_read_accuracy": base.accuracy(sum(if_read), len(if_read)) if if_read else None,
            "if_read_trials": len(if_read), "if_read_per_frames": if_read_per_frames if read else None,
            "chance": 1 / 10**CODE_DIGITS, "config": asdict(cfg)}


def write_outputs(cfg: NeedleConfig, summary: dict, lm: VideoLM) -> None:
    """needle.json (all accuracies), heatmap.png (depth x frames), per_frames.png, and the result file."""
    out = Path(cfg.out)
    atomic_write_json(out / "needle.json", summary)
    plt = base.plt()
    counts, grid = summary["frame_counts"], np.array(summary["grid"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.5), 3.2))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(counts)), [str(c) for c in counts], rotation=60, fontsize=7)
    ax.set_yticks(range(len(summary["depths"])), [f"{d:.0%}" for d in summary["depths"]])
    ax.set_xlabel("frames in the haystack")
    ax.set_ylabel("needle depth")
    ref = summary.get("read_accuracy")
    if_read = summary.get("if_read_accuracy")
    ax.set_title(f"needle in a haystack: {summary['accuracy']:.1%} "
                 f"(no-needle control {summary['control_accuracy']:.1%}"
                 + (f", card in a short haystack {ref:.1%}" if ref is not None else "")
                 + (f", cards read there {if_read:.1%}" if if_read is not None else "") + ")", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    heat = save_figure(fig, out / "heatmap.png")
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(counts, [summary["accuracy_per_frames"][str(c)] for c in counts], "o-", label="needle")
    per_read = summary.get("if_read_per_frames") or {}
    if any(v is not None for v in per_read.values()):
        xs = [c for c in counts if per_read.get(str(c)) is not None]
        ax.plot(xs, [per_read[str(c)] for c in xs], "s--", ms=3, label="needles whose card is read in the reference")
    if summary.get("read_accuracy") is not None:
        ax.axhline(summary["read_accuracy"], color="tab:green", ls=":",
                   label=f"reading reference ({cfg.reference_frames}-frame haystack)")
    if summary.get("reference_reader_accuracy") is not None:
        ax.axhline(summary["reference_reader_accuracy"], color="tab:purple", ls="-.",
                   label="reference reader (pixel SVM), same cards")
    if summary.get("string_accuracy") is not None:
        ax.plot(counts, [summary["string_accuracy_per_frames"][str(c)] for c in counts], "^:", ms=4,
                label="greedy reply, normalised string match")
    if summary["chance"] is not None:
        ax.axhline(summary["chance"], color="gray", ls="--", label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frames")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    curve = save_figure(fig, out / "per_frames.png")
    name = cfg.result_name if cfg.result_name is not None else default_result_name(cfg)
    if cfg.publish and name:
        from longvila.leaderboards.results import write_result

        metrics = {"accuracy": summary["accuracy"], "control": summary["control_accuracy"], "frames": cfg.frames}
        if summary.get("read_accuracy") is not None:
            metrics["acc_read"] = summary["read_accuracy"]
        if summary.get("if_read_accuracy") is not None:
            metrics["acc_if_read"] = summary["if_read_accuracy"]
        if summary.get("reference_reader_accuracy") is not None:
            metrics["acc_ref_reader"] = summary["reference_reader_accuracy"]
        if summary.get("string_accuracy") is not None:
            metrics["acc_string"] = summary["string_accuracy"]
        metrics.update({f"acc@{n}": a for n, a in summary["accuracy_per_frames"].items()})
        write_result(name, "needle", metrics, details={k: summary[k] for k in (
            "frame_counts", "depths", "grid", "trials", "accuracy_ci", "accuracy_ci_by_code", "control_trials",
            "read_trials", "if_read_trials", "if_read_per_frames", "chance", "seconds", "level")},
            config={**summary["config"], **lm.describe_model()},
            seed=cfg.seed, command=cfg.command, plots={"heatmap": heat, "per_frames": curve},
            results_dir=os.environ.get("LONGVILA_RESULTS_DIR"))


base.register("needle", NeedleConfig, "needle in a haystack over (frames x depth)")(run)
