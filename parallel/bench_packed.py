"""Packed-row attention benchmark (``longvila parallel bench-packed``): one process, one packed training row
(many short samples), causal attention that must not cross sample boundaries, forward+backward, three ways
on the same inputs:

- masked SDPA: one attention over the whole row with an (L, L) boolean mask (what a stock ``sdpa`` layer
  does with a 4D packed-sample mask; every pair of the row is computed, then masked);
- SDPA per sample: one causal SDPA call per sample on views of the row, outputs concatenated (autograd
  backward);
- ours: the ring engine on one rank (``zigzag_ring_attention``, what ``sp_attention`` runs there), whose
  block kernel computes each sample's block only (its per-sample plan) and has its own backward.

Rows are shaped like the recipe's: stage 2 packs ~40-token captions and cards around a few longer
samples. Prints times and ratios against masked SDPA (and each method's largest difference from it), with
the machine.

Then the whole training step of the tiny VLM (``mmsp_forward`` + backward, one rank) on a row of the recipe's
pointer questions (``datasource.pointer_sample``, loss on one letter each), with the LM head and its
cross-entropy over every position against at the labelled positions alone (``labelled_logits``, what the
stages train with), and the loss difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from longvila.utils import machine_info

from .kernels import segment_runs
from .ring_attn import zigzag_ring_attention

HEADS, HEAD_DIM = 4, 64


def packed_lengths(total: int, seed: int = 0) -> list[int]:
    """Sample lengths of one row: mostly 20-60 tokens, one sample in eight 150-400, summing to ``total``."""
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while sum(out) < total:
        long = torch.randint(8, (1,), generator=g).item() == 0
        lo, hi = (150, 400) if long else (20, 60)
        out.append(int(torch.randint(lo, hi, (1,), generator=g)))
    out[-1] -= sum(out) - total
    return [n for n in out if n > 0]


def _seg(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]


def _masked(q, k, v, seg):
    s = seg.shape[1]
    mask = (seg[0][:, None] == seg[0][None, :]) & torch.ones(s, s, dtype=torch.bool).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _per_sample(q, k, v, seg):
    return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True)
                      for _, a, b in segment_runs(seg[0])], dim=2)


METHODS = {
    "masked SDPA": _masked,
    "SDPA per sample": _per_sample,
    "ours (block kernel, per-sample plan)": lambda q, k, v, seg: zigzag_ring_attention(q, k, v, None, segment_ids=seg),
}


def _time(fn, q, k, v, seg, reps: int) -> float:
    best = float("inf")
    for _ in range(reps + 1):  # the first call warms up
        a = [t.clone().requires_grad_() for t in (q, k, v)]
        t0 = time.perf_counter()
        fn(*a, seg).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def run(row_tokens: list[int], reps: int = 3, seed: int = 0) -> dict:
    rows = []
    for total in row_tokens:
        lengths = packed_lengths(total, seed)
        seg = _seg(lengths)
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, HEADS, total, HEAD_DIM, generator=g) for _ in range(3))
        times = {name: _time(fn, q, k, v, seg, reps) for name, fn in METHODS.items()}
        ref = _masked(q, k, v, seg)
        err = {name: float((fn(q, k, v, seg) - ref).abs().max()) for name, fn in METHODS.items()}
        rows.append({"tokens": total, "samples": len(lengths), "seconds": times, "max_abs_diff": err})
    return {"machine": machine_info(), "heads": HEADS, "head_dim": HEAD_DIM, "rows": rows}


def head_step(questions: int = 32, reps: int = 3, seed: int = 0) -> dict:
    """Seconds of one tiny-VLM training step (forward + backward) on a row of ``questions`` pointer questions,
    with the LM head over every position and at the labelled positions only; and both losses."""
    import numpy as np

    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config
    from longvila.pipelines import datasource as ds

    from .hf import apply_sequence_parallel
    from .mmsp import mmsp_forward

    torch.manual_seed(seed)
    model = LongVILAForCausalLM(tiny_config())
    apply_sequence_parallel(model)
    proc = LongVILAProcessor.from_config(model.config)
    rng = np.random.default_rng(seed)
    batch = ds.pack([ds.pointer_sample(rng, proc, ds.pointer_words()) for _ in range(questions)])
    out: dict = {"questions": questions, "tokens": int(batch["input_ids"].shape[1]),
                 "labelled": int((batch["labels"] != -100).sum()), "seconds": {}, "loss": {}}
    for name, labelled in (("every position", False), ("labelled positions", True)):
        best = float("inf")
        for _ in range(reps + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = mmsp_forward(model, batch, labelled_logits=labelled).loss
            loss.backward()
            best = min(best, time.perf_counter() - t0)
        out["seconds"][name], out["loss"][name] = best, float(loss.detach())
    return out


def report(result: dict) -> str:
    names = list(METHODS)
    m = result["machine"]
    lines = [f"packed-row causal attention, fwd+bwd, fp32, {result['heads']} heads x {result['head_dim']}; "
             f"{m['cpu']}, {m['torch_threads']} threads",
             "| tokens (samples) | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
    for r in result["rows"]:
        ref = r["seconds"][names[0]]
        cells = [f"{r['seconds'][n] * 1e3:.1f} ms ({ref / r['seconds'][n]:.1f}x)" for n in names]
        lines.append(f"| {r['tokens']} ({r['samples']}) | " + " | ".join(cells) + " |")
    worst = max(e for r in result["rows"] for e in r["max_abs_diff"].values())
    lines.append(f"largest |output - masked SDPA| over all rows and methods: {worst:.1e}")
    h = result.get("head")
    if h:
        full, lab = h["seconds"]["every position"], h["seconds"]["labelled positions"]
        lines += ["", f"tiny-VLM training step (fwd+bwd, one rank) on {h['questions']} pointer questions "
                  f"({h['tokens']} tokens, {h['labelled']} labelled):",
                  "| LM head over every position | at the labelled positions |", "| --- | --- |",
                  f"| {full * 1e3:.1f} ms | {lab * 1e3:.1f} ms ({full / lab:.2f}x) |",
                  f"loss {h['loss']['every position']:.6f} vs {h['loss']['labelled positions']:.6f}"]
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", default="1024,4096", help="comma-separated packed-row lengths")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (best kept)")
    p.add_argument("--json", default=None, help="also write the result here")


def run_cli(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    try:
        tokens = [int(t) for t in a.tokens.split(",")]
    except ValueError:
        p.error(f"--tokens: comma-separated integers, got {a.tokens!r}")
    if any(t < 2 for t in tokens):
        p.error(f"--tokens: each row needs at least 2 tokens, got {a.tokens!r}")
    result = run(tokens, a.reps)
    result["head"] = head_step(reps=a.reps)
    print(report(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


__all__ = ["add_args", "head_step", "packed_lengths", "report", "run", "run_cli"]
