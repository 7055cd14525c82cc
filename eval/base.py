"""The small base every benchmark shares: a registry by name and the output conventions.

Design choices (lmms-eval style, kept small):
- A benchmark is one module that registers a ``run(lm, cfg) -> metrics`` entry point under a name with
  :func:`register`; :func:`get_benchmark` looks it up and names the known ones on a typo.
- Outputs of a run go to one folder: per-unit JSON written atomically as it goes (so a run resumes), a summary
  JSON, PNG plots (matplotlib, Agg), and a leaderboard result file via
  ``longvila.leaderboards.results.write_result``.
- Results of interest are rates in 0..1 with their trial counts beside them, never a bare percentage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_REGISTRY: dict[str, BenchmarkSpec] = {}


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    run: Callable[..., dict[str, Any]]
    config_cls: type
    help: str


def register(name: str, config_cls: type, help: str) -> Callable:
    """Decorator: register ``run(cfg, lm=None) -> summary`` under ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        _REGISTRY[name] = BenchmarkSpec(name, fn, config_cls, help)
        return fn

    return deco


def get_benchmark(name: str) -> BenchmarkSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def benchmarks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    from longvila.eval import needle, videomme  # noqa: F401 - importing registers them


TABLE_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv")


def read_rows(path, what: str = "table") -> list[dict]:
    """The rows of a table file (parquet, JSON list, JSONL or CSV, by suffix): a non-empty list of objects.

    Any fault is a ValueError naming the file (``what``: "question table", "needle table") and, for a row
    that is not an object, the row."""
    import json
    from pathlib import Path

    from longvila.utils import read_json

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(path).to_dict("records")
        elif suffix == ".csv":
            import pandas as pd

            rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            rows = read_json(path)
        else:
            raise ValueError(f"{path}: unknown table format (expected one of {', '.join(TABLE_SUFFIXES)})")
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e})") from None
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow parse errors
        raise ValueError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: the {what} must be a non-empty list of rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path} row {i}: a row must be an object, got {type(r).__name__}")
    return rows


def accuracy(correct: int, total: int) -> float:
    """correct / total, and 0.0 for an empty set (reported with its count, so never mistaken)."""
    return correct / total if total else 0.0


def plt():
    """matplotlib.pyplot on the Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
