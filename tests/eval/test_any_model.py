"""The evaluations on models this project did not train: one CLI for our model and tiny random-init Qwen2-VL,
Qwen2.5-VL, LLaVA-OneVision and LLaVA-NeXT-Video; the needle grid and the VideoMME tasks in lmms-eval with
lmms-eval's own adapter; your own needle sets; the lmms-eval bridge in the sweep."""

import json

import numpy as np
import pytest

from longvila.eval import cli, lmms_plugin, needle, videomme
from longvila.eval.adapters import load_adapter

ALL = ("longvila", "qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video")


def _ckpt(arch, tiny_ckpt, tiny_hf):
    return tiny_ckpt if arch == "longvila" else tiny_hf(arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ALL)
def test_needle_grid_and_sweep_through_one_cli(arch, tiny_ckpt, tiny_hf, tmp_path, capsys):
    """A 3 frame counts x 3 depths grid (with its controls) and a small VideoMME sweep through `longvila eval`
    on every model type; the results name the model type and the checkpoint hash."""
    ckpt = _ckpt(arch, tiny_ckpt, tiny_hf)
    out = tmp_path / "needle"
    rc = cli.main(["needle", "--model", arch, "--ckpt", str(ckpt), "--frames", "12", "--steps", "3",
                   "--depths", "0,0.5,1", "--needles", "2", "--reference-cards", "40", "--reference-frames", "6",
                   "--publish", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "needle.json").read_text())
    lm = load_adapter(arch, ckpt)
    assert s["model_type"] == arch and s["model_hash"] == lm.model_hash
    assert s["frame_counts"] == [4, 8, 12] and s["trials"] == 3 * 3 * 2 and s["control_trials"] == 3 * 2
    assert s["read_trials"] == 3 * 2 and s["reference_reader_accuracy"] is not None
    assert s["level"] == ("embedding" if arch == "longvila" else "frame")
    assert (s.get("string_accuracy") is not None) == (arch != "longvila")  # string match: outside models
    for f in (out / "cells").glob("f*-d*.json"):
        cell = json.loads(f.read_text())
        assert cell["needle_frame"] == [needle.needle_index(cell["depth"], cell["frames"])] * 2
        assert len(cell["predicted"]) == 2
    res = json.loads((tmp_path / "results" / "needle-12.json").read_text())
    assert res["config"]["model_type"] == arch and res["config"]["model_hash"] == lm.model_hash
    assert f"model {arch} {lm.model_hash}" in capsys.readouterr().out
    vm = tmp_path / "vm"
    rc = cli.main(["videomme", "--model", arch, "--ckpt", str(ckpt), "--frames", "4,8", "--videos-per-duration", "1",
                   "--limit", "4", "--publish", "--out", str(vm)])
    assert rc == 0
    v = json.loads((vm / "videomme.json").read_text())
    assert v["model_type"] == arch and v["questions"] == 4 and set(v["table"]) == {"4", "8"}
    assert v["table_ll"] is not None  # every adapter scores options by likelihood
    rec = json.loads((vm / "sweep" / "f00008.json").read_text())["records"]
    assert all(r["frames"] == 8 and len(r["ll"]) == 4 for r in rec)
    res = json.loads((tmp_path / "results" / "videomme.json").read_text())
    assert res["config"]["model_type"] == arch and res["config"]["model_hash"] == lm.model_hash


