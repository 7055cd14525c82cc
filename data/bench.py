"""``longvila data bench``: decode throughput of decord against PyAV on the same shard, and build throughput.

Everything is measured in one run on this machine and reported as rates and ratios (no absolute claims
carried over from elsewhere). The result goes to ``OUT/data-bench.json`` through
``longvila.leaderboards.results.write_result`` (``--publish`` also writes ``leaderboards/results/``).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from longvila.utils import save_figure


def _decode_rate(videos: list[bytes], backend: str, num_frames: int | None) -> float:
    from longvila.data.video_io import read_frames

    t0 = time.perf_counter()
    n = sum(len(read_frames(v, num_frames, backend=backend)) for v in videos)
    return n / (time.perf_counter() - t0)


def run(out: str | Path, videos: int = 48, long_videos: int = 4, workers: int = 2, repeats: int = 3,
        long_frames: int = 600) -> dict:
    """Build a short-video and a long-video set under ``out`` (timed), then time decoding their shards."""
    from longvila.data import sets, shards
    from longvila.data.video_io import read_frames
    from longvila.utils import machine_info

    out = Path(out)
    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard, cfg.short_sft.image_frac = videos, max(1, videos // 4), 0.0
    cfg.long_sft.num_samples, cfg.long_sft.per_shard = long_videos, max(1, long_videos // 2)
    cfg.long_sft.min_frames = cfg.long_sft.max_frames = long_frames
    sets.warm_up(False)
    warm = dataclasses.replace(cfg, short_sft=dataclasses.replace(cfg.short_sft, num_samples=2, per_shard=1))
    sets.build(warm, out / "warm", sets=["short_sft"], workers=1)  # first-call costs in this process, untimed
    shutil.rmtree(out / "warm")
    metrics, details = {}, {}
    for name, n in (("short_sft", videos), ("long_sft", long_videos)):
        for w in (1, workers):
            d = out / f"build-w{w}"
            t0 = time.perf_counter()
            m = sets.build(cfg, d, sets=[name], workers=w)[name]
            dt = time.perf_counter() - t0
            metrics[f"build_{name}_videos_per_s_w{w}"] = n / dt
            assert m["num_samples"] == n
            shutil.rmtree(d)  # the next timing builds from scratch
    metrics["build_parallel_speedup_short"] = metrics[f"build_short_sft_videos_per_s_w{workers}"] / \
        metrics["build_short_sft_videos_per_s_w1"]
    # decoding: the same mp4 bytes through both backends, best of `repeats`
    sets.build(cfg, out / "decode", sets=["short_sft", "long_sft"], workers=workers)
    for name in ("short_sft", "long_sft"):
        vids = [s["mp4"] for s in shards.iter_samples(out / "decode" / name)]
        details[f"{name}_frames"] = [len(read_frames(v, backend="decord")) for v in vids]
        for nf, tag in ((None, "all"), (8, "8")):
            for backend in ("decord", "pyav"):
                rate = max(_decode_rate(vids, backend, nf) for _ in range(repeats))
                metrics[f"decode_{name}_{tag}_{backend}_frames_per_s"] = rate
            metrics[f"decode_{name}_{tag}_decord_over_pyav"] = (metrics[f"decode_{name}_{tag}_decord_frames_per_s"]
                                                               / metrics[f"decode_{name}_{tag}_pyav_frames_per_s"])
    config = {"videos": videos, "long_videos": long_videos, "long_frames": long_frames, "workers": workers, "repeats": repeats,
              "short_sft": dataclasses.asdict(cfg.short_sft), "long_sft": dataclasses.asdict(cfg.long_sft)}
    return {"metrics": metrics, "details": details, "config": config, "machine": machine_info()}


def _plot(m: dict, path: Path) -> Path:
    """Bar chart: decode frames/s, decord vs PyAV, per set and sampling (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(s, t) for s in ("short_sft", "long_sft") for t in ("all", "8")]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for j, backend in enumerate(("decord", "pyav")):
        ax.bar(x + (j - 0.5) * 0.38, [m[f"decode_{s}_{t}_{backend}_frames_per_s"] for s, t in groups], 0.38,
               label=backend)
    ax.set_xticks(x, [f"{s}\n{'all frames' if t == 'all' else '8 sampled'}" for s, t in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("decoded frames / s")
    ax.set_title("mp4 decode throughput, same shards, one run", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="decode (decord vs PyAV) and build throughput, measured in one run")
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--long-videos", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--publish", action="store_true", help="also write leaderboards/results/data-bench.json")


def run_cli(args) -> int:
    res = run(args.out, videos=args.videos, long_videos=args.long_videos, workers=args.workers)
    m = res["metrics"]
    print(f"machine: {res['machine']['cpu']} ({res['machine']['cores']} cores)")
    for k in sorted(m):
        print(f"  {k:<48} {m[k]:10.2f}")
    cmd = "longvila data " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "longvila data bench"
    try:
        from longvila.leaderboards.results import write_result
    except ImportError:  # pragma: no cover - leaderboards part missing
        from longvila.utils import atomic_write_json, git_commit, utc_now

        path = Path(args.out) / "data-bench.json"
        atomic_write_json(path, {"benchmark": "data_bench", **res, "date": utc_now(), "commit": git_commit(),
                                 "command": cmd})
        print(f"wrote {path}")
        return 0
    plot = _plot(m, Path(args.out) / "decode.png")
    kw = dict(details=res["details"], config=res["config"], seed=0, command=cmd, plots={"decode": plot})
    print(f"wrote {write_result(Path(args.out) / 'data-bench.json', 'data_bench', m, **kw)}")
    if args.publish:
        print(f"wrote {write_result('data-bench', 'data_bench', m, **kw)}")
    return 0
