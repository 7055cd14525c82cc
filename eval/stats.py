"""How far a benchmark's rates can move by the questions alone: 95% intervals for an accuracy and for the
difference of two accuracies over the same questions.

Design choices:
- An accuracy of ``k`` out of ``n`` gets the Wilson score interval (``scipy.stats.binomtest``): it stays inside
  0..1 and holds at small ``n`` and near 0 or 1 (a 99% needle grid), where the normal approximation does not.
- A difference of two rates over the same questions (letters against option likelihood, one frame count against
  another) gets a paired percentile bootstrap over the questions (``scipy.stats.bootstrap`` on the per-question
  differences): questions both protocols answer alike add no spread. The seed is fixed, so a summary written
  twice from the same records is the same file.
- Where outcomes come in groups that fail together (the needle grid asks each code at every depth of its
  frame count, and a code misread is missed at most of them), ``cluster_interval`` resamples whole groups: the
  rate's spread is that of the groups, not of the single outcomes.
- These intervals count the sampling of questions only, not run-to-run training noise: two stage-5 runs that
  differ in one knob can differ by more than either interval (docs/recipe.md, the letter runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0


def wilson(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (``(0.0, 1.0)`` for an empty set: nothing is known)."""
    from scipy.stats import binomtest

    if not 0 <= correct <= total:
        raise ValueError(f"wilson: need 0 <= correct <= total, got {correct} of {total}")
    if total == 0:
        return 0.0, 1.0
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(a: Sequence[bool], b: Sequence[bool], level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = SEED) -> dict:
    """``mean(a) - mean(b)`` over paired outcomes (question ``i`` in both), with its percentile-bootstrap interval:
    ``{"estimate": d, "ci": [lo, hi], "n": n, "discordant": questions where a and b differ}``."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference: need two outcome lists of one length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    if n == 0:
        raise ValueError("paired_difference: no questions")
    est = float(d.mean())
    discordant = int(np.count_nonzero(d))
    if discordant == 0:  # every resample gives the same difference
        lo = hi = est
    else:
        res = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"estimate": est, "ci": [lo, hi], "n": n, "discordant": discordant}


def cluster_interval(outcomes: Sequence[bool], groups: Sequence, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the rate of ``outcomes`` resampling whole ``groups`` (one label per
    outcome; outcomes with the same label are drawn together): the ratio of correct to asked over the drawn
    groups."""
    from scipy.stats import bootstrap

    if len(outcomes) != len(groups):
        raise ValueError(f"cluster_interval: {len(outcomes)} outcomes but {len(groups)} group labels")
    if not len(outcomes):
        raise ValueError("cluster_interval: no outcomes")
    labels: dict = {}
    idx = [labels.setdefault(g, len(labels)) for g in groups]  # group labels may be any hashable (tuples)
    hits_a = np.bincount(idx, weights=np.asarray(outcomes, dtype=float))
    asked_a = np.bincount(idx).astype(float)
    if hits_a.sum() in (0, asked_a.sum()) or len(labels) == 1:  # every draw gives the same rate
        rate = float(hits_a.sum() / asked_a.sum())
        return rate, rate

    def ratio(h, n, axis=-1):
        return h.sum(axis=axis) / n.sum(axis=axis)

    res = bootstrap((hits_a, asked_a), ratio, paired=True, vectorized=True, n_resamples=resamples,
                    confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
