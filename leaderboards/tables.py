"""The leaderboard as data: sections of measured and quoted tables built from result files.

Both renderers (Markdown and HTML, in ``build``) draw from the same :class:`Section` objects, so the two
outputs cannot disagree. Design choices:
- Measured rows come only from validated result files; quoted rows come only from ``quoted.json`` and sit in
  their own table, every row labelled ``quoted`` and carrying its source. The two never share a table.
- Columns per benchmark are its headline metrics that occur in the results (:data:`HEADLINES`); metrics
  named ``<name>@<frames>`` also build a frame-scaling table; every metric is listed in full below.
- Cells keep the raw number (``value``) beside the formatted text, so the page can be checked against the
  result files exactly. Output is deterministic (sorted, no build timestamp), so a rebuild without new
  results changes nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvila.leaderboards.results import BENCHMARKS, SHOWN_WHEN_MEASURED, Result, is_fraction

DEFAULT_QUOTED = Path(__file__).resolve().parent / "quoted.json"

TITLES = {
    "needle": "Needle in a haystack",
    "videomme": "VideoMME-style frame scaling",
    "training": "Training stages",
    "sp_bench": "MM-SP attention benchmark",
    "data_bench": "Data pipeline benchmark",
    "gpu_check": "GPU check",
}
ORDER = ["needle", "videomme", "training", "sp_bench", "data_bench"]  # then the rest of BENCHMARKS
# Headline columns per benchmark: exact metric names, or regular expressions (compiled) matched in name order.
HEADLINES: dict[str, list[str | re.Pattern]] = {
    "needle": ["accuracy", "control", "acc_read", "acc_if_read", "acc_ref_reader"],
    "videomme": ["accuracy", "acc_short", "acc_medium", "acc_long", "blind", "chance", "acc_ll", "acc_ll_long"],
    "training": ["steps", "tokens", "time_s", "loss_first", "loss_last", "qa_accuracy"],
    "sp_bench": [re.compile(r"^speedup_balanced_vs_token"), re.compile(r"^speedup_.*fwdbwd$"),
                 re.compile(r"^eff_.*fwdbwd$"), re.compile(r"^speedup_")],
    "data_bench": ["decode_fps_decord", "decode_fps_pyav", "build_videos_per_s",
                   re.compile(r"_decord_over_pyav$"), re.compile(r"speedup"), re.compile(r"^build_.*videos_per_s")],
    "gpu_check": ["exactness_failures", "exactness_checks", "gpus", "stage3_max_loss_diff", "needle_accuracy",
                  re.compile(r"^tokens_per_s_")],
}
# At most this many headline columns (pattern matches are taken largest numbers first: the biggest world and
# the longest sequence); every metric is still listed under "All metrics".
MAX_HEADLINE_COLUMNS = 8
# The one metric per benchmark in the at-a-glance table (first present; else the first headline column).
SUMMARY_METRIC: dict[str, list[str]] = {
    "needle": ["accuracy"], "videomme": ["accuracy"], "training": ["qa_accuracy", "loss_last"],
    "sp_bench": ["speedup_zigzag_vs_basic_2r_16384_fwdbwd", "speedup_zigzag_vs_basic_2r_8192_fwdbwd"],
    "gpu_check": ["exactness_failures"],
}
FRAME_METRIC_RE = re.compile(r"^(?P<metric>.+)@(?P<frames>\d+)$")
QUOTED_FIELDS = ("benchmark", "claim", "figure", "value", "frames", "model", "source", "url")


@dataclass
class Cell:
    text: str
    value: float | None = None  # the raw number behind a formatted metric
    metric: str | None = None
    code: bool = False  # a command
    wrap: bool = False  # long free text (model / config) that may wrap in a narrow column
    href: str | None = None


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[Cell]]
    kind: str  # "measured" | "quoted" | "scaling" | "metrics"
    row_ids: list[str] = field(default_factory=list)


@dataclass
class Plot:
    caption: str
    asset: str  # path relative to the output folder, e.g. assets/needle-6000.heatmap.png
    src: Path | None = None  # a verified image beside its result file, or
    data: bytes | None = None  # an image the leaderboard drew itself (``plots``)


@dataclass
class Section:
    benchmark: str
    title: str
    description: str
    measured: Table | None  # None: no measured results yet
    scaling: list[Table]
    all_metrics: Table | None
    quoted: Table | None
    plots: list[Plot]
    measured_results: list[Result] = field(default_factory=list)


def fmt_metric(name: str, v: float) -> str:
    """Format one metric for a table: fractions as percentages, speed-ups as x, seconds as s."""
    if is_fraction(name):
        return f"{100 * v:.1f}%"
    if "speedup" in name or name.endswith("_ratio") or "_over_" in name:
        return f"{v:.2f}x"
    if name.endswith("_s") and not name.endswith("_per_s"):
        return f"{v:.3g} s"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"


def load_quoted(path: str | os.PathLike = DEFAULT_QUOTED) -> list[dict[str, Any]]:
    """Read the quoted anchors; every row needs a known benchmark, a claim, a figure and a source."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such quoted-anchors file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    rows = obj.get("rows") if isinstance(obj, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: field 'rows' must be a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: field 'rows[{i}]' must be an object")
        for key in ("benchmark", "claim", "figure", "source"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path}: field 'rows[{i}].{key}' must be a non-empty string")
        if row["benchmark"] not in BENCHMARKS:
            raise ValueError(f"{path}: field 'rows[{i}].benchmark' is {row['benchmark']!r}, not a known benchmark")
        for key, ok in (("value", lambda v: isinstance(v, (int, float)) and 0 <= v <= 1),
                        ("frames", lambda v: isinstance(v, int) and v > 0)):
            if row.get(key) is not None and (isinstance(row[key], bool) or not ok(row[key])):
                raise ValueError(f"{path}: field 'rows[{i}].{key}' must be {'a fraction in [0, 1]' if key == 'value' else 'a positive integer'}")
        unknown = sorted(set(row) - set(QUOTED_FIELDS))
        if unknown:
            raise ValueError(f"{path}: field 'rows[{i}].{unknown[0]}' is not a quoted-row field")
    return rows


