"""VideoMME: the real-layout reader on a fixture in that layout, bad inputs, scoring, the embedded sweep."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from longvila.eval import prompts, videomme

ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
     "videoID": "fFjv93ACGo8", "question_id": "001-1", "task_type": "Counting Problem",
     "question": "How many objects are in the video?", "options": ["A. one", "B. two", "C. three", "D. four"],
     "answer": "C"},
    {"video_id": "002", "duration": "long", "domain": "Sports Competition", "sub_category": "Football",
     "videoID": "xRkq1yN4Ea0", "question_id": "002-1", "task_type": "Temporal Reasoning",
     "question": "What happens after the red circle appears?",
     "options": ["A. it moves", "B. it leaves", "C. it grows", "D. it spins"], "answer": "A"},
]


def _fixture(root, fmt="parquet", rows=ROWS, frames=(20, 50)):
    """A small folder in the real Video-MME layout: videomme/test-*.parquet + data/<videoID>.mp4."""
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    table = root / "videomme" / f"test-00000-of-00001.{fmt}"
    if fmt == "parquet":
        pd.DataFrame(rows).to_parquet(table)
    elif fmt == "csv":
        pd.DataFrame([{**r, "options": str(r["options"])} for r in rows]).to_csv(table, index=False)
    else:
        table.write_text(json.dumps(rows))
    rng = np.random.default_rng(0)
    for r, n in zip(rows, frames, strict=False):
        videomme.write_mp4(root / "data" / f"{r['videoID']}.mp4", rng.integers(0, 255, (n, 32, 48, 3), np.uint8))
    return table


@pytest.mark.parametrize("fmt", ["parquet", "json", "csv"])
def test_real_layout_reader(tmp_path, fmt):
    _fixture(tmp_path, fmt)
    table, vdir = videomme.find_layout(tmp_path)
    assert vdir == tmp_path / "data" and table.suffix == f".{fmt}"
    rows = videomme.load_table(table)
    assert [r["question_id"] for r in rows] == ["001-1", "002-1"]
    assert rows[1]["options"] == ROWS[1]["options"] and rows[0]["answer"] == "C"
    assert rows[0]["duration"] == "short" and rows[1]["task_type"] == "Temporal Reasoning"
    frames = videomme.read_video_frames(vdir / "xRkq1yN4Ea0.mp4", 8)
    assert frames.shape == (8, 32, 48, 3) and frames.dtype == np.uint8


def test_read_frames_uniform_and_too_many(tmp_path):
    video = tmp_path / "v.mp4"
    ramp = np.repeat(np.linspace(0, 250, 30).astype(np.uint8)[:, None, None, None], 32, 1).repeat(32, 2).repeat(3, 3)
    videomme.write_mp4(video, ramp)
    got = videomme.read_video_frames(video, 4)[:, 16, 16, 0].astype(int)
    want = ramp[np.linspace(0, 29, 4).round().astype(int), 16, 16, 0].astype(int)
    assert np.abs(got - want).max() <= 3  # the uniformly sampled frames, up to codec rounding
    with pytest.raises(ValueError, match=r"v.mp4: video has 30 frames, 31 asked"):
        videomme.read_video_frames(video, 31)
    assert len(videomme.read_video_frames(video, 31, allow_fewer=True)) == 30


def test_bad_videos(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such video file"):
        videomme.read_video_frames(tmp_path / "nope.mp4", 4)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(ValueError, match="corrupt.mp4: corrupt or unreadable video"):
        videomme.read_video_frames(bad, 4)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("task_type"), "row 1: missing field 'task_type'"),
    (lambda r: r.update(options="A. one B. two"), "row 1: field 'options' is not a list"),
    (lambda r: r.update(options=["one", "two"]), "row 1: field 'options' entry 'one' should start with 'A.'"),
    (lambda r: r.update(answer="E"), "row 1: field 'answer' is 'E'"),
    (lambda r: r.update(duration="huge"), "row 1: field 'duration' is 'huge'"),
])
def test_malformed_table(tmp_path, mutate, match):
    rows = [dict(r) for r in ROWS]
    mutate(rows[1])
    table = tmp_path / "t.json"
    table.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=match) as e:
        videomme.load_table(table)
    assert str(table) in str(e.value)


def test_unreadable_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet: question table not found"):
        videomme.load_table(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet: cannot read the question table"):
        videomme.load_table(junk)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty.json: the question table must be a non-empty list"):
        videomme.load_table(empty)
    with pytest.raises(FileNotFoundError, match="no question table"):
        videomme.find_layout(tmp_path / "data_only") if (tmp_path / "data_only").mkdir() is None else None


def test_score_groups():
    recs = [{"duration": "short", "task_type": "OCR Problems", "answer": "A", "pred": "A"},
            {"duration": "long", "task_type": "OCR Problems", "answer": "B", "pred": ""},
            {"duration": "long", "task_type": "Temporal Perception", "answer": "C", "pred": "C"}]
    s = videomme.score(recs)
    assert s["all"] == {"accuracy": 2 / 3, "n": 3}
    assert s["duration/long"] == {"accuracy": 0.5, "n": 2} and s["duration/short"]["accuracy"] == 1.0
    assert s["task/OCR Problems"] == {"accuracy": 0.5, "n": 2}


def test_embedded_benchmark_layout(tmp_path):
    """The embedded set is in the Video-MME layout, every video shows its code card, answers are balanced."""
    cfg = videomme.EmbeddedConfig(out=str(tmp_path / "bench"), videos_per_duration=2,
                                  lengths={"short": 16, "medium": 32, "long": 64})
    table = videomme.build_embedded(cfg)
    t2, vdir = videomme.find_layout(tmp_path / "bench")
    assert t2 == table
    rows = videomme.load_table(table)
    assert {r["duration"] for r in rows} == set(videomme.DURATIONS)
    assert set(r["task_type"] for r in rows) <= set(videomme.TASK_TYPES.values())
    assert len(set(r["question_id"] for r in rows)) == len(rows)
    for vid in {r["videoID"] for r in rows}:
        mine = [r for r in rows if r["videoID"] == vid]
        assert mine[0]["task_type"] == "OCR Problems" and len(mine) <= cfg.questions_per_video
        frames = videomme.read_video_frames(vdir / f"{vid}.mp4", cfg.lengths[mine[0]["duration"]])
        assert (frames.mean(axis=(1, 2, 3)) > 150).any(), vid  # the white code card; scenes are dim
        code = mine[0]["options"][prompts.OPTION_LETTERS.index(mine[0]["answer"])][3:]
        assert len(code) == 3 and code.isdigit()
    mtime = table.stat().st_mtime_ns
    assert videomme.build_embedded(cfg) == table and table.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_prompt_matches_training_data():
    """The evaluation asks exactly as the training data's multiple-choice questions are written."""
    from longvila.data.questions import mc_prompt

    opts = ["A. 1", "B. 2", "C. 3", "D. 4"]
    assert prompts.videomme_prompt("How many times does a red circle appear in the video?", opts) == \
        mc_prompt("How many times does a red circle appear in the video?", opts)


