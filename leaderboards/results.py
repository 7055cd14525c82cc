"""Result files: the one format every evaluation and benchmark writes, and the leaderboards read.

A result is one JSON file, ``leaderboards/results/<name>.json`` by default, written atomically by
:func:`write_result` and validated by :func:`load_result` / :func:`load_results`. Schema (version 1)::

    {
      "schema": 1,
      "name": "needle-6000",              # file stem; [A-Za-z0-9._-]+
      "benchmark": "needle",              # one of BENCHMARKS
      "metrics": {"accuracy": 0.93, ...}, # flat name -> finite number (bools are not numbers)
      "details": {...} | null,            # free JSON (grids, per-sample outputs, loss curves)
      "config": {...} | null,             # what was run: model/config name, frames, stage, ... (JSON)
      "seed": 0 | null,                   # integer
      "command": "make needle FRAMES=6000" | null,   # the command that reproduces the file
      "commit": "8973f45+dirty",          # filled by write_result (longvila.utils.git_commit)
      "machine": {"cpu": ..., "cores": 2, ...},       # filled (longvila.utils.machine_info)
      "date": "2026-11-22T01:00:00Z",     # filled, UTC ISO 8601
      "plots": {"heatmap": {"path": "needle-6000.heatmap.png", "sha256": "..."}}
    }

Plots are copied beside the result file (``<name>.<key>.<ext>``, path relative to the result file) and
their sha256 recorded, so a committed result carries its images and a tampered or missing image is an
error, not a broken page.

Metric naming conventions the leaderboard tables understand (other names are shown as they are):
- Accuracy-like metrics (``accuracy``, ``acc@N``, ``acc_*``, ``*_acc``, ``*_accuracy``, ``control``,
  ``blind``, ``chance``) are fractions in [0, 1] (validated) and shown as percentages.
- ``accuracy`` is the headline for ``needle``, ``videomme`` and training QA; ``acc@<frames>``
  (e.g. ``acc@6000``) is the accuracy at one frame count and builds the frame-scaling table.
- ``frames`` (a metric, or ``config["frames"]``) is the largest frame count of the run; ``config["model"]``
  names the model/config.
- Per benchmark: ``needle``: accuracy, control, acc@N (grid cells in ``details``);
  ``videomme``: accuracy, acc@N, acc_short / acc_medium / acc_long, acc_<task type>, blind, chance (the
  letter protocol), acc_ll, acc_ll@N, acc_ll_long, acc_ll_blind (option likelihood);
  ``sp_bench``: ``time_<method>_s`` timings (shown in s) and ``speedup_<a>_vs_<b>`` / ``*_ratio`` (shown as x);
  ``data_bench``: decode_fps_decord, decode_fps_pyav, build_videos_per_s;
  ``training``: steps, tokens, time_s, loss_first, loss_last, qa_accuracy (one file per stage, e.g.
  ``training-stage1``; loss curve in ``details["loss"]`` as a list of losses, ``[[step, loss], ...]`` or
  ``{"step": [...], "loss": [...]}``, drawn on one chart with the other stages);
  ``gpu_check`` (``make gpu-check``, GPU rows): exactness_checks, exactness_failures, gpus,
  stage3_max_loss_diff, needle_accuracy, ``tokens_per_s_<gpus>gpu_<method>_<tokens>``; its section is
  shown only once such a result exists.

Design choices: validation is strict (required fields, types, finite numbers, known benchmarks, no unknown
top-level fields) and every error names the file and the field, because a malformed result must stop the
leaderboard build rather than vanish from it. ``LONGVILA_RESULTS_DIR`` redirects the default folder (tests).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvila.utils import atomic_write_json, git_commit, machine_info, sha256_file, utc_now

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, str] = {
    "needle": "needle in a haystack: accuracy over a (frames x depth) grid",
    "videomme": "VideoMME-style multiple choice: frame sweep, per duration and task type",
    "sp_bench": "MM-SP attention timings and speed-up ratios",
    "data_bench": "data pipeline throughput: decode fps (decord vs PyAV), build videos/s",
    "training": "one training stage: steps, tokens, time, loss first/last, held-out QA accuracy",
    "gpu_check": "the GPU checks (make gpu-check): backend exactness, stage 3 on the GPU, throughput",
}
# Benchmarks whose leaderboard section appears only once a result exists (no empty section before).
SHOWN_WHEN_MEASURED = ("gpu_check",)

REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "name": (str,),
    "benchmark": (str,),
    "metrics": (dict,),
    "commit": (str,),
    "machine": (dict,),
    "date": (str,),
}
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "details": (dict, list, str, int, float, type(None)),
    "config": (dict, type(None)),
    "seed": (int, type(None)),
    "command": (str, type(None)),
    "plots": (dict,),
}
PLOT_EXTENSIONS = (".png", ".svg", ".jpg", ".jpeg", ".webp")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# Metrics that are fractions in [0, 1] (shown as percentages): accuracy, acc@N, acc_long, qa_accuracy, ...
FRACTION_RE = re.compile(r"(^|_)(acc|accuracy)($|@|_)|^(control|blind|chance)(@\d+)?$")


def is_fraction(metric: str) -> bool:
    """Whether a metric name denotes a fraction in [0, 1] (accuracy-like)."""
    return bool(FRACTION_RE.search(metric))


class ResultError(ValueError):
    """A result file is malformed; the message names the file and the field."""


@dataclass
class Result:
    """A validated result file (``path`` is where it was read from)."""

    path: Path
    name: str
    benchmark: str
    metrics: dict[str, float]
    commit: str
    machine: dict[str, Any]
    date: str
    details: Any = None
    config: dict[str, Any] | None = None
    seed: int | None = None
    command: str | None = None
    plots: dict[str, Path] = field(default_factory=dict)  # key -> absolute image path (verified)


def default_results_dir() -> Path:
    """The default results folder: ``$LONGVILA_RESULTS_DIR`` or ``leaderboards/results``."""
    env = os.environ.get("LONGVILA_RESULTS_DIR")
    return Path(env) if env else DEFAULT_RESULTS_DIR


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_json(value: Any, where: str, path: Path) -> None:
    """Strict JSON: no NaN/inf anywhere (they are not valid JSON), string keys only."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ResultError(f"{path}: field {where!r} is not a finite number ({value})")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ResultError(f"{path}: field {where!r} has a non-string key {k!r}")
            _check_json(v, f"{where}.{k}" if where else k, path)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", path)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise ResultError(f"{path}: field {where!r} holds a {type(value).__name__}, not JSON")


