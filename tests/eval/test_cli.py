"""`longvila eval ...`: the commands the Makefile runs, on a tiny checkpoint; bad input gives a clear error."""

import json

import numpy as np
import pytest

from longvila.eval import cli


def test_needle_command(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "needle"
    rc = cli.main(["needle", "--ckpt", str(tiny_ckpt), "--frames", "20", "--steps", "2", "--needles", "2",
                   "--publish", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "needle.json").read_text())
    lo, hi = summary["accuracy_ci"]
    assert f"accuracy {summary['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] over {summary['trials']} needles" in text
    clo, chi = summary["accuracy_ci_by_code"]
    assert f"[{clo:.3f}, {chi:.3f}] resampling codes" in text
    assert lo <= summary["accuracy"] <= hi
    assert summary["frame_counts"] == [10, 20] and summary["trials"] == 2 * 6 * 2
    res = json.loads((tmp_path / "results" / "needle-20.json").read_text())
    assert res["command"].startswith("longvila eval needle --ckpt") and res["config"]["frames"] == 20


def test_needle_command_handwritten_cards(tiny_ckpt, tmp_path, capsys):
    """--style hand: the cards are handwritten by the held-out writers, and the result is needle-N-hand (the
    printed grid's needle-N stays untouched)."""
    from longvila.data import world
    from longvila.eval import needle

    out = tmp_path / "needle-hand"
    rc = cli.main(["needle", "--ckpt", str(tiny_ckpt), "--frames", "20", "--steps", "1", "--needles", "2",
                   "--no-controls", "--style", "hand", "--publish", "--out", str(out)])
    assert rc == 0 and "needle (hand): accuracy" in capsys.readouterr().out
    res = json.loads((tmp_path / "results" / "needle-20-hand.json").read_text())
    assert res["config"]["style"] == "hand" and not (tmp_path / "results" / "needle-20.json").exists()
    cfg = needle.NeedleConfig(style="hand", frames=20)
    cards = needle.needle_cards(cfg, 20, ["123", "456"])
    want = world.code_image("123", "eval", np.random.default_rng([0, 20, 123]), style="hand")
    assert np.array_equal(cards[0], want)
    assert not np.array_equal(cards[0], needle.needle_cards(needle.NeedleConfig(frames=20), 20, ["123"])[0])
    with pytest.raises(SystemExit):
        cli.main(["needle", "--ckpt", str(tiny_ckpt), "--style", "typed", "--out", str(out)])


def test_videomme_command_embedded(tiny_ckpt, tmp_path, capsys, monkeypatch):
    from longvila.eval import videomme

    small = dict(lengths={"short": 8, "medium": 12, "long": 16}, questions_per_video=1)
    orig = videomme.EmbeddedConfig
    monkeypatch.setattr(videomme, "EmbeddedConfig", lambda **kw: orig(**{**small, **kw}))
    rc = cli.main(["videomme", "--ckpt", str(tiny_ckpt), "--frames", "4,8", "--videos-per-duration", "1",
                   "--out", str(tmp_path / "vm")])
    assert rc == 0
    text = capsys.readouterr().out
    s = json.loads((tmp_path / "vm" / "videomme.json").read_text())
    assert s["questions"] == 3 and s["frames"] == [4, 8] and "blind" in text
    # the intervals are printed beside the figures: letters, likelihood and their gap per frame count
    ci, gap = s["intervals"]["table"]["8"]["all"], s["intervals"]["gap_ll"]["8"]
    assert (f"       8  {s['table']['8']['all']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in text
            and f"{gap['estimate']:+.3f} [{gap['ci'][0]:+.3f}, {gap['ci'][1]:+.3f}]" in text)
    assert f"long split by letter: 4 -> 8 frames {s['intervals']['long_gain']['estimate']:+.3f}" in text
    assert (tmp_path / "vm" / "bench" / "videomme.json").is_file()
    # without --publish an evaluation leaves the leaderboard alone: evaluating another model, or another
    # checkpoint of ours, into its own --out never overwrites the published videomme.json
    assert not (tmp_path / "results").exists()
    rc = cli.main(["videomme", "--ckpt", str(tiny_ckpt), "--frames", "4,8", "--videos-per-duration", "1",
                   "--publish", "--result-name", "videomme-tiny", "--out", str(tmp_path / "vm")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "results").glob("*.json")) == ["videomme-tiny.json"]
    res = json.loads((tmp_path / "results" / "videomme-tiny.json").read_text())
    assert res["metrics"]["acc@8"] == s["table"]["8"]["all"] and "--publish" in res["command"]


def test_bad_inputs(tmp_path, tiny_ckpt, capsys):
    assert cli.main(["needle", "--ckpt", str(tmp_path), "--frames", "20", "--out", str(tmp_path / "o")]) == 2
    assert f"longvila eval needle: error: {tmp_path}: not a checkpoint folder (no config.json)" in \
        capsys.readouterr().err
    assert cli.main(["videomme", "--ckpt", str(tiny_ckpt), "--videomme-root", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "nope: Video-MME folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["videomme", "--ckpt", str(tmp_path), "--frames", "8,x", "--out", str(tmp_path / "o")])
    assert cli.main(["needle", "--ckpt", str(tiny_ckpt), "--result-name", "mine", "--out", str(tmp_path / "o")]) == 2
    assert "--result-name names a published leaderboard result: add --publish" in capsys.readouterr().err


def test_registry():
    from longvila.eval import base, needle, videomme

    assert base.benchmarks() == ["needle", "videomme"]
    assert base.get_benchmark("needle").run is needle.run
    assert base.get_benchmark("videomme").config_cls is videomme.VideoMMEConfig
    with pytest.raises(ValueError, match="unknown benchmark 'needel'; known: needle, videomme"):
        base.get_benchmark("needel")
