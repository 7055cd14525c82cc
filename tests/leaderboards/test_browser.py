"""The generated page in a real headless chromium: no console errors, images loaded, the files' numbers shown.

Skipped only when chromium is absent outside CI (run leaderboards/setup_browser.sh); in CI it must run.
"""

import os
import shutil
from pathlib import Path

import pytest

from longvila.leaderboards import build as B
from longvila.leaderboards import cli
from longvila.leaderboards.browser import check_page, find_chromium, find_problems, inspect_page
from longvila.leaderboards.results import load_results
from longvila.leaderboards.tables import load_quoted

pytestmark = pytest.mark.browser
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"

if find_chromium() is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is required in CI for the browser tests (run leaderboards/setup_browser.sh)")
    pytest.skip("chromium not installed (run leaderboards/setup_browser.sh)", allow_module_level=True)
try:
    import websocket  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("websocket-client not installed (pip install websocket-client)", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    shutil.copytree(FIXTURES, out / "results")
    B.build(out / "results", out)
    return out, load_results(out / "results")


def test_page_loads_clean_with_images_and_numbers(site):
    out, results = site
    state = inspect_page(out / "index.html")
    assert state.title == "LongVILA leaderboards"
    assert state.console == []
    assert sorted(i["src"] for i in state.images) == [
        "assets/_leaderboard.needle.frame_scaling.png", "assets/_leaderboard.training.loss.png",
        "assets/_leaderboard.videomme.frame_scaling.png",
        "assets/needle-900.heatmap.png", "assets/training-stage1.loss.png", "assets/videomme-sweep.frame_scaling.png"]
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in state.images)
    shown = {(c["result"], c["metric"]): float(c["value"]) for c in state.cells if c["metric"]}
    expected = {(r.name, k): v for r in results for k, v in r.metrics.items()}
    assert {k: shown[k] for k in expected} == expected
    quoted_text = [c["text"] for c in state.cells if c["kind"] == "quoted"]
    assert "99.8%" in quoted_text and "2.1x-5.7x" in quoted_text
    assert find_problems(state, results, load_quoted()) == []
    assert cli.main(["check", "--results", str(out / "results"), "--out", str(out)]) == 0
    assert cli.main(["build", "--results", str(out / "results"), "--out", str(out), "--check-browser", "yes"]) == 0


def test_check_catches_broken_image_console_error_and_wrong_number(site, tmp_path):
    out, results = site
    shutil.copytree(out, tmp_path / "bad")
    page = tmp_path / "bad" / "index.html"
    (tmp_path / "bad" / "assets" / "training-stage1.loss.png").unlink()
    html = page.read_text()
    html = html.replace('data-metric="control" data-value="0.1">', 'data-metric="control" data-value="0.2">', 1)
    html = html.replace("</body>", "<script>console.error('boom')</script></body>")
    html = html.replace("<td>99.5%</td>", "<td>99.4%</td>")  # a quoted figure typed wrong
    html = html.replace('data-value="0.5">50.0%</td>', 'data-value="0.5">5.0%</td>', 1)  # text disagrees
    page.write_text(html)
    problems = check_page(page, results, load_quoted())
    assert any("quoted figure '99.5%' (needle) is not in a quoted table" in p for p in problems), problems
    assert any("metric accuracy reads '5.0%' for value 0.5" in p for p in problems), problems
    assert any("assets/training-stage1.loss.png did not load" in p for p in problems), problems
    assert any("console" in p and "boom" in p for p in problems), problems
    assert any("needle-900: metric control shows [0.2, 0.1], the result file says 0.1" in p for p in problems), problems
    assert any("ERR_FILE_NOT_FOUND" in p for p in problems), problems
