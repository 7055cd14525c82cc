"""Run ``python -m lmms_eval`` and judge it by what it wrote, not by its exit code.

lmms-eval exits 0 when a model fails to load or a task fails to build (it logs the error and returns), and
several of its adapters catch their own errors and answer ``""``. ``run_lmms`` runs it in a subprocess with
``--output_path`` and ``--log_samples``, then requires, for every task asked, a results file written by this
run with finite metrics and one logged sample per document; otherwise it raises ``LmmsRunError`` with the end of
lmms-eval's output. ``make lmms-eval`` and the tests go through it (``longvila eval lmms``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


class LmmsRunError(RuntimeError):
    pass


def run_lmms(model: str, model_args: str, tasks: list[str], output: str | os.PathLike, *,
             include_path: str | os.PathLike | None = None, force_simple: bool = False, limit: int | None = None,
             extra: list[str] | None = None, env: dict | None = None, cwd: str | os.PathLike | None = None,
             timeout: float = 3600.0) -> dict[str, dict]:
    """Run lmms-eval on ``tasks``; returns {task: {"metrics": {name: value}, "samples": [logged samples]}}."""
    output = Path(output).resolve()
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args,
           "--tasks", ",".join(tasks), "--output_path", str(output), "--log_samples"]
    if include_path:
        cmd += ["--include_path", str(Path(include_path).resolve())]
    if force_simple:
        cmd.append("--force_simple")
    if limit is not None:
        cmd += ["--limit", str(limit)]
    cmd += list(extra or [])
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-2500:]).strip()
    if proc.returncode != 0:
        raise LmmsRunError(f"lmms-eval exited {proc.returncode}:\n{tail}")
    fresh = [p for p in output.rglob("*_results.json") if p.stat().st_mtime >= start - 1]
    out: dict[str, dict] = {}
    for task in tasks:
        metrics = {}
        for p in sorted(fresh):
            res = json.loads(p.read_text(encoding="utf-8")).get("results", {}).get(task)
            if res:
                metrics = {k.split(",")[0]: v for k, v in res.items() if isinstance(v, (int, float))
                           and not k.endswith("_stderr,none") and k != "alias"}
        samples = [json.loads(line) for p in output.rglob(f"*_samples_{task}.jsonl") if p.stat().st_mtime >= start - 1
                   for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not metrics:
            raise LmmsRunError(f"lmms-eval exited 0 but wrote no metrics for task {task!r} "
                               f"(the model or the task failed to load):\n{tail}")
        if not samples:
            raise LmmsRunError(f"lmms-eval wrote no samples for task {task!r}:\n{tail}")
        out[task] = {"metrics": metrics, "samples": sorted(samples, key=lambda s: s["doc_id"]), "stdout": proc.stdout}
        if isinstance(metrics.get("accuracy"), float) and math.isnan(metrics["accuracy"]):
            raise LmmsRunError(f"task {task!r}: accuracy is NaN:\n{tail}")
    return out
