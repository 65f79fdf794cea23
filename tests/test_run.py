"""The main job end to end on the bundled model, and its input checks."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from depthprobe.cli import main
from depthprobe.run import RunConfig, run
from depthprobe.scores import READOUT_COLUMNS, SCORE_COLUMNS

SMALL = dict(n_stories=60, n_steps=2, n_folds=3, n_boot=100, behaviour_stories=20,
             figures=("html", "png"), progress=False)


@pytest.fixture(scope="module")
def small_run(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run(RunConfig(output_dir=str(out), **SMALL), model=smollm2)


def test_run_writes_every_output_with_its_schema(small_run):
    out = small_run.output_dir
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS
    assert len(scores) == 31 * 3  # layers 0..30 by steps 0..2
    assert list(pd.read_csv(out / "readout_scores.csv").columns) == READOUT_COLUMNS
    depth = pd.read_csv(out / "depth.csv")
    assert depth["step"].tolist() == [0, 1, 2]
    behaviour = pd.read_csv(out / "behaviour.csv")
    assert behaviour["count"].tolist() == [20, 20, 20]
    shortcuts = pd.read_csv(out / "shortcuts.csv")
    assert "last cup named" in set(shortcuts["rule"])
    for name in ("cascade-probe.html", "cascade-probe.png"):
        assert (out / name).stat().st_size > 10_000

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"]["n_layers"] == 30
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["task"] == {"task": "shell-game", "n_stories": 60, "n_swaps": 2,
                                "n_cups": 3, "seed": 0,
                                "query": " Question: Where is the ball? Answer: under cup"}
    assert manifest["versions"]["torch"].startswith("2.13.0")
    assert set(manifest["timings_s"]) >= {"load_model", "capture", "probe", "total"}


def test_probe_resolves_opening_and_first_swap(small_run):
    depth = small_run.depths.set_index("step")
    assert pd.notna(depth.loc[0, "depth"])
    assert pd.notna(depth.loc[1, "depth"])
    scores = small_run.scores
    best = scores.groupby("step")["score"].max()
    assert best[0] > 0.9
    assert best[1] > 0.7


def test_summary_names_depth_slope_and_behaviour(small_run):
    text = small_run.summary()
    assert "step  0: d =" in text
    assert "cascade slope:" in text
    assert "exhaustion step:" in text
    assert "model accuracy per step (chance 0.33)" in text


def test_jupyter_repr_holds_table_and_figure(small_run):
    html = small_run._repr_html_()
    assert "<table" in html
    assert "plotly" in html


def test_existing_folder_with_other_settings_is_rejected(small_run):
    config = RunConfig(output_dir=str(small_run.output_dir), **{**SMALL, "seed": 1})
    with pytest.raises(ValueError, match="contains a run with different settings.*--overwrite"):
        run(config)


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "smollm"], "Unknown model 'smollm'"),
    (["run", "--task", "juggling"], "Unknown task 'juggling'"),
    (["run", "--steps", "0"], "Steps must be 1 or more, got 0"),
    (["run", "--stories", "4"], "fewer than the 5 folds"),
    (["run", "--methods", "probe,tarot"], "Unknown method 'tarot'"),
    (["run", "--task-option", "n_cups=9"], "n_cups must be 3, 4 or 5, got 9"),
    (["run", "--task-option", "colour=red"], "Unknown option 'colour'"),
])
def test_bad_flags_fail_before_model_loads(argv, message, capsys, tmp_path, monkeypatch):
    # The package exports a function named run, so take the module from sys.modules.
    run_module = sys.modules["depthprobe.run"]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(run_module, "load_model", no_loading)
    assert main(argv + ["-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