def natural_key(name: str) -> list:
    """Sort key that orders ``acc@8`` before ``acc@16``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _headline_metrics(benchmark: str, results: list[Result]) -> list[str]:
    present = sorted({m for r in results for m in r.metrics if not FRAME_METRIC_RE.match(m)})
    cols: list[str] = []
    for spec in HEADLINES.get(benchmark, []):
        if isinstance(spec, str):
            cols += [spec] if spec in present and spec not in cols else []
        else:
            cols += [m for m in sorted(present, key=natural_key, reverse=True) if spec.search(m) and m not in cols]
    return cols or present[:4]


def _frames(r: Result) -> str:
    cfg = r.config or {}
    for v in (r.metrics.get("frames"), cfg.get("frames"), cfg.get("num_frames")):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{int(v):,}"
    counts = [int(m.group("frames")) for k in r.metrics if (m := FRAME_METRIC_RE.match(k))]
    return f"{max(counts):,}" if counts else "-"


# Config keys that say where things went, not what ran (the command has its own column).
_LOCATION_KEY = re.compile(r"^(command|out|output|cache.*)$|_(dir|file|path)$")


def _short(v: Any, width: int = 24) -> str:
    text = str(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def _model_config(r: Result) -> str:
    """The model type and the first 8 hex digits of the checkpoint hash (when the result names them), the model
    or config name, then a few scalars of the run's configuration."""
    cfg = dict(r.config or {})
    model = cfg.pop("model", None) or cfg.pop("config", None)
    ident = [str(cfg.pop("model_type", "") or ""), str(cfg.pop("model_hash", "") or "")[:8]]
    model = " ".join(x for x in (*ident, str(model) if model else "") if x)
    cfg.pop("frames", None)
    scalars = [f"{k}={_short(v)}" for k, v in sorted(cfg.items())
               if isinstance(v, (str, int, float, bool)) and not _LOCATION_KEY.search(k)]
    text = ", ".join(scalars[:5]) + (", ..." if len(scalars) > 5 else "")
    return " ".join(x for x in (f"{model}" if model else "", f"({text})" if text else "") if x) or "-"


def _machine(r: Result) -> str:
    m = r.machine
    if m.get("gpu"):
        return str(m["gpu"])
    return f"CPU x{m['cores']}" if m.get("cores") else "-"


def _measured_table(benchmark: str, results: list[Result]) -> Table:
    all_cols = _headline_metrics(benchmark, results)
    cols = all_cols[:MAX_HEADLINE_COLUMNS]
    caption = "Measured" if len(cols) == len(all_cols) else \
        f"Measured ({len(cols)} of {len(all_cols)} headline metrics; every metric under All metrics)"
    headers = ["Result", *cols, "Frames", "Model / config", "Seed", "Machine", "Date", "Commit", "Reproduce"]
    rows = []
    for r in results:
        cells = [Cell(r.name)]
        for m in cols:
            cells.append(Cell(fmt_metric(m, r.metrics[m]), r.metrics[m], m) if m in r.metrics else Cell("-"))
        cells += [
            Cell(_frames(r)), Cell(_model_config(r), wrap=True), Cell("-" if r.seed is None else str(r.seed)),
            Cell(_machine(r)), Cell(r.date[:10]), Cell(r.commit),
            Cell(r.command, code=True) if r.command else Cell("-"),
        ]
        rows.append(cells)
    return Table(caption, headers, rows, "measured", [r.name for r in results])


