"""The MM-SP benchmark (``longvila parallel bench``): attention variants and frame sharding, measured in one
run on this machine, printed as a table, written as a result file and a plot.

Attention (same inputs, causal, fp32, B=1, 4 heads x 64): the one-process SDPA flash kernel on one thread
(the reference), the basic ring on a contiguous split, DeepSpeed-Ulysses ``DistributedAttention`` around
the same flash kernel, and ours (zigzag ring, Ulysses, 2D), on 2 and 4 ranks with one thread each, forward
and forward+backward. Parallel efficiency = reference time / (N x time). Times are the slowest rank's
(barrier before), as wall time and as CPU time: on a machine shared with other work only the CPU time
is stable (it still counts imbalance and extra work, not time spent waiting for a core); peak memory is each rank's peak RSS growth during the method (the kernel's
peak is reset through /proc/self/clear_refs before each method).

Frames (a video-heavy packed batch through the tiny VLM): per-rank encoder frames (max / mean) and the
step time (forward+backward) of modality-aware balanced sharding vs naive token-position sharding.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .launch import run_distributed
from .mesh import ParallelDims, build_mesh

HEADS, HEAD_DIM = 4, 64


@dataclass
class BenchConfig:
    seq_lens: list[int] = field(default_factory=lambda: [8192, 16384])
    worlds: list[int] = field(default_factory=lambda: [2, 4])
    reps: int = 2  # timed repetitions per measurement (best kept); 1 at >= 32k
    frames_batch: tuple[int, int] = (192, 1024)  # (frames, tokens) of the video-heavy packed batch
    seed: int = 0


def _reset_peak() -> int:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss("VmRSS")


def _rss(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _inputs(s: int, seed: int):
    g = torch.Generator().manual_seed(seed + s)
    q, k, v, do = (torch.randn(1, HEADS, s, HEAD_DIM, generator=g) for _ in range(4))
    return q, k, v, do


def _local_flash(q, k, v):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]


def _timed(fn, group=None) -> tuple[float, float]:
    """(wall s, CPU s) of ``fn()``, each the maximum over the ranks of ``group`` (barrier first)."""
    if group is not None:
        dist.barrier(group=group)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    dt = torch.tensor([time.perf_counter() - w0, time.process_time() - c0], dtype=torch.float64)
    if group is not None:
        dist.all_reduce(dt, op=dist.ReduceOp.MAX, group=group)
    return float(dt[0]), float(dt[1])


def _measure(fn, q, k, v, do, reps: int, group=None) -> dict:
    """Best-of-reps wall and CPU time of forward and of forward+backward (slowest rank), peak RSS growth.

    CPU time (``time.process_time``, one intra-op thread per rank) is what the other processes sharing the
    cores cannot inflate, so on a busy machine it is the figure to read; wall time includes waiting.
    """
    res = {f"{m}_{u}": float("inf") for m in ("fwd", "fwdbwd") for u in ("s", "cpu_s")}
    base = _reset_peak()
    for _ in range(reps):
        for mode in ("fwd", "fwdbwd"):
            args = [t.detach().clone().requires_grad_(mode == "fwdbwd") for t in (q, k, v)]
            if mode == "fwd":
                def step(args=args):
                    with torch.no_grad():
                        fn(*args)
            else:
                def step(args=args):
                    fn(*args).backward(do)
            wall, cpu = _timed(step, group)
            res[f"{mode}_s"] = min(res[f"{mode}_s"], wall)
            res[f"{mode}_cpu_s"] = min(res[f"{mode}_cpu_s"], cpu)
    peak = torch.tensor([(_rss("VmHWM") - base) / 2**20], dtype=torch.float64)
    if group is not None:
        peaks = [torch.zeros_like(peak) for _ in range(dist.get_world_size(group))]
        dist.all_gather(peaks, peak, group=group)
        res["peak_mib_per_rank"] = [round(float(p), 1) for p in peaks]
    else:
        res["peak_mib_per_rank"] = [round(float(peak), 1)]
    return res


WARMUP_LEN = 512


def reference_worker(rank: int, world: int, cfg: BenchConfig) -> dict:
    def ref(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    out = {}
    for s in [WARMUP_LEN, *cfg.seq_lens]:
        out[s] = _measure(ref, *_inputs(s, cfg.seed), cfg.reps if s < 32768 else 1)
    del out[WARMUP_LEN]
    return out


def attention_worker(rank: int, world: int, cfg: BenchConfig) -> dict:
    import deepspeed
    from deepspeed.sequence.layer import DistributedAttention

    from .attention import sp_attention
    from .zigzag import zigzag_shard

    deepspeed.init_distributed(dist_backend="gloo")  # adopts the existing process group
    layouts = {"zigzag_ring": (1, world), "ulysses": (world, 1)}
    if world == 4:
        layouts["2d_u2r2"] = (2, 2)
    meshes = {name: build_mesh(ParallelDims(1, u, r, world)) for name, (u, r) in layouts.items()}
    ring_mesh = meshes["zigzag_ring"]
    ds_attn = DistributedAttention(
        lambda q, k, v, *a, **kw: _local_flash(*(t.permute(1, 2, 0, 3) for t in (q, k, v))).permute(2, 0, 1, 3),
        dist.group.WORLD, scatter_idx=2, gather_idx=0,
    )
    out: dict = {}
    # the first length is a warm-up (one-time costs: thread pools, gloo buffers), not reported
    for s in [WARMUP_LEN, *cfg.seq_lens]:
        q, k, v, do = _inputs(s, cfg.seed)
        reps = cfg.reps if s < 32768 else 1
        c = s // world
        contiguous = [t[:, :, rank * c : (rank + 1) * c].contiguous() for t in (q, k, v, do)]
        row = {"basic_ring": _measure(
            lambda q, k, v: sp_attention(q, k, v, ring_mesh, ring="contiguous"), *contiguous, reps, dist.group.WORLD)}
        # DeepSpeed-Ulysses takes (S/N, B, H, D) shards
        seq_first = [t.permute(2, 0, 1, 3).contiguous() for t in contiguous]
        row["deepspeed_ulysses"] = _measure(lambda q, k, v: ds_attn(q, k, v, 1), *seq_first, reps, dist.group.WORLD)
        for name, mesh in meshes.items():
            shards = [zigzag_shard(t, 2, mesh).contiguous() for t in (q, k, v, do)]
            row[name] = _measure(lambda q, k, v, m=mesh: sp_attention(q, k, v, m), *shards, reps, dist.group.WORLD)
        out[s] = row
    del out[WARMUP_LEN]
    return out


def frames_worker(rank: int, world: int, cfg: BenchConfig) -> dict:
    from longvila.model import LongVILAForCausalLM, tiny_config

    from .hf import apply_sequence_parallel
    from .mmsp import mmsp_forward

    mesh = build_mesh(ParallelDims(1, 1, world, world))
    torch.manual_seed(cfg.seed)
    model = LongVILAForCausalLM(tiny_config()).float()
    apply_sequence_parallel(model, mesh)
    batch = video_heavy_batch(model, *cfg.frames_batch, seed=cfg.seed)
    out = {}
    for mode in ("balanced", "token"):
        walls, cpus = [], []
        for _ in range(1 + cfg.reps):  # first is warm-up
            model.zero_grad(set_to_none=True)
            holder: dict = {}

            def step(holder=holder, mode=mode):
                holder["res"] = mmsp_forward(model, batch, mesh, frame_sharding=mode)
                holder["res"].loss.backward()
            wall, cpu = _timed(step, dist.group.WORLD)
            walls.append(wall)
            cpus.append(cpu)
        res = holder["res"]
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([res.frames_encoded]))
        counts = [int(c) for c in counts]
        out[mode] = {"step_s": min(walls[1:]), "step_cpu_s": min(cpus[1:]), "frames_per_rank": counts,
                     "max_over_mean": max(counts) / (sum(counts) / world)}
    return out


def video_heavy_batch(model, n_frames: int, length: int, seed: int = 0) -> dict:
    """One packed row of ``length`` tokens: a long video sample first (all ``n_frames`` frames), then
    text-only samples, the shape that makes token-position sharding of the encoder unbalanced."""
    g = torch.Generator().manual_seed(seed)
    img = model.config.image_token_id
    video = torch.cat([torch.randint(20, 400, (4,), generator=g), torch.full((n_frames,), img),
                       torch.randint(20, 400, (32,), generator=g)])
    rest = length - video.numel()
    if rest < 8:
        raise ValueError(f"frames_batch: {n_frames} frames need more than {length} tokens")
    texts = [rest // 2, rest - rest // 2]
    ids = torch.cat([video] + [torch.randint(20, 400, (n,), generator=g) for n in texts])[None]
    pos = torch.cat([torch.arange(video.numel())] + [torch.arange(n) for n in texts])[None]
    labels = ids.clone()
    labels[ids == img] = -100
    s = model.config.image_size
    return {"input_ids": ids, "labels": labels, "position_ids": pos,
            "pixel_values": torch.randn(n_frames, 3, s, s, generator=g)}


def run_bench(cfg: BenchConfig, out_dir: str | os.PathLike, publish: bool = False) -> dict:
    """Run every measurement; write table, JSON result and plot under ``out_dir``; return the summary."""
    from longvila.utils import progress

    out_dir = Path(out_dir)
    steps = ["reference"] + [f"attention-{w}" for w in cfg.worlds] + [f"frames-{w}" for w in cfg.worlds]
    raw: dict = {}
    for step in progress(steps, desc="sp bench", unit="run"):
        kind, _, w = step.partition("-")
        if kind == "reference":
            raw["reference"] = run_distributed(reference_worker, 1, cfg, timeout=3600, threads=1)[0]
        elif kind == "attention":
            raw[step] = run_distributed(attention_worker, int(w), cfg, timeout=3600, threads=1)[0]
        else:
            raw[step] = run_distributed(frames_worker, int(w), cfg, timeout=3600, threads=1)[0]
    from .bench_report import report

    return report(asdict(cfg), raw, out_dir, publish)