def test_sweep_on_real_layout_fixture(tiny_lm, tmp_path):
    """The whole sweep (frame counts + blind) runs on the fixture; records, table and plot are consistent."""
    _fixture(tmp_path / "vm")
    cfg = videomme.VideoMMEConfig(out=str(tmp_path / "out"), frames=(4, 8, 64), root=str(tmp_path / "vm"),
                                  publish=True)
    s = videomme.run(cfg, lm=tiny_lm)
    assert s["questions"] == 2 and s["chance"] == 0.25 and s["blind"] is not None
    sweep = json.loads((tmp_path / "out" / "sweep" / "f00064.json").read_text())
    # 64 frames asked; the 20- and 50-frame videos give all they have
    assert [r["frames"] for r in sweep["records"]] == [20, 50]
    for r in sweep["records"]:
        assert r["pred"] == prompts.extract_letter(r["reply"])
    assert sweep["scores"]["all"]["accuracy"] == np.mean([r["pred"] == r["answer"] for r in sweep["records"]])
    assert s["table"]["64"]["all"] == sweep["scores"]["all"]["accuracy"]
    assert (tmp_path / "out" / "curve.png").stat().st_size > 1000
    res = json.loads((tmp_path / "results" / "videomme-real.json").read_text())
    assert res["metrics"]["acc@8"] == s["table"]["8"]["all"] and res["metrics"]["chance"] == 0.25
    assert "blind" in res["metrics"] and "acc_long" in res["metrics"]
    for r in sweep["records"]:  # likelihood scoring: the most likely option's letter
        assert r["ll_pred"] == prompts.OPTION_LETTERS[int(np.argmax(r["ll"]))] and len(r["ll"]) == 4
    assert s["table_ll"]["64"]["all"] == np.mean([r["ll_pred"] == r["answer"] for r in sweep["records"]])
    assert res["metrics"]["acc_ll@64"] == s["table_ll"]["64"]["all"] and "acc_ll_blind" in res["metrics"]
    iv = s["intervals"]  # Wilson intervals around every accuracy, and published with the result
    assert iv["table"]["64"]["all"][0] <= s["table"]["64"]["all"] <= iv["table"]["64"]["all"][1]
    assert iv["gap_ll"]["64"]["n"] == 2 and res["details"]["intervals"] == iv
    again = videomme.run(cfg, lm=tiny_lm)
    assert again["table"] == s["table"] and again["intervals"] == iv