def _scaling_tables(results: list[Result]) -> list[Table]:
    by_metric: dict[str, set[int]] = {}
    for r in results:
        for k in r.metrics:
            if m := FRAME_METRIC_RE.match(k):
                by_metric.setdefault(m.group("metric"), set()).add(int(m.group("frames")))
    tables = []
    for metric in sorted(by_metric):
        frames = sorted(by_metric[metric])
        rows, ids = [], []
        for r in results:
            keys = [f"{metric}@{n}" for n in frames]
            if not any(k in r.metrics for k in keys):
                continue
            ids.append(r.name)
            rows.append([Cell(r.name)] + [
                Cell(fmt_metric(k, r.metrics[k]), r.metrics[k], k) if k in r.metrics else Cell("-") for k in keys
            ])
        tables.append(Table(f"Frame scaling: {metric} by number of frames", ["Result", *map(str, frames)],
                            rows, "scaling", ids))
    return tables


def _all_metrics_table(results: list[Result]) -> Table:
    rows, ids = [], []
    for r in results:
        for k in sorted(r.metrics, key=natural_key):
            rows.append([Cell(r.name), Cell(k), Cell(fmt_metric(k, r.metrics[k]), r.metrics[k], k)])
            ids.append(r.name)
    return Table("All metrics", ["Result", "Metric", "Value"], rows, "metrics", ids)


def _quoted_table(rows: list[dict[str, Any]]) -> Table:
    cells = []
    for q in rows:
        frames = q.get("frames")
        cells.append([
            Cell("quoted"), Cell(q["figure"]), Cell(q["claim"]),
            Cell(f"{int(frames):,}" if isinstance(frames, (int, float)) else "-"),
            Cell(q.get("model") or "-"), Cell(q["source"], href=q.get("url")),
        ])
    return Table("Quoted (published figures, not measured here)",
                 ["Label", "Figure", "Claim", "Frames", "Model", "Source"], cells, "quoted")


def summary_table(results: list[Result]) -> Table:
    """One row per measured result, its first headline metric: the table a reader sees first."""
    rows, ids = [], []
    for b in ORDER + [b for b in BENCHMARKS if b not in ORDER]:
        rs = sorted((r for r in results if r.benchmark == b), key=lambda r: r.name)
        rs.sort(key=lambda r: r.date, reverse=True)
        for r in rs:
            m = next((m for m in SUMMARY_METRIC.get(b, []) if m in r.metrics), _headline_metrics(b, [r])[0])
            rows.append([
                Cell(TITLES.get(b, b)), Cell(r.name), Cell(m), Cell(fmt_metric(m, r.metrics[m]), r.metrics[m], m),
                Cell(_frames(r)), Cell(_model_config(r), wrap=True), Cell(r.date[:10]), Cell(r.commit),
                Cell(r.command, code=True) if r.command else Cell("-"),
            ])
            ids.append(r.name)
    headers = ["Benchmark", "Result", "Metric", "Value", "Frames", "Model / config", "Date", "Commit", "Reproduce"]
    return Table("Measured results at a glance", headers, rows, "summary", ids)


def sections(results: list[Result], quoted: list[dict[str, Any]]) -> list[Section]:
    """Group results and quoted rows by benchmark (order :data:`ORDER`); rows newest first, then by name."""
    out = []
    for b in ORDER + [b for b in BENCHMARKS if b not in ORDER]:
        rs = sorted((r for r in results if r.benchmark == b), key=lambda r: r.name)
        rs.sort(key=lambda r: r.date, reverse=True)
        qs = [q for q in quoted if q["benchmark"] == b]
        if b in SHOWN_WHEN_MEASURED and not rs and not qs:
            continue
        plots = [Plot(f"{r.name}: {k}", f"assets/{p.name}", src=p) for r in rs for k, p in sorted(r.plots.items())]
        out.append(Section(
            benchmark=b, title=TITLES.get(b, b), description=BENCHMARKS[b],
            measured=_measured_table(b, rs) if rs else None, scaling=_scaling_tables(rs),
            all_metrics=_all_metrics_table(rs) if rs else None, quoted=_quoted_table(qs) if qs else None,
            plots=plots, measured_results=rs,
        ))
    return out
