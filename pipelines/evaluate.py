"""Quick held-out evaluation before and after stages 3 and 5: short-video QA accuracy (exact match), with
chance, and the held-out loss (mean cross-entropy per answer token, as in training).

Design choices:
- Teacher-forced exact match: the prompt (video + question, ending with the assistant header) is followed
  by the reference answer; a question counts as right when the argmax at every answer token (and its
  ``<|im_end|>``) is the reference token. That is greedy decoding's answer without the decode loop.
- Chance is stated two ways, computed from the evaluated questions themselves: uniform guessing among the
  answers seen for the question's type (``chance``), and always giving the type's most common answer
  (``majority``). Per-type accuracies are reported too; a type whose questions all share one answer is
  named (``single_answer_types``, and a warning), since its accuracy says nothing.
- The questions are split over all ranks (any layout), each rank runs plain one-rank attention, and the
  counts are summed; the model's SP attention is switched back to the stage mesh afterwards.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from longvila.pipelines.datasource import _image, frame_indices

IM_END = "<|im_end|>"
log = logging.getLogger(__name__)


def qa_pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs of a LLaVA-style record; the video placeholder is stripped."""
    conv = record.get("conversations")
    if not isinstance(conv, list):
        raise ValueError(f"sample {record.get('id')!r}: no conversations list")
    pairs = []
    for h, g in zip(conv[0::2], conv[1::2], strict=False):
        if h.get("from") != "human" or g.get("from") != "gpt":
            raise ValueError(f"sample {record.get('id')!r}: turns are not human/gpt pairs")
        q = h["value"].replace("<video>", "").replace("<image>", "").strip()
        pairs.append((q, g["value"].strip()))
    return pairs


def _score(model, processor, pixel_values: torch.Tensor, question: str, answer: str) -> tuple[bool, float, int]:
    """(exact match, summed cross-entropy over the answer tokens, number of answer tokens)."""
    device = next(model.parameters()).device  # the rank's GPU under DeepSpeed; inputs are built on the CPU
    prompt = processor.build_prompt(question, pixel_values.shape[0]).to(device)
    ans = torch.tensor(processor._ids(answer + IM_END), dtype=torch.long, device=device)
    ids = torch.cat([prompt, ans])[None]
    logits = model(input_ids=ids, pixel_values=pixel_values.to(device)).logits[0]
    at = logits[prompt.shape[0] - 1: ids.shape[1] - 1].float()
    ce = torch.nn.functional.cross_entropy(at, ans, reduction="sum")
    return bool(torch.equal(at.argmax(-1), ans)), float(ce), int(ans.numel())


def short_video_qa(model, set_dir: Path, frames: int, limit: int, ctx) -> dict[str, Any]:
    """Exact-match accuracy on a held-out QA set folder (webdataset shards + manifest)."""
    from longvila.data.shards import iter_samples
    from longvila.data.video_io import read_frames
    from longvila.model import LongVILAProcessor
    from longvila.parallel.hf import apply_sequence_parallel
    from longvila.parallel.mesh import SPMesh

    processor = LongVILAProcessor.from_config(model.config)
    items = []
    for sample in iter_samples(set_dir):
        rec = json.loads(sample["json"]) if isinstance(sample["json"], bytes | str) else sample["json"]
        for q, a in qa_pairs(rec):
            items.append((sample, rec, q, a))
            if limit and len(items) >= limit:
                break
        if limit and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{set_dir}: no questions to evaluate")
    apply_sequence_parallel(model, SPMesh.single())
    right = torch.zeros(len(items))
    ce = torch.zeros(2, dtype=torch.float64)  # summed answer-token cross-entropy, answer tokens
    for i in range(ctx.rank, len(items), ctx.world):
        sample, rec, q, a = items[i]
        if "mp4" in sample:  # uniform over the video (all frames of a shorter one); no peeking at events
            allf = read_frames(sample["mp4"])
            arr = allf[frame_indices(len(allf), frames)]
        else:
            arr = _image(sample["jpg"])
        pixels = processor.preprocess_frames(arr)
        ok, loss, n_tok = _score(model, processor, pixels, q, a)
        right[i] = float(ok)
        ce += torch.tensor([loss, n_tok], dtype=torch.float64)
    if dist.is_initialized() and ctx.world > 1:
        from longvila.parallel.comm import collective_device

        dev = collective_device()
        right, ce = right.to(dev), ce.to(dev)
        dist.all_reduce(right)
        dist.all_reduce(ce)
        right, ce = right.cpu(), ce.cpu()
    if ctx.mesh is not None:
        apply_sequence_parallel(model, ctx.mesh)

    typed = [(str(rec.get("type") or rec.get("question_type") or "all"), a) for _, rec, _, a in items]
    stats = qa_stats(typed, right.tolist())
    if stats["single_answer_types"]:
        log.warning("%s: every question of type(s) %s has the same answer; their accuracy says nothing",
                    set_dir, stats["single_answer_types"])
    return {
        "set": set_dir.name, "questions": len(items), "frames": frames, "accuracy": float(right.mean()),
        "loss": float(ce[0] / ce[1]),  # mean cross-entropy per answer token (with <|im_end|>), the training loss
        **stats, "metric": "exact match, teacher-forced argmax over the answer tokens",
    }


