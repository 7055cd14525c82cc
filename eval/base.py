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


def accuracy(correct: int, total: int) -> float:
    """correct / total, and 0.0 for an empty set (reported with its count, so never mistaken)."""
    return correct / total if total else 0.0


def plt():
    """matplotlib.pyplot on the Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
