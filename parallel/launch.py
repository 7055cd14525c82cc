"""Run a function on N local processes joined by a gloo process group: tests, benchmarks, CPU runs.

``run_distributed(fn, world_size, *args, timeout=...)`` spawns ``world_size`` processes
(``torch.multiprocessing`` spawn context), initialises gloo through a file store in a fresh temporary
folder (no port to choose, so no port races), calls ``fn(rank, world_size, *args)`` on each, and returns
the per-rank results in rank order.

Design choices:
- The parent watches all children. The first rank that raises sends its traceback to the parent, which
  terminates the other ranks (they may be blocked in a collective) and raises ``RuntimeError`` naming the
  rank and the original error. A run exceeding ``timeout`` is killed and raises ``TimeoutError``.
- Results travel back pickled through a queue, tensors as numpy arrays (copied), so children can exit
  immediately.
- Each child uses ``threads`` intra-op threads (default 1), so N ranks do not oversubscribe the cores.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue as _queue
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return ("__tensor__", (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy(), str(t.dtype))
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == "__tensor__":
        t = torch.from_numpy(obj[1])
        return t.to(getattr(torch, obj[2].removeprefix("torch.")))
    if isinstance(obj, dict):
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


def _entry(rank, fn, world_size, init_file, results, timeout_s, threads, args):
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("LONGVILA_QUIET", "1")
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
            timeout=_dt.timedelta(seconds=timeout_s),
        )
        out = fn(rank, world_size, *args)
        results.put((rank, "ok", _to_plain(out)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which ends every rank
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


def run_distributed(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 300.0, threads: int = 1,
    comm_timeout: float | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return results by rank.

    ``fn`` must be importable (module level). ``timeout`` bounds the whole run (seconds);
    ``comm_timeout`` bounds each collective (default: ``timeout``). Raises RuntimeError naming the first
    failing rank, or TimeoutError, after terminating every child.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="longvila-dist-") as tmp:
        init_file = os.path.join(tmp, "store")
        procs = [
            ctx.Process(
                target=_entry,
                args=(r, fn, world_size, init_file, results, comm_timeout or timeout, threads, args),
                daemon=True,
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        error: str | None = None
        try:
            while len(got) < world_size:
                try:
                    rank, status, payload = results.get(timeout=0.05)
                except _queue.Empty:
                    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in got]
                    if dead:
                        # A child died without reporting (killed, segfault): give its report a moment.
                        try:
                            rank, status, payload = results.get(timeout=1.0)
                        except _queue.Empty:
                            error = f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a report"
                            break
                    elif time.monotonic() > deadline:
                        raise TimeoutError(
                            f"run_distributed: {world_size} ranks did not finish within {timeout:.0f} s "
                            f"(finished: {sorted(got)})"
                        ) from None
                    else:
                        continue
                if status == "error":
                    error = f"rank {rank} failed: {payload}"
                    break
                got[rank] = _from_plain(payload)
        finally:
            for p in procs:
                if p.is_alive():
                    p.join(timeout=5.0 if error is None else 0.0)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5.0)
                if p.is_alive():
                    p.kill()
            results.close()
        if error is not None:
            raise RuntimeError(error)
        return [got[r] for r in range(world_size)]
