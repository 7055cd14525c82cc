"""Regenerate the fixture result files in tests/leaderboards/fixtures/results/ (run by hand, then commit).

The numbers are invented test data in the shape each benchmark writes; commit, machine and date are fixed
afterwards so that the golden leaderboard does not depend on when or where this ran.
Usage: .venv/bin/python tests/leaderboards/make_fixtures.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longvila.leaderboards.results import write_result  # noqa: E402

OUT = Path(__file__).resolve().parent / "fixtures" / "results"
FIXED = {"commit": "abc1234", "date": "2026-11-20T12:00:00Z",
         "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "python": "3.11", "torch": "2.14.1"}}


def _fig(path, draw):
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=60)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT.parent / "_plots"
    tmp.mkdir(exist_ok=True)
    frames, depths = [300, 600, 900], [0.0, 0.5, 1.0]
    grid = np.array([[1.0, 1.0, 0.9], [1.0, 0.9, 0.8], [1.0, 0.8, 0.7]])  # depth x frames
    heat = _fig(tmp / "heat.png", lambda ax: ax.imshow(grid, vmin=0, vmax=1, cmap="viridis"))
    write_result(
        "needle-900", "needle",
        {"accuracy": float(grid.mean()), "control": 0.1, **{f"acc@{f}": float(grid[:, i].mean())
                                                            for i, f in enumerate(frames)}},
        details={"frames": frames, "depths": depths, "grid": grid.tolist()},
        config={"model": "tiny-qwen2-128", "frames": 900, "needles": 10}, seed=0,
        command="make needle FRAMES=900", plots={"heatmap": heat}, results_dir=OUT,
    )
    sweep = {8: 0.31, 16: 0.375, 32: 0.5}
    curve = _fig(tmp / "scale.png", lambda ax: ax.plot(list(sweep), list(sweep.values()), "o-"))
    write_result(
        "videomme-sweep", "videomme",
        {"accuracy": 0.5, "acc_long": 0.45, "acc_short": 0.6, "blind": 0.26, "chance": 0.25,
         **{f"acc@{n}": a for n, a in sweep.items()}, **{f"acc_long@{n}": a - 0.05 for n, a in sweep.items()}},
        details={"questions": 120}, config={"model": "tiny-qwen2-128", "frames": 32}, seed=1,
        command="make videomme", plots={"frame_scaling": curve}, results_dir=OUT,
    )
    loss = [2.3, 1.7, 1.2, 0.9]
    lc = _fig(tmp / "loss.png", lambda ax: ax.plot(loss))
    write_result(
        "training-stage1", "training",
        {"steps": 200, "tokens": 1_234_567, "time_s": 61.5, "loss_first": loss[0], "loss_last": loss[-1],
         "qa_accuracy": 0.875},
        details={"loss": loss}, config={"model": "tiny-qwen2-128", "stage": 1, "lr": 0.001}, seed=0,
        command="longvila train all --stage 1", plots={"loss": lc}, results_dir=OUT,
    )
    write_result(
        "sp-bench-16k", "sp_bench",
        {"time_mmsp_s": 1.25, "time_ring_s": 2.5, "speedup_mmsp_vs_ring": 2.0, "tokens": 16384},
        config={"layout": "ulysses2xring1", "world": 2}, command="make bench-sp", results_dir=OUT,
    )
    write_result(
        "data-bench", "data_bench",
        {"decode_fps_decord": 812.5, "decode_fps_pyav": 640.25, "build_videos_per_s": 3.5},
        command="make bench-data", results_dir=OUT,
    )
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    for p in OUT.glob("*.json"):
        obj = json.loads(p.read_text())
        obj.update(FIXED)
        p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
