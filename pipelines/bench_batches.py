"""``python -m longvila.pipelines.bench_batches --data DIR``: the data side of a sequence-parallel step.

On ``--ranks`` gloo processes forming one SP group, times the micro-batches of stage 5's phases built the two
ways the trainer can (``parallel.share_batches``): every rank building every micro-batch, and the group
sharing them (``datasource.shared_stream``: each rank builds 1/sp of them, then ``comm.exchange``). One-frame
needle phases are also timed without the first-frame cache (each needle decodes its whole video, as before
the cache). Both ways yield the same batches (tests/parallel/test_shared_batches.py); this prints seconds per
micro-batch side by side and their ratio, measured in one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PHASES = {  # name -> (Phase fields, stage data fields that the phase uses)
    "32 frames x 16 (stage 5 first and last phase)": dict(frames=32, batch=16, steps=1),
    "1 frame x 64 needles, four-option (letter phase)": dict(frames=1, batch=64, steps=1, form="oneline",
                                                             needle_frac=1.0, needle_mc_frac=1.0),
    "1,500 frames x 1 (longest phase)": dict(frames=1500, batch=1, steps=1),
}


def _worker(rank: int, world: int, data: str, batches: int, warm: int) -> dict:
    import torch.distributed as dist

    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines import datasource as ds
    from longvila.pipelines.config import Phase, stage5
    from longvila.pipelines.stages import stream_args

    d = stage5().data
    proc = LongVILAProcessor.from_config(tiny_config())
    out = {}
    for name, fields in PHASES.items():
        phase = Phase(**fields)

        def make(start, stride, seed, phase=phase):
            return ds.stream(data, d.sets, phase, seed=seed, skip=start, stride=stride, dp_rank=0, dp=1,
                             processor=proc, **stream_args(d))

        warm_it = make(0, 1, seed=1)  # caches filled from another seed, untimed
        for _ in range(warm):
            next(warm_it)
        # each way its own seed: the same micro-batches again would find their videos in the decode cache
        ways = {"every rank builds all": lambda: make(0, 1, seed=11),
                "shared over the SP group": lambda: ds.shared_stream(
                    lambda start, stride: make(start, stride, seed=12), 0, dist.group.WORLD)}
        if phase.frames == 1:
            cached = ds._first_frame
            ways["every rank builds all, no first-frame cache"] = lambda: make(0, 1, seed=13)
        row = {}
        for way, new in ways.items():
            if "no first-frame cache" in way:
                ds._first_frame = lambda data: ds._decode(data)[:1]
            dist.barrier()
            it, t0 = new(), time.perf_counter()
            for _ in range(batches):
                next(it)
            dt = time.perf_counter() - t0
            dist.barrier()
            if "no first-frame cache" in way:
                ds._first_frame = cached
            row[way] = dt / batches
        out[name] = row
    return out


def run(data: str | Path, ranks: int = 2, batches: int = 16, warm: int = 30) -> dict:
    from longvila.parallel.launch import run_distributed
    from longvila.utils import machine_info

    got = run_distributed(_worker, ranks, str(data), batches, warm, timeout=1800)
    # a rank's time per micro-batch; the group moves at its slowest rank's pace
    table = {name: {way: max(r[name][way] for r in got) for way in got[0][name]} for name in PHASES}
    return {"machine": machine_info(), "ranks": ranks, "batches": batches, "seconds_per_micro_batch": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m longvila.pipelines.bench_batches", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="artifacts/data", help="the built data sets (make data)")
    p.add_argument("--ranks", type=int, default=2, help="SP group size (gloo processes)")
    p.add_argument("--batches", type=int, default=16, help="micro-batches timed per way")
    p.add_argument("--warm", type=int, default=30, help="untimed micro-batches first (fill the caches)")
    p.add_argument("--out", help="write the result as JSON here")
    a = p.parse_args(argv)
    res = run(a.data, a.ranks, a.batches, a.warm)
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; {a.ranks} ranks, {a.batches} micro-batches per way")
    for name, row in res["seconds_per_micro_batch"].items():
        base = row["every rank builds all"]
        cells = ", ".join(f"{way} {s:.3f} s ({base / s:.2f}x)" for way, s in row.items())
        print(f"{name}: {cells}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
