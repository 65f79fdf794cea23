"""Figures drawn from planted run folders whose depths are known, their export, and replots."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from depthprobe.cli import main
from depthprobe.depth import DepthRule, cascade, resolution_depth
from depthprobe.plots import (BrowserNotFoundError, average_diagram, compare_figure,
                              curves_by_method, depth_curves_figure, example_diagram,
                              figure_from_run, heatmap_figure, load_run,
                              patchscope_grid_figure, token_table, write_figure, write_html)
from depthprobe.plots.diagram import ARROW, INPUT_PURPLE, STATE_GREEN, display_token
from depthprobe.plots.replot import FIGURE_KINDS
from depthprobe.plots.tables import TOKEN_COLUMNS, read_tokens
from depthprobe.scores import make_readout_scores, make_scores, write_table
from depthprobe.sites import Example, Readout
from depthprobe.tasks import make_task, align_examples

N_EXAMPLES = 6
STEPS = [0, 1, 2, 3]
# Each step is three tokens; the readout sits on the period. Tokens repeat on purpose.
STEP_TOKENS = [" x", " y", "."]
# Readouts of steps 0..2 are correct from layer FIRST_CORRECT[step] upward (x scale); the
# readout of example 1 at step 1 only from layer 4. Step 3 is at chance at every layer.
FIRST_CORRECT = {0: 1, 1: 2, 2: 3}
LATE_READOUT = (1, 1, 4)  # (example, step, first correct layer before scaling)


def planted_run(folder, n_layers: int = 6, scale: int = 1, name: str = "planted-model"):
    """Write a run folder whose resolution depths follow from the planted scores."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, tokens, readout_id = [], [], 0
    for example in range(N_EXAMPLES):
        for step in STEPS:
            for offset, token in enumerate(STEP_TOKENS):
                position = 3 * step + offset
                is_readout = offset == 2
                tokens.append(dict(
                    example=example, group=str(example), position=position, token_id=offset,
                    token=token, readout_id=readout_id if is_readout else None,
                    step=step if is_readout else None, label=0 if is_readout else None,
                    label_name="cup A" if is_readout else None))
            first = FIRST_CORRECT.get(step)
            if (example, step) == LATE_READOUT[:2]:
                first = LATE_READOUT[2]
            for layer in range(n_layers + 1):
                if first is None:
                    score = 0.5  # chance
                else:
                    score = float(layer >= first * scale)
                rows.append(dict(method="probe", readout_id=readout_id, group=example,
                                 step=step, layer=layer, score=score))
            readout_id += 1
    readouts = make_readout_scores(rows)
    chance = {step: 0.5 for step in STEPS}
    result = cascade(readouts, chance, "probe", DepthRule(n_boot=50))
    mean = readouts.groupby(["method", "layer", "step"], as_index=False)["score"].mean()
    scores = make_scores(mean.assign(spread=0.05, chance=0.5, control=0.25, count=N_EXAMPLES))

    write_table(scores, folder / "scores.csv")
    write_table(readouts, folder / "readout_scores.csv")
    write_table(result.table, folder / "depth.csv")
    write_table(pd.DataFrame(tokens, columns=TOKEN_COLUMNS), folder / "tokens.csv")
    write_table(pd.DataFrame(dict(step=STEPS, accuracy=[0.9, 0.7, 0.5, 0.3], count=20,
                                  stderr=0.1, chance=0.5)), folder / "behaviour.csv")
    manifest = {"settings": {"task": "planted-task"},
                "model": {"name": name, "n_layers": n_layers},
                "cascades": {"probe": result.summary()}}
    (folder / "manifest.json").write_text(json.dumps(manifest, default=str))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("planted") / "run")


@pytest.fixture(scope="module")
def deep_run_dir(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("planted") / "deep", n_layers=12, scale=2,
                       name="deep-model")


@pytest.fixture(scope="module")
def tables(run_dir):
    return load_run(run_dir)


