"""``longvila parallel``: the MM-SP layout planner and the benchmark.

    longvila parallel plan --heads 28 --kv-heads 4 --gpus-per-node 8 --nodes 4 --seq-len 1048576
    longvila parallel bench --out artifacts/bench/sp [--seq-lens 8192,16384,32768] [--worlds 2,4] [--publish]
"""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longvila parallel", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="choose Ulysses and ring degrees and explain the choice")
    p.add_argument("--heads", type=int, required=True, help="attention heads of the LLM")
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (default: heads)")
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    b = sub.add_parser("bench", help="attention variants and frame sharding (table, JSON result, plot)")
    b.add_argument("--out", required=True, help="output folder (table.md, sp-bench.json, plot)")
    b.add_argument("--seq-lens", type=_ints, default=[8192, 16384], help="comma-separated token counts")
    b.add_argument("--worlds", type=_ints, default=[2, 4], help="rank counts (each rank one thread)")
    b.add_argument("--reps", type=int, default=2, help="timed repetitions (best kept; 1 at >= 32k)")
    b.add_argument("--frames", type=int, default=192, help="frames in the video-heavy packed batch")
    b.add_argument("--publish", action="store_true", help="also write leaderboards/results/sp-bench.json")
    b.add_argument("--frames-tokens", type=int, default=1024, help="tokens of the video-heavy packed batch")
    from . import bench_packed

    bench_packed.add_args(sub.add_parser("bench-packed", help="packed-row attention: masked SDPA vs per-sample paths"))
    args = ap.parse_args(argv)

    if args.cmd == "plan":
        from .planner import plan_layout

        try:
            print(plan_layout(args.heads, args.kv_heads or args.heads, args.gpus_per_node, args.nodes, args.seq_len))
        except ValueError as e:
            ap.error(str(e))
        return 0

    if args.cmd == "bench-packed":
        return bench_packed.run_cli(ap, args)

    from .bench import HEADS, BenchConfig, run_bench

    for w in args.worlds:
        if w < 2 or HEADS % w:
            ap.error(f"--worlds: {w} ranks cannot split the benchmark's {HEADS} heads (Ulysses); use 2 or 4")
    cfg = BenchConfig(seq_lens=args.seq_lens, worlds=args.worlds, reps=args.reps,
                      frames_batch=(args.frames, args.frames_tokens))
    run_bench(cfg, args.out, publish=args.publish)
    return 0

