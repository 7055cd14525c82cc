"""Turn a user's own videos into the same shards: (a) a folder of videos + captions, (b) LLaVA-style JSON.

(a) ``--videos DIR --captions FILE``: FILE is CSV with a header ``video,caption`` or JSONL with lines
``{"video": "a.mp4", "caption": "..."}`` (video paths relative to DIR). Each becomes a captioning sample
(``Describe the video.`` -> caption, kind ``video_caption``).
(b) ``--llava FILE.json [--media-root DIR]``: a list of ``{"id", "video" | "image", "conversations"}``
records (paths relative to DIR, default the JSON's folder). ``"image"`` may be a list (several stills).

Design choices:
- Problems with the index file itself are errors naming the file and line: not UTF-8, malformed CSV/JSON,
  a missing column, an unknown key (a misspelt key would otherwise drop information silently).
- Problems with one sample are counted skips with a reason: missing media file, empty or corrupt video,
  a video shorter than ``--min-frames`` (default 8; frames are never repeated to reach it), an empty
  caption, placeholders that do not match the media.
  The build prints ``skipped N: reason: count, ...`` and the manifest stores the counts.
- Media bytes are stored as they are (decord/PyAV read them at load time), under their own extension
  (``mp4``, ``mkv``, ``jpg``, ``png`` ...); videos are probed once at ingest so broken ones never reach a shard.
- Keys are ``<name>-<line index>``, so a skipped entry leaves a gap instead of shifting every later key.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvila.data.shards import build_set
from longvila.data.video_io import VideoError, num_frames_of

CAPTION_KEYS = {"video", "caption"}
LLAVA_KEYS = {"id", "video", "image", "conversations"}
VIDEO_EXTS = {"mp4", "mkv", "avi", "webm", "mov", "m4v"}


@dataclass
class IngestConfig:
    name: str = "ingested"
    per_shard: int = 64
    min_frames: int = 8  # a video with fewer frames is skipped (counted), never repeated up to it
    allow_extra_keys: bool = False  # keep unknown record keys under "extra" instead of failing


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_captions(path: str | Path) -> list[dict[str, str]]:
    """Rows ``{"video", "caption"}`` of a CSV (header ``video,caption``) or JSONL caption file."""
    path = Path(path)
    text = _read_text(path)
    rows: list[dict[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected an object with keys video, caption")
            _check_keys(row, CAPTION_KEYS, f"{path}:{i}")
            rows.append(row)
    elif path.suffix.lower() == ".csv":
        rows = _read_csv(path, text)
    else:
        raise ValueError(f"{path}: captions must be .csv or .jsonl, not {path.suffix or 'no extension'}")
    return rows


def _read_csv(path: Path, text: str) -> list[dict[str, str]]:
    """Rows of a CSV caption file, read strictly: a quote that never closes, text after a closing quote or a
    row with the wrong number of columns is an error naming the line the record starts on (a quoted caption
    may span lines; a lenient reader would take the rest of the file as the caption of an unclosed one)."""
    reader = csv.reader(io.StringIO(text), strict=True)
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # the line this record starts on
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise ValueError(f"{path}:{start}: unterminated quote (a field opened with \" on this line "
                                 "never closes)") from None
            raise ValueError(f"{path}:{start}: malformed CSV ({e})") from None
        if not row:
            continue
        if header is None:
            header = row
            _check_keys(dict.fromkeys(header), CAPTION_KEYS, f"{path}: header")
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{start}: expected {len(header)} columns ({', '.join(header)})")
        rows.append(dict(zip(header, row, strict=True)))
    if header is None:
        _check_keys({}, CAPTION_KEYS, f"{path}: header")
    return rows


def _check_keys(row: dict, allowed: set[str], where: str, required: set[str] | None = None,
                allow_extra: bool = False) -> None:
    required = allowed if required is None else required
    unknown = sorted(set(row) - allowed)
    if unknown and not allow_extra:
        raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(allowed)}")
    missing = sorted(required - set(row))
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")


def read_llava(path: str | Path, allow_extra_keys: bool = False) -> list[dict[str, Any]]:
    """Records of a LLaVA-style JSON list, checked for structure (errors name the file and record)."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    for i, rec in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object")
        _check_keys(rec, LLAVA_KEYS, where, required={"conversations"}, allow_extra=allow_extra_keys)
        conv = rec["conversations"]
        if not isinstance(conv, list) or not conv or not all(
                isinstance(t, dict) and set(t) >= {"from", "value"} and isinstance(t["value"], str) for t in conv):
            raise ValueError(f"{where}: conversations must be a non-empty list of {{'from', 'value'}} turns")
    return data


# ------------------------------------------------------------------------------------------- samples
def probe_video(path: Path, min_frames: int) -> str | None:
    """None if the video is usable, else the skip reason."""
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "empty video"
    try:
        n = num_frames_of(path)
    except VideoError:
        return "corrupt video"
    if n < min_frames:
        return f"shorter than {min_frames} frames"
    return None


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".") or "bin"


def _caption_sample(cfg: IngestConfig, root: Path, i: int, row: dict) -> tuple[dict | None, str | None]:
    if not str(row.get("caption", "")).strip():
        return None, "empty caption"
    vpath = root / row["video"]
    reason = probe_video(vpath, cfg.min_frames)
    if reason:
        return None, reason
    key = f"{cfg.name}-{i:08d}"
    ext = _ext(vpath)
    rec = {"id": key, "set": cfg.name, "kind": "video_caption", "source": str(row["video"]),
           "conversations": [{"from": "human", "value": "<video>\nDescribe the video."},
                             {"from": "gpt", "value": row["caption"].strip()}],
           "media": [{"ext": ext, "type": "video"}]}
    return {"__key__": key, "json": rec, ext: vpath.read_bytes()}, None


