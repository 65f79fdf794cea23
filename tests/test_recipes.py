"""Recipe files: checks that name the key and the file, overrides, and runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from depthprobe.cli import main
from depthprobe.recipes import (RECIPE_FILE, RecipeError, check_recipe, load_recipe,
                                parse_recipe, run_recipe)

PROBES = sorted((Path(__file__).parent.parent / "probes").glob("*.toml"))
TINY = """
model = "smollm2-135m"
task = "shell-game"
methods = ["probe"]
output = "{output}"

[sizes]
stories = 8
steps = 1
folds = 2
boot = 10
behaviour_stories = 0

[figures]
kinds = ["cascade", "diagram", "diagram-average", "depth"]
formats = ["html"]
"""


def test_shipped_recipes_exist():
    names = {path.stem for path in PROBES}
    assert {"shell-game-smollm2", "shell-game-compare", "babi-location", "permutation-s3",
            "polysemy-patchscope"} <= names


@pytest.mark.parametrize("path", PROBES, ids=[p.stem for p in PROBES])
def test_shipped_recipe_is_valid(path, tmp_path):
    recipe = load_recipe(path, overrides={"output_dir": str(tmp_path / path.stem)})
    check_recipe(recipe)
    assert recipe.description
    assert recipe.base.task == parse_recipe(path.read_text(), path).base.task


def test_shipped_recipes_cover_both_models():
    compare = load_recipe(Path(PROBES[0]).parent / "shell-game-compare.toml")
    assert compare.models == ["smollm2-135m", "gemma3-270m"]
    assert "compare" in compare.figure_kinds
    polysemy = load_recipe(Path(PROBES[0]).parent / "polysemy-patchscope.toml")
    assert "patchscope" in polysemy.base.methods


BAD = [
    ('task = "shell-game"\nstoreis = 3', "storeis", "Allowed keys at the top level"),
    ('task = "shell-game"\n[sizes]\nstorys = 3', "sizes.storys", "stories, steps"),
    ('task = "shell-game"\n[sizes]\nstories = "many"', "sizes.stories", "whole number"),
    ('task = "shell-game"\n[sizes]\nstories = true', "sizes.stories", "boolean"),
    ('task = "shell-game"\n[sizes]\nfolds = 1', "sizes.folds", "2 or more"),
    ('task = "shell-game"\n[thresholds]\npersist = "some"', "thresholds.persist", '"all"'),
    ('task = "shell-game"\n[thresholds]\nrelative = "high"', "thresholds.relative", "number"),
    ('task = "shell-game"\nmethods = ["probe", "magic"]', "methods", "Unknown method 'magic'"),
    ('task = "shell-game"\nmethods = "probe"', "methods", "list of strings"),
    ('task = "shell-game"\n[figures]\nkinds = ["pie"]', "figures.kinds", "diagram"),
    ('task = "shell-game"\n[figures]\nformats = ["gif"]', "figures.formats", "png"),
    ('task = "shell-game"\n[figures]\nkinds = ["compare"]', "figures.kinds", "two or more"),
    ('task = "shell-game"\n[figures]\nkinds = ["grid"]', "figures.kinds", "patchscope"),
    ('task = "shell-game"\nmodel = "a"\nmodels = ["b"]', "model", "not both"),
    ('model = "smollm2-135m"', "task", "missing"),
    ('task = "juggling"', "task", "Unknown task 'juggling'"),
    ('task = "shell-game"\n[task_options]\nn_cupz = 4', "task_options.n_cupz", "n_cups"),
    ('task = "shell-game"\n[task_options]\nn_cups = 4.5', "task_options.n_cups", "int"),
    ('task = "shell-game"\n[sizes\n', "not valid TOML", ""),
]


@pytest.mark.parametrize("text,key,hint", BAD, ids=[case[1] for case in BAD])
def test_bad_recipe_names_key_and_file(text, key, hint):
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, "probes/broken.toml")
    message = str(error.value)
    assert message.startswith("probes/broken.toml: ")
    assert key in message
    assert hint in message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="probes/"):
        load_recipe(tmp_path / "nothing.toml")


def test_recipe_fields_reach_config():
    text = """
