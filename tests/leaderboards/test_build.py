"""Leaderboard generation: golden Markdown from fixture results, quoted rows kept apart, failures by name."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from longvila.leaderboards import build as B
from longvila.leaderboards import cli, tables
from longvila.leaderboards.results import ResultError, load_results, write_result

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "results"
GOLDEN = HERE / "golden"


@pytest.fixture
def site(tmp_path):
    """A leaderboard folder with a copy of the fixture results: (out_dir, results_dir)."""
    shutil.copytree(FIXTURES, tmp_path / "results")
    return tmp_path, tmp_path / "results"


def _check_golden(name: str, text: str):
    path = GOLDEN / name
    if os.environ.get("LONGVILA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (LONGVILA_UPDATE_GOLDEN=1 rewrites)"


def test_markdown_matches_golden_and_rebuild_is_stable(site):
    out, res = site
    report = B.build(res, out)
    _check_golden("README.md", report.readme.read_text())
    _check_golden("index.html", report.html.read_text())
    first = {p.name: p.read_bytes() for p in [report.readme, report.html, *report.assets]}
    B.build(res, out)
    assert {p.name: p.read_bytes() for p in [report.readme, report.html, *report.assets]} == first


def test_tables_carry_every_metric_and_metadata(site):
    out, res = site
    report = B.build(res, out)
    md, html = report.readme.read_text(), report.html.read_text()
    for r in load_results(res):
        for k, v in r.metrics.items():
            text = tables.fmt_metric(k, v)
            assert re.search(rf"\| {re.escape(r.name)} \| {re.escape(k)} \| {re.escape(text)} \|", md), (r.name, k)
            assert f'data-metric="{k}" data-value="{v!r}">{text}</td>' in html, (r.name, k)
        assert r.command and f"`{r.command}`" in md and f"<code>{r.command}</code>" in html
    row = next(line for line in md.splitlines() if line.startswith("| needle-900 | 90.0%"))
    assert "| 900 |" in row and "tiny-qwen2-128" in row and "2026-11-20" in row and "abc1234" in row


def test_number_formats():
    assert tables.fmt_metric("accuracy", 0.998) == "99.8%"
    assert tables.fmt_metric("acc@6000", 1) == "100.0%"
    assert tables.fmt_metric("speedup_mmsp_vs_ring", 2.125) == "2.12x"
    assert tables.fmt_metric("time_ring_s", 0.01234) == "0.0123 s"
    assert tables.fmt_metric("build_videos_per_s", 3.5) == "3.5"
    assert tables.fmt_metric("tokens", 1234567.0) == "1,234,567"


def test_quoted_rows_never_mixed_with_measured(site):
    out, res = site
    quoted = tables.load_quoted()
    secs = tables.sections(load_results(res), quoted)
    measured_names = {r.name for r in load_results(res)}
    n_quoted = 0
    for s in secs:
        if s.quoted:
            n_quoted += len(s.quoted.rows)
            assert s.quoted.kind == "quoted" and not s.quoted.row_ids
            assert all(row[0].text == "quoted" and row[-1].text for row in s.quoted.rows)  # label and source
            assert all(c.metric is None for row in s.quoted.rows for c in row)
        for t in [s.measured, *s.scaling, s.all_metrics]:
            if t is not None:
                assert set(t.row_ids) <= measured_names and "quoted" not in {row[0].text for row in t.rows}
    assert n_quoted == len(quoted) >= 7
    figures = {q["figure"] for q in quoted}
    assert {"99.8%", "99.5%", "2.1x-5.7x", "1.1x-1.4x", "65.1%"} <= figures
    md = B.build(res, out).readme.read_text()
    # In the Markdown, every quoted figure sits in a table whose rows are labelled "quoted".
    for fig in figures:
        lines = [line for line in md.splitlines() if f"| {fig} |" in line]
        assert lines and all(line.startswith("| quoted | ") for line in lines), fig


def test_no_results_yet_shows_quoted_anchors(tmp_path):
    report = B.build(tmp_path / "results", tmp_path)
    md = report.readme.read_text()
    assert "**No measured results yet.**" in md and md.count("No measured results yet.") == 1 + len(tables.ORDER)
    assert "| quoted | 99.8% |" in md and 'id="no-results"' in report.html.read_text()


def test_malformed_result_stops_the_build_naming_file_and_field(site, capsys):
    out, res = site
    obj = json.loads((res / "data-bench.json").read_text())
    obj["metrics"]["decode_fps_pyav"] = "fast"
    (res / "data-bench.json").write_text(json.dumps(obj))
    (res / "zz.json").write_text("{")
    with pytest.raises(ResultError) as e:
        B.build(res, out)
    assert "data-bench.json: field 'metrics.decode_fps_pyav' must be a number" in str(e.value)
    assert "zz.json: malformed JSON" in str(e.value)
    assert not (out / "README.md").exists()  # nothing written
    assert cli.main(["build", "--results", str(res), "--out", str(out), "--check-browser", "no"]) == 1
    err = capsys.readouterr().err
    assert "data-bench.json" in err and "metrics.decode_fps_pyav" in err and "zz.json" in err


def test_bad_quoted_file_named(tmp_path):
    q = tmp_path / "quoted.json"
    q.write_text(json.dumps({"rows": [{"benchmark": "needle", "claim": "x", "figure": "1%", "source": ""}]}))
    with pytest.raises(ValueError, match=r"quoted\.json: field 'rows\[0\]\.source' must be a non-empty string"):
        tables.load_quoted(q)
    q.write_text(json.dumps({"rows": [{"benchmark": "mmlu", "claim": "x", "figure": "1%", "source": "s"}]}))
    with pytest.raises(ValueError, match=r"rows\[0\]\.benchmark' is 'mmlu'"):
        tables.load_quoted(q)


def test_assets_copied_shrunk_and_stale_removed(tmp_path):
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (900, 1600, 3), dtype="uint8")).save(big)
    assert big.stat().st_size > B.MAX_IMAGE_BYTES
    res = tmp_path / "results"
    write_result("n", "needle", {"accuracy": 0.5}, plots={"heatmap": big}, results_dir=res)
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "old.png").write_bytes(b"stale")
    report = B.build(res, tmp_path)
    asset = tmp_path / "assets" / "n.heatmap.png"
    assert report.shrunk == ["assets/n.heatmap.png"] and report.removed == ["assets/old.png"]
    with Image.open(asset) as im:
        assert im.width == B.MAX_IMAGE_WIDTH and im.height == round(900 * B.MAX_IMAGE_WIDTH / 1600)
    assert '<img src="assets/n.heatmap.png"' in report.html.read_text()
    assert "![n: heatmap](assets/n.heatmap.png)" in report.readme.read_text()


def test_cli_validate_and_build(site, capsys):
    out, res = site
    assert cli.main(["validate", "--results", str(res)]) == 0
    assert "5 valid result file(s) (data_bench: 1, needle: 1, sp_bench: 1, training: 1, videomme: 1); 7 quoted" \
        in capsys.readouterr().out
    (res / "forgotten.png").write_bytes((res / "needle-900.heatmap.png").read_bytes())
    assert cli.main(["build", "--results", str(res), "--out", str(out), "--check-browser", "no"]) == 0
    assert "warning: no result references forgotten.png" in capsys.readouterr().err
    assert (out / "README.md").is_file() and (out / "index.html").is_file()
    assert sorted(p.name for p in (out / "assets").iterdir()) == [
        "_leaderboard.needle.frame_scaling.png", "_leaderboard.training.loss.png",
        "_leaderboard.videomme.frame_scaling.png",
        "needle-900.heatmap.png", "training-stage1.loss.png", "videomme-sweep.frame_scaling.png"]


def test_loss_series_forms_and_generated_plots(site):
    from PIL import Image

    from longvila.leaderboards.plots import loss_series

    assert loss_series({"loss": [3.0, 2.0, 1.5]}) == ([1.0, 2.0, 3.0], [3.0, 2.0, 1.5])
    assert loss_series({"loss": [[10, 3.0], [20, 2.0]]}) == ([10.0, 20.0], [3.0, 2.0])
    assert loss_series({"loss": {"step": [0, 5], "loss": [2.0, 1.0]}}) == ([0.0, 5.0], [2.0, 1.0])
    for bad in (None, {}, {"loss": [1.0]}, {"loss": ["a", "b"]}, {"loss": {"step": [0], "loss": [1, 2]}}):
        assert loss_series(bad) is None, bad
    out, res = site
    report = B.build(res, out)
    generated = [p for p in report.assets if p.name.startswith("_leaderboard.")]
    assert len(generated) == 3
    for p in generated:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (400, 240)
        assert p.stat().st_size < 60_000
    # No training curve and no acc@N metric: nothing is drawn, and the stale generated images go away.
    for f in ("training-stage1.json", "needle-900.json", "videomme-sweep.json"):
        (res / f).unlink()
    report = B.build(res, out)
    assert not [p for p in report.assets if p.name.startswith("_leaderboard.")]
    assert "assets/_leaderboard.training.loss.png" in report.removed


def test_model_config_summary_skips_locations_and_shortens(tmp_path):
    p = write_result("m", "needle", {"accuracy": 1.0}, results_dir=tmp_path, config={
        "model": "artifacts/ckpt/stage5", "command": "x", "out": "/tmp/o", "cache_dir": "/c", "table_file": "t",
        "needles": 5, "model_hash": "0123456789abcdef0123456789abcdef", "nested": {"a": 1}})
    text = tables._model_config(load_results(tmp_path)[0])
    assert text == "01234567 artifacts/ckpt/stage5 (needles=5)", text
    assert p.is_file()
    # a result of an outside model names its type and checkpoint hash first
    write_result("q", "needle", {"accuracy": 0.0}, results_dir=tmp_path / "q", config={
        "model": "/models/qwen2-vl-7b", "model_type": "qwen2_vl", "model_hash": "fedcba9876543210", "needles": 5})
    assert tables._model_config(load_results(tmp_path / "q")[0]) == "qwen2_vl fedcba98 /models/qwen2-vl-7b (needles=5)"


def test_many_headline_metrics_are_capped_largest_first(tmp_path):
    metrics = {f"speedup_zigzag_vs_basic_{w}r_{s}_{m}": 1.5 for w in (2, 4) for s in (1024, 4096, 16384)
               for m in ("fwd", "fwdbwd")}
    metrics |= {"speedup_balanced_vs_token_2r": 1.2, "speedup_balanced_vs_token_4r": 1.3, "time_ring_2r_1024_fwd_s": 0.5}
    write_result("sp", "sp_bench", metrics, results_dir=tmp_path)
    secs = {s.benchmark: s for s in tables.sections(load_results(tmp_path), [])}
    t = secs["sp_bench"].measured
    assert t.caption == "Measured (8 of 14 headline metrics; every metric under All metrics)"
    assert t.headers[1:9] == [
        "speedup_balanced_vs_token_4r", "speedup_balanced_vs_token_2r", "speedup_zigzag_vs_basic_4r_16384_fwdbwd",
        "speedup_zigzag_vs_basic_4r_4096_fwdbwd", "speedup_zigzag_vs_basic_4r_1024_fwdbwd",
        "speedup_zigzag_vs_basic_2r_16384_fwdbwd", "speedup_zigzag_vs_basic_2r_4096_fwdbwd",
        "speedup_zigzag_vs_basic_2r_1024_fwdbwd"]
    assert len(secs["sp_bench"].all_metrics.rows) == len(metrics)
    # the at-a-glance row names the zigzag speed-up (wall clock, 2 ranks, longest sequence), not the first column
    assert tables.summary_table(load_results(tmp_path)).rows[0][2].text == "speedup_zigzag_vs_basic_2r_16384_fwdbwd"
    assert tables.fmt_metric("decode_long_sft_decord_over_pyav", 1.234) == "1.23x"
