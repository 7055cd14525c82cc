"""Training logs of a stage: JSONL step metrics, TensorBoard scalars, the loss-curve PNG, the summary.

Design choices:
- The JSONL file is the source of truth (one record per logged step); TensorBoard and the PNG are views
  of it. On resume the records after the checkpoint's step are dropped (and TensorBoard purges them), so a
  resumed run's log reads as one uninterrupted run.
- Only rank 0 writes logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longvila.utils import atomic_write_text, save_figure


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The step records of a metrics.jsonl file (a torn last line from a kill is ignored)."""
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


class MetricsLog:
    """Append-only JSONL + TensorBoard for one stage run, resumable at a step."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.records = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            self.tb.close()


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss per step (and its running mean), with curriculum phase changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    k = max(1, len(loss) // 20)
    if len(loss) >= k:
        mean = [sum(loss[max(0, i - k + 1): i + 1]) / len(loss[max(0, i - k + 1): i + 1]) for i in range(len(loss))]
        ax.plot(steps, mean, lw=1.6, label=f"running mean ({k})")
    prev = None
    for r in records:
        if "frames" in r and prev is not None and r["frames"] != prev:
            ax.axvline(r["step"], color="grey", lw=0.6, ls=":")
            ax.text(r["step"], max(loss), f"{r['frames']}f", fontsize=7, rotation=90, va="top")
        prev = r.get("frames")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def _first_last(loss: list[float]) -> tuple[float | None, float | None]:
    k = max(1, len(loss) // 10)
    return (sum(loss[:k]) / k, sum(loss[-k:]) / k) if loss else (None, None)


def phase_losses(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First/last loss (means of the first and last 10% of steps) of each curriculum phase.

    Across a frame-count curriculum the stage's loss is not comparable from phase to phase (a 1,500-frame
    video question is harder than a 32-frame one), so whether training helps is read within each phase."""
    phases: list[dict[str, Any]] = []
    for r in records:
        key = (r.get("frames"), r.get("batch"))
        if not phases or phases[-1]["key"] != key:
            phases.append({"key": key, "loss": []})
        phases[-1]["loss"].append(r["loss"])
    out = []
    for p in phases:
        first, last = _first_last(p["loss"])
        out.append({"frames": p["key"][0], "batch": p["key"][1], "steps": len(p["loss"]),
                    "loss_first": first, "loss_last": last})
    return out


def summarize(records: list[dict[str, Any]], seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    """steps, tokens, time, first/last loss (means of the first and last 10% of steps), and per phase."""
    loss = [r["loss"] for r in records]
    first, last = _first_last(loss)
    return {
        "phases": phase_losses(records),
        "steps": records[-1]["step"] if records else 0,
        "tokens": int(sum(r.get("tokens", 0) for r in records)),
        "seconds": round(seconds, 1),
        "loss_first": first,
        "loss_last": last,
        "loss_first_step": loss[0] if loss else None,
        "loss_last_step": loss[-1] if loss else None,
        **extra,
    }
