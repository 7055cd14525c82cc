"""``longvila eval``: needle in a haystack and the VideoMME frame sweep from the command line, on any model.

    longvila eval needle   [--model TYPE] --ckpt DIR --frames 6000 [--nproc 2] --out DIR
    longvila eval videomme [--model TYPE] --ckpt DIR --out DIR [--frames 8,16,32,...] [--videomme-root DIR]
    longvila eval videomme --lmms-model NAME --lmms-model-args ARGS --out DIR    # any lmms-eval model
    longvila eval build-videomme --out DIR      # only write the embedded benchmark (Video-MME layout)
    longvila eval build-needle --out DIR        # the needle grid as videos, for lmms-eval's own adapters

``--model``: longvila (this project's checkpoints, the default), qwen2_vl, qwen2_5_vl, llava_onevision,
llava_next_video, or auto (the checkpoint's config.json decides). With ``--nproc > 1`` the needle grid runs
on that many processes (gloo) and the long forward pass is sharded over them (MM-SP inference).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _ints(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"frame counts must be >= 1, got {s!r}")
    return vals


def _fractions(s: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {s!r}") from None
    if not vals or not all(0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"depths must be fractions in [0, 1], got {s!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
    from longvila.data.world import CARD_STYLES

    p = argparse.ArgumentParser(prog="longvila eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    from longvila.eval.adapters import LEVELS, MODEL_TYPES

    def model_arg(q):
        q.add_argument("--model", default="longvila", metavar="TYPE",
                       help=f"model adapter: {', '.join(MODEL_TYPES)} or auto (default longvila)")

    def publish_args(q, default_names: str):
        q.add_argument("--publish", action="store_true",
                       help="also write the leaderboard result (leaderboards/results, or $LONGVILA_RESULTS_DIR)")
        q.add_argument("--result-name", default=None,
                       help=f"with --publish: the result's name (default {default_names})")

    n = sub.add_parser("needle", help="needle in a haystack over (frame counts x depths)")
    model_arg(n)
    n.add_argument("--ckpt", required=True, help="checkpoint folder (save_pretrained)")
    n.add_argument("--frames", type=int, default=6000, help="largest haystack frame count")
    n.add_argument("--steps", type=int, default=20, help="number of frame counts up to --frames")
    n.add_argument("--depths", type=_fractions, default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   help="needle depths (comma-separated fractions of the haystack)")
    n.add_argument("--needles", type=int, default=5, help="needles (codes) per cell")
    n.add_argument("--nproc", type=int, default=1, help="ranks for the sharded forward pass")
    n.add_argument("--video", default=None, help="a video file as the haystack (default: held-out world video)")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--no-controls", action="store_true",
                   help="skip the no-needle controls, the reading-reference cells and the reference reader")
    n.add_argument("--reference-frames", type=int, default=32,
                   help="haystack frames of the reading-reference cells (0: the card alone)")
    n.add_argument("--reference-cards", type=int, default=4000,
                   help="training cards of the reference reader (a pixel SVM); 0 skips it")
    n.add_argument("--style", default="print", choices=CARD_STYLES,
                   help="needle cards printed, or handwritten by held-out writers")
    publish_args(n, "needle-FRAMES, -hand for handwriting")
    n.add_argument("--level", default="auto", choices=("auto", *LEVELS),
                   help="embedding: encode the haystack once and swap the needle's tokens in (where the adapter "
                        "allows); frame: place the needle among the frames and encode each row (every adapter)")
    n.add_argument("--needle-set", default=None,
                   help="a folder of your own needles (needles.json/.jsonl/.parquet: image, question, answer)")
    n.add_argument("--string-match", default=None, action=argparse.BooleanOptionalAction,
                   help="also score greedy replies by normalised string match (default: on for outside models)")
    n.add_argument("--out", required=True)
    v = sub.add_parser("videomme", help="VideoMME-format frame sweep (embedded benchmark or the real layout)")
    model_arg(v)
    v.add_argument("--ckpt", default=None, help="checkpoint folder (not with --lmms-model)")
    v.add_argument("--lmms-model", default=None, help="any lmms-eval model name instead of an adapter")
    v.add_argument("--lmms-model-args", default="", help="its model_args (e.g. pretrained=PATH)")
    v.add_argument("--lmms-frames-arg", default=None,
                   help="the lmms-eval model's frame-count argument (default: known for common models)")
    v.add_argument("--frames", type=_ints, default=(8, 16, 32, 64, 128, 256, 512, 1024, 2048))
    v.add_argument("--videomme-root", default=None, help="Video-MME layout folder (default: embedded set)")
    v.add_argument("--videos-per-duration", type=int, default=20, help="embedded set size")
    v.add_argument("--limit", type=int, default=None, help="first N questions only")
    v.add_argument("--no-blind", action="store_true")
    v.add_argument("--no-likelihood", action="store_true", help="skip option-likelihood scoring (letters only)")
    publish_args(v, "videomme, videomme-real with --videomme-root")
    v.add_argument("--out", required=True)
    b = sub.add_parser("build-videomme", help="write the embedded benchmark in the Video-MME layout")
    b.add_argument("--out", required=True)
    b.add_argument("--videos-per-duration", type=int, default=20)
    m = sub.add_parser("lmms", help="run lmms-eval and check that every task wrote its metrics")
    m.add_argument("--model", required=True, help="lmms-eval model name (ours: longvila_e2e)")
    m.add_argument("--model-args", default="", help="lmms-eval model_args")
    m.add_argument("--tasks", required=True, help="comma-separated tasks")
    m.add_argument("--include-path", default=None, help="task folder (default: this project's eval/tasks)")
    m.add_argument("--force-simple", action="store_true", help="lmms-eval's simple model class")
    m.add_argument("--limit", type=int, default=None)
    m.add_argument("--out", required=True)
    g = sub.add_parser("build-needle", help="write the needle grid as videos + a question table (lmms-eval task)")
    g.add_argument("--out", required=True)
    g.add_argument("--frames", type=int, default=64, help="largest haystack frame count")
    g.add_argument("--steps", type=int, default=3, help="number of frame counts up to --frames")
    g.add_argument("--depths", type=_fractions, default=(0.0, 0.5, 1.0), help="needle depths (comma-separated fractions)")
    g.add_argument("--needles", type=int, default=3, help="needles (codes) per cell")
    g.add_argument("--size", type=int, default=32, help="frame side in pixels (render at your model's input size)")
    g.add_argument("--style", default="print", choices=CARD_STYLES)
    g.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "longvila eval " + shlex.join(sys.argv[2:] if argv is None else argv)
    try:
        return _run(args, command)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming the file or field
        print(f"longvila eval {args.cmd}: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, command: str) -> int:
    if getattr(args, "result_name", None) is not None and not args.publish:
        raise ValueError("--result-name names a published leaderboard result: add --publish")
    if args.cmd == "needle":
        from longvila.eval import needle

        cfg = needle.NeedleConfig(out=args.out, frames=args.frames, steps=args.steps, needles=args.needles,
                                  seed=args.seed, video=args.video, controls=not args.no_controls,
                                  nproc=args.nproc, publish=args.publish, result_name=args.result_name,
                                  command=command,
                                  reference_cards=args.reference_cards, reference_frames=args.reference_frames,
                                  style=args.style, model_type=args.model, level=args.level, depths=args.depths,
                                  needle_set=args.needle_set, string_match=args.string_match)
        if args.nproc > 1:
            from longvila.eval.needle_sp import run_sharded

            summary = run_sharded(cfg, args.ckpt)
        else:
            summary = needle.run(cfg, ckpt=args.ckpt)
        ref = summary.get("read_accuracy")
        lo, hi = summary["accuracy_ci"]
        clo, chi = summary["accuracy_ci_by_code"] or (float("nan"),) * 2
        print(f"needle ({args.style}): accuracy {summary['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] over {summary['trials']} "
              f"needles (95% Wilson interval; [{clo:.3f}, {chi:.3f}] resampling codes), no-needle control "
              f"{summary['control_accuracy']:.3f} (chance {summary['chance']:.3f})"
              + (f", reading reference {ref:.3f} ({args.reference_frames}-frame haystack)" if ref is not None else "")
              + (f", on cards read there {summary['if_read_accuracy']:.3f} ({summary['if_read_trials']} needles)"
                 if summary.get("if_read_accuracy") is not None else "")
              + (f", reference reader {summary['reference_reader_accuracy']:.3f}"
                 if summary.get("reference_reader_accuracy") is not None else "") + "; "
              f"{summary['computed_cells']} cells computed, {summary['reused_cells']} reused, "
              f"{summary['seconds']:.0f} s -> {Path(args.out) / 'needle.json'}")
        print(f"  model {summary['model_type']} {summary['model_hash']} at {summary['level']} level"
              + (f"; greedy replies by string match {summary['string_accuracy']:.3f} (control "
                 f"{summary['string_control_accuracy']:.3f})" if summary.get("string_accuracy") is not None else ""))
        per_read = summary.get("if_read_per_frames") or {}
        for n, a in summary["accuracy_per_frames"].items():
            r = per_read.get(n)
            print(f"  {int(n):>6} frames: {a:.3f}" + (f"  (cards read in the reference: {r:.3f})" if r is not None else ""))
        return 0
    if args.cmd == "videomme":
        from longvila.eval import videomme

        if bool(args.ckpt) == bool(args.lmms_model):
            raise ValueError("give either --ckpt (with --model) or --lmms-model")
        cfg = videomme.VideoMMEConfig(
            out=args.out, frames=args.frames, root=args.videomme_root, blind=not args.no_blind, limit=args.limit,
            likelihood=not args.no_likelihood, model_type=args.model, lmms_model=args.lmms_model,
            lmms_model_args=args.lmms_model_args, lmms_frames_arg=args.lmms_frames_arg,
            embedded=videomme.EmbeddedConfig(out=str(Path(args.out) / "bench"),
                                             videos_per_duration=args.videos_per_duration),
            publish=args.publish, result_name=args.result_name, command=command)
        s = videomme.run(cfg, ckpt=args.ckpt)
        keys = ["all", "duration/short", "duration/medium", "duration/long"]
        print(f"videomme ({s['model_type']} {s['model_hash']}): {s['questions']} questions, chance {s['chance']:.2f}, "
              f"blind {s['blind']['all'] if s['blind'] else float('nan'):.3f}, {s['seconds']:.0f} s")
        def print_table(table):
            for n in s["frames"]:
                print(f"  {n:>6} " + " ".join(f"{table[str(n)].get(k, float('nan')):7.3f}" for k in keys))

        empty = {n: k for n, k in s["empty_replies"].items() if k}
        if empty:
            print("  warning: empty replies (frames: count) " + ", ".join(f"{n}: {k}" for n, k in empty.items())
                  + " -- check the model loads and takes this prompt", file=sys.stderr)
        print("  frames " + " ".join(f"{k.split('/')[-1]:>7}" for k in keys))
        print_table(s["table"])
        if s.get("table_ll"):
            bl = s["blind_ll"]["all"] if s["blind_ll"] else float("nan")
            print(f"  by option likelihood (question without options; blind {bl:.3f}):")
            print_table(s["table_ll"])
        print_intervals(s)
        return 0
    if args.cmd == "build-videomme":
        from longvila.eval import videomme

        path = videomme.build_embedded(videomme.EmbeddedConfig(out=args.out,
                                                               videos_per_duration=args.videos_per_duration))
        print(f"wrote {path}")
        return 0
    if args.cmd == "lmms":
        from longvila.eval.lmms_plugin import TASKS_DIR
        from longvila.eval.lmms_run import LmmsRunError, run_lmms

        try:
            res = run_lmms(args.model, args.model_args, args.tasks.split(","), args.out,
                           include_path=args.include_path or TASKS_DIR, force_simple=args.force_simple,
                           limit=args.limit)
        except LmmsRunError as e:
            print(f"longvila eval lmms: error: {e}", file=sys.stderr)
            return 1
        for task, r in res.items():
            print(f"{task} ({args.model}, {len(r['samples'])} docs): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()))
        return 0
    if args.cmd == "build-needle":
        from longvila.eval import needle_videos

        table = needle_videos.build(needle_videos.NeedleVideosConfig(
            out=args.out, frames=args.frames, steps=args.steps, depths=args.depths, needles=args.needles,
            size=args.size, style=args.style, seed=args.seed))
        print(f"wrote {table} (set {needle_videos.ROOT_ENV}={Path(args.out).resolve()} for the lmms-eval task "
              f"longvila_needle)")
        return 0
    return 2


def print_intervals(s: dict) -> None:
    """The VideoMME summary's 95% intervals (``videomme.intervals``), one line per frame count."""
    iv = s.get("intervals") or {}
    if not iv.get("table"):
        return

    def acc(name, n):
        a, ci = s[name][str(n)]["all"], iv[name][str(n)]["all"]
        return f"{a:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    def dif(d):
        return f"{d['estimate']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"

    ll = bool(iv.get("table_ll"))
    print(f"  {iv['level']:.0%} intervals over the questions (Wilson; differences by paired bootstrap):")
    print("  frames  letters" + (" " * 16 + "likelihood" + " " * 13 + "likelihood - letters" if ll else ""))
    for n in s["frames"]:
        print(f"  {n:>6}  {acc('table', n)}" + (f"  {acc('table_ll', n)}  {dif(iv['gap_ll'][str(n)])}" if ll else ""))
    for suffix, how in (("", "by letter"), ("_ll", "by likelihood")):
        g, b = iv.get("long_gain" + suffix), iv.get("long_best" + suffix)
        if g:
            print(f"  long split {how}: {g['from']} -> {g['to']} frames {dif(g)}; to its best count, {b['to']} "
                  f"frames, {dif(b)} (that count chosen on these questions)")


if __name__ == "__main__":
    sys.exit(main())
