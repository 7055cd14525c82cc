"""``make gpu-check``: the checks that need a GPU, in one run of at most ten minutes on one GPU.

Without a CUDA device it prints why and exits at once with status 2. With one it runs, in order:
1. Exactness: every available backend (``torch``: PyTorch's CUDA flash op for fp16/bf16, its efficient op
   for fp32; ``flash_attn`` and ``ring_flash_attn`` when installed) against one-GPU SDPA on the whole
   sequence, forward and backward, plain and packed rows (GQA, rows packed differently), on one GPU and,
   with several GPUs, again under torchrun on all of them (every Ulysses x ring layout the heads allow).
   Tolerances: fp32 elementwise atol 2e-6 / rtol 1e-5 against fp32 SDPA. fp16/bf16: for the output and
   each gradient, our max error against an fp32 reference (SDPA in fp32 on the same rounded inputs) at
   most twice stock SDPA's in the same dtype plus atol (bf16 8e-3 x world, fp16 4e-3 x world, PyTorch's
   context-parallel atol): at 2,048 tokens bf16 rounding alone puts dK/dV 0.05-0.09 off in stock SDPA, so
   a fixed elementwise bound would test the dtype, not the kernels.
2. Stage 3 of the tiny recipe, 50 steps, on the GPU and on the CPU (PyTorch's AdamW on both, so only the
   kernels and the placement differ): every step's loss within 0.02 + 2% of the CPU run's.
3. The 6,000-frame needle grid on the GPU (``longvila eval needle``) when a stage-5 checkpoint is present.
4. Throughput, forward+backward, bf16, 32 query / 8 KV heads of 128, at 32k and 128k tokens: ours (zigzag
   ring over the GPUs) vs ring-flash-attn (when installed) vs DeepSpeed-Ulysses, in tokens/s.
It prints a summary table and writes ``OUT/gpu-check.json`` (and, with ``--publish``, the leaderboard
result ``leaderboards/results/gpu-check.json``, benchmark ``gpu_check``). A part that would overrun the
budget is skipped and says so; a failed part fails the run (status 1) after the others ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

NO_GPU = ("gpu-check: no CUDA device is visible (torch.cuda.is_available() is False). The GPU checks "
          "(backend exactness, stage 3 on the GPU, the needle grid, throughput) need one; on this machine run "
          "`make test`, which covers the CPU path and traces the CUDA placement with fake CUDA tensors.")
TOL = {torch.float32: (2e-6, 1e-5), torch.bfloat16: (8e-3, None), torch.float16: (4e-3, None)}  # (atol, rtol)
HEADS, KV_HEADS, DIM = 8, 2, 64  # exactness inputs: B=2, S=2048
ROWS = ((700, 348, 1000), (1000, 1048))  # packed rows (two layouts), 2048 tokens each
ROOT = Path(__file__).resolve().parents[1]


def _installed() -> list[str]:
    from .backends import optional_module

    return ["torch"] + [b for b in ("flash_attn", "ring_flash_attn")
                        if optional_module("flash_attn") and optional_module(b)]


def _init(world: int) -> int:
    """The NCCL group (torchrun's, or a one-rank one), the rank's GPU selected first; returns the rank."""
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        else:
            dist.init_process_group("nccl")
    return rank


def _meshes(world: int):
    from .mesh import ParallelDims, SPMesh, build_mesh

    if world == 1:
        return {"1x1": SPMesh.single()}
    out = {}
    for u in (d for d in range(1, world + 1) if world % d == 0 and HEADS % d == 0):
        out[f"U{u}R{world // u}"] = build_mesh(ParallelDims(1, u, world // u, world))
    return out


def _inputs(dtype, packed: bool, device):
    g = torch.Generator(device=device).manual_seed(0)
    b, s = len(ROWS), sum(ROWS[0])
    q = torch.randn(b, HEADS, s, DIM, generator=g, device=device).to(dtype)
    k, v = (torch.randn(b, KV_HEADS, s, DIM, generator=g, device=device).to(dtype) for _ in range(2))
    do = torch.randn(b, HEADS, s, DIM, generator=g, device=device).to(dtype)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in ROWS]) if packed else None
    return q, k, v, do, pos


def _sdpa_grads(q, k, v, do, pos, dtype):
    """One-GPU SDPA on the whole sequence in ``dtype``: (out, dq, dk, dv)."""
    import torch.nn.functional as F

    x = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    mask = None
    if pos is not None:
        seg = (torch.arange(pos.shape[1]) - pos).to(q.device)
        s = pos.shape[1]
        mask = (seg[:, :, None] == seg[:, None, :]) & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        mask = mask[:, None]
    out = F.scaled_dot_product_attention(*x, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    out.backward(do.to(dtype))
    return [out.detach()] + [t.grad for t in x]


def _ours(q, k, v, do, pos, mesh, backend):
    from .attention import plan_from_positions, sp_attention
    from .mmsp import pad_positions
    from .zigzag import zigzag_shard, zigzag_unshard

    plan = plan_from_positions(None if pos is None else pad_positions(pos, pos.shape[1]), mesh, q.shape[0])
    x = [zigzag_shard(t, 2, mesh).detach().requires_grad_() for t in (q, k, v)]
    out = sp_attention(*x, mesh, plan, backend=backend)
    out.backward(zigzag_shard(do, 2, mesh))
    return [zigzag_unshard(t, 2, mesh) for t in (out.detach(), *(y.grad for y in x))]


def exactness(world: int, deadline: float) -> list[dict]:
    """Every (backend, dtype, layout, packing) the backends take: max errors and pass/fail per check."""
    device = torch.device("cuda", torch.cuda.current_device())
    meshes, rows = _meshes(world), []
    for backend, dtype, (name, mesh), packed in itertools.product(
            _installed(), TOL, meshes.items(), (False, True)):
        if backend != "torch" and dtype == torch.float32:
            continue  # flash-attn takes fp16/bf16 only
        if backend == "ring_flash_attn" and packed and mesh.ring_size > 1:
            continue  # refused by design (see ring_flash.py)
        row = {"backend": backend, "dtype": str(dtype).removeprefix("torch."), "layout": name, "world": world,
               "packed": packed}
        if time.monotonic() > deadline:
            rows.append({**row, "skipped": "time budget"})
            continue
        q, k, v, do, pos = _inputs(dtype, packed, device)
        ours = _ours(q, k, v, do, pos, mesh, backend)
        same = _sdpa_grads(q, k, v, do, pos, dtype)
        ref32 = _sdpa_grads(q, k, v, do.float(), pos, torch.float32)
        names = ("out", "dq", "dk", "dv")
        err_ours = {n: float((a.float() - r).abs().max()) for n, a, r in zip(names, ours, ref32, strict=True)}
        err_sdpa = {n: float((a.float() - r).abs().max()) for n, a, r in zip(names, same, ref32, strict=True)}
        atol, rtol = TOL[dtype]
        if rtol is not None:  # fp32: elementwise against fp32 SDPA
            ok = all(bool(((a - b).abs() <= atol + rtol * b.abs()).all()) for a, b in zip(ours, ref32, strict=True))
        else:  # half: no worse than stock SDPA in the same dtype, against the fp32 reference
            atol *= world
            ok = all(err_ours[n] <= 2 * err_sdpa[n] + atol for n in names)
        row.update(ok=ok, atol=atol, rtol=rtol, err_ours=err_ours, err_sdpa=err_sdpa)
        rows.append(row)
    return rows


def _time_fwdbwd(fn, xs, do, reps: int = 2) -> float:
    import torch.distributed as dist

    best = float("inf")
    for i in range(reps + 1):  # the first run warms up
        ys = [t.detach().requires_grad_() for t in xs]
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*ys).backward(do)
        torch.cuda.synchronize()
        t = torch.tensor([time.perf_counter() - t0], device=do.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if i:
            best = min(best, float(t))
    return best


def throughput(world: int, deadline: float, lengths=(32768, 131072)) -> dict:
    """tokens/s (fwd+bwd, bf16, B=1, 32 x 128 query heads, 8 KV heads) of ours, ring-flash-attn, DeepSpeed-Ulysses."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from .attention import sp_attention
    from .mesh import ParallelDims, SPMesh, build_mesh
    from .zigzag import zigzag_shard

    device = torch.device("cuda", torch.cuda.current_device())
    mesh = SPMesh.single() if world == 1 else build_mesh(ParallelDims(1, 1, world, world))
    methods = {"longvila": lambda q, k, v: sp_attention(q, k, v, mesh)}
    if "ring_flash_attn" in _installed():
        methods["ring_flash_attn"] = lambda q, k, v: sp_attention(q, k, v, mesh, backend="ring_flash_attn")
    try:
        import deepspeed
        from deepspeed.sequence.layer import DistributedAttention

        deepspeed.init_distributed(dist_backend="nccl")  # adopts the existing group
        local = DistributedAttention(  # (S/N, B, H, D) shards; a local causal SDPA inside
            lambda q, k, v, *a, **kw: F.scaled_dot_product_attention(
                *(t.permute(1, 2, 0, 3) for t in (q, k, v)), is_causal=True, enable_gqa=True).permute(2, 0, 1, 3),
            dist.group.WORLD, scatter_idx=2, gather_idx=0)
        methods["deepspeed_ulysses"] = lambda q, k, v: local(q, k, v, 1)
    except Exception as e:  # noqa: BLE001 - reported, the other methods still run
        print(f"gpu-check: DeepSpeed-Ulysses not measured ({type(e).__name__}: {e})")
    out = {}
    for s in lengths:
        g = torch.Generator(device=device).manual_seed(s)
        full = [torch.randn(1, h, s, 128, generator=g, device=device, dtype=torch.bfloat16) for h in (32, 8, 8, 32)]
        for name, fn in methods.items():
            if time.monotonic() > deadline:
                out[f"{name}_{s}"] = "skipped: time budget"
                continue
            if name == "deepspeed_ulysses":
                c = s // world
                rank = dist.get_rank()
                xs = [t[:, :, rank * c:(rank + 1) * c].permute(2, 0, 1, 3).contiguous() for t in full]
            else:
                xs = [zigzag_shard(t, 2, mesh).contiguous() for t in full]
            try:
                torch.cuda.reset_peak_memory_stats()
                sec = _time_fwdbwd(fn, xs[:3], xs[3])
                out[f"{name}_{s}"] = {"fwdbwd_s": sec, "tokens_per_s": s / sec,
                                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at 128k: reported per method
                out[f"{name}_{s}"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            torch.cuda.empty_cache()
    return out


def _stage3_run(out: Path, data: Path, init: str | None) -> None:
    """Stage 3, 50 steps, PyTorch's AdamW (the parent compares the loss curves): on the GPU when one is visible."""
    from longvila.pipelines.config import apply_overrides, get_stage
    from longvila.pipelines.stages import make_task
    from longvila.pipelines.trainer import train

    cfg = apply_overrides(get_stage(3), ["schedule.steps=50", "schedule.warmup_steps=5", "eval.set=",
                                         "checkpoint.every_steps=1000", "parallel.torch_adam=true"])
    train(cfg, make_task(cfg, data), out, init)


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "stage3" / "metrics.jsonl").read_text().splitlines()]


def stage3(out: Path, art: Path, deadline: float) -> dict:
    if deadline - time.monotonic() < 240:
        return {"skipped": "time budget"}
    data = art / "data"
    if not (data / "short_sft" / "manifest.json").is_file():
        from longvila.data import sets as S

        data = out / "data"
        cfg = S.BuildConfig()
        cfg.short_sft.num_samples = cfg.short_sft.per_shard = 96
        S.build(cfg, data, sets=("short_sft",), workers=2)
    init = art / "ckpt" / "stage2"
    init_arg = ["--init", str(init)] if (init / "manifest.json").is_file() else []
    curves = {}
    for where, env in (("gpu", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        run = out / f"stage3-{where}"
        cmd = [sys.executable, "-m", "longvila.parallel.gpu_check", "--stage3-run", str(run), "--data", str(data),
               *init_arg]
        p = subprocess.run(cmd, env={**os.environ, "LONGVILA_QUIET": "1", **env}, capture_output=True, text=True,
                           timeout=max(30, deadline - time.monotonic()))
        if p.returncode:
            return {"ok": False, "failed": where, "stderr": p.stderr[-2000:]}
        curves[where] = _losses(run)
    diff = [abs(g - c) for g, c in zip(curves["gpu"], curves["cpu"], strict=True)]
    ok = all(d <= 0.02 + 0.02 * abs(c) for d, c in zip(diff, curves["cpu"], strict=True))
    return {"ok": ok, "max_loss_diff": max(diff), "init": str(init) if init_arg else "fresh tiny init",
            "loss_gpu": curves["gpu"], "loss_cpu": curves["cpu"]}


def needle(out: Path, art: Path, deadline: float) -> dict:
    ckpt = art / "ckpt" / "stage5"
    if not (ckpt / "manifest.json").is_file():
        return {"skipped": f"no stage-5 checkpoint at {ckpt} (run make train-all-stages first)"}
    if deadline - time.monotonic() < 120:
        return {"skipped": "time budget"}
    cmd = [sys.executable, "-m", "longvila.cli", "eval", "needle", "--ckpt", str(ckpt), "--frames", "6000",
           "--nproc", "1", "--out", str(out / "needle")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline - time.monotonic())
    except subprocess.TimeoutExpired:
        return {"ok": False, "failed": "time budget ran out during the grid"}
    res = out / "needle" / "needle-6000.json"
    if p.returncode or not res.is_file():
        return {"ok": False, "stderr": p.stderr[-2000:]}
    return {"ok": True, "accuracy": json.loads(res.read_text())["metrics"].get("accuracy")}


def _torchrun_checks(out: Path, n: int, budget: float) -> dict:
    """Exactness and throughput on all ``n`` GPUs, under torchrun."""
    path = out / f"checks-{n}gpu.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
           "longvila.parallel.gpu_check", "--exactness-json", str(path), "--budget-s", str(int(budget))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 60)
    if p.returncode or not path.is_file():
        return {"exactness": [{"world": n, "ok": False, "stderr": p.stderr[-2000:]}], "throughput": {}}
    return json.loads(path.read_text())


def _summary(report: dict) -> tuple[str, dict, bool]:
    ex = report["exactness"]
    done = [r for r in ex if "ok" in r]
    lines = ["| part | result |", "| --- | --- |"]
    fails = [r for r in done if not r["ok"]]
    failing = ", ".join(f"{r.get('backend')} {r.get('dtype')} {r.get('layout')}" for r in fails)
    lines.append(f"| exactness | {len(done) - len(fails)}/{len(done)} checks pass"
                 + (f"; failing: {failing}" if fails else "") + f" ({len(ex) - len(done)} skipped) |")
    s3, nd = report["stage3"], report["needle"]
    lines.append(f"| stage 3, 50 steps | {s3.get('skipped') or ('pass' if s3['ok'] else 'FAIL')}"
                 + (f", max loss diff {s3['max_loss_diff']:.4f}" if "max_loss_diff" in s3 else "") + " |")
    lines.append(f"| needle 6000 | {nd.get('skipped') or ('pass' if nd['ok'] else 'FAIL')}"
                 + (f", accuracy {nd['accuracy']:.3f}" if nd.get("accuracy") is not None else "") + " |")
    metrics = {"exactness_checks": len(done), "exactness_failures": len(fails), "gpus": report["gpus"]}
    if "max_loss_diff" in s3:
        metrics["stage3_max_loss_diff"] = s3["max_loss_diff"]
    if nd.get("accuracy") is not None:
        metrics["needle_accuracy"] = nd["accuracy"]
    for key, val in report["throughput"].items():
        shown = f"{val['tokens_per_s']:,.0f} tokens/s" if isinstance(val, dict) else val
        lines.append(f"| throughput {key} | {shown} |")
        if isinstance(val, dict):
            metrics[f"tokens_per_s_{key}"] = val["tokens_per_s"]
    ok = not fails and s3.get("ok", True) and nd.get("ok", True)
    return "\n".join(lines), metrics, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longvila.parallel.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/gpu-check", help="output folder")
    ap.add_argument("--artifacts", default="artifacts", help="where make's data and checkpoints are")
    ap.add_argument("--budget-s", type=float, default=570, help="wall-clock budget of the whole run")
    ap.add_argument("--publish", action="store_true", help="also write leaderboards/results/gpu-check.json")
    ap.add_argument("--exactness-json", help=argparse.SUPPRESS)  # torchrun worker mode
    ap.add_argument("--stage3-run", help=argparse.SUPPRESS)  # one stage-3 run (parent compares)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage3_run:
        _stage3_run(Path(args.stage3_run), Path(args.data), args.init)
        return 0
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = _init(world)
    if args.exactness_json:  # under torchrun: all GPUs, half the budget each
        rows = exactness(world, t0 + 0.5 * args.budget_s)
        thr = throughput(world, deadline)
        if rank == 0:
            Path(args.exactness_json).write_text(json.dumps({"exactness": rows, "throughput": thr}, indent=1))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = torch.cuda.device_count()
    report = {"gpus": n, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "backends": _installed()}
    report["exactness"] = exactness(1, t0 + 0.2 * args.budget_s)
    report["throughput"] = {f"1gpu_{k}": v for k, v in throughput(1, t0 + 0.35 * args.budget_s).items()}
    if n > 1:
        multi = _torchrun_checks(out, n, 0.2 * args.budget_s)
        report["exactness"] += multi["exactness"]
        report["throughput"].update({f"{n}gpu_{k}": v for k, v in multi["throughput"].items()})
    report["stage3"] = stage3(out, Path(args.artifacts), t0 + 0.75 * args.budget_s)
    report["needle"] = needle(out, Path(args.artifacts), deadline)
    report["seconds"] = round(time.monotonic() - t0, 1)
    table, metrics, ok = _summary(report)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
    print(table)
    print(f"gpu-check: {'all checks pass' if ok else 'FAILED'} in {report['seconds']} s; details in "
          f"{out / 'gpu-check.json'}")
    if args.publish:
        from longvila.leaderboards.results import write_result

        path = write_result("gpu-check", "gpu_check", metrics, details=report, command="make gpu-check",
                            config={"device": report["device"], "gpus": n, "backends": report["backends"]})
        print(f"gpu-check: leaderboard result {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
