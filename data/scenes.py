"""Hard scene cuts in a video by frame difference: where to cut a long video into clips at ``--scenes``.

The detector (documented here because it is ours: PySceneDetect needs the full ``opencv-python`` build, which
collides with the ``opencv-python-headless`` that lmms-eval installs, both owning the ``cv2`` package):

1. Every frame is decoded at a small size (``THUMB``, 32x24: decord resizes while decoding) and compared with
   the previous one: ``d[t]`` = mean absolute RGB difference of frames t-1 and t, as a fraction of 255.
2. A cut is placed at frame t when ``d[t] >= threshold`` (default 0.1: a tenth of the full range, on average
   over every pixel) and ``d[t] >= ratio * (median of d over the ``window`` frames on each side of t, t
   left out) + 0.01`` (default ratio 3): the change must stand out from the motion around it, so a fast
   pan or a flickering scene, whose every frame differs, is not cut at every frame (the adaptive rule of
   PySceneDetect's AdaptiveDetector, on a plain RGB difference).
3. Scenes shorter than ``min_frames`` are not made: a cut closer than that to the previous one (or to the
   start) is dropped.

Measured on the ffmpeg test sources (64x48, 10 fps): within a scene ``d`` stays below 0.015 (testsrc's
moving counter, mandelbrot's zoom); at a hard cut between two of them it is about 0.4. Fades and dissolves
are gradual, so they are not cut (no single frame stands out): a known limit of any frame-difference detector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from longvila.data.video_io import iter_frames

THUMB = (24, 32)  # (H, W) the frames are compared at


@dataclass
class SceneConfig:
    threshold: float = 0.1  # mean absolute RGB difference (fraction of 255) a cut must reach
    ratio: float = 3.0  # ... and this many times the median difference around it
    window: int = 4  # frames on each side that make the "around it"
    min_frames: int = 5  # no scene shorter than this many frames


def frame_differences(src: str | os.PathLike) -> np.ndarray:
    """d (N,) float: d[0] = 0, d[t] = mean |frame t - frame t-1| / 255 over the thumbnails of a video's N frames."""
    prev, out = None, [np.zeros(1)]
    for chunk in iter_frames(src, size=THUMB):
        x = chunk.astype(np.float32)
        if prev is not None:
            x = np.concatenate([prev[None], x])
        out.append(np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) / 255.0)
        prev = x[-1]
    return np.concatenate(out)


def cuts_from_differences(d: np.ndarray, cfg: SceneConfig | None = None) -> list[int]:
    """Frame indices where a new scene starts (never 0), from the differences ``d`` (N,)."""
    cfg = cfg or SceneConfig()
    if cfg.threshold <= 0 or cfg.ratio < 1 or cfg.window < 1 or cfg.min_frames < 1:
        raise ValueError(f"scene detector: need threshold > 0, ratio >= 1, window >= 1, min_frames >= 1; got {cfg}")
    cuts, last = [], 0
    for t in np.flatnonzero(d >= cfg.threshold):
        around = np.concatenate([d[max(1, t - cfg.window):t], d[t + 1:t + 1 + cfg.window]])
        base = float(np.median(around)) if around.size else 0.0
        if d[t] >= cfg.ratio * base + 0.01 and t - last >= cfg.min_frames and len(d) - t >= cfg.min_frames:
            cuts.append(int(t))
            last = int(t)
    return cuts


def detect_cuts(src: str | os.PathLike, cfg: SceneConfig | None = None) -> list[int]:
    """Frame indices where a new scene starts in the video ``src`` (see the module docstring)."""
    return cuts_from_differences(frame_differences(src), cfg)


def scene_bounds(num_frames: int, cuts: list[int], max_frames: int | None = None) -> list[tuple[int, int]]:
    """Clips [a, b) between the cuts, each scene split further into pieces of at most ``max_frames``."""
    edges = [0, *[c for c in cuts if 0 < c < num_frames], num_frames]
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        step = max_frames or (b - a)
        out += [(s, min(b, s + step)) for s in range(a, b, step)]
    return out