def test_sweep_missing_video(tiny_lm, tmp_path):
    _fixture(tmp_path / "vm")
    (tmp_path / "vm" / "data" / "xRkq1yN4Ea0.mp4").unlink()
    cfg = videomme.VideoMMEConfig(out=str(tmp_path / "out"), frames=(4,), root=str(tmp_path / "vm"))
    with pytest.raises(FileNotFoundError, match="xRkq1yN4Ea0.mp4: video of question 002-1 not found"):
        videomme.run(cfg, lm=tiny_lm)


def test_option_text():
    assert prompts.option_text("B. a red circle") == "a red circle"
    assert prompts.option_text("(C) 471") == "471" and prompts.option_text("D: left") == "left"
    assert prompts.option_text("after") == "after"


def test_option_logprobs_equal_full_forward(tiny_lm):
    """Likelihood scoring with a shared, cached prompt equals one full forward per option."""
    from longvila.eval import runner

    torch.manual_seed(1)
    vis = torch.randn(5, 1, tiny_lm.model.config.text_config.hidden_size)
    ids = runner.prompt_ids(tiny_lm, "What is the secret code shown in the video?", 5)
    opts = [runner.answer_ids(tiny_lm, t) + tiny_lm.eos_ids[:1] for t in ("471", "12", "after", "3")]
    got = runner.option_logprobs(tiny_lm, runner.embed(tiny_lm, ids[None], vis), opts)
    for o, g in zip(opts, got, strict=True):
        full = torch.cat([ids, torch.tensor(o)])
        with torch.inference_mode():
            logits = tiny_lm.model.language_model(inputs_embeds=runner.embed(tiny_lm, full[None], vis)).logits[0]
        lp = torch.log_softmax(logits.double(), -1)[len(ids) - 1:-1].gather(-1, torch.tensor(o)[:, None]).sum()
        assert abs(float(g) - float(lp)) < 1e-4, (o, float(g), float(lp))
    with pytest.raises(ValueError, match="non-empty"):
        runner.option_logprobs(tiny_lm, runner.embed(tiny_lm, ids[None], vis), [[]])
