"""Intervals of the benchmarks' rates: Wilson against its closed form, the paired bootstrap against the
normal approximation of a paired difference, determinism, bad input, and the VideoMME summary's intervals
recomputed from its records."""

import math

import numpy as np
import pytest

from longvila.eval import stats, videomme


def _wilson_closed_form(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(82, 180), (594, 600), (0, 60), (60, 60), (1, 3)])
def test_wilson_matches_closed_form(k, n):
    lo, hi = stats.wilson(k, n)
    ref = _wilson_closed_form(k, n)
    assert lo == pytest.approx(max(ref[0], 0.0), abs=1e-9) and hi == pytest.approx(min(ref[1], 1.0), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_bad_input_and_empty():
    assert stats.wilson(0, 0) == (0.0, 1.0)
    for k, n in [(5, 3), (-1, 3)]:
        with pytest.raises(ValueError, match="correct <= total"):
            stats.wilson(k, n)


def test_paired_difference_against_normal_approximation():
    rng = np.random.default_rng(3)
    a = rng.random(2000) < 0.55
    b = np.where(rng.random(2000) < 0.7, a, rng.random(2000) < 0.45)  # mostly the same answers
    r = stats.paired_difference(a, b)
    d = a.astype(float) - b.astype(float)
    half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(len(d))
    assert r["estimate"] == pytest.approx(d.mean()) and r["n"] == 2000 and r["discordant"] == np.count_nonzero(d)
    assert r["ci"][0] == pytest.approx(d.mean() - half, abs=0.004)
    assert r["ci"][1] == pytest.approx(d.mean() + half, abs=0.004)
    # pairing: the interval is narrower than that of two independent samples of the same rates
    unpaired = 1.959963984540054 * math.sqrt(a.var(ddof=1) / 2000 + b.var(ddof=1) / 2000)
    assert r["ci"][1] - r["ci"][0] < 0.8 * 2 * unpaired
    assert stats.paired_difference(a, b) == r  # fixed seed: the same interval every time


def test_paired_difference_degenerate_and_bad_input():
    same = [True, False, True]
    assert stats.paired_difference(same, same) == {"estimate": 0.0, "ci": [0.0, 0.0], "n": 3, "discordant": 0}
    with pytest.raises(ValueError, match="one length"):
        stats.paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="no questions"):
        stats.paired_difference([], [])


def _sweep(rng, frames, n=120):
    ids = [f"{i:03d}-1" for i in range(n)]
    durations = ["short", "medium", "long"] * (n // 3)
    sweep = {}
    for f in frames:
        recs = []
        for qid, dur in zip(ids, durations, strict=True):
            ans = "ABCD"[int(rng.integers(4))]
            recs.append({"question_id": qid, "duration": dur, "answer": ans,
                         "pred": ans if rng.random() < 0.3 + f / 400 else "A",
                         "ll_pred": ans if rng.random() < 0.5 else "B"})
        sweep[f] = {"records": recs}
    return sweep


def test_videomme_intervals_from_records():
    frames = [8, 64, 128]
    sweep = _sweep(np.random.default_rng(0), frames)
    iv = videomme.intervals(frames, sweep, likelihood=True)
    for f in frames:
        recs = sweep[f]["records"]
        k = sum(r["pred"] == r["answer"] for r in recs)
        assert iv["table"][str(f)]["all"] == [round(x, 4) for x in stats.wilson(k, len(recs))]
        long_ = [r for r in recs if r["duration"] == "long"]
        k_ll = sum(r["ll_pred"] == r["answer"] for r in long_)
        assert iv["table_ll"][str(f)]["duration/long"] == [round(x, 4) for x in stats.wilson(k_ll, len(long_))]
        gap = iv["gap_ll"][str(f)]
        assert gap["estimate"] == pytest.approx(np.mean([(r["ll_pred"] == r["answer"]) - (r["pred"] == r["answer"])
                                                         for r in recs]), abs=1e-4)
        assert gap["ci"][0] <= gap["estimate"] <= gap["ci"][1]
    acc_long = {f: np.mean([r["pred"] == r["answer"] for r in sweep[f]["records"] if r["duration"] == "long"])
                for f in frames}
    g, b = iv["long_gain"], iv["long_best"]
    assert (g["from"], g["to"]) == (8, 128) and g["estimate"] == pytest.approx(acc_long[128] - acc_long[8], abs=1e-4)
    assert b["to"] == max(frames[1:], key=lambda f: (acc_long[f], -f))
    assert "long_gain_ll" in iv and "long_best_ll" in iv
    # letters only: no likelihood intervals
    assert set(videomme.intervals(frames, sweep, likelihood=False)) & {"table_ll", "gap_ll", "long_gain_ll"} == set()


def test_videomme_intervals_refuse_unpaired_questions():
    frames = [8, 64]
    sweep = _sweep(np.random.default_rng(1), frames)
    sweep[64]["records"][2]["question_id"] = "999-9"  # a long question asked at 64 frames only
    with pytest.raises(ValueError, match="different questions"):
        videomme.intervals(frames, sweep, likelihood=True)


def test_cluster_interval_single_outcomes_match_wilson_and_groups_widen_it():
    rng = np.random.default_rng(5)
    ok = rng.random(600) < 0.9
    k = int(ok.sum())
    lo, hi = stats.cluster_interval(ok, list(range(600)))  # every outcome its own group
    wl, wh = stats.wilson(k, 600)
    assert abs(lo - wl) < 0.01 and abs(hi - wh) < 0.01 and lo < k / 600 < hi
    # 100 groups of 6 that fail together: the spread is that of 100 draws, not 600
    grouped = np.repeat(rng.random(100) < 0.9, 6)
    glo, ghi = stats.cluster_interval(grouped, np.repeat(np.arange(100), 6))
    k6 = int(grouped.sum())
    wl6, wh6 = stats.wilson(k6 // 6, 100)
    assert abs(glo - wl6) < 0.02 and abs(ghi - wh6) < 0.02
    assert ghi - glo > 1.8 * (stats.wilson(k6, 600)[1] - stats.wilson(k6, 600)[0])
    assert stats.cluster_interval(grouped, np.repeat(np.arange(100), 6)) == (glo, ghi)  # fixed seed


def test_cluster_interval_degenerate_and_bad_input():
    assert stats.cluster_interval([True] * 12, [i // 6 for i in range(12)]) == (1.0, 1.0)
    assert stats.cluster_interval([True, False, True], ["a"] * 3) == (2 / 3, 2 / 3)  # one group: nothing to draw
    with pytest.raises(ValueError, match="3 outcomes but 2 group labels"):
        stats.cluster_interval([True, False, True], ["a", "b"])
    with pytest.raises(ValueError, match="no outcomes"):
        stats.cluster_interval([], [])
