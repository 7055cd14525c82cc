"""Contact sheets of the world for people to look at: frames in a grid, each cell titled with its events.

``longvila data preview --out preview.png [--seed S --frames N --split eval --code 123]`` renders a video
(or, with ``--set DIR``, the first samples of a built set) and writes a PNG (matplotlib, Agg).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from longvila.utils import save_figure


def contact_sheet(frames: np.ndarray, events: list[dict], path: str | Path, cols: int = 8,
                  title: str = "") -> Path:
    """Write frames (N, H, W, 3) uint8 as a grid; each frame with an event is labelled with its kinds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frames)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False)
    by_frame: dict[int, list[str]] = {}
    for e in events:
        label = e["kind"] + (f" {e['code']}" if e["kind"] == "code" else "")
        by_frame.setdefault(int(e["frame"]), []).append(label)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(frames[i], interpolation="nearest")
            ax.set_title(f"{i}: " + ",".join(sorted(set(by_frame.get(i, []))))[:22], fontsize=5)
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def add_parser(sub) -> None:
    p = sub.add_parser("preview", help="PNG contact sheet of a world video with its events")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--split", default="train", choices=["train", "eval"])
    p.add_argument("--code", default=None, help="show this needle code once")


def run_cli(args) -> int:
    from longvila.data import questions, world

    try:
        v = world.make_video(args.seed, args.frames, args.split, code=args.code)
    except ValueError as e:
        print(f"longvila data preview: {e}", file=sys.stderr)
        return 2
    evs = [e.to_dict() for e in v.events]
    path = contact_sheet(v.frames, evs, args.out, title=f"seed {args.seed} ({args.split}), {args.frames} frames")
    print(questions.caption_clip(v.events))
    print(f"wrote {path}")
    return 0