def _llava_sample(cfg: IngestConfig, root: Path, i: int, rec: dict) -> tuple[dict | None, str | None]:
    key = f"{cfg.name}-{i:08d}"
    media_paths: list[tuple[str, Path]] = []
    if "video" in rec:
        media_paths.append(("video", root / rec["video"]))
    imgs = rec.get("image", [])
    for p in [imgs] if isinstance(imgs, str) else imgs:
        media_paths.append(("image", root / p))
    conv = [dict(t) for t in rec["conversations"]]
    n_ph = sum(t["value"].count("<video>") + t["value"].count("<image>") for t in conv)
    if n_ph == 0 and media_paths:  # LLaVA convention: the media go before the first question
        conv[0]["value"] = "".join(f"<{k}>\n" for k, _ in media_paths) + conv[0]["value"]
    elif n_ph != len(media_paths):
        return None, "placeholders do not match the media"
    sample: dict[str, Any] = {"__key__": key}
    media = []
    for j, (kind, path) in enumerate(media_paths):
        if kind == "video":
            reason = probe_video(path, cfg.min_frames)
            if reason:
                return None, reason
        elif not path.is_file():
            return None, "missing file"
        ext = _ext(path) if len(media_paths) == 1 else f"{j}.{_ext(path)}"
        sample[ext] = path.read_bytes()
        media.append({"ext": ext, "type": kind})
    out = {"id": key, "source_id": rec.get("id"), "set": cfg.name,
           "kind": "llava_video" if "video" in rec else ("llava_image" if media else "llava_text"),
           "conversations": conv, "media": media}
    extra = {k: v for k, v in rec.items() if k not in LLAVA_KEYS}
    if extra:
        out["extra"] = extra
    sample["json"] = out
    return sample, None


def _make_shard(cfg: IngestConfig, root: str, entries: list[dict], kind: str, k: int):
    samples, skipped = [], {}
    make = _caption_sample if kind == "captions" else _llava_sample
    for i in range(k * cfg.per_shard, min(len(entries), (k + 1) * cfg.per_shard)):
        s, reason = make(cfg, Path(root), i, entries[i])
        if s is None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            samples.append(s)
    return samples, skipped


def ingest(out_dir: str | Path, cfg: IngestConfig, videos: str | Path | None = None,
           captions: str | Path | None = None, llava: str | Path | None = None,
           media_root: str | Path | None = None, workers: int = 1) -> dict[str, Any]:
    """Ingest (a) ``videos`` + ``captions`` or (b) ``llava`` into ``out_dir/<cfg.name>/``; returns the manifest."""
    if (llava is None) == (captions is None):
        raise ValueError("give either captions (with videos) or llava")
    if captions is not None:
        if videos is None or not Path(videos).is_dir():
            raise FileNotFoundError(f"{videos}: videos folder not found")
        entries, kind, root, index = read_captions(captions), "captions", Path(videos), Path(captions)
    else:
        entries, kind = read_llava(llava, cfg.allow_extra_keys), "llava"
        root, index = Path(media_root) if media_root else Path(llava).parent, Path(llava)
    if not entries:
        raise ValueError(f"{index}: no entries")
    config = {"ingest": kind, "index": str(index), "index_sha256": hashlib.sha256(index.read_bytes()).hexdigest(),
              "root": str(root), "min_frames": cfg.min_frames, "per_shard": cfg.per_shard,
              "allow_extra_keys": cfg.allow_extra_keys}
    n_shards = -(-len(entries) // cfg.per_shard)
    make = functools.partial(_make_shard, cfg, str(root), entries, kind)
    return build_set(Path(out_dir) / cfg.name, cfg.name, n_shards, make, config, seed=0, workers=workers)


def add_parser(sub) -> None:
    p = sub.add_parser("ingest", help="turn your videos + captions, or LLaVA-style JSON, into shards")
    p.add_argument("--out", required=True, help="output root; the set goes to OUT/NAME")
    p.add_argument("--name", default="ingested")
    p.add_argument("--videos", help="(a) folder of videos")
    p.add_argument("--captions", help="(a) captions .csv (video,caption) or .jsonl")
    p.add_argument("--llava", help="(b) LLaVA-style JSON list of records")
    p.add_argument("--media-root", help="(b) folder the records' paths are relative to")
    p.add_argument("--min-frames", type=int, default=8, help="shorter videos are counted skips (default 8)")
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--allow-extra-keys", action="store_true")


def run_cli(args) -> int:
    cfg = IngestConfig(name=args.name, per_shard=args.per_shard, min_frames=args.min_frames,
                       allow_extra_keys=args.allow_extra_keys)
    try:
        m = ingest(args.out, cfg, videos=args.videos, captions=args.captions, llava=args.llava,
                   media_root=args.media_root, workers=args.workers)
    except (ValueError, FileNotFoundError) as e:
        print(f"longvila data ingest: {e}", file=sys.stderr)
        return 2
    reasons = ", ".join(f"{r}: {n}" for r, n in m["skipped"].items())
    print(f"{m['set']}: {m['num_samples']} samples in {m['num_shards']} shards -> {Path(args.out) / m['set']}")
    print(f"skipped {sum(m['skipped'].values())}" + (f": {reasons}" if reasons else ""))
    return 0
