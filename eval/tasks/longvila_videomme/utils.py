"""lmms-eval hooks for the embedded VideoMME-format benchmark (tasks ``longvila_videomme``, letters, and
``longvila_videomme_ll``, option likelihood).

The benchmark folder is ``$LONGVILA_VIDEOMME_ROOT`` alone (default: the repository's
``artifacts/eval/videomme/bench``), so the task runs from any working directory. Prompt and letter
extraction come from ``longvila.eval.prompts`` so lmms-eval scores exactly as ``longvila eval videomme`` does. Per-duration accuracies aggregate only the questions of that duration
(NaN when a ``--limit`` run has none).
"""

import ast
import os
from pathlib import Path

from longvila.eval import prompts

ROOT_ENV = "LONGVILA_VIDEOMME_ROOT"
# where `make videomme` writes the benchmark, in the repository this file sits in (never the working directory)
DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "artifacts" / "eval" / "videomme" / "bench"


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).resolve()


# the question table, read by the task YAML (`!function utils.TABLE`) when lmms-eval loads the task
TABLE = str(root() / "videomme.json")


def video_path(doc) -> str:
    path = root() / "data" / f"{doc['videoID']}.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video of question {doc['question_id']} not found "
                                f"(set {ROOT_ENV} to the benchmark folder)")
    return str(path.resolve())


def doc_to_visual(doc):
    return [video_path(doc)]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return prompts.videomme_prompt(doc["question"], list(doc["options"]))


def _record(doc, pred):
    rec = {"question_id": doc["question_id"], "duration": doc["duration"], "pred": pred,
           "answer": doc["answer"], "correct": pred == doc["answer"]}
    return {"accuracy": rec, "acc_short": rec, "acc_medium": rec, "acc_long": rec}


def process_results(doc, results):
    return _record(doc, prompts.extract_letter(results[0]))


# ---- task longvila_videomme_ll: the same questions scored by option likelihood (multiple_choice)
def doc_to_question(doc, lmms_eval_specific_kwargs=None):
    return doc["question"].strip()


def doc_to_choice(doc):
    return [prompts.option_text(o) for o in doc["options"]]


def doc_to_answer_index(doc):
    return prompts.OPTION_LETTERS.index(doc["answer"])


def _loss(r) -> float:
    # lmms-eval 0.7 hands loglikelihood results to process_results as their text, "(loss, is_greedy)"
    return float((ast.literal_eval(r) if isinstance(r, str) else r)[0])


def process_results_ll(doc, results):
    """results: one (loss, is_greedy) per option; the lowest loss is the answer (lmms-eval's convention)."""
    losses = [_loss(r) for r in results]
    return _record(doc, prompts.OPTION_LETTERS[losses.index(min(losses))])


def _acc(results, duration=None):
    sel = [r["correct"] for r in results if duration is None or r["duration"] == duration]
    return sum(sel) / len(sel) if sel else float("nan")


def aggregate_all(results):
    return _acc(results)


def aggregate_short(results):
    return _acc(results, "short")


def aggregate_medium(results):
    return _acc(results, "medium")


def aggregate_long(results):
    return _acc(results, "long")
