"""Written HTML figures render in a real headless Chromium: plot present, no script errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from depthprobe.depth import DepthRule, cascade
from depthprobe.plots import cascade_diagram, write_html
from depthprobe.run import RunConfig, RunResult
from depthprobe.scores import make_readout_scores, make_scores

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Records every uncaught script error on the root element, where --dump-dom shows it.
ERROR_CATCHER = ("<script>window.addEventListener('error', function (event) {"
                 "var root = document.documentElement;"
                 "root.setAttribute('data-script-errors',"
                 "(root.getAttribute('data-script-errors') || '') + event.message + ';');"
                 "});</script>")
VIRIDIS_YELLOW = np.array([253, 231, 37])
VIRIDIS_PURPLE = np.array([68, 1, 84])

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason="needs Debian's chromium at /usr/bin/chromium")


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    # The timeout only guards against a hung browser; nothing here measures speed.
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         *extra, page.as_uri()], capture_output=True, text=True, timeout=300, check=True)


def _with_error_catcher(html: str) -> str:
    head = html.find("<head>")
    assert head >= 0, "the written HTML has no <head>"
    cut = head + len("<head>")
    return html[:cut] + ERROR_CATCHER + html[cut:]


def _dump_dom(page: Path, tmp_path: Path) -> str:
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(_with_error_catcher(page.read_text()))
    return _chromium(checked, tmp_path / "profile-dom", "--dump-dom").stdout


def _screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    shot = tmp_path / f"{page.stem}.png"
    _chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}",
              "--window-size=1100,900")
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _script_errors(dom: str) -> str | None:
    found = re.search(r'<html[^>]*\sdata-script-errors="([^"]*)"', dom)
    return found.group(1) if found else None


def _share_near(image: np.ndarray, colour: np.ndarray, tolerance: int = 30) -> float:
    return float((np.abs(image - colour).max(axis=-1) <= tolerance).mean())


@pytest.fixture(scope="module")
def diagram_page(tmp_path_factory) -> Path:
    tokens = ["The", " ball", ".", " Swap", " A", "."]
    cells = pd.DataFrame([dict(position=p, layer=layer, score=float(layer >= 2 * (p == 5)))
                          for p in (2, 5) for layer in range(5)])
    readouts = pd.DataFrame(dict(position=[2, 5], step=[0, 1], depth=[0, 2]))
    fig = cascade_diagram(tokens, cells, readouts, n_layers=4, title="render check")
    return write_html(fig, tmp_path_factory.mktemp("render") / "diagram.html")


def test_error_catcher_sees_script_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><script>notDefinedAnywhere();</script>"
                    "</body></html>")
    dom = _dump_dom(page, tmp_path)
    assert "notDefinedAnywhere" in _script_errors(dom)


def test_diagram_html_renders_plot(diagram_page, tmp_path):
    dom = _dump_dom(diagram_page, tmp_path)
    assert _script_errors(dom) is None
    assert 'class="main-svg"' in dom
    assert dom.count('class="hm"') >= 2  # the block grid and the score layer
    assert "render check" in dom


def test_diagram_screenshot_shows_colours(diagram_page, tmp_path):
    image = _screenshot(diagram_page, tmp_path)
    assert image.std() > 20  # not a blank page
    assert _share_near(image, VIRIDIS_YELLOW) > 0.002
    assert _share_near(image, VIRIDIS_PURPLE) > 0.0005


def test_run_result_html_renders_offline(tmp_path):
    rows = [dict(method="probe", readout_id=story * 2 + step, group=story, step=step,
                 layer=layer, score=float(layer >= 1 + step))
            for story in range(6) for step in range(2) for layer in range(4)]
    readouts = make_readout_scores(rows)
    chance = {0: 0.5, 1: 0.5}
    result = cascade(readouts, chance, "probe", DepthRule(n_boot=20))
    mean = readouts.groupby(["method", "layer", "step"], as_index=False)["score"].mean()
    scores = make_scores(mean.assign(spread=0.0, chance=0.5, control=0.3, count=6))
    run_result = RunResult(RunConfig(), scores, readouts, {"probe": result}, None, None,
                           {"model": {"name": "planted", "n_layers": 3}})

    page = tmp_path / "repr.html"
    page.write_text(f"<html><head></head><body>{run_result._repr_html_()}</body></html>")
    dom = _dump_dom(page, tmp_path)
    assert _script_errors(dom) is None
    assert 'class="main-svg"' in dom
    assert "<table" in dom
    assert "depthprobe run: shell-game on smollm2-135m" in dom
