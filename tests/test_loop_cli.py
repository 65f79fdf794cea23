"""`depthprobe run --loop`, `depthprobe train-toy`, and methods that need an unembedding."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from depthprobe.cli import main
from depthprobe.methods import LogitLens
from depthprobe.methods.patchscope import patchscope
from depthprobe.models import LoadedModel
from depthprobe.plots import figure_from_run
from depthprobe.recipes import check_recipe, parse_recipe
from depthprobe.run import RunConfig, run

TINY = dict(n_stories=30, n_steps=2, n_folds=3, n_boot=50, behaviour=False, figures=("html",),
            progress=False)
TINY_FLAGS = ["--stories", "30", "--steps", "2", "--folds", "3", "--boot", "50",
              "--no-behaviour", "--figures", "html", "-q"]


@pytest.mark.parametrize("spec, expected", [
    ("10:x:2", "whole numbers"),     # not START:END:TIMES
    ("10:14:0", "TIMES"),            # no pass at all
    ("10:40:2", "30 blocks"),        # past the bundled model's last block
])
def test_bad_loop_fails_before_loading(spec, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--loop", spec, "-o", str(out), *TINY_FLAGS]) == 2
    error = capsys.readouterr().err
    assert spec in error
    assert expected in error
    assert not out.exists()  # rejected before the output folder or the model


@pytest.fixture(scope="module")
def plain_and_looped(smollm2, tmp_path_factory):
    plain = run(RunConfig(output_dir=str(tmp_path_factory.mktemp("plain")), **TINY),
                model=smollm2)
    identity = run(RunConfig(output_dir=str(tmp_path_factory.mktemp("loop1")), loop="10:14:1",
                             **TINY), model=smollm2)
    return plain, identity


def test_loop_times_one_gives_the_same_scores(plain_and_looped):
    plain, identity = plain_and_looped
    columns = ["method", "layer", "step", "score", "chance", "control", "count"]
    pd.testing.assert_frame_equal(plain.scores[columns], identity.scores[columns],
                                  check_exact=False, rtol=0, atol=1e-6)
    assert identity.manifest["model"]["loop"] == "10:14:1"
    assert identity.manifest["model"]["n_layers"] == 30
    assert "loop" not in plain.manifest["model"]
    assert identity.manifest["settings"]["loop"] == "10:14:1"
    assert "loop" not in plain.manifest["settings"]  # earlier runs' settings are unchanged


def test_looped_run_labels_layers(smollm2, tmp_path):
    result = run(RunConfig(output_dir=str(tmp_path), loop="10:12:2", **TINY), model=smollm2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["model"]
    assert manifest["n_layers"] == 32
    labels = manifest["layer_labels"]
    assert len(labels) == 33
    assert labels[0] == "0"
    assert labels[10] == "10 (block 9, pass 1)"
    # Layers 11 and 12 are blocks 10 and 11 on pass 1, and layers 13 and 14 run them again.
    assert labels[13] == "13 (block 10, pass 2)"
    assert labels[14] == "14 (block 11, pass 2)"
    assert labels[15] == "15 (block 12, pass 1)"
    assert manifest["block_sources"][12] == [10, 1]
    assert set(pd.read_csv(tmp_path / "scores.csv")["layer"]) == set(range(33))
    assert "blocks looped 10:12:2" in result.summary()

    hover = result.figure().data[0].text
    assert any("layer 13 (block 10, pass 2)" in cell for row in hover for cell in row)
    diagram = figure_from_run(tmp_path, "recurrence")
    assert list(diagram.layout.yaxis.ticktext) == labels


def test_train_toy_rejects_bad_input_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-toy", "--arch", "lstm", "--task", "shell-game", "-o", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    assert "lstm" in capsys.readouterr().err

    assert main(["train-toy", "--arch", "transformer", "--task", "shell-game",
                 "--task-option", "n_cupz=4", "-o", str(tmp_path / "b")]) == 2
    assert "n_cupz" in capsys.readouterr().err
    assert main(["train-toy", "--arch", "transformer", "--d-model", "30", "--n-heads", "4",
                 "-o", str(tmp_path / "c")]) == 2
    assert "d_model (30)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_toy_prints_accuracy_and_saves(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["train-toy", "--arch", "transformer", "--task", "shell-game", "--steps", "4",
                 "--n-stories", "40", "--eval-every", "2", "--warmup-steps", "1",
                 "--n-layers", "1", "--d-model", "16", "--n-heads", "2", "-q",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy per task step: 0:" in printed
    assert f"saved to {out}" in printed
    record = json.loads((out / "toy_training.json").read_text())
    assert [row["step"] for row in record["history"]] == [2, 4]


@pytest.fixture
def headless(smollm2):
    """The bundled model with its unembedding removed from the layout."""
    layout = dataclasses.replace(smollm2.layout, unembed=None)
    return LoadedModel(smollm2.model, smollm2.tokenizer, layout, name=smollm2.name,
                       weights_hash=smollm2.weights_hash)


def test_methods_that_read_logits_reject_a_model_without_unembedding(headless, tmp_path):
    with pytest.raises(ValueError, match="logit lens method needs an unembedding"):
        LogitLens(headless)
    with pytest.raises(ValueError, match="patchscope method needs an unembedding"):
        patchscope(headless, "The cup", position=-1)
    with pytest.raises(ValueError, match="lens method needs an unembedding.*probe"):
        run(RunConfig(output_dir=str(tmp_path), methods=("lens",), **TINY), model=headless)
    assert not (tmp_path / "activations").exists()  # rejected before capture


def test_recipe_loop_key(tmp_path):
    recipe = parse_recipe('task = "shell-game"\nloop = "10:12:2"\n', tmp_path / "loop.toml")
    assert [config.loop for config in recipe.configs()] == ["10:12:2"]

    bad = parse_recipe('task = "shell-game"\nloop = "10:x:2"\n', tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="Invalid loop '10:x:2'"):
        check_recipe(bad)