def validate(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check a result object read from ``path``; return it unchanged or raise :class:`ResultError`."""
    path = Path(path)
    if not isinstance(obj, dict):
        raise ResultError(f"{path}: a result must be a JSON object, not {type(obj).__name__}")
    for key, types in REQUIRED_FIELDS.items():
        if key not in obj:
            raise ResultError(f"{path}: missing required field {key!r}")
        if not isinstance(obj[key], types) or (int in types and isinstance(obj[key], bool)):
            raise ResultError(f"{path}: field {key!r} must be {types[0].__name__}, got {type(obj[key]).__name__}")
    for key, types in OPTIONAL_FIELDS.items():
        if key in obj and (not isinstance(obj[key], types) or (key == "seed" and isinstance(obj[key], bool))):
            raise ResultError(f"{path}: field {key!r} has the wrong type {type(obj[key]).__name__}")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ResultError(f"{path}: unknown field {unknown[0]!r} (put free-form data under 'details')")
    if obj["schema"] != SCHEMA_VERSION:
        raise ResultError(f"{path}: field 'schema' is {obj['schema']}, this code reads version {SCHEMA_VERSION}")
    if obj["benchmark"] not in BENCHMARKS:
        raise ResultError(
            f"{path}: field 'benchmark' is {obj['benchmark']!r}, not a known benchmark ({', '.join(BENCHMARKS)})"
        )
    if not _NAME_RE.match(obj["name"]):
        raise ResultError(f"{path}: field 'name' {obj['name']!r} must match {_NAME_RE.pattern}")
    if not _DATE_RE.match(obj["date"]):
        raise ResultError(f"{path}: field 'date' {obj['date']!r} is not UTC ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)")
    if not obj["metrics"]:
        raise ResultError(f"{path}: field 'metrics' is empty")
    for k, v in obj["metrics"].items():
        if not _is_number(v):
            raise ResultError(f"{path}: field 'metrics.{k}' must be a number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ResultError(f"{path}: field 'metrics.{k}' is not a finite number ({v})")
        if is_fraction(k) and not 0.0 <= v <= 1.0:
            raise ResultError(f"{path}: field 'metrics.{k}' is an accuracy-like fraction and must lie in [0, 1], got {v}")
    for k, spec in obj.get("plots", {}).items():
        if not (isinstance(spec, dict) and isinstance(spec.get("path"), str) and isinstance(spec.get("sha256"), str)):
            raise ResultError(f"{path}: field 'plots.{k}' must be {{'path': str, 'sha256': str}}")
        if Path(spec["path"]).name != spec["path"] or Path(spec["path"]).suffix.lower() not in PLOT_EXTENSIONS:
            raise ResultError(f"{path}: field 'plots.{k}.path' must be an image file name beside the result "
                              f"({', '.join(PLOT_EXTENSIONS)}), got {spec['path']!r}")
    _check_json(obj, "", path)
    return obj


def to_json(value: Any) -> Any:
    """Plain JSON values from what producers naturally hold: numpy/torch scalars and arrays, tuples, paths."""
    if isinstance(value, (str, bool, type(None))):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else str(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors (0-d ones give a scalar)
        return to_json(value.tolist())
    return value  # left for validation to reject by name


def _resolve_target(path_or_name: str | os.PathLike, results_dir_: str | os.PathLike | None) -> Path:
    p = Path(path_or_name)
    if p.suffix == ".json":
        return p if results_dir_ is None or p.is_absolute() else Path(results_dir_) / p
    if len(p.parts) != 1:
        raise ValueError(f"write_result: {str(path_or_name)!r} is neither a name nor a path ending in .json")
    return Path(results_dir_ or default_results_dir()) / f"{p.name}.json"


def write_result(
    path_or_name: str | os.PathLike,
    benchmark: str,
    metrics: Mapping[str, float],
    *,
    details: Any = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    command: str | None = None,
    plots: Mapping[str, str | os.PathLike] | None = None,
    results_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a validated result file atomically and return its path.

    ``path_or_name``: a name (``"needle-6000"`` -> ``<results_dir>/needle-6000.json``) or a path ending in
    ``.json``. ``results_dir`` overrides the default folder (``$LONGVILA_RESULTS_DIR`` or
    ``leaderboards/results``). ``metrics``: flat name -> finite number (numpy/torch scalars are converted,
    as are arrays, tuples and paths in ``details`` / ``config``). ``plots``: key -> image path; each
    image is copied beside the result as ``<name>.<key><ext>``. Commit, machine and date are filled here.
    Raises :class:`ResultError` (before writing anything) if the result would not validate.
    """
    target = _resolve_target(path_or_name, results_dir)
    name = target.stem
    obj: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "benchmark": benchmark,
        "metrics": {str(k): (float(v) if _is_number(v) else v) for k, v in to_json(dict(metrics)).items()},
        "details": to_json(details),
        "config": to_json(dict(config)) if config is not None else None,
        "seed": seed,
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(),
        "date": utc_now(),
        "plots": {},
    }
    copies: list[tuple[Path, Path]] = []
    for key, src in (plots or {}).items():
        src = Path(src)
        if not _NAME_RE.match(key):
            raise ResultError(f"{target}: plot key {key!r} must match {_NAME_RE.pattern}")
        if not src.is_file():
            raise ResultError(f"{target}: plot 'plots.{key}' file {src} does not exist")
        if src.suffix.lower() not in PLOT_EXTENSIONS:
            raise ResultError(f"{target}: plot 'plots.{key}' {src} is not an image ({', '.join(PLOT_EXTENSIONS)})")
        dst = target.parent / f"{name}.{key}{src.suffix.lower()}"
        copies.append((src, dst))
        obj["plots"][key] = {"path": dst.name, "sha256": sha256_file(src)}
    validate(obj, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in copies:
        if src.resolve() != dst.resolve():
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    atomic_write_json(target, obj)
    return target


def load_result(path: str | os.PathLike) -> Result:
    """Read and validate one result file (plots must exist with the recorded sha256)."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such result file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: float(c))
    except UnicodeDecodeError as e:
        raise ResultError(f"{path}: not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    validate(obj, path)
    if obj["name"] != path.stem:
        raise ResultError(f"{path}: field 'name' is {obj['name']!r} but the file is named {path.name!r}")
    plots: dict[str, Path] = {}
    for key, spec in obj.get("plots", {}).items():
        img = (path.parent / spec["path"]).resolve()
        if not img.is_file():
            raise ResultError(f"{path}: field 'plots.{key}' points to a missing image {img}")
        if sha256_file(img) != spec["sha256"]:
            raise ResultError(f"{path}: field 'plots.{key}': image {img} does not match its recorded sha256")
        plots[key] = img
    return Result(
        path=path, name=obj["name"], benchmark=obj["benchmark"], metrics=dict(obj["metrics"]),
        commit=obj["commit"], machine=obj["machine"], date=obj["date"], details=obj.get("details"),
        config=obj.get("config"), seed=obj.get("seed"), command=obj.get("command"), plots=plots,
    )


def load_results(directory: str | os.PathLike | None = None) -> list[Result]:
    """Read and validate every ``*.json`` in ``directory`` (default :func:`default_results_dir`), sorted by name.

    Raises :class:`ResultError` listing every malformed file (each with its field), never skips one.
    A missing folder means no results (an empty list).
    """
    directory = Path(directory) if directory is not None else default_results_dir()
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise ResultError(f"{directory}: results path is not a directory")
    results, errors = [], []
    for p in sorted(directory.glob("*.json")):
        try:
            results.append(load_result(p))
        except ResultError as e:
            errors.append(str(e))
    if errors:
        raise ResultError(f"{len(errors)} malformed result file(s):\n" + "\n".join(f"  {e}" for e in errors))
    return results