def test_cli_errors_for_models(tiny_ckpt, tiny_hf, tmp_path, capsys):
    rc = cli.main(["needle", "--model", "gpt4v", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path)])
    assert rc == 2 and "unknown model type 'gpt4v'; known: longvila, qwen2_vl" in capsys.readouterr().err
    rc = cli.main(["needle", "--model", "qwen2_vl", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path)])
    assert rc == 2 and "the checkpoint is a 'longvila' model, not 'qwen2_vl'" in capsys.readouterr().err
    rc = cli.main(["needle", "--model", "llava_onevision", "--ckpt", str(tiny_hf("llava_onevision")), "--frames",
                   "6000", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "beyond the model's context of 4,096" in err and "largest frame count that fits is" in err
    rc = cli.main(["needle", "--model", "qwen2_vl", "--ckpt", str(tiny_hf("qwen2_vl")), "--level", "embedding",
                   "--frames", "4", "--out", str(tmp_path)])
    assert rc == 2 and "level 'embedding' is not supported by the qwen2_vl adapter" in capsys.readouterr().err
    rc = cli.main(["videomme", "--out", str(tmp_path)])
    assert rc == 2 and "give either --ckpt" in capsys.readouterr().err


def _needle_set(root, n=3):
    from PIL import Image

    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        img = np.zeros((48, 48, 3), np.uint8)
        img[:, :, i % 3] = 255  # a red, a green, a blue square
        Image.fromarray(img).save(root / f"n{i}.png")
        rows.append({"id": f"c{i}", "image": f"n{i}.png", "question": "What colour fills the whole frame?",
                     "answer": ["red", "green", "blue"][i % 3]})
    (root / "needles.json").write_text(json.dumps(rows))
    return rows


def test_own_needle_set(tiny_lm, tmp_path):
    """A folder of (image, question, answer) needles replaces the code cards: the images are placed at their
    depths (resized to the model's input), scored by exact match and by string match, with the controls."""
    rows = _needle_set(tmp_path / "set")
    got = needle.load_needle_set(tmp_path / "set")
    assert [n.answer for n in got] == ["red", "green", "blue"] and got[0].image.shape == (48, 48, 3)
    cfg = needle.NeedleConfig(out=str(tmp_path / "out"), frames=8, steps=2, depths=(0.0, 1.0), needles=2,
                              needle_set=str(tmp_path / "set"), string_match=True)
    s = needle.run(cfg, lm=tiny_lm)
    assert s["trials"] == 2 * 2 * 2 and s["control_trials"] == 2 * 2 and s["chance"] is None
    assert "reference_reader_accuracy" not in s  # the pixel reader reads code cards only
    assert s["string_accuracy"] is not None and s["string_control_accuracy"] is not None
    cell = json.loads((tmp_path / "out" / "cells" / "f00008-d1.00.json").read_text())
    assert set(cell["codes"]) <= {r["id"] for r in rows} and cell["needle_frame"] == [8, 8]
    assert len(cell["replies"]) == 2 and all(isinstance(x, bool) for x in cell["string_correct"])


def test_bad_needle_sets(tmp_path):
    with pytest.raises(FileNotFoundError, match="no needle table"):
        needle.load_needle_set(tmp_path)
    _needle_set(tmp_path / "a")
    rows = json.loads((tmp_path / "a" / "needles.json").read_text())
    del rows[1]["answer"]
    (tmp_path / "a" / "needles.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"needles.json row 1: missing field 'answer'"):
        needle.load_needle_set(tmp_path / "a")
    rows[1]["answer"] = "x"
    rows[2]["image"] = "gone.png"
    (tmp_path / "a" / "needles.json").write_text(json.dumps(rows))
    with pytest.raises(FileNotFoundError, match=r"row 2: field 'image': .*gone.png not found"):
        needle.load_needle_set(tmp_path / "a")
    (tmp_path / "a" / "n0.png").write_bytes(b"not a png")
    rows[2]["image"] = "n2.png"
    (tmp_path / "a" / "needles.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="row 0: field 'image' is not a readable image"):
        needle.load_needle_set(tmp_path / "a")


def test_needle_videos_layout(tmp_path):
    """build-needle writes one video per question with exactly its frames, the card at the needle's frame,
    the same codes as the grid, and is not rebuilt for the same configuration."""
    from longvila.data.video_io import read_frames
    from longvila.eval import needle_videos

    rc = cli.main(["build-needle", "--out", str(tmp_path / "nv"), "--frames", "8", "--steps", "2",
                   "--depths", "0,1", "--needles", "2"])
    assert rc == 0
    rows = json.loads((tmp_path / "nv" / "needle.json").read_text())
    assert len(rows) == 2 * 2 * 2 + 2 * 2 + 2 * 2  # grid, controls, reading reference
    grid = needle.NeedleConfig(frames=8, steps=2)
    for r in rows:
        frames = read_frames(tmp_path / "nv" / r["video"], None)
        assert len(frames) == r["num_frames"] == r["haystack_frames"] + (r["kind"] != "control")
        assert r["haystack_frames"] == (8 if r["kind"] == "read" else r["frames"])  # reference_frames: min(32, 8)
        assert r["answer"] in needle.cell_codes(0, r["frames"], 2)
        if r["needle_frame"] is not None:
            card = needle.needle_cards(grid, r["frames"], [r["answer"]])[0]
            err = np.abs(frames.astype(int) - card.astype(int)).mean(axis=(1, 2, 3))
            assert int(np.argmin(err)) == r["needle_frame"] and err.min() < 12
    mtime = (tmp_path / "nv" / "needle.json").stat().st_mtime_ns
    needle_videos.build(needle_videos.NeedleVideosConfig(out=str(tmp_path / "nv"), frames=8, steps=2,
                                                         depths=(0.0, 1.0), needles=2))
    assert (tmp_path / "nv" / "needle.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="size must be an even"):
        needle_videos.build(needle_videos.NeedleVideosConfig(out=str(tmp_path / "x"), size=33))


def _lmms_env(tmp_path, **roots):
    return {"HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **roots}


def _until_newline(text):
    return text.split("\n")[0].strip()


@pytest.mark.slow
def test_needle_task_in_lmms_eval_with_its_own_adapter(tiny_hf, tmp_path):
    """`python -m lmms_eval --model llava_hf --tasks longvila_needle` (lmms-eval's own LLaVA adapter, on a tiny
    LLaVA-OneVision): metrics per frame count and depth, the control and the reading reference; every reply
    equals our adapter's greedy reply on the same video, and every metric is the string-match rate of its docs."""
    from longvila.data.video_io import read_frames
    from longvila.eval.lmms_run import run_lmms

    ckpt = tiny_hf("llava_onevision")
    root = tmp_path / "nv"
    cli.main(["build-needle", "--out", str(root), "--frames", "8", "--steps", "2", "--depths", "0,1", "--needles", "2"])
    rows = json.loads((root / "needle.json").read_text())
    longest = max(r["num_frames"] for r in rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run_lmms("llava_hf", f"pretrained={ckpt},max_frames_num={longest},device=cpu,device_map=cpu",
                   ["longvila_needle"], tmp_path / "out", include_path=lmms_plugin.TASKS_DIR, force_simple=True,
                   env=_lmms_env(tmp_path, LONGVILA_NEEDLE_ROOT=str(root)), cwd=elsewhere, timeout=900)["longvila_needle"]
    m = res["metrics"]
    assert {"accuracy", "acc@4", "acc@8", "acc_d0.00", "acc_d1.00", "control", "acc_read"} <= set(m)
    samples = res["samples"]
    assert len(samples) == len(rows)
    lm = load_adapter("llava_onevision", ckpt)
    recs = []
    for s in samples:
        row = rows[s["doc_id"]]
        rec = s["accuracy"]
        assert rec["id"] == row["id"]
        if row["num_frames"] == longest:  # lmms-eval's sampler reads every frame exactly once
            frames = read_frames(root / row["video"], None)
            assert _until_newline(lm.generate(row["question"], frames, 8)) == rec["reply"].strip(), row["id"]
        assert rec["correct"] == needle.string_match(rec["reply"], row["answer"])
        recs.append((row, rec["correct"]))

    def rate(sel):
        xs = [ok for row, ok in recs if sel(row)]
        return sum(xs) / len(xs)

    assert m["accuracy"] == pytest.approx(rate(lambda r: r["kind"] == "grid"))
    assert m["acc@8"] == pytest.approx(rate(lambda r: r["kind"] == "grid" and r["frames"] == 8))
    assert m["control"] == pytest.approx(rate(lambda r: r["kind"] == "control"))


@pytest.mark.slow
def test_videomme_task_in_lmms_eval_with_its_own_adapter(tiny_hf, tmp_path):
    """The VideoMME-format letter task through lmms-eval's own llava_hf adapter: the printed accuracy is the share
    of logged replies whose extracted letter is the answer."""
    from longvila.eval import prompts
    from longvila.eval.lmms_run import run_lmms

    bench = tmp_path / "bench"
    table = videomme.build_embedded(videomme.EmbeddedConfig(out=str(bench), videos_per_duration=1,
                                                            lengths={"short": 8, "medium": 12, "long": 16}))
    rows = videomme.load_table(table)
    res = run_lmms("llava_hf", f"pretrained={tiny_hf('llava_onevision')},max_frames_num=8,device=cpu,device_map=cpu",
                   ["longvila_videomme"], tmp_path / "out", include_path=lmms_plugin.TASKS_DIR, force_simple=True,
                   limit=5, env=_lmms_env(tmp_path, LONGVILA_VIDEOMME_ROOT=str(bench)), cwd=tmp_path,
                   timeout=900)["longvila_videomme"]
    samples = res["samples"]
    assert len(samples) == 5
    ok = []
    for s in samples:
        reply = s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
        assert s["accuracy"]["pred"] == prompts.extract_letter(reply)
        ok.append(s["accuracy"]["pred"] == rows[s["doc_id"]]["answer"])
    assert res["metrics"]["accuracy"] == pytest.approx(sum(ok) / 5)


@pytest.mark.slow
def test_sweep_through_the_lmms_bridge(tiny_hf, tmp_path):
    """`longvila eval videomme --lmms-model llava_hf ...`: lmms-eval's own adapter asked at each frame count
    (its max_frames_num set per count), letters only; the result names the bridged model."""
    ckpt = tiny_hf("llava_onevision")
    rc = cli.main(["videomme", "--lmms-model", "llava_hf", "--lmms-model-args",
                   f"pretrained={ckpt},device=cpu,device_map=cpu", "--frames", "2,4", "--videos-per-duration", "1",
                   "--limit", "3", "--publish", "--out", str(tmp_path / "vm")])
    assert rc == 0
    v = json.loads((tmp_path / "vm" / "videomme.json").read_text())
    assert v["model_type"] == "lmms:llava_hf" and v.get("table_ll") is None and set(v["table"]) == {"2", "4"}
    rec = json.loads((tmp_path / "vm" / "sweep" / "f00004.json").read_text())["records"]
    assert [r["frames"] for r in rec] == [4, 4, 4] and "ll" not in rec[0]
    res = json.loads((tmp_path / "results" / "videomme.json").read_text())
    assert res["config"]["model_type"] == "lmms:llava_hf" and res["config"]["model_hash"] == v["model_hash"]
    # llava_hf answers no text-only request (it logs an error and returns ""): the blind pass shows it
    assert v["empty_replies"]["blind"] == 3
    with pytest.raises(ValueError, match="lmms-eval has no model 'nope'"):
        videomme.load_model(videomme.VideoMMEConfig(lmms_model="nope"), None)
