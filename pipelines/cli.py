"""``longvila train``: run the five-stage recipe, or one stage.

    longvila train all --data artifacts/data --out artifacts/ckpt --nproc 2 [--set 5:optim.lr=1e-4 ...]
    longvila train --stage 3 --from artifacts/ckpt/stage2 --data artifacts/data --out artifacts/ckpt \
        [--set optim.lr=1e-4 ...]          (under torchrun, or as one process)

``train all`` launches ``torchrun`` itself for each stage that has no finished folder, in order; a stage
interrupted earlier resumes from its last checkpoint, finished ones are skipped. ``--set`` applies to every
stage, or with an ``N:`` prefix to stage N only. Bad input (unknown stage, unknown key, missing or partial
previous stage, a layout that does not fit the world size) ends with a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from longvila.pipelines.config import STAGES, ConfigError, apply_overrides, get_stage


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longvila train", description="The five-stage LongVILA recipe.")
    p.add_argument("what", nargs="?", choices=["all"], help="run every unfinished stage in order")
    p.add_argument("--stage", help="run one stage (1-5), or a range (3-5) in one process group")
    p.add_argument("--from", dest="init", help="the previous stage's folder (default: OUT/stage{N-1})")
    p.add_argument("--data", default="artifacts/data", help="folder holding the data sets")
    p.add_argument("--out", default="artifacts/ckpt", help="folder of the stage checkpoints")
    p.add_argument("--nproc", type=int, default=2, help="ranks per stage for `all` (torchrun)")
    p.add_argument("--stages", default="1-5", help="stage range for `all`, e.g. 3-5")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[N:]KEY=VALUE",
                   help="config override, e.g. optim.lr=1e-4 or 5:schedule.warmup_steps=20")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def _for_stage(overrides: list[str], stage: int) -> list[str]:
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and head.isdigit() and "=" not in head:
            if int(head) not in STAGES:
                raise ConfigError(f"override {o!r}: unknown stage {head}")
            if int(head) == stage:
                out.append(rest)
        else:
            out.append(o)
    return out


def _stage_range(text: str) -> list[int]:
    lo, _, hi = str(text).partition("-")
    try:
        stages = list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"unknown stage {text!r}: choose one of {sorted(STAGES)} or a range like 3-5") from None
    for n in stages or [text]:
        get_stage(n)  # unknown stage -> ConfigError
    return stages


def run_stages(args) -> int:
    """Run one stage, or a range of stages in this process (what `all` launches under torchrun once)."""
    from longvila.pipelines import checkpoint as ck
    from longvila.pipelines.stages import make_task
    from longvila.pipelines.trainer import is_finished, stage_dir, train

    stages = _stage_range(args.stage)
    cfgs = {n: apply_overrides(get_stage(n), _for_stage(args.overrides, n)) for n in stages}
    if args.print_config:
        print(json.dumps({n: c.to_dict() for n, c in cfgs.items()}, indent=2))
        return 0
    if args.init is not None and len(stages) > 1:
        raise ConfigError("--from goes with a single --stage")
    for n in stages:
        if len(stages) > 1 and is_finished(Path(args.out), n):
            continue
        init = args.init
        if init is None and n > 1:
            init = str(stage_dir(Path(args.out), n - 1))
        if init is not None:
            ck.verify(init)  # a missing / partial / corrupt previous stage fails before any set-up
        summary = train(cfgs[n], make_task(cfgs[n], args.data), args.out, init)
        if summary and len(stages) == 1:
            print(json.dumps(summary, indent=2))
    return 0


def run_all(args) -> int:
    from longvila.pipelines.trainer import is_finished, stage_dir

    stages = _stage_range(args.stages)
    for n in stages:  # fail fast on a bad override or layout before launching anything
        cfg = apply_overrides(get_stage(n), _for_stage(args.overrides, n))
        from longvila.pipelines.config import validate

        validate(cfg, args.nproc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # NOTE: threads per rank = cores / ranks (2 ranks x 2 threads on 2 cores runs slower than 2 x 1);
    # LONGVILA_TRAIN_THREADS overrides it.
    env["OMP_NUM_THREADS"] = os.environ.get("LONGVILA_TRAIN_THREADS",
                                            str(max(1, (os.cpu_count() or 2) // args.nproc)))
    t0 = time.time()
    todo = [n for n in stages if not is_finished(out, n)]
    for n in stages:
        if n not in todo:
            print(f"stage {n}: finished ({stage_dir(out, n)}), skipped", flush=True)
        elif (out / f"stage{n}.run").exists():
            print(f"stage {n}: resuming from its last checkpoint", flush=True)
    if todo:
        # NOTE: one torchrun for all remaining stages: the start-up (imports, process group) is paid once.
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={args.nproc}", "-m", "longvila.pipelines.cli"]
                    if args.nproc > 1 else [sys.executable, "-m", "longvila.pipelines.cli"])
        cmd = launcher + ["--stage", f"{todo[0]}-{todo[-1]}", "--data", args.data, "--out", str(out)]
        for o in args.overrides:
            cmd += ["--set", o]
        print(f"stages {todo[0]}-{todo[-1]} on {args.nproc} rank(s): {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:
            print(f"training failed (exit {code}); run the same command again to resume", file=sys.stderr)
            return code
    rows = []
    for n in stages:
        s = json.loads((stage_dir(out, n) / "summary.json").read_text())
        rows.append(s)
        ev, before = s.get("eval") or {}, s.get("eval_before") or {}
        extra = f"  eval {ev['accuracy']:.1%} (chance {ev['chance']:.1%})" if ev else ""
        if ev and before and "loss" in ev and "loss" in before:
            extra = (f"  held-out QA {before['accuracy']:.1%} -> {ev['accuracy']:.1%} (chance {ev['chance']:.1%}),"
                     f" held-out loss {before['loss']:.3f} -> {ev['loss']:.3f}")
        print(f"stage {n} {s['name']:<12} steps {s['steps']:>4}  loss {s['loss_first']:.3f} -> "
              f"{s['loss_last']:.3f}  {s['seconds']:.0f}s{extra}")
        phases = s.get("phases") or []
        if len(phases) > 1:  # a curriculum: the loss is comparable within a phase, not across phases
            print("    per phase: " + ", ".join(f"{p['frames']}f {p['loss_first']:.3f}->{p['loss_last']:.3f}"
                                             for p in phases))
    from longvila.utils import atomic_write_json

    atomic_write_json(out / "recipe_summary.json", {"stages": rows, "wall_s": round(time.time() - t0, 1)})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.what == "all":
            if args.stage:
                raise ConfigError("give either `all` or --stage N, not both")
            return run_all(args)
        if not args.stage:
            _parser().print_usage(sys.stderr)
            print("longvila train: give `all` or --stage N", file=sys.stderr)
            return 2
        return run_stages(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"longvila train: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from longvila.pipelines.checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            print(f"longvila train: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