def test_planted_depths_are_known(tables):
    depth = tables.depths.set_index("step")["depth"]
    assert depth[0] == 1
    assert depth[1] == 4  # one late readout keeps layers 2 and 3 under the threshold
    assert depth[2] == 3
    assert pd.isna(depth[3])


def _outlines(fig: go.Figure) -> list[tuple[float, float]]:
    return sorted(((s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2) for s in fig.layout.shapes
                  if s.line.color == "black")


def _arrows(fig: go.Figure, colour: str) -> list[tuple]:
    return [(a.ax, a.ay, a.x, a.y) for a in fig.layout.annotations
            if a.showarrow and a.arrowcolor == colour]


def test_diagram_outlines_resolution_blocks(tables):
    fig = example_diagram(tables, example=0)
    assert _outlines(fig) == [(2, 1), (5, 4), (8, 3)]
    assert _arrows(fig, ARROW) == [(2, 1, 5, 4), (5, 4, 8, 3)]
    unresolved = [t for t in fig.data if t.name == "no layer resolves the state"]
    assert list(unresolved[0].x) == [11]


def test_diagram_labels_repeated_tokens(tables):
    fig = example_diagram(tables, example=0)
    assert list(fig.layout.xaxis.tickvals) == list(range(12))
    assert list(fig.layout.xaxis.ticktext) == ["x", "y", "."] * 4


def test_diagram_colours_and_hover(tables):
    fig = example_diagram(tables, example=1)
    blocks, score = fig.data[0], fig.data[1]
    z = np.array(score.z, dtype=float)
    assert z.shape == (7, 12)
    assert np.isnan(z[:, 0]).all()  # no readout at position 0
    assert z[:, 5].tolist() == [0, 0, 0, 0, 1, 1, 1]  # the late readout of step 1
    hover = np.array(blocks.hovertext, dtype=object)
    assert "wrong (0): 0.000" in hover[3, 5]
    assert "state cup A" in hover[3, 5]
    assert "resolution depth d = 4" in hover[3, 5]
    assert "not scored" in hover[3, 0]


def test_diagram_readout_resolution(tables):
    rule = DepthRule(**{k: v for k, v in tables.manifest["cascades"]["probe"]["rule"].items()})
    fig = example_diagram(tables, example=1, resolution="readout")
    assert _outlines(fig) == [(2, 1), (5, 4), (8, 3)]
    fig = example_diagram(tables, example=0, resolution="readout")
    curve = np.array([float(layer >= 2) for layer in range(7)])
    assert resolution_depth(curve, 0.5, rule) == 2
    assert _outlines(fig) == [(2, 1), (5, 2), (8, 3)]


def test_diagram_cell_text_and_window(tables):
    text = {(4, 5): "bank", (0, 3): "river-bank-long"}
    fig = example_diagram(tables, example=0, cell_text=text, window=(3, 9))
    decoded = [t for t in fig.data if t.name == "decoded text"][0]
    assert sorted(zip(decoded.x, decoded.y, decoded.text)) == [(3, 0, "rive…"), (5, 4, "bank")]
    assert list(fig.layout.xaxis.tickvals) == list(range(3, 9))
    hover = np.array(fig.data[0].hovertext, dtype=object)
    assert "decodes as 'bank'" in hover[4, 2]


def test_diagram_schematic_style(tables):
    fig = example_diagram(tables, example=0, schematic=True)
    assert fig.data[0].name == "blocks"
    assert not any(t.name == "score" for t in fig.data)
    boxes = [s for s in fig.layout.shapes if s.fillcolor == STATE_GREEN]
    assert len(boxes) == 3
    assert len(_arrows(fig, INPUT_PURPLE)) == 12


def test_diagram_errors_name_the_fix(tables):
    with pytest.raises(ValueError, match="examples 0 to 5"):
        example_diagram(tables, example=9)
    with pytest.raises(ValueError, match="'step'.*'readout'"):
        example_diagram(tables, resolution="layer")
    with pytest.raises(ValueError, match="has probe"):
        example_diagram(tables, method="lens")


def test_average_diagram_means(tables):
    fig = average_diagram(tables)
    z = np.array(fig.data[1].z, dtype=float)
    expected = (tables.readout_scores.groupby(["layer", "step"])["score"].mean()
                .unstack("step").to_numpy())
    np.testing.assert_allclose(z, expected)
    assert list(fig.layout.xaxis.ticktext) == [f"‘.’<br>step {s}" for s in STEPS]
    assert _outlines(fig) == [(0, 1), (1, 4), (2, 3)]


def test_display_token_makes_blanks_visible():
    assert display_token(" bank") == "bank"
    assert display_token("\n") == "↵"
    assert display_token("  ") == "␣␣"
    assert display_token("") == "∅"


def test_heatmap_panels_hold_scores(tables):
    fig = heatmap_figure(tables.scores, "probe")
    scores = tables.scores
    expected = scores.pivot(index="layer", columns="step", values="score").to_numpy()
    np.testing.assert_allclose(np.array(fig.data[0].z, dtype=float), expected)
    np.testing.assert_allclose(np.array(fig.data[1].z, dtype=float), 0.25)
    np.testing.assert_allclose(np.array(fig.data[2].z, dtype=float), [[0.5] * 4])
    assert "selectivity" in fig.data[0].hovertext[2][1]


def test_depth_curves_normalise(tables, deep_run_dir):
    deep = load_run(deep_run_dir)
    curves = {"shallow": tables.depths, "deep": deep.depths}
    fig = depth_curves_figure(curves, {"shallow": 6, "deep": 12}, normalise=True)
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    np.testing.assert_allclose(lines["shallow"].y[:3], [1 / 6, 4 / 6, 3 / 6])
    np.testing.assert_allclose(lines["deep"].y[:3], [2 / 12, 8 / 12, 6 / 12])
    assert np.isnan(lines["deep"].y[3])
    crosses = [t for t in fig.data if t.name == "deep: no layer resolves the state"]
    assert len(crosses) == 1
    with pytest.raises(ValueError, match="number of layers of 'deep'"):
        depth_curves_figure(curves, {"shallow": 6}, normalise=True)


def test_depth_band_spans_interval(tables):
    depths = tables.depths.copy()
    depths["depth_low"] = depths["depth"].astype(float) - 1
    depths["depth_high"] = depths["depth"].astype(float) + 2
    fig = depth_curves_figure(curves_by_method(depths), 6)
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert list(band.x) == [0, 1, 2, 2, 1, 0]
    assert list(band.y) == [3, 6, 5, 2, 3, 0]


def test_grid_averages_cells():
    grid = pd.DataFrame(dict(source_layer=[0, 0, 0, 1], target_layer=[0, 0, 1, 1],
                             p_expected=[0.2, 0.6, 1.0, 0.5], step=[1, 1, 1, 2]))
    fig = patchscope_grid_figure(grid, value="p_expected")
    z = np.array(fig.data[0].z, dtype=float)
    np.testing.assert_allclose(z, [[0.4, np.nan], [1.0, 0.5]])
    assert fig.data[0].customdata[0][0] == 2
    faceted = patchscope_grid_figure(grid, value="p_expected", facet="step")
    assert sum(isinstance(t, go.Heatmap) for t in faceted.data) == 2
    with pytest.raises(ValueError, match="source_layer"):
        patchscope_grid_figure(grid.drop(columns="source_layer"), value="p_expected")


def test_compare_normalises_two_models(run_dir, deep_run_dir):
    fig = compare_figure(load_run(run_dir), load_run(deep_run_dir))
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    np.testing.assert_allclose(lines["planted-model"].y[:3], [1 / 6, 4 / 6, 3 / 6])
    np.testing.assert_allclose(lines["deep-model"].y[:3], [2 / 12, 8 / 12, 6 / 12])
    assert "planted-model vs deep-model" in fig.layout.title.text


def test_every_kind_replots(run_dir, deep_run_dir, tmp_path):
    grid = pd.DataFrame(dict(source_layer=[0, 1], target_layer=[1, 0], score=[0.5, 1.0]))
    write_table(grid, run_dir / "patchscope_grid.csv")
    for kind in FIGURE_KINDS:
        others = [deep_run_dir] if kind == "compare" else []
        fig = figure_from_run(run_dir, kind, others=others)
        assert isinstance(fig, go.Figure), kind
        assert fig.layout.title.text, kind
    (run_dir / "patchscope_grid.csv").unlink()
    with pytest.raises(ValueError, match="--methods patchscope"):
        figure_from_run(run_dir, "grid")
    with pytest.raises(ValueError, match="exactly one second run"):
        figure_from_run(run_dir, "compare")
    with pytest.raises(ValueError, match="Unknown figure kind 'bars'"):
        figure_from_run(run_dir, "bars")


def test_load_run_names_missing_file(run_dir, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="scores.csv"):
        load_run(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_token_table_round_trip(smollm2, tmp_path):
    task = make_task("shell-game", n_stories=2, n_swaps=2)
    examples = align_examples(task.text_examples(), smollm2.tokenizer)
    odd = smollm2.tokenizer("\n NA")["input_ids"]
    examples.append(Example("\n NA", [Readout(len(odd) - 1, 0, 0)], "odd", input_ids=odd))
    table = token_table(examples, smollm2.tokenizer, task.class_names)
    readouts = table[table["readout_id"].notna()]
    assert readouts["readout_id"].tolist() == list(range(len(readouts)))
    assert readouts["token"].tolist()[:3] == ["."] * 3
    assert readouts["label_name"].iloc[0] == task.class_names[examples[0].readouts[0].label]
    first = table[table["example"] == 0]["token"].tolist()
    assert "".join(first) == examples[0].text

    write_table(table, tmp_path / "tokens.csv")
    again = read_tokens(tmp_path / "tokens.csv")
    pd.testing.assert_frame_equal(again, table)


def test_write_html_is_self_contained(tables, tmp_path):
    path = write_html(example_diagram(tables), tmp_path / "d.html")
    text = path.read_text()
    assert re.search(r"<script[^>]*\ssrc=", text) is None  # no script loaded from elsewhere
    assert "Plotly.newPlot" in text
    assert len(text) > 1_000_000  # plotly.js is inside


def test_write_png_through_kaleido(tables, tmp_path):
    path = write_figure(average_diagram(tables), tmp_path / "d.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 500
    assert image.shape[1] > 500
    assert image.std() > 20  # not a blank page
    assert write_figure(heatmap_figure(tables.scores), tmp_path / "h.svg").read_text(
        ).lstrip().startswith("<svg")


def test_missing_browser_writes_html(tables, tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserNotFoundError, match="apt-get install chromium") as error:
        write_figure(average_diagram(tables), tmp_path / "d.png")
    assert "d.html" in str(error.value)
    assert (tmp_path / "d.html").stat().st_size > 1_000_000
    assert not (tmp_path / "d.png").exists()


def test_cli_plot_redraws(run_dir, deep_run_dir, tmp_path, capsys):
    output = tmp_path / "diagram.html"
    assert main(["plot", str(run_dir), "--kind", "diagram", "--example", "2",
                 "-o", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    assert output.stat().st_size > 1_000_000
    assert main(["plot", str(run_dir), str(deep_run_dir), "--kind", "compare"]) == 0
    assert (run_dir / "compare-probe.html").is_file()
    assert main(["plot", str(tmp_path / "nowhere"), "--kind", "heatmap"]) == 2
    assert "does not exist" in capsys.readouterr().err
