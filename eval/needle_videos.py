"""The needle grid as videos on disk, so that any harness (lmms-eval with its own adapters) can run it.

``build(cfg)`` writes the same grid ``longvila eval needle`` scores (same haystack, frame counts, depths,
codes and cards, for the same seed and style), one video per question, in this layout:

    <root>/needle.json        one row per video: id, kind (grid | control | read), frames (the cell's frame
                              count n), haystack_frames (n; for the reading reference reference_frames),
                              depth (grid: the needle's depth; read: 0.5; control: null), needle_frame (the
                              needle's index, null for the control), num_frames (frames in the video:
                              haystack_frames + 1, or haystack_frames for the control), question, answer, video
                              (path relative to the root)
    <root>/videos/<id>.mp4    H.264 (``data.video_io.encode_mp4``), exactly num_frames frames at --size pixels
    <root>/.build.json        the build configuration (the same configuration is not built twice)

Kinds are the grid's cells: the needle card at a depth among n haystack frames; the control (the same
question of the haystack without a needle: any hit is a guess); the reading reference (the card at mid-depth
in a short haystack, ``reference_frames``). The lmms-eval task ``longvila_needle`` (eval/tasks/) reads this
folder from ``$LONGVILA_NEEDLE_ROOT`` and reports accuracy overall, per frame count (``acc@N``), per depth
(``acc_d0.50``), the control and the reading reference.

NOTE: every frame of a video is part of the test, so the harness must read all of them: set the adapter's
frame count to at least the longest video's ``num_frames`` (e.g. llava_hf ``max_frames_num``). Uniform
sampling of at least as many frames as a video holds takes every frame (repeating some).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from longvila.eval import needle, prompts
from longvila.utils import atomic_write_json, progress, read_json

ROOT_ENV = "LONGVILA_NEEDLE_ROOT"
TABLE = "needle.json"


@dataclass
class NeedleVideosConfig:
    out: str
    frames: int = 64
    steps: int = 3
    depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    needles: int = 3
    size: int = 32  # frame side in pixels: the model's input size
    style: str = "print"
    seed: int = 0
    haystack_seed: int = 7
    controls: bool = True
    reference_frames: int = 32
    fps: float = 2.0


def build(cfg: NeedleVideosConfig) -> Path:
    """Write the layout above; returns the table path. Skipped when built with the same configuration."""
    from longvila.data.video_io import encode_mp4
    from longvila.eval.adapters import fit_frames
    from longvila.utils import atomic_write_bytes

    if cfg.size < 2 or cfg.size % 2:
        raise ValueError(f"size must be an even number of pixels >= 2 (H.264), got {cfg.size}")
    out = Path(cfg.out)
    table, record = out / TABLE, out / ".build.json"
    conf = {**asdict(cfg), "depths": list(cfg.depths)}
    if table.is_file() and record.is_file() and read_json(record) == conf:
        return table
    grid = needle.NeedleConfig(out=str(out), frames=cfg.frames, steps=cfg.steps, depths=tuple(cfg.depths),
                               needles=cfg.needles, seed=cfg.seed, style=cfg.style, haystack_seed=cfg.haystack_seed,
                               controls=cfg.controls, reference_frames=cfg.reference_frames)
    counts = needle.frame_counts(grid)
    size = (cfg.size, cfg.size)
    full = fit_frames(needle._haystack_frames(grid, cfg.frames), size)
    units = needle.work_units(grid, counts)
    rows = []
    for u in progress(units, desc="needle videos", unit="cell"):
        codes = needle.cell_codes(cfg.seed, u.frames, cfg.needles)
        cards = needle.needle_cards(grid, u.frames, codes, size)
        n_hay = min(cfg.reference_frames, cfg.frames) if u.kind == needle.READ else u.frames
        hay = full[needle.sample_indices(cfg.frames, n_hay)]
        depth = {needle.GRID: u.depth, needle.CONTROL: None, needle.READ: 0.5}[u.kind]
        for code, card in zip(codes, cards, strict=True):
            frames, where = (hay, None) if depth is None else needle.insert_needle(hay, card, depth)
            tag = f"d{depth:.2f}" if u.kind == needle.GRID else u.kind
            vid = f"f{u.frames:05d}-{tag}-{code}"
            atomic_write_bytes(out / "videos" / f"{vid}.mp4", encode_mp4(frames, fps=cfg.fps))
            rows.append({"id": vid, "kind": u.kind, "frames": u.frames, "haystack_frames": n_hay, "depth": depth,
                         "needle_frame": where,
                         "num_frames": len(frames), "question": prompts.needle_question(), "answer": code,
                         "video": f"videos/{vid}.mp4"})
    atomic_write_json(table, rows)
    atomic_write_json(record, conf)
    return table
