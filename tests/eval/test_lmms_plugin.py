"""The lmms-eval plugin: entry-point registration, both request paths, and a real CLI run with --limit."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from longvila.eval import lmms_plugin, videomme


def test_entry_point_registers_our_classes():
    """lmms-eval resolves --model longvila to this plugin (not its built-in NVlabs wrapper)."""
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    m = MODEL_REGISTRY_V2.get_manifest("longvila")
    assert m.simple_class_path == "longvila.eval.lmms_plugin.LongVILALmms"
    assert m.chat_class_path == "longvila.eval.lmms_plugin.LongVILAChatLmms"
    assert get_model("longvila") is lmms_plugin.LongVILAChatLmms
    assert get_model("longvila", force_simple=True) is lmms_plugin.LongVILALmms


def test_needs_pretrained():
    with pytest.raises(ValueError, match="pretrained"):
        lmms_plugin.LongVILALmms.create_from_arg_string("num_frames=8")


class _Req:
    def __init__(self, *args):
        self.args = args


def test_simple_and_chat_paths_answer_alike(letter_ckpt, tmp_path):
    video = tmp_path / "v.mp4"
    import numpy as np

    videomme.write_mp4(video, np.full((6, 32, 32, 3), 40, np.uint8))
    doc = {"q": "Q?"}
    simple = lmms_plugin.LongVILALmms.create_from_arg_string(f"pretrained={letter_ckpt},num_frames=4")
    simple.task_dict = {"t": {"test": [doc]}}
    gen = {"max_new_tokens": 1, "until": ["\n"]}
    out_simple = simple.generate_until([_Req("Q?", gen, lambda d: [str(video)], 0, "t", "test")])
    chat = lmms_plugin.LongVILAChatLmms.create_from_arg_string(f"pretrained={letter_ckpt},num_frames=4")
    chat.task_dict = {"t": {"test": [doc]}}
    msgs = [{"role": "user", "content": [{"type": "video", "url": str(video)}, {"type": "text", "text": "Q?"}]}]
    out_chat = chat.generate_until([_Req("Q?", lambda d: msgs, gen, 0, "t", "test")])
    assert out_simple == out_chat == ["B"]
    # the rigged model always predicts "B": "B" is its greedy continuation, "C" is not, and "B" is likelier
    (lp_b, greedy_b), (lp_c, greedy_c) = simple.loglikelihood(
        [_Req("Q?", "B", lambda d: [str(video)], 0, "t", "test"), _Req("Q?", lambda d: "C", lambda d: [], 0, "t", "test")])
    assert greedy_b and not greedy_c and lp_b > lp_c and lp_b <= 0


@pytest.mark.slow
def test_lmms_eval_cli_run(letter_ckpt, tmp_path):
    """`python -m lmms_eval --model longvila ... --tasks longvila_videomme --limit N` on the embedded set.

    The rigged checkpoint always answers "B", so every printed accuracy must equal the share of "B"
    answers among the questions it ran (overall and per duration).
    """
    bench = tmp_path / "artifacts" / "eval" / "videomme" / "bench"
    table = videomme.build_embedded(videomme.EmbeddedConfig(
        out=str(bench), videos_per_duration=1, lengths={"short": 16, "medium": 32, "long": 48}))
    rows = videomme.load_table(table)
    limit = min(len(rows), 7)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "LONGVILA_VIDEOMME_ROOT": str(bench)}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "longvila",
           "--model_args", f"pretrained={letter_ckpt},num_frames=8", "--tasks", "longvila_videomme",
           "--include_path", str(lmms_plugin.TASKS_DIR), "--limit", str(limit),
           "--gen_kwargs", "max_new_tokens=1", "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = dict(re.findall(r"\|longvila_videomme\|none\s*\|\s*0\|(\w+)\s*\|.\s*\|\s*([\d.]+|NaN)\|", proc.stdout))
    ran = rows[:limit]

    def share(sel):
        sel = [r for r in ran if sel(r)]
        return sum(r["answer"] == "B" for r in sel) / len(sel) if sel else float("nan")

    want = {"accuracy": share(lambda r: True)}
    want.update({f"acc_{d}": share(lambda r, d=d: r["duration"] == d) for d in videomme.DURATIONS})
    assert set(printed) == set(want), proc.stdout[-2000:]
    for k, v in want.items():
        if v != v:  # NaN: no question of that duration within the limit
            assert printed[k] == "NaN"
        else:
            assert float(printed[k]) == pytest.approx(v, abs=1e-4), k
    samples = [json.loads(line) for p in Path(tmp_path / "out").rglob("*samples_longvila_videomme.jsonl")
               for line in p.read_text().splitlines()]
    assert len(samples) == limit and all(s["filtered_resps"] in ("B", ["B"]) for s in samples)