task = "shell-game"
seed = 3
[task_options]
n_cups = 4
[sizes]
stories = 40
steps = 5
behaviour_stories = 0
[thresholds]
relative = 0.7
margin = 0.2
persist = "all"
"""
    recipe = parse_recipe(text, "probes/x.toml")
    config = recipe.configs()[0]
    assert (config.n_stories, config.n_steps, config.seed) == (40, 5, 3)
    assert config.task_options == {"n_cups": 4}
    assert (config.depth_relative, config.depth_min_margin, config.depth_persist) == (0.7, 0.2,
                                                                                      None)
    assert config.behaviour is False
    assert config.output_dir == "depthprobe-runs/x"


def test_overrides_replace_recipe_values():
    text = 'models = ["smollm2-135m", "gemma3-270m"]\ntask = "shell-game"\n' \
           '[task_options]\nn_cups = 4\n'
    recipe = parse_recipe(text, "probes/x.toml", overrides={
        "n_stories": 12, "model": "gemma3-270m", "task_options": {"seed": "5"}})
    assert recipe.models == ["gemma3-270m"]
    config = recipe.configs()[0]
    assert config.n_stories == 12
    assert config.task_options == {"n_cups": 4, "seed": 5}


def test_relative_data_path_follows_recipe(tmp_path):
    data = tmp_path / "data" / "words.jsonl"
    data.parent.mkdir()
    data.write_text("")
    recipe_dir = tmp_path / "probes"
    recipe_dir.mkdir()
    text = 'task = "location"\n[task_options]\npath = "../data/words.jsonl"\n'
    recipe = parse_recipe(text, recipe_dir / "mine.toml")
    assert Path(recipe.base.task_options["path"]) == data.resolve()


def test_two_models_run_and_compare(smollm2, gemma3, tmp_path):
    text = TINY.replace('model = "smollm2-135m"', 'models = ["smollm2-135m", "gemma3-270m"]')
    text = text.replace('"depth"]', '"depth", "compare"]')
    path = tmp_path / "both.toml"
    path.write_text(text.format(output=tmp_path / "out"))
    result = run_recipe(path, loaded=[smollm2, gemma3], overrides={"progress": False})

    assert set(result.runs) == {"smollm2-135m", "gemma3-270m"}
    for name, n_layers in (("smollm2-135m", 30), ("gemma3-270m", 18)):
        folder = tmp_path / "out" / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model"]["n_layers"] == n_layers
        assert (folder / RECIPE_FILE).read_text().endswith(path.read_text())
        for figure in ("cascade-probe.html", "diagram-probe.html",
                       "diagram-average-probe.html", "depth.html"):
            assert (folder / figure).stat().st_size > 1_000_000, figure
        assert len(pd.read_csv(folder / "scores.csv")) == (n_layers + 1) * 2
    assert (tmp_path / "out" / RECIPE_FILE).is_file()
    assert (tmp_path / "out" / "compare-probe.html").is_file()
    assert (tmp_path / "out" / "depth.html").is_file()
    assert result.errors == []


def test_cli_runs_recipe_with_overrides(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(output=tmp_path / "recipe-out"))
    override = tmp_path / "flag-out"
    assert main(["run", str(path), "--stories", "10", "-o", str(override), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "resolution depth d(t) per step" in printed

    manifest = json.loads((override / "manifest.json").read_text())
    assert manifest["settings"]["n_stories"] == 10  # the flag
    assert manifest["settings"]["n_folds"] == 2  # the recipe, not the flag's default
    assert manifest["settings"]["behaviour"] is False
    copied = (override / RECIPE_FILE).read_text()
    assert "n_stories=10" in copied.splitlines()[1]
    assert not (tmp_path / "recipe-out").exists()

    assert main(["plot", str(override), "--kind", "heatmap", "-o",
                 str(tmp_path / "h.html")]) == 0


def test_cli_reports_bad_recipe(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('task = "shell-game"\n[sizes]\nstorys = 3\n')
    assert main(["run", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error
    assert "sizes.storys" in error
    assert "stories, steps, folds" in error
