"""Result files: write/read round trip, filled metadata, and validation errors that name file and field."""

import json
import math
import re

import pytest

from longvila.leaderboards import results as R


def _png(path, color=(200, 30, 30), size=(8, 6)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)
    return path


def test_round_trip_fills_metadata_and_copies_plots(tmp_path):
    src = _png(tmp_path / "heat.png")
    out = tmp_path / "res"
    p = R.write_result(
        "needle-300", "needle", {"accuracy": 0.75, "acc@300": 1, "control": 0.1},
        details={"grid": [[1.0, 0.5]]}, config={"model": "tiny", "frames": 300}, seed=3,
        command="make needle FRAMES=300", plots={"heatmap": src}, results_dir=out,
    )
    assert p == out / "needle-300.json"
    r = R.load_result(p)
    assert r.benchmark == "needle" and r.name == "needle-300" and r.seed == 3
    assert r.metrics == {"accuracy": 0.75, "acc@300": 1.0, "control": 0.1}
    assert r.details == {"grid": [[1.0, 0.5]]} and r.config == {"model": "tiny", "frames": 300}
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", r.date)
    assert r.commit and r.machine["cores"] >= 1 and "torch" in r.machine
    assert r.plots["heatmap"] == (out / "needle-300.heatmap.png").resolve()
    assert r.plots["heatmap"].read_bytes() == src.read_bytes()
    assert [x.name for x in R.load_results(out)] == ["needle-300"]


def test_default_dir_and_explicit_json_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVILA_RESULTS_DIR", str(tmp_path / "env"))
    assert R.write_result("a", "data_bench", {"build_videos_per_s": 2.5}) == tmp_path / "env" / "a.json"
    p = R.write_result(tmp_path / "x" / "b.json", "sp_bench", {"speedup_ring_vs_mmsp": 1.5})
    assert R.load_result(p).metrics == {"speedup_ring_vs_mmsp": 1.5}
    with pytest.raises(ValueError, match="neither a name nor a path"):
        R.write_result("some/dir/noext", "needle", {"accuracy": 1.0})


def test_write_refuses_bad_results_before_writing(tmp_path):
    with pytest.raises(R.ResultError, match=r"metrics\.acc' is not a finite number"):
        R.write_result("bad", "needle", {"acc": math.nan}, results_dir=tmp_path)
    with pytest.raises(R.ResultError, match="'benchmark' is 'nope', not a known benchmark"):
        R.write_result("bad", "nope", {"acc": 1.0}, results_dir=tmp_path)
    with pytest.raises(R.ResultError, match=r"plots\.heat' file .* does not exist"):
        R.write_result("bad", "needle", {"acc": 1.0}, plots={"heat": tmp_path / "no.png"}, results_dir=tmp_path)
    with pytest.raises(R.ResultError, match=r"details\.loss\[1\]' is not a finite"):
        R.write_result("bad", "training", {"steps": 1}, details={"loss": [1.0, math.inf]}, results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _good(tmp_path):
    return json.loads(R.write_result("good", "videomme", {"accuracy": 0.5}, results_dir=tmp_path).read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("metrics"), "missing required field 'metrics'"),
        (lambda o: o.pop("commit"), "missing required field 'commit'"),
        (lambda o: o.update(benchmark="mmlu"), "field 'benchmark' is 'mmlu', not a known benchmark"),
        (lambda o: o["metrics"].update(accuracy="high"), "field 'metrics.accuracy' must be a number, got str"),
        (lambda o: o["metrics"].update(accuracy=True), "field 'metrics.accuracy' must be a number, got bool"),
        (lambda o: o.update(metrics={}), "field 'metrics' is empty"),
        (lambda o: o.update(seed="0"), "field 'seed' has the wrong type str"),
        (lambda o: o.update(date="yesterday"), "field 'date' 'yesterday' is not UTC ISO 8601"),
        (lambda o: o.update(extra=1), "unknown field 'extra'"),
        (lambda o: o.update(schema=2), "field 'schema' is 2"),
        (lambda o: o.update(name="other"), "field 'name' is 'other' but the file is named 'good.json'"),
        (lambda o: o.update(plots={"h": "x.png"}), r"field 'plots.h' must be"),
        (lambda o: o.update(plots={"h": {"path": "../x.png", "sha256": "0"}}), r"field 'plots.h.path' must be an image"),
        (lambda o: o.update(plots={"h": {"path": "x.json", "sha256": "0"}}), r"field 'plots.h.path' must be an image"),
    ],
)
def test_load_errors_name_file_and_field(tmp_path, mutate, message):
    obj = _good(tmp_path)
    mutate(obj)
    (tmp_path / "good.json").write_text(json.dumps(obj))
    with pytest.raises(R.ResultError) as e:
        R.load_result(tmp_path / "good.json")
    assert str(tmp_path / "good.json") in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_non_finite_metric_in_file(tmp_path):
    obj = _good(tmp_path)
    text = json.dumps(obj).replace('"accuracy": 0.5', '"accuracy": NaN')
    (tmp_path / "good.json").write_text(text)
    with pytest.raises(R.ResultError, match=r"good\.json: field 'metrics\.accuracy' is not a finite number"):
        R.load_result(tmp_path / "good.json")


