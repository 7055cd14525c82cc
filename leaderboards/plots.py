"""Plots the leaderboard draws itself from the numbers in result files (beside the plots results carry).

- Frame scaling: every result's ``acc@<frames>`` metrics as one line per result, with the quoted anchors
  that have a ``value`` and ``frames`` drawn as separate, labelled star markers (quoted, not measured).
- Loss curves: every ``training`` result's ``details["loss"]`` (a list of losses, a list of
  ``[step, loss]`` pairs, or ``{"step": [...], "loss": [...]}``) on one chart.

Design choices: matplotlib Agg, small figures (about 30 KB), no timestamps in the PNG metadata, so a
rebuild from the same results writes identical bytes and commits stay quiet.
"""

from __future__ import annotations

import io
import math
from typing import Any

from longvila.leaderboards.results import Result

FIGSIZE = (5.0, 3.0)
DPI = 80


def loss_series(details: Any) -> tuple[list[float], list[float]] | None:
    """(steps, losses) from a training result's details, or None if it has no usable curve."""
    raw = details.get("loss") if isinstance(details, dict) else None
    if isinstance(raw, dict):
        steps, loss = raw.get("step"), raw.get("loss")
    elif isinstance(raw, list) and raw and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in raw):
        steps, loss = [x[0] for x in raw], [x[1] for x in raw]
    elif isinstance(raw, list):
        steps, loss = list(range(1, len(raw) + 1)), raw
    else:
        return None
    ok = (isinstance(steps, list) and isinstance(loss, list) and len(steps) == len(loss) >= 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in steps + loss))
    return (list(map(float, steps)), list(map(float, loss))) if ok else None


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _axes():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=FIGSIZE)


def frame_scaling_png(results: list[Result], quoted: list[dict[str, Any]], metric: str = "acc") -> bytes | None:
    """A PNG of ``<metric>@N`` against N for every result, with quoted anchors as labelled stars."""
    series = []
    for r in results:
        pts = sorted((int(k.split("@", 1)[1]), v) for k, v in r.metrics.items()
                     if k.startswith(f"{metric}@") and k.split("@", 1)[1].isdigit())
        if pts:
            series.append((r.name, pts))
    anchors = [q for q in quoted if isinstance(q.get("value"), (int, float)) and isinstance(q.get("frames"), int)]
    if not series:
        return None
    fig, ax = _axes()
    for name, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=f"{name} (measured)")
    for q, marker in zip(anchors, "*PXDs^v", strict=False):
        ax.plot([q["frames"]], [q["value"]], marker, ms=10, mfc="none", color="tab:red",
                label=f"quoted: {q.get('model') or ''} {q['figure']} @ {q['frames']:,}".replace("  ", " "))
    ax.set_xscale("log")
    ticks = sorted({p[0] for _, pts in series for p in pts} | {q["frames"] for q in anchors})
    if len(ticks) > 8:  # keep labels readable: first, last and evenly spaced ones between
        ticks = [ticks[round(i * (len(ticks) - 1) / 7)] for i in range(8)]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frames")
    ax.set_ylabel(f"{metric} (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    return _png(fig)


def loss_png(results: list[Result]) -> bytes | None:
    """A PNG of every training result's loss curve (None when no result carries one)."""
    curves = [(r.name, s) for r in results if (s := loss_series(r.details))]
    if not curves:
        return None
    fig, ax = _axes()
    for name, (steps, loss) in curves:
        ax.plot(steps, loss, lw=1, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _png(fig)