POINTER_EVAL_SEED = 20261203  # not a training stream's seed: the questions are drawn apart from training


def pointer_qa(model, set_dir: Path | None, questions: int, ctx, seed: int = POINTER_EVAL_SEED) -> dict[str, Any]:
    """Held-out accuracy on text pointer questions (``datasource.pointer_sample``: "Which option is W?" in the
    VideoMME prompt, answered with the letter; teacher-forced argmax at the letter), ``questions`` over single
    words and, when ``set_dir`` is given, as many over that set's option texts. Chance is 25%. It measures the
    letter binding of the multiple-choice protocol alone, at any stage (the LLM needs no video for it)."""
    import numpy as np

    from longvila.model import LongVILAProcessor
    from longvila.parallel.hf import apply_sequence_parallel
    from longvila.parallel.mesh import SPMesh
    from longvila.pipelines import datasource as ds

    processor = LongVILAProcessor.from_config(model.config)
    levels = {"words": ds.pointer_words()}
    if set_dir is not None:
        texts = ds.option_texts(ds.load_pool(str(Path(set_dir).parent), (Path(set_dir).name,)))
        if len(texts) >= 4:
            levels["options"] = texts
    device = next(model.parameters()).device
    apply_sequence_parallel(model, SPMesh.single())
    out: dict[str, Any] = {"questions": questions, "chance": 0.25,
                           "metric": "teacher-forced argmax at the letter of text pointer questions"}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, texts in levels.items():
            rng = np.random.default_rng([seed, len(name)])
            items = [ds.pointer_sample(rng, processor, texts) for _ in range(questions)]
            right = torch.zeros(questions)
            for i in range(ctx.rank, questions, ctx.world):
                ids, labels = items[i]["input_ids"].to(device), items[i]["labels"]
                at = int((labels != -100).nonzero()[0, 0])
                logits = model(input_ids=ids[None, :at]).logits[0, -1]
                right[i] = float(int(logits.argmax()) == int(labels[at]))
            if dist.is_initialized() and ctx.world > 1:
                from longvila.parallel.comm import collective_device

                right = right.to(collective_device())
                dist.all_reduce(right)
                right = right.cpu()
            out[name] = float(right.mean())
    model.train(was_training)
    if ctx.mesh is not None:
        apply_sequence_parallel(model, ctx.mesh)
    return out


def qa_stats(typed: list[tuple[str, str]], right: list[float]) -> dict[str, Any]:
    """Chance, majority and per-type figures of (question type, reference answer) pairs scored ``right``.

    ``chance``: guessing uniformly among the answers seen for the question's type; ``majority``: always the
    type's most common answer. A type whose questions all share one answer measures nothing (chance 100%):
    it is listed in ``single_answer_types`` so that it cannot hide in the overall figure."""
    if len(typed) != len(right) or not typed:
        raise ValueError(f"qa_stats: {len(typed)} questions, {len(right)} scores")
    by_type: dict[str, list[float]] = defaultdict(list)
    answers: dict[str, Counter] = defaultdict(Counter)
    for (t, a), r in zip(typed, right, strict=True):
        by_type[t].append(r)
        answers[t][a] += 1
    n = len(typed)
    return {
        "chance": sum(len(v) / len(answers[t]) for t, v in by_type.items()) / n,
        "majority": sum(answers[t].most_common(1)[0][1] for t in by_type) / n,
        "single_answer_types": sorted(t for t in by_type if len(answers[t]) == 1 and len(by_type[t]) > 1),
        "per_type": {t: {"n": len(v), "accuracy": sum(v) / len(v), "chance": 1 / len(answers[t]),
                         "majority": answers[t].most_common(1)[0][1] / len(v)}
                     for t, v in sorted(by_type.items())},
    }
