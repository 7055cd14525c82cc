"""The letter-binding probe: an LLM trained on text pointer questions alone, with a held-out curve.

    python -m longvila.pipelines.pointer_probe --steps 1500 --batch 64 --out probe.json
    python -m longvila.pipelines.pointer_probe --init artifacts/ckpt/stage2 --steps 500 --form no-header

It asks what the multiple-choice protocol needs of the LLM and nothing else: "Which option is W?" over four
options in the VideoMME prompt (``datasource.pointer_sample``), answered with the letter, loss on the letter
alone, fresh questions every step (``--form``: that prompt, the prompt without its instruction line, or
one line without the chat template). Every ``--eval-every`` steps it scores the same held-out questions
(``evaluate.POINTER_EVAL_SEED``) in the full VideoMME prompt and in the training form, by teacher-forced
argmax at the letter (chance 25%), first before any step (``--steps 0`` measures a checkpoint). The LLM is
the tiny default's, randomly initialised, or the language model of a checkpoint (``--init``), so the curve
shows where in the recipe the binding could be taught and at what cost. Options: single words (``words``), 3-digit codes (``codes``) or a set's option
texts (``options`` with ``--data SET_DIR``).

Design choices:
- The samples are the recipe's own (``pointer_sample``), so a curve measured here is the one a curriculum
  phase with ``pointer=1.0`` would follow on one rank; batches are right-padded rows with an attention mask,
  which gives each question the plain causal attention of a packed row.
- One process, ``torch.set_num_threads(--threads)``; the result JSON holds the arguments and the curve.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longvila.pipelines.config import POINTER_FORMS as FORMS
from longvila.utils import atomic_write_json


def _texts(kind: str, data: str | None) -> tuple[str, ...]:
    from longvila.pipelines import datasource as ds

    if kind == "words":
        return ds.pointer_words()
    if kind == "codes":
        return tuple(f"{i:03d}" for i in range(1000))
    if kind == "options":
        if not data:
            raise ValueError("--texts options needs --data SET_DIR (a set with four-option questions)")
        texts = ds.option_texts(ds.load_pool(str(Path(data).parent), (Path(data).name,)))
        if len(texts) < 4:
            raise ValueError(f"{data}: fewer than four distinct option texts")
        return texts
    raise ValueError(f"--texts {kind!r}: choose words, codes or options")


def _batch(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, length = len(items), max(int(it["input_ids"].shape[0]) for it in items)
    ids = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for j, it in enumerate(items):
        k = int(it["input_ids"].shape[0])
        ids[j, :k], labels[j, :k], mask[j, :k] = it["input_ids"], it["labels"], 1
    return ids, labels, mask


def _accuracy(llm, batches) -> float:
    right = total = 0
    with torch.no_grad():
        for ids, labels, mask in batches:
            logits = llm(input_ids=ids, attention_mask=mask).logits
            at = (labels != -100).float().argmax(1)  # the letter's position
            rows = torch.arange(len(ids))
            right += int((logits[rows, at - 1].argmax(-1) == labels[rows, at]).sum())
            total += len(ids)
    return right / total




def run(steps: int = 1500, batch: int = 64, lr: float = 1e-3, warmup: int = 100, texts: str = "words",
        data: str | None = None, init: str | None = None, form: str = "videomme", eval_every: int = 100,
        eval_questions: int = 512, seed: int = 0, threads: int = 1, out: str | None = None) -> dict:
    """Train on questions of ``form`` (``FORMS``) and return {"args", "curve": [(step, accuracy in the VideoMME
    prompt, accuracy in the training form)], "seconds"}."""
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config
    from longvila.pipelines import datasource as ds
    from longvila.pipelines.evaluate import POINTER_EVAL_SEED
    from longvila.utils import progress

    args = dict(steps=steps, batch=batch, lr=lr, warmup=warmup, texts=texts, data=data, init=init, form=form,
                eval_every=eval_every, eval_questions=eval_questions, seed=seed, threads=threads)
    # a curriculum of forms: "oneline:1250,videomme" (the last form runs to the end)
    sched = []
    for part in form.split(","):
        name, _, n = part.partition(":")
        if name not in FORMS or (n and not n.isdigit()):
            raise ValueError(f"--form {form!r}: choose one of {', '.join(FORMS)}, or a curriculum such as "
                             "oneline:1250,videomme")
        sched.append((name, int(n) if n else None))
    last = sched[-1][0]

    def form_at(step: int) -> str:
        start = 0
        for name, n in sched:
            if n is None or step < start + n:
                return name
            start += n
        return last

    if steps < 0 or batch < 1 or lr <= 0 or eval_every < 1 or eval_questions < 1:
        raise ValueError(f"pointer probe: needs steps >= 0, batch >= 1, lr > 0, eval_every >= 1, "
                         f"eval_questions >= 1; got {args}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    pool = _texts(texts, data)
    model = LongVILAForCausalLM.from_pretrained(init) if init else LongVILAForCausalLM(tiny_config())
    llm, proc = model.language_model, LongVILAProcessor.from_config(model.config)
    def make(rng, kind):
        return ds.pointer_sample(rng, proc, pool, kind)

    held = np.random.default_rng([POINTER_EVAL_SEED, 1])
    evals = {kind: [_batch([make(held, kind) for _ in range(min(128, eval_questions - i))])
                    for i in range(0, eval_questions, 128)] for kind in dict.fromkeys(("videomme", sched[0][0]))}
    opt = torch.optim.AdamW(llm.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng([seed, 7])
    t0 = time.time()
    llm.eval()  # the starting point: what the LLM (random or a checkpoint's) already binds; --steps 0 stops there
    curve = [(0, round(_accuracy(llm, evals["videomme"]), 4), round(_accuracy(llm, evals[sched[0][0]]), 4))]
    llm.train()
    for step in progress(range(steps), desc="pointer probe", unit="step"):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
        ids, labels, mask = _batch([make(rng, form_at(step)) for _ in range(batch)])
        loss = llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            llm.eval()
            curve.append((step + 1, round(_accuracy(llm, evals["videomme"]), 4), round(_accuracy(llm, evals[sched[0][0]]), 4)))
            llm.train()
    result = {"args": args, "curve": curve, "chance": 0.25, "seconds": round(time.time() - t0, 1),
              "metric": "held-out teacher-forced argmax at the letter: (step, VideoMME prompt, first training form)"}
    if out:
        atomic_write_json(Path(out), result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m longvila.pipelines.pointer_probe", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--texts", default="words", help="words | codes | options (with --data)")
    p.add_argument("--data", help="a set folder whose four-option questions give the option texts")
    p.add_argument("--init", help="a checkpoint folder whose language model is trained (default: random tiny LLM)")
    p.add_argument("--form", default="videomme", help="training questions: videomme (the VideoMME chat prompt), "
                   "no-header (without its instruction line) or oneline (one line, no chat template)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-questions", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the result JSON here")
    a = p.parse_args(argv)
    try:
        r = run(a.steps, a.batch, a.lr, a.warmup, a.texts, a.data, a.init, a.form, a.eval_every,
                a.eval_questions, a.seed, a.threads, a.out)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"pointer probe: {e}", file=sys.stderr)
        return 2
    for step, acc, acc_form in r["curve"]:
        print(f"step {step:>6}  held-out {acc:.3f}  (in the training form {acc_form:.3f}; chance 0.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
