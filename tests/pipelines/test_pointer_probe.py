"""The letter-binding probe: its curve, its result file, and its refusals."""

import json

from longvila.pipelines import pointer_probe


def test_probe_trains_and_writes_a_held_out_curve(tmp_path):
    out = tmp_path / "probe.json"
    r = pointer_probe.run(steps=3, batch=4, eval_every=2, eval_questions=8, texts="codes", out=str(out))
    assert [c[0] for c in r["curve"]] == [0, 2, 3]  # before training, every eval_every steps and at the end
    assert all(0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 for _, a, b in r["curve"])
    assert json.loads(out.read_text())["curve"] == [list(c) for c in r["curve"]]
    # the same held-out questions at every point: an untrained model's first point repeats exactly
    again = pointer_probe.run(steps=2, batch=4, eval_every=2, eval_questions=8, texts="codes")
    assert again["curve"][:2] == r["curve"][:2]
    one = pointer_probe.run(steps=1, batch=2, eval_questions=4, form="oneline", texts="words")
    assert len(one["curve"]) == 2 and one["args"]["form"] == "oneline"
    # --steps 0: the starting model's accuracy alone, the same as the first point of a run from it
    zero = pointer_probe.run(steps=0, batch=4, eval_questions=8, texts="codes")
    assert zero["curve"] == r["curve"][:1]


def test_oneline_form_labels_the_letter_of_the_asked_option():
    import numpy as np

    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines import datasource as ds

    proc = LongVILAProcessor.from_config(tiny_config())
    for seed in range(8):
        s = ds.pointer_sample(np.random.default_rng(seed), proc, ds.pointer_words(), "oneline")
        text = proc.decode(s["input_ids"].tolist())
        assert "\n" not in text and "<|im_start|>" not in text
        w = text.split("which option is ", 1)[1].split("?", 1)[0]
        letter = proc.decode(s["labels"][s["labels"] != -100].tolist()).strip()
        assert f"{letter}. {w}" in text and text.rstrip().endswith(letter)


def test_probe_refuses_bad_arguments(capsys):
    assert pointer_probe.main(["--texts", "options"]) == 2
    assert "--data SET_DIR" in capsys.readouterr().err
    assert pointer_probe.main(["--texts", "letters", "--steps", "1"]) == 2
    assert "choose words, codes or options" in capsys.readouterr().err
    assert pointer_probe.main(["--batch", "0"]) == 2
    assert pointer_probe.main(["--form", "chat"]) == 2
    assert "choose one of videomme, no-header, oneline" in capsys.readouterr().err
