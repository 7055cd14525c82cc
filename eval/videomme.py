"""VideoMME frame scaling: the real Video-MME layout, an embedded benchmark in that layout, and the sweep.

Layout (the one Video-MME is distributed in): a question table (parquet, JSON, JSONL or CSV) with the fields
``FIELDS`` (``options`` a list ``["A. ...", "B. ...", ...]``, ``answer`` a letter) and a folder of videos
named ``<videoID>.mp4`` (``data/`` or ``videos/`` beside the table). :func:`load_table` reads and validates
the table, naming the file, row and field of any fault.

The embedded benchmark (:func:`build_embedded`) writes held-out synthetic videos (``split="eval"``) in the
same layout, in three durations (short / medium / long, in frames). Each video carries one code card
(held-out handwritten digits) visible for a short span; the questions come from the world's composers
(``data.questions``, the way the long-video training data is made: clip captions -> whole-video questions)
in their four-option form: the code, counting, what happens next, colour changes, places, digits. They
ask about events spread over the video, so with few frames the answer is usually not seen and accuracy on
long videos should rise with the frame count.

Design choices:
- Evaluation by greedy generation and letter extraction (``prompts.extract_letter``), as Video-MME scores;
  visual tokens cached per (video, frame count, model hash), so a rerun costs only the LLM passes.
- Frames sampled uniformly (linspace). A video shorter than the requested count gives all its frames (the
  effective count is recorded per question), since the sweep goes past the shortest durations on purpose.
- Each frame count's answers are one JSON file (resumable); the blind baseline (no video) and chance (1/4)
  sit in the same table and plot.
- Beside the letter protocol, each question is also scored by option likelihood (``likelihood=True``): the
  question asked without options, the option text the model finds most likely as its answer wins
  (``acc_ll``). A small model may know an answer it cannot map to a letter; this shows which of the two the
  frame count moves.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from longvila.eval import base, prompts, stats
from longvila.eval.adapters import VideoLM, as_video_lm, load_adapter
from longvila.utils import atomic_write_bytes, atomic_write_json, progress, read_json, save_figure

FIELDS = ("video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type", "question",
          "options", "answer")
DURATIONS = ("short", "medium", "long")
TABLE_SUFFIXES = base.TABLE_SUFFIXES


# --------------------------------------------------------------------------------------------- videos
def read_video_frames(path: str | os.PathLike, num_frames: int, allow_fewer: bool = False) -> np.ndarray:
    """``num_frames`` frames sampled uniformly (linspace) from a video file -> uint8 (n, H, W, 3).

    Missing, empty or corrupt files raise errors naming the file; a count larger than the video is a
    ValueError naming the file and both counts, unless ``allow_fewer`` (then every frame of the video).
    """
    from longvila.data.video_io import VideoError, read_frames

    try:
        return read_frames(path, num_frames)
    except VideoError as e:
        if allow_fewer and str(e).endswith(f"{num_frames} asked"):
            return read_frames(path, None)
        raise


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 2.0) -> None:
    """uint8 (N, H, W, 3) -> an H.264 mp4 (the data pipeline's encoder), written atomically."""
    from longvila.data.video_io import encode_mp4

    atomic_write_bytes(path, encode_mp4(frames, fps=fps))


# --------------------------------------------------------------------------------------------- the table
def _parse_options(v, where: str) -> list[str]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                raise ValueError(f"{where}: field 'options' is not a list: {v[:80]!r}") from None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or not all(isinstance(o, str) for o in v) or len(v) < 2:
        raise ValueError(f"{where}: field 'options' must be a list of at least 2 strings, got {v!r}")
    for letter, o in zip(prompts.OPTION_LETTERS, v, strict=False):
        if not o.strip().startswith(f"{letter}."):
            raise ValueError(f"{where}: field 'options' entry {o!r} should start with '{letter}.'")
    return list(v)


def load_table(path: str | os.PathLike) -> list[dict]:
    """Read a Video-MME question table (parquet / JSON list / JSONL / CSV) and validate every row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: question table not found")
    rows = base.read_rows(path, "question table")
    out = []
    for i, r in enumerate(rows):
        where = f"{path} row {i}"
        missing = [f for f in FIELDS if f not in r]
        if missing:
            raise ValueError(f"{where}: missing field {missing[0]!r}")
        row = {f: (str(r[f]) if f != "options" else r[f]) for f in FIELDS}
        row["options"] = _parse_options(r["options"], where)
        if row["duration"] not in DURATIONS:
            raise ValueError(f"{where}: field 'duration' is {row['duration']!r}, not one of {DURATIONS}")
        letters = prompts.OPTION_LETTERS[:len(row["options"])]
        if row["answer"] not in letters:
            raise ValueError(f"{where}: field 'answer' is {row['answer']!r}, not one of {letters}")
        out.append(row)
    return out


def find_layout(root: str | os.PathLike) -> tuple[Path, Path]:
    """(question table, video folder) of a Video-MME-layout folder, or the table file itself."""
    root = Path(root)
    if root.is_file():
        table, root = root, root.parent
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: Video-MME folder not found")
        tables = sorted((p for s in TABLE_SUFFIXES for p in [*root.glob(f"*{s}"), *root.glob(f"videomme/*{s}")]
                         if not p.name.startswith(".")), key=lambda p: ("videomme" not in p.name, str(p)))
        if not tables:
            raise FileNotFoundError(f"{root}: no question table (*.parquet, *.json, *.jsonl, *.csv)")
        table = tables[0]
    for d in (root / "data", root / "videos", root):
        if d.is_dir() and any(d.glob("*.mp4")):
            return table, d
    raise FileNotFoundError(f"{root}: no videos (<videoID>.mp4 in data/ or videos/)")


# --------------------------------------------------------------------------------------------- embedded set
# The world's question types (``data.questions``) under Video-MME task-type names.
TASK_TYPES = {"code": "OCR Problems", "counting": "Counting Problem", "temporal": "Temporal Reasoning",
              "color": "Attribute Perception", "spatial": "Spatial Perception", "digit": "Object Recognition"}


@dataclass
class EmbeddedConfig:
    out: str = "artifacts/eval/videomme/bench"
    videos_per_duration: int = 20
    lengths: dict = field(default_factory=lambda: {"short": 64, "medium": 512, "long": 2048})  # frames
    clips: int = 8  # captioned clips a video is cut into before questions are composed
    questions_per_video: int = 3  # the code question + this many minus one of the other types
    code_fraction: float = 1 / 32  # the code card is visible for this share of the video
    seed: int = 0


def build_embedded(cfg: EmbeddedConfig) -> Path:
    """Write the embedded benchmark in the Video-MME layout; returns the table path (``videomme.json``).

    Held-out world videos (eval split, seeds disjoint from the needle haystack) with a code card; questions
    from the world's composers over clip captions (as the long-video training data is made), in their
    four-option form. Reused when the folder was built with the same configuration.
    """
    from longvila.data import questions, world

    out = Path(cfg.out)
    table, record = out / "videomme.json", out / ".build.json"
    if table.is_file() and record.is_file() and read_json(record) == asdict(cfg):
        return table
    rows = []
    jobs = [(d, i) for d in DURATIONS for i in range(cfg.videos_per_duration)]
    for j, (d, i) in enumerate(progress(jobs, desc="build videomme videos", unit="video")):
        n = int(cfg.lengths[d])
        vid_seed = world.EVAL_SEED_BASE + 100_000 + DURATIONS.index(d) * 10_000 + i
        rng = np.random.default_rng([cfg.seed, vid_seed])
        code = f"{int(rng.integers(1000)):03d}"
        video = world.make_video(vid_seed, n, split="eval", code=code,
                                 code_frames=max(1, int(round(n * cfg.code_fraction))))
        bounds = np.linspace(0, n, min(cfg.clips, n) + 1).round().astype(int)
        caps = [questions.caption_clip(video.events, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        qas = [q for q in questions.compose_questions(caps, seed=int(rng.integers(2**31)), types=list(TASK_TYPES))
               if q.options]
        code_q = [q for q in qas if q.type == "code"]
        others = [qas[j] for j in rng.permutation(len(qas)) if qas[j].type != "code"]
        vid = f"{d}-{i:03d}"
        write_mp4(out / "data" / f"{vid}.mp4", video.frames, fps=video.fps)
        for k, q in enumerate((code_q + others)[: cfg.questions_per_video]):
            rows.append({"video_id": f"{j:03d}", "duration": d,
                         "domain": "Synthetic world", "sub_category": q.type, "videoID": vid,
                         "question_id": f"{vid}-{k + 1}", "task_type": TASK_TYPES[q.type], "question": q.question,
                         "options": list(q.options), "answer": q.answer_letter})
    atomic_write_json(table, rows)
    atomic_write_json(record, asdict(cfg))
    return table


# --------------------------------------------------------------------------------------------- the sweep
@dataclass
class VideoMMEConfig:
    out: str = "artifacts/eval/videomme"
    frames: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    root: str | None = None  # a Video-MME-layout folder or table; None: the embedded benchmark
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    blind: bool = True
    limit: int | None = None  # first N questions only (smoke runs)
    max_new_tokens: int = 4
    likelihood: bool = True  # also score each question by option likelihood (open question, no letters)
    model_type: str = "longvila"  # the adapter (eval/adapters.py MODEL_TYPES, or auto)
    lmms_model: str | None = None  # instead of an adapter: any lmms-eval model (eval/lmms_bridge.py)
    lmms_model_args: str = ""  # its model_args, e.g. "pretrained=PATH,max_frames_num=8"
    lmms_frames_arg: str | None = None  # the lmms-eval model's frame-count attribute (default: known per model)
    publish: bool = False  # also write the leaderboard result (leaderboards/results or $LONGVILA_RESULTS_DIR)
    result_name: str | None = None  # its name when publishing: default "videomme" / "videomme-real"; "" skips it
    command: str | None = None


def _video_key(path: Path) -> str:
    st = path.stat()
    return f"file:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def answer_question(lm: VideoLM, row: dict, visual, max_new_tokens: int = 4) -> tuple[str, str]:
    """Generate a reply to one question (visual: the adapter's row visual, None for blind) -> (reply, letter)."""
    reply = lm.generate(prompts.videomme_prompt(row["question"], row["options"]), visual, max_new_tokens)
    return reply, prompts.extract_letter(reply)


def answer_by_likelihood(lm: VideoLM, row: dict, visual) -> tuple[str, list[float]]:
    """The option the model finds most likely as its answer to the question asked without options
    -> (letter, per-option sum log-probabilities)."""
    opts = [lm.answer_ids(prompts.option_text(o)) + lm.eos_ids[:1] for o in row["options"]]
    lp = lm.option_logprobs(row["question"], visual, opts)
    return prompts.OPTION_LETTERS[int(np.argmax(lp))], [round(float(x), 4) for x in lp]


def score(records: list[dict], key: str = "pred") -> dict:
    """Accuracy overall, per duration and per task type, with counts (``key``: the prediction field,
    ``pred`` for the letter protocol, ``ll_pred`` for likelihood scoring)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if key not in r:
            continue
        ok = r[key] == r["answer"]
        groups["all"].append(ok)
        groups[f"duration/{r['duration']}"].append(ok)
        groups[f"task/{r['task_type']}"].append(ok)
    return {k: {"accuracy": base.accuracy(sum(v), len(v)), "n": len(v)} for k, v in sorted(groups.items())}


def load_model(cfg: VideoMMEConfig, ckpt: str | None) -> VideoLM:
    """The model the sweep asks: an lmms-eval model (``cfg.lmms_model``) or the adapter ``cfg.model_type``."""
    if cfg.lmms_model:
        from longvila.eval.lmms_bridge import LmmsVideoLM

        return LmmsVideoLM(cfg.lmms_model, cfg.lmms_model_args, cfg.lmms_frames_arg)
    if ckpt is None:
        raise ValueError("videomme: give a checkpoint folder (--ckpt) or an lmms-eval model (--lmms-model)")
    return load_adapter(cfg.model_type, ckpt)


def run(cfg: VideoMMEConfig, lm: VideoLM | None = None, ckpt: str | None = None) -> dict:
    """Run (or resume) the frame sweep and the blind baseline; returns the summary (``videomme.json``)."""
    lm = as_video_lm(lm) if lm is not None else load_model(cfg, ckpt)
    likelihood = cfg.likelihood and lm.has_likelihood
    level = "embedding" if "embedding" in lm.levels else lm.levels[0]
    t0 = time.time()
    table_path, video_dir = find_layout(cfg.root if cfg.root else build_embedded(cfg.embedded))
    rows = load_table(table_path)[: cfg.limit]
    for r in rows:
        if not (video_dir / f"{r['videoID']}.mp4").is_file():
            raise FileNotFoundError(f"{video_dir / (r['videoID'] + '.mp4')}: video of question "
                                    f"{r['question_id']} not found")
    out = Path(cfg.out)
    sig_base = [lm.model_hash, str(table_path.resolve()), [r["question_id"] for r in rows], cfg.max_new_tokens,
                *(["likelihood"] if likelihood else []), *([] if lm.model_type == "longvila" else [lm.model_type])]
    sweep = {}
    for n in [*cfg.frames, *([0] if cfg.blind else [])]:
        path = out / "sweep" / (f"f{n:05d}.json" if n else "blind.json")
        sig = hashlib.sha256(json.dumps([*sig_base, n]).encode()).hexdigest()[:16]
        if path.is_file():
            try:
                prev = read_json(path)
                if prev.get("signature") == sig:
                    for r in prev["records"]:  # scored again: the extraction may have changed since
                        r["pred"] = prompts.extract_letter(r["reply"])
                    sweep[n] = {**prev, "scores": score(prev["records"]), "scores_ll": score(prev["records"], "ll_pred")}
                    continue
            except ValueError:
                pass
        records = []
        for r in progress(rows, desc=f"videomme {n or 'blind'} frames", unit="q"):
            vis = None
            if n:
                vpath = video_dir / f"{r['videoID']}.mp4"
                vis, _ = lm.cached_visual(out / "cache", _video_key(vpath), n,
                                          lambda p=vpath, n=n: read_video_frames(p, n, allow_fewer=True), level,
                                          exact=False, path=vpath)
            reply, letter = answer_question(lm, r, vis, cfg.max_new_tokens)
            rec = {"question_id": r["question_id"], "duration": r["duration"], "task_type": r["task_type"],
                   "answer": r["answer"], "reply": reply, "pred": letter,
                   "frames": 0 if vis is None else int(len(vis))}
            if likelihood:
                rec["ll_pred"], rec["ll"] = answer_by_likelihood(lm, r, vis)
            records.append(rec)
        sweep[n] = {"frames": n, "signature": sig, "scores": score(records), "scores_ll": score(records, "ll_pred"),
                    "records": records}
        atomic_write_json(path, sweep[n])
    summary = summarize(dataclasses.replace(cfg, likelihood=likelihood), sweep, rows)
    summary.update(seconds=round(time.time() - t0, 2), table_file=str(table_path), model_hash=lm.model_hash,
                   model_type=lm.model_type,
                   # replies with no text at all: a model that failed, or a prompt it does not take, shows here
                   empty_replies={("blind" if n == 0 else str(n)): sum(not r["reply"] for r in sw["records"])
                                  for n, sw in sweep.items()})
    write_outputs(cfg, summary, lm)
    return summary


def summarize(cfg: VideoMMEConfig, sweep: dict, rows: list[dict]) -> dict:
    def acc(n, key, scores="scores"):
        return sweep[n][scores].get(key, {}).get("accuracy")

    def tab(scores):
        return {str(n): {k: v["accuracy"] for k, v in sweep[n][scores].items()} for n in cfg.frames}

    def gain(scores):
        a, b = acc(cfg.frames[0], "duration/long", scores), acc(cfg.frames[-1], "duration/long", scores)
        return None if a is None or b is None else b - a

    def blind(scores):
        return {k: v["accuracy"] for k, v in sweep[0][scores].items()} if 0 in sweep else None

    out = {"frames": list(cfg.frames), "table": tab("scores"), "blind": blind("scores"),
           "chance": 1 / len(rows[0]["options"]), "questions": len(rows), "long_gain": gain("scores")}
    if cfg.likelihood:
        out.update(table_ll=tab("scores_ll"), long_gain_ll=gain("scores_ll"), blind_ll=blind("scores_ll"))
    out["intervals"] = intervals(list(cfg.frames), sweep, cfg.likelihood)
    return out


def intervals(frames: list[int], sweep: dict, likelihood: bool) -> dict:
    """How far the summary's figures can move by the questions alone (``eval.stats``): Wilson intervals of
    every accuracy overall and on the long split, per frame count (``table``, ``table_ll``); paired bootstrap
    intervals of likelihood minus letters per frame count (``gap_ll``) and of the long split's gain from the
    first frame count to the last (``long_gain``) and to its best one (``long_best``: that count is chosen on
    these very questions, so its interval is optimistic). Questions are paired by ``question_id``."""

    def ok(n, key, duration=None):
        return {r["question_id"]: r[key] == r["answer"] for r in sweep[n]["records"]
                if key in r and (duration is None or r["duration"] == duration)}

    def acc_ci(o):
        return [round(x, 4) for x in stats.wilson(sum(o.values()), len(o))]

    def diff(x, y, what):
        if x.keys() != y.keys():
            raise ValueError(f"videomme intervals: {what}: the two sides answer different questions "
                             f"({len(x.keys() ^ y.keys())} question ids in one only)")
        ids = sorted(x)
        r = stats.paired_difference([x[i] for i in ids], [y[i] for i in ids])
        return {**r, "estimate": round(r["estimate"], 4), "ci": [round(c, 4) for c in r["ci"]]}

    protocols = [("table", "pred", "")] + ([("table_ll", "ll_pred", "_ll")] if likelihood else [])
    out: dict = {"level": stats.LEVEL, "accuracy": "wilson", "difference": "paired percentile bootstrap",
                 "resamples": stats.RESAMPLES, "seed": stats.SEED}
    for name, key, _ in protocols:
        out[name] = {str(n): {k: acc_ci(o) for k, o in (("all", ok(n, key)), ("duration/long", ok(n, key, "long")))
                              if o} for n in frames}
    if likelihood:
        out["gap_ll"] = {str(n): diff(ok(n, "ll_pred"), ok(n, "pred"), f"likelihood - letters at {n} frames")
                         for n in frames}
    if len(frames) > 1:
        for _, key, suffix in protocols:
            long = {n: ok(n, key, "long") for n in frames}
            if not long[frames[0]]:
                continue
            best = max(frames[1:], key=lambda n: (sum(long[n].values()), -n))
            for name, to in (("long_gain", frames[-1]), ("long_best", best)):
                out[name + suffix] = {"from": frames[0], "to": to, **diff(long[to], long[frames[0]],
                                                                         f"long split {frames[0]} -> {to} frames")}
    return out


def write_outputs(cfg: VideoMMEConfig, summary: dict, lm: VideoLM) -> None:
    """videomme.json, curve.png (accuracy vs frames per duration, blind and chance), and the result file."""
    out = Path(cfg.out)
    atomic_write_json(out / "videomme.json", summary)
    plt = base.plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    xs = summary["frames"]
    for key, style in [("all", "k-o"), ("duration/short", "-^"), ("duration/medium", "-s"), ("duration/long", "-D")]:
        ys = [summary["table"][str(n)].get(key) for n in xs]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, style, label=key.split("/")[-1])
    if summary.get("table_ll"):
        for key, style in [("all", "k--o"), ("duration/long", "--D")]:
            ys = [summary["table_ll"][str(n)].get(key) for n in xs]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, style, alpha=0.6, label=f"{key.split('/')[-1]}, by likelihood")
    if summary["blind"]:
        ax.axhline(summary["blind"]["all"], color="tab:red", ls=":", label="blind (no video)")
    ax.axhline(summary["chance"], color="gray", ls="--", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frames sampled")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    curve = save_figure(fig, out / "curve.png")
    name = cfg.result_name if cfg.result_name is not None else ("videomme-real" if cfg.root else "videomme")
    if not (cfg.publish and name):
        return
    from longvila.leaderboards.results import write_result

    last = str(xs[-1])
    metrics = {"accuracy": summary["table"][last]["all"], "chance": summary["chance"], "frames": xs[-1]}
    metrics.update({f"acc@{n}": summary["table"][str(n)]["all"] for n in xs})
    for d in DURATIONS:
        if f"duration/{d}" in summary["table"][last]:
            metrics[f"acc_{d}"] = summary["table"][last][f"duration/{d}"]
    for k, v in summary["table"][last].items():
        if k.startswith("task/"):
            metrics["acc_" + k[5:].lower().replace(" ", "_")] = v
    if summary["blind"]:
        metrics["blind"] = summary["blind"]["all"]
    if summary.get("table_ll"):
        ll = summary["table_ll"]
        metrics["acc_ll"] = ll[last]["all"]
        metrics.update({f"acc_ll@{n}": ll[str(n)]["all"] for n in xs})
        if "duration/long" in ll[last]:
            metrics["acc_ll_long"] = ll[last]["duration/long"]
        if summary["blind_ll"]:
            metrics["acc_ll_blind"] = summary["blind_ll"]["all"]
    keys = ("table", "blind", "questions", "long_gain", "seconds", "table_ll", "blind_ll", "long_gain_ll",
            "empty_replies", "intervals")
    write_result(name, "videomme", metrics, details={k: summary[k] for k in keys if k in summary},
                 config={"table_file": summary["table_file"],
                         **{k: v for k, v in asdict(cfg).items() if k != "command"}, **lm.describe_model()},
                 command=cfg.command, plots={"curve": curve}, results_dir=os.environ.get("LONGVILA_RESULTS_DIR"))


base.register("videomme", VideoMMEConfig, "VideoMME-format frame sweep with blind baseline")(run)
