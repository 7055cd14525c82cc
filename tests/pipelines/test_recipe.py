"""The five-stage recipe end to end on tiny data (2 ranks), and the CLI's fail-fast errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from longvila.pipelines import checkpoint as ck
from longvila.pipelines.cli import main
from longvila.pipelines.config import stage4, stage5

ROOT = Path(__file__).parents[2]


def _tiny_data(out: Path) -> None:
    from longvila.data import sets as S

    cfg = S.BuildConfig()
    for name, n in (("align", 32), ("pretrain", 32), ("short_sft", 32), ("short_sft_eval", 12)):
        getattr(cfg, name).num_samples = getattr(cfg, name).per_shard = n
    c = cfg.context_ext
    c.num_samples, c.per_shard, c.min_tokens, c.max_tokens = 2, 2, 300, 500
    c = cfg.long_sft
    c.num_samples, c.per_shard, c.min_frames, c.max_frames = 3, 3, 40, 120
    S.build(cfg, out, workers=1)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "LONGVILA_QUIET": "1",
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))}


def _parts(weights: dict, prefix: str) -> dict:
    return {k: v for k, v in weights.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
@pytest.mark.dist
def test_five_stage_smoke_run(tmp_path):
    data, out = tmp_path / "data", tmp_path / "ckpt"
    _tiny_data(data)
    cmd = [sys.executable, "-m", "longvila.cli", "train", "all", "--data", str(data), "--out", str(out),
           "--nproc", "2", "--set", "schedule.steps=2", "--set", "5:data.curriculum=1:4:1:0:oneline:needle_frac=1:needle_mc_frac=1,40:1:1:qa_mc_frac=1",
           "--set", "2:data.curriculum=0:4:1:1.0:oneline,1:2:1",
           "--set", "eval.limit=6", "--set", "eval.pointer=8", "--set", "1:vision_pretrain.steps=20"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    w = {}
    for n in range(1, 6):
        d = out / f"stage{n}"
        ck.verify(d)
        s = json.loads((d / "summary.json").read_text())
        assert s["steps"] == 2 and s["world_size"] == 2 and s["tokens"] > 0
        assert (d / "loss.png").is_file() and (d / "metrics.jsonl").is_file() and (d / "tensorboard").is_dir()
        assert (d / "processor_config.json").is_file()
        w[n] = load_file(d / "model.safetensors")
    assert json.loads((out / "stage4" / "summary.json").read_text())["sp"] == 2
    # stage 1 from scratch pretrains the vision tower first (no pretrained SigLIP offline); later stages do not
    vp = json.loads((out / "stage1" / "summary.json").read_text())["vision_pretrain"]
    assert vp["steps"] == 20 and vp["loss_last"] < vp["loss_first"]
    assert "vision_pretrain" not in json.loads((out / "stage2" / "summary.json").read_text())
    # frozen modules are bit-for-bit unchanged; trained ones moved
    assert _same(_parts(w[1], "vision_tower"), _parts(w[2], "vision_tower"))
    assert not _same(_parts(w[1], "mm_projector"), _parts(w[2], "mm_projector"))
    for part in ("vision_tower", "mm_projector"):
        assert _same(_parts(w[3], part), _parts(w[4], part))
        assert not _same(_parts(w[4], part), _parts(w[5], part))
    assert not _same(_parts(w[3], "language_model"), _parts(w[4], "language_model"))
    # stage 4's RoPE row is in the saved config, and stage 5 keeps it
    for n in (4, 5):
        text = json.loads((out / f"stage{n}" / "config.json").read_text())["text_config"]
        assert (text["max_position_embeddings"], text["rope_parameters"]["rope_theta"]) == stage4().rope() == (16384, 2.1e6)
    text3 = json.loads((out / "stage3" / "config.json").read_text())["text_config"]
    assert text3["rope_parameters"]["rope_theta"] == 1e4 and text3["max_position_embeddings"] == 2048
    assert text3.get("logn_attention_base") is None and text["logn_attention_base"] == stage5().model.logn_base
    assert text3.get("dynamic_yarn_positions") is None
    assert text["dynamic_yarn_positions"] == stage5().model.dynamic_yarn_positions == 1536
    for n in (3, 5):
        summary = json.loads((out / f"stage{n}" / "summary.json").read_text())
        for ev in (summary["eval_before"], summary["eval"]):  # the starting model and the trained one
            assert ev["questions"] == 6 and 0 <= ev["accuracy"] <= 1 and 0 < ev["chance"] <= 1 and ev["loss"] > 0
            ptr = ev["pointer"]  # held-out pointer questions over single words and the set's option texts
            assert ptr["questions"] == 8 and ptr["chance"] == 0.25
            assert all(ptr[k] * 8 == round(ptr[k] * 8) and 0 <= ptr[k] <= 1 for k in ("words", "options"))
        assert summary["eval_before"]["loss"] != summary["eval"]["loss"]
    # run again: everything is finished and skipped
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.count("skipped") == 5, p.stdout + p.stderr[-2000:]


def test_cli_fails_fast_with_clear_messages(tmp_path, capsys):
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "o")]
    cases = [
        (["--stage", "6", *base], "unknown stage 6"),
        (["--stage", "3", "--from", str(tmp_path / "nope"), *base], "nope: checkpoint folder does not exist"),
        (["--stage", "2", *base], "stage1: checkpoint folder does not exist"),
        (["all", "--nproc", "3", *base], "world size 3 is not divisible"),
        (["--stage", "1", "--set", "optim.lrate=1", *base], "unknown config key 'optim.lrate'"),
        (["all", "--set", "9:optim.lr=1", *base], "unknown stage 9"),
    ]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    cases.append((["--stage", "3", "--from", str(partial), *base], "partial checkpoint"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