def test_malformed_json_and_missing_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"schema": 1, "name": ')
    with pytest.raises(R.ResultError, match=r"broken\.json: malformed JSON at line 1 column"):
        R.load_result(tmp_path / "broken.json")
    with pytest.raises(R.ResultError, match=r"absent\.json: no such result file"):
        R.load_result(tmp_path / "absent.json")


def test_plot_tampered_or_missing(tmp_path):
    p = R.write_result("n", "needle", {"accuracy": 1.0}, plots={"h": _png(tmp_path / "h.png")},
                       results_dir=tmp_path / "r")
    img = tmp_path / "r" / "n.h.png"
    _png(img, color=(0, 0, 255))
    with pytest.raises(R.ResultError, match=r"n\.json: field 'plots\.h': image .* does not match"):
        R.load_result(p)
    img.unlink()
    with pytest.raises(R.ResultError, match=r"n\.json: field 'plots\.h' points to a missing image"):
        R.load_result(p)


def test_load_results_reports_every_bad_file(tmp_path):
    _good(tmp_path)
    (tmp_path / "b1.json").write_text("not json")
    (tmp_path / "b2.json").write_text("[]")
    with pytest.raises(R.ResultError) as e:
        R.load_results(tmp_path)
    msg = str(e.value)
    assert msg.startswith("2 malformed result file(s)")
    assert "b1.json: malformed JSON" in msg and "b2.json: a result must be a JSON object" in msg
    assert R.load_results(tmp_path / "none") == []


def test_numpy_torch_and_paths_become_plain_json(tmp_path):
    import numpy as np
    import torch

    p = R.write_result(
        "conv", "needle", {"accuracy": np.float32(0.5), "frames": np.int64(300), "control": torch.tensor(0.25)},
        details={"grid": np.array([[1.0, 0.5]]), "counts": (1, 2)}, config={"ckpt": tmp_path / "ck"},
        results_dir=tmp_path,
    )
    r = R.load_result(p)
    assert r.metrics == {"accuracy": 0.5, "frames": 300.0, "control": 0.25}
    assert r.details == {"grid": [[1.0, 0.5]], "counts": [1, 2]} and r.config == {"ckpt": str(tmp_path / "ck")}
    with pytest.raises(R.ResultError, match=r"field 'details\.x' holds a object, not JSON"):
        R.write_result("conv", "needle", {"accuracy": 1.0}, details={"x": object()}, results_dir=tmp_path)


def test_accuracy_like_metrics_must_be_fractions(tmp_path):
    with pytest.raises(R.ResultError, match=r"metrics\.acc@300' is an accuracy-like fraction .* got 93\.0"):
        R.write_result("pct", "needle", {"acc@300": 93.0}, results_dir=tmp_path)
    assert R.is_fraction("qa_accuracy") and R.is_fraction("acc_long@64") and not R.is_fraction("accumulate_steps")


def test_plot_already_beside_the_result_is_kept(tmp_path):
    img = _png(tmp_path / "r.heat.png")
    before = img.read_bytes()
    p = R.write_result("r", "needle", {"accuracy": 1.0}, plots={"heat": img}, results_dir=tmp_path)
    assert R.load_result(p).plots == {"heat": img.resolve()} and img.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.heat.png", "r.json"]
