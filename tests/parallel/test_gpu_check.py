"""``make gpu-check`` without a GPU: it stops at once with a clear message; its summary of a (synthetic)
report becomes a valid ``gpu_check`` result, whose leaderboard section appears only once it exists."""

import os
import subprocess
import sys
import time

from longvila.leaderboards import build as B
from longvila.leaderboards.results import load_result, write_result
from longvila.parallel.gpu_check import _summary


def test_without_a_gpu_it_exits_at_once_with_a_clear_message(tmp_path):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "longvila.parallel.gpu_check", "--out", str(tmp_path / "out")],
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "no CUDA device is visible" in p.stderr and "make test" in p.stderr
    assert time.monotonic() - t0 < 60 and not (tmp_path / "out").exists()


def _report(ok_all: bool) -> dict:
    ex = [{"backend": "torch", "dtype": "bfloat16", "layout": "1x1", "world": 1, "packed": p, "ok": ok_all or not p}
          for p in (False, True)] + [{"backend": "flash_attn", "dtype": "float16", "layout": "1x1", "skipped": "time budget"}]
    return {"gpus": 1, "exactness": ex,
            "stage3": {"ok": True, "max_loss_diff": 0.004},
            "needle": {"skipped": "no stage-5 checkpoint"},
            "throughput": {"1gpu_longvila_32768": {"tokens_per_s": 2.5e6, "fwdbwd_s": 0.013, "peak_gib": 3.0},
                           "1gpu_deepspeed_ulysses_131072": "failed: OutOfMemoryError"}}


def test_summary_counts_failures_and_makes_a_gpu_result_shown_only_when_present(tmp_path):
    table, metrics, ok = _summary(_report(ok_all=False))
    assert not ok and metrics["exactness_failures"] == 1 and metrics["exactness_checks"] == 2
    assert "1/2 checks pass; failing: torch bfloat16 1x1 (1 skipped)" in table
    assert "failed: OutOfMemoryError" in table and "tokens_per_s_1gpu_deepspeed_ulysses_131072" not in metrics
    table, metrics, ok = _summary(_report(ok_all=True))
    assert ok and metrics["tokens_per_s_1gpu_longvila_32768"] == 2.5e6 and metrics["stage3_max_loss_diff"] == 0.004

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "GPU check" not in B.build(empty, tmp_path / "site0").readme.read_text()
    results = tmp_path / "results"
    path = write_result("gpu-check", "gpu_check", metrics, details={"table": table}, command="make gpu-check",
                        results_dir=results)
    assert load_result(path).metrics["exactness_failures"] == 0
    md = B.build(results, tmp_path / "site").readme.read_text()
    assert "## GPU check" in md and "make gpu-check" in md
