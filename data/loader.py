"""Training batches from the shards: decode, sample frames, tokenise, mask, pack by length.

Pipeline (``webdataset.DataPipeline``, one copy per DataLoader worker):
shard list (verified against the manifests) -> split by worker -> tar -> samples -> optional shuffle
buffer -> ``encode_sample`` (decode mp4 with decord / PyAV fallback and sample ``num_frames`` uniformly,
decode jpg stills, ``LongVILAProcessor.preprocess_frames`` and ``encode_conversation``) -> ``pack``.

Design choices:
- Packing is greedy in arrival order: samples go into the current row until the next would pass
  ``max_tokens``; a full row is emitted, and ``rows`` rows make a batch, right-padded to the longest row.
  ``position_ids`` restart at 0 at every sample start (the attention derives sample boundaries from them),
  and padding gets its own restart so it never joins a sample. Labels are -100 on padding.
- Nothing is dropped silently: a sample that cannot be used (longer than ``max_tokens``, a video with
  fewer frames than asked, an undecodable video) is skipped with a warning naming it, and counted in the
  next batch's ``num_skipped`` (per worker) and in ``Loader.skipped`` when iterated in-process.
- Batch (dict): ``input_ids``, ``labels``, ``position_ids``, ``attention_mask`` (B, L) long;
  ``pixel_values`` (N, 3, S, S) float (all frames of the batch, placeholder order); ``num_frames`` (P,)
  long (one per placeholder); ``sample_ids`` list[list[str]] per row; ``num_skipped`` int.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from longvila.data.shards import shard_paths
from longvila.data.video_io import VideoError, read_frames

IGNORE_INDEX = -100


@dataclass
class LoaderConfig:
    max_tokens: int = 2048  # tokens per packed row
    rows: int = 1  # packed rows per batch
    num_frames: int | None = 8  # frames sampled per video; None = every frame (up to max_frames)
    max_frames: int = 2048
    shuffle_buffer: int = 0  # 0 = file order
    shuffle_shards: bool = False
    seed: int = 0
    epochs: int = 1
    kinds: tuple[str, ...] | None = None  # keep only these json["kind"] values (e.g. "short_video_qa")


class SkipSample(Exception):
    """A sample the loader cannot use; the message says which and why."""


def _decode_media(sample: dict[str, Any], cfg: LoaderConfig) -> tuple[list[np.ndarray], list[int]]:
    rec = sample["json"]
    frames, counts = [], []
    for med in rec.get("media", []):
        data = sample.get(med["ext"])
        if data is None:
            raise SkipSample(f"{rec.get('id')}: media {med['ext']!r} missing from the sample")
        if med["type"] == "video":
            try:
                f = read_frames(data, cfg.num_frames)
            except VideoError as e:
                raise SkipSample(f"{rec.get('id')}: {e}") from None
            f = f[np.round(np.linspace(0, len(f) - 1, cfg.max_frames)).astype(int)] if len(f) > cfg.max_frames else f
        else:
            from PIL import Image

            f = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
        frames.append(f)
        counts.append(len(f))
    return frames, counts


def encode_sample(sample: dict[str, Any], processor, cfg: LoaderConfig) -> dict[str, Any]:
    """One shard sample -> ``{"id", "input_ids" (L,), "labels" (L,), "pixel_values" (n, 3, S, S), "num_frames"}``."""
    rec = sample["json"]
    frames, counts = _decode_media(sample, cfg)
    enc = processor.encode_conversation(rec["conversations"], counts)
    if len(enc["input_ids"]) > cfg.max_tokens:
        raise SkipSample(f"{rec.get('id')}: {len(enc['input_ids'])} tokens, longer than max_tokens {cfg.max_tokens}")
    pix = processor.preprocess_frames(np.concatenate(frames)) if frames else None
    return {"id": rec["id"], "input_ids": enc["input_ids"], "labels": enc["labels"], "pixel_values": pix,
            "num_frames": counts}


def collate_rows(rows: list[list[dict[str, Any]]], pad_id: int, num_skipped: int = 0) -> dict[str, Any]:
    """Packed rows (lists of encoded samples) -> a padded batch (see module docstring)."""
    L = max(sum(len(s["input_ids"]) for s in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    pix, nf, sids = [], [], []
    for b, row in enumerate(rows):
        o = 0
        for s in row:
            n = len(s["input_ids"])
            ids[b, o:o + n] = s["input_ids"]
            labels[b, o:o + n] = s["labels"]
            pos[b, o:o + n] = torch.arange(n)
            mask[b, o:o + n] = 1
            o += n
            if s["pixel_values"] is not None:
                pix.append(s["pixel_values"])
            nf += s["num_frames"]
        pos[b, o:] = torch.arange(L - o)
        sids.append([s["id"] for s in row])
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask,
            "pixel_values": torch.cat(pix) if pix else None, "num_frames": torch.tensor(nf, dtype=torch.long),
            "sample_ids": sids, "num_skipped": num_skipped}


class Loader(torch.utils.data.IterableDataset):
    """Packed batches from one or more set folders; use with ``torch.utils.data.DataLoader(batch_size=None)``."""

    def __init__(self, set_dirs: Sequence[str | os.PathLike], processor, cfg: LoaderConfig | None = None,
                 rank: int = 0, world_size: int = 1):
        self.cfg = cfg or LoaderConfig()
        self.processor = processor
        urls = [u for d in set_dirs for u in shard_paths(d, verify=True)]
        if not urls:
            raise ValueError(f"no shards in {list(map(str, set_dirs))}")
        self.urls = urls[rank::world_size] if world_size > 1 else urls
        if not self.urls:
            raise ValueError(f"rank {rank} of {world_size} gets no shard (only {len(urls)} shards)")
        self.pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.skipped: Counter = Counter()

    def _samples(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        stages = [wds.SimpleShardList(self.urls)]
        if self.cfg.shuffle_shards:
            stages.append(wds.shuffle(len(self.urls), seed=self.cfg.seed))
        stages += [wds.split_by_worker, wds.tarfile_to_samples()]
        if self.cfg.shuffle_buffer:
            stages.append(wds.shuffle(self.cfg.shuffle_buffer, seed=self.cfg.seed))
        for _ in range(self.cfg.epochs):
            yield from wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import json

        row: list[dict[str, Any]] = []
        rows: list[list[dict[str, Any]]] = []
        used = skipped = 0
        for raw in self._samples():
            raw = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
            raw["json"] = json.loads(raw["json"])
            if self.cfg.kinds is not None and raw["json"].get("kind") not in self.cfg.kinds:
                continue
            try:
                s = encode_sample(raw, self.processor, self.cfg)
            except SkipSample as e:
                warnings.warn(f"skipped sample {e}", stacklevel=2)
                self.skipped[str(e).split(": ", 1)[-1].split(" (")[0][:60]] += 1
                skipped += 1
                continue
            used += 1
            if row and sum(len(x["input_ids"]) for x in row) + len(s["input_ids"]) > self.cfg.max_tokens:
                rows.append(row)
                row = []
                if len(rows) == self.cfg.rows:
                    yield collate_rows(rows, self.pad_id, skipped)
                    rows, skipped = [], 0
            row.append(s)
        if row:
            rows.append(row)
        if rows:
            yield collate_rows(rows, self.pad_id, skipped)
