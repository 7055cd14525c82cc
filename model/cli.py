"""``longvila model``: rebuild the shipped tokenizer, and describe a configuration or a checkpoint.

  longvila model build-tokenizer [--out DIR]   retrain the BPE (deterministic) into model/tokenizer/ or DIR
  longvila model info tiny|paper|PATH          parameter counts per part, tokens per frame, sequence arithmetic
  longvila model bench-forward [--tokens N]    seconds per LLM forward of the tiny model on N tokens

``info`` builds named configs on the meta device (no memory, no weights) and reads a checkpoint folder's
``config.json`` only, so it is instant even at paper scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _named_or_saved_config(name: str):
    from transformers import AutoConfig

    from . import paper_config, tiny_config
    from .config import LongVILAConfig

    named = {"tiny": tiny_config, "paper": paper_config}
    if name in named:
        return named[name]()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"{name!r} is neither a named config {sorted(named)} nor a folder with config.json")
    cfg = AutoConfig.from_pretrained(str(path))
    if not isinstance(cfg, LongVILAConfig):
        raise ValueError(f"{path / 'config.json'}: model_type {cfg.model_type!r}, expected 'longvila'")
    return cfg


def info(name: str, frames: int = 6000) -> dict:
    """Parameter counts (vision tower, projector, LLM, total), tokens per frame and a sequence example."""
    import torch

    from .vlm import LongVILAForCausalLM

    cfg = _named_or_saved_config(name)
    with torch.device("meta"):
        model = LongVILAForCausalLM(cfg)
    count = {part: sum(p.numel() for p in getattr(model, part).parameters())
             for part in ("vision_tower", "mm_projector", "language_model")}
    count["total"] = sum(p.numel() for p in model.parameters())
    return {
        "config": name,
        "vision_backend": cfg.vision_config["backend"],
        "frame": f"{cfg.image_size}x{cfg.image_size}, patch {cfg.patch_size} -> {cfg.grid_size}x{cfg.grid_size} patches",
        "projector": cfg.projector,
        "tokens_per_frame": cfg.tokens_per_frame,
        "llm": f"{cfg.text_config.model_type}, hidden {cfg.text_config.hidden_size}, "
               f"{cfg.text_config.num_hidden_layers} layers, vocab {cfg.text_config.vocab_size}",
        "parameters": count,
        f"visual_tokens_for_{frames}_frames": frames * cfg.tokens_per_frame,
    }


def bench_forward(tokens: int = 6000, repeats: int = 3) -> dict:
    """Time the tiny LLM's forward pass (no grad, sdpa) on one sequence of ``tokens`` ids."""
    import time

    import torch

    from longvila.utils import machine_info

    from . import tiny_config
    from .vlm import LongVILAForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.text_config.max_position_embeddings = max(tokens, cfg.text_config.max_position_embeddings)
    llm = LongVILAForCausalLM(cfg).language_model.eval()
    ids = torch.randint(5, cfg.text_config.vocab_size, (1, tokens))
    times = []
    with torch.inference_mode():
        llm(input_ids=ids[:, :256], use_cache=False)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            llm(input_ids=ids, use_cache=False, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds_min": min(times), "seconds_all": times, "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longvila model", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-tokenizer", help="retrain the byte-level BPE on the world's text")
    b.add_argument("--out", default=None, help="output folder (default: the shipped model/tokenizer/)")
    i = sub.add_parser("info", help="parameter counts and tokens per frame of tiny | paper | a checkpoint")
    i.add_argument("name", help="tiny, paper, or a folder written by save_pretrained")
    i.add_argument("--frames", type=int, default=6000, help="frames for the sequence-length example")
    f = sub.add_parser("bench-forward", help="time the tiny LLM forward pass on a long sequence")
    f.add_argument("--tokens", type=int, default=6000)
    f.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    if args.cmd == "bench-forward":
        r = bench_forward(args.tokens, args.repeats)
        m = r["machine"]
        print(f"tiny LLM forward, {r['tokens']} tokens: {r['seconds_min']:.3f} s (best of "
              f"{len(r['seconds_all'])}: {', '.join(f'{t:.3f}' for t in r['seconds_all'])}) on "
              f"{m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}")
        return 0

    if args.cmd == "build-tokenizer":
        from .tokenizer import SHIPPED_DIR, build_tokenizer

        out = Path(args.out) if args.out else SHIPPED_DIR
        tok = build_tokenizer(out)
        print(f"tokenizer: {len(tok)} tokens -> {out}")
        return 0
    try:
        report = info(args.name, args.frames)
    except ValueError as e:
        print(f"longvila model info: {e}", file=sys.stderr)
        return 2
    for key, value in report.items():
        if key == "parameters":
            for part, n in value.items():
                print(f"  params.{part:<15} {n:>15,}")
        else:
            print(f"{key:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
