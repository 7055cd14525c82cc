"""lmms-eval hooks for the needle grid written by ``longvila eval build-needle`` (``eval/needle_videos.py``).

The folder comes from ``$LONGVILA_NEEDLE_ROOT`` (default: ``artifacts/eval/needle-videos`` of the repository
this file sits in, never the working directory). The metric list is built from the folder's table when lmms-eval
loads the task (``!function utils.METRICS``): accuracy over the grid, ``acc@N`` for each frame count,
``acc_d<depth>`` for each depth, ``control`` (no needle) and ``acc_read`` (the reading reference). Replies are
scored by ``needle.string_match``, which tokenizers that group digits need.
"""

import json
import os
from pathlib import Path

from longvila.eval.needle import CONTROL, READ, string_match
from longvila.eval.needle_videos import ROOT_ENV
from longvila.eval.needle_videos import TABLE as TABLE_NAME

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "artifacts" / "eval" / "needle-videos"


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).resolve()


TABLE = str(root() / TABLE_NAME)


def doc_to_visual(doc):
    path = root() / doc["video"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: needle video {doc['id']} not found (set {ROOT_ENV} to the folder "
                                f"`longvila eval build-needle` wrote)")
    return [str(path)]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def _metric_names(doc) -> list[str]:
    if doc["kind"] == CONTROL:
        return ["control"]
    if doc["kind"] == READ:
        return ["acc_read"]
    return ["accuracy", f"acc@{doc['frames']}", f"acc_d{doc['depth']:.2f}"]


def _all_metric_names() -> list[str]:
    try:
        docs = json.loads(Path(TABLE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["accuracy", "control", "acc_read"]  # the table's absence is reported when the dataset loads
    names = {"accuracy": None}
    for d in sorted(docs, key=lambda d: (d["frames"], d["depth"] if d["depth"] is not None else -1)):
        names.update(dict.fromkeys(_metric_names(d)))
    return [*names, *[m for m in ("control", "acc_read") if m not in names]]


def process_results(doc, results):
    rec = {"id": doc["id"], "kind": doc["kind"], "frames": doc["frames"], "depth": doc["depth"],
           "reply": results[0], "answer": doc["answer"], "correct": string_match(results[0], doc["answer"])}
    return dict.fromkeys(METRIC_NAMES, rec)


def _aggregation(name):
    def aggregate(results):
        sel = [r["correct"] for r in results if name in _metric_names(r)]
        return sum(sel) / len(sel) if sel else float("nan")

    aggregate.__name__ = f"aggregate_{name}"
    return aggregate


METRIC_NAMES = _all_metric_names()
METRICS = [{"metric": name, "aggregation": _aggregation(name), "higher_is_better": name != "control"}
           for name in METRIC_NAMES]
