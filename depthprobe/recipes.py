"""Experiment recipes: one TOML file fixes a run's model(s), task, sizes, methods and figures.

A recipe is what ``depthprobe run probes/NAME.toml`` executes, so a published figure is
one command. Its keys (every one optional except ``task``)::

    description = "what the recipe measures"
    model = "smollm2-135m"                 # or: models = ["smollm2-135m", "gemma3-270m"]
    task = "shell-game"
    methods = ["probe"]
    output = "depthprobe-runs/shell-game"  # relative to the current folder
    seed = 0
    dtype = "float32"
    device = "cpu"

    [task_options]                         # see `depthprobe tasks -v`
    n_cups = 3

    [sizes]
    stories = 300
    steps = 8
    folds = 5
    boot = 1000
    behaviour_stories = 100                # 0 skips asking the model
    batch_size = 8

    [thresholds]
    relative = 0.8
    margin = 0.1
    persist = 3                            # or "all"

    [figures]
    kinds = ["cascade", "diagram", "heatmap", "depth"]
    formats = ["html", "png"]

A relative ``task_options.path`` is read relative to the recipe file. With ``models``,
each model runs into its own subfolder of ``output`` and the comparison figure goes to
``output``. Every output folder gets a copy of the recipe as ``recipe.toml``, headed by
a comment that names the source file and any command-line overrides.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import __version__
from .methods import get_method
from .models import LoadedModel
from .plots import BrowserNotFoundError, figure_from_run, write_figure
from .plots.replot import FIGURE_KINDS
from .run import RunConfig, RunResult, check_config, run
from .tasks import get_task, parse_task_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.toml"
FIGURE_FORMATS = ("html", "png", "svg", "pdf")

# Recipe key -> (RunConfig field, type, smallest allowed value).
SIZE_KEYS = {
    "stories": ("n_stories", int, 1),
    "steps": ("n_steps", int, 1),
    "folds": ("n_folds", int, 2),
    "boot": ("n_boot", int, 0),
    "behaviour_stories": ("behaviour_stories", int, 0),
    "batch_size": ("batch_size", int, 1),
}
THRESHOLD_KEYS = {
    "relative": "depth_relative",
    "margin": "depth_min_margin",
    "persist": "depth_persist",
}
FIGURE_KEYS = ("kinds", "formats")
TOP_KEYS = {
    "description": "one line on what the recipe measures",
    "model": "one model: bundled name, local folder, GGUF file or hub id",
    "models": "several models, each run into its own subfolder, then compared",
    "task": "task name (see `depthprobe tasks`)",
    "task_options": "table of task options (see `depthprobe tasks -v`)",
    "sizes": "table of sizes: " + ", ".join(SIZE_KEYS),
    "methods": "list of scoring methods",
    "thresholds": "table of depth thresholds: " + ", ".join(THRESHOLD_KEYS),
    "figures": "table with the figure kinds and formats to write",
    "output": "output folder",
    "seed": "random seed",
    "dtype": "model dtype: float32, bfloat16, float16 or auto",
    "device": "torch device, e.g. cpu or cuda:0",
    "loop": "repeat a block range, START:END:TIMES (e.g. 10:14:2), unrolled as layers",
}
PER_METHOD_KINDS = ("diagram", "diagram-average", "heatmap")


class RecipeError(ValueError):
    """A recipe file has an unknown key or a value of the wrong type or range."""


@dataclass
class Recipe:
    """A parsed, checked recipe: one run configuration per model, and its figures."""

    path: Path
    text: str
    description: str
    models: list[str]
    base: RunConfig
    figure_kinds: tuple[str, ...]
    output: Path
    overrides: dict = field(default_factory=dict)

    def configs(self) -> list[RunConfig]:
        """Return one run configuration per model, each with its own output folder."""
        if len(self.models) == 1:
            return [dataclasses.replace(self.base, model=self.models[0],
                                        output_dir=str(self.output))]
        return [dataclasses.replace(self.base, model=model,
                                    output_dir=str(self.output / _folder_name(model)))
                for model in self.models]


@dataclass
class RecipeResult:
    """The runs of a recipe, by model, and the figure files it wrote."""

    recipe: Recipe
    runs: dict[str, RunResult]
    figures: list[Path]
    errors: list[str] = field(default_factory=list)


def _folder_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")


class _Checker:
    """Type and key checks that name the recipe file, the key and the allowed values."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> RecipeError:
        return RecipeError(f"{self.path}: {key}: {problem}")

    def keys(self, table: dict, allowed, section: str | None = None) -> None:
        where = f"[{section}]" if section else "the top level"
        for key in table:
            if key not in allowed:
                name = f"{section}.{key}" if section else key
                raise self.fail(name, f"unknown key. Allowed keys at {where}: "
                                      f"{', '.join(allowed)}.")

    def typed(self, key: str, value, kind, what: str):
        # TOML gives bool for true/false, which is also an int in Python: reject it for numbers.
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {what}, got the boolean {value!r}.")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {what}, got {value!r} ({type(value).__name__}).")
        return value

    def strings(self, key: str, value, allowed=None) -> list[str]:
        if isinstance(value, str) or not isinstance(value, list) or not value or not all(
                isinstance(item, str) for item in value):
            raise self.fail(key, f"expected a non-empty list of strings, got {value!r}.")
        if allowed is not None:
            bad = [item for item in value if item not in allowed]
            if bad:
                raise self.fail(key, f"unknown values {bad}; allowed: {', '.join(allowed)}.")
        return list(value)


def _models(data: dict, check: _Checker) -> list[str]:
    if "model" in data and "models" in data:
        raise check.fail("model", "give either model (one) or models (a list), not both.")
    if "models" in data:
        return check.strings("models", data["models"])
    return [check.typed("model", data.get("model", RunConfig.model), str, "a model name")]


def _task_options(data: dict, task: str, check: _Checker) -> dict:
    options = data.get("task_options", {})
    if not isinstance(options, dict):
        raise check.fail("task_options", f"expected a table, got {options!r}.")
    known = {option.name: option for option in get_task(task).options()}
    check.keys(options, list(known), "task_options")
    for key, value in options.items():
        kind = known[key].type
        if kind in (int, float, str, bool):
            options[key] = check.typed(f"task_options.{key}", value, kind, kind.__name__)
    if isinstance(options.get("path"), str) and options["path"]:
        path = Path(options["path"]).expanduser()
        if not path.is_absolute():
            options["path"] = str((check.path.parent / path).resolve())
    try:
        return parse_task_options(task, options)
    except ValueError as error:
        raise check.fail("task_options", str(error)) from None


def _sizes(data: dict, check: _Checker) -> dict:
    sizes = data.get("sizes", {})
    if not isinstance(sizes, dict):
        raise check.fail("sizes", f"expected a table, got {sizes!r}.")
    check.keys(sizes, list(SIZE_KEYS), "sizes")
    fields = {}
    for key, value in sizes.items():
        name, kind, smallest = SIZE_KEYS[key]
        value = check.typed(f"sizes.{key}", value, kind, "a whole number")
        if value < smallest:
            raise check.fail(f"sizes.{key}", f"must be {smallest} or more, got {value}.")
        fields[name] = value
    if fields.get("behaviour_stories") == 0:
        fields["behaviour"] = False
        fields["behaviour_stories"] = None
    return fields


def _thresholds(data: dict, check: _Checker) -> dict:
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise check.fail("thresholds", f"expected a table, got {thresholds!r}.")
    check.keys(thresholds, list(THRESHOLD_KEYS), "thresholds")
    fields = {}
    for key, value in thresholds.items():
        if key == "persist":
            if value == "all":
                value = None
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise check.fail("thresholds.persist", f"expected a whole number of layers "
                                                       f"(1 or more) or \"all\", got {value!r}.")
        else:
            value = check.typed(f"thresholds.{key}", value, float, "a number")
        fields[THRESHOLD_KEYS[key]] = value
    return fields


def _figures(data: dict, check: _Checker) -> tuple[tuple[str, ...], tuple[str, ...]]:
    figures = data.get("figures", {})
    if not isinstance(figures, dict):
        raise check.fail("figures", f"expected a table with kinds and formats, got {figures!r}.")
    check.keys(figures, FIGURE_KEYS, "figures")
    kinds = check.strings("figures.kinds", figures.get("kinds", ["cascade"]), FIGURE_KINDS)
    formats = check.strings("figures.formats", figures.get("formats", list(RunConfig.figures)),
                            FIGURE_FORMATS)
    return tuple(kinds), tuple(formats)


def parse_recipe(text: str, path: str | Path = "<recipe>", overrides: dict | None = None
                 ) -> Recipe:
    """Parse and check a recipe's TOML text; ``overrides`` are :class:`RunConfig` fields.

    Raises :class:`RecipeError` (a ``ValueError``) naming the file, the key and the
    allowed keys or values.
    """
    path = Path(path)
    check = _Checker(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML: {error}.") from None
    check.keys(data, list(TOP_KEYS))
    if "task" not in data:
        raise check.fail("task", "missing; name the task to run (see `depthprobe tasks`).")
    task = check.typed("task", data["task"], str, "a task name")
    try:
        get_task(task)
    except ValueError as error:
        raise check.fail("task", str(error)) from None

    models = _models(data, check)
    methods = tuple(check.strings("methods", data.get("methods", list(RunConfig.methods))))
    for method in methods:
        try:
            get_method(method)
        except ValueError as error:
            raise check.fail("methods", str(error)) from None
    kinds, formats = _figures(data, check)
    fields = dict(task=task, task_options=_task_options(data, task, check), methods=methods,
                  figures=formats, **_sizes(data, check), **_thresholds(data, check))
    for key, kind, what in (("seed", int, "a whole number"), ("dtype", str, "a dtype name"),
                            ("device", str, "a device name"),
                            ("loop", str, "a START:END:TIMES string")):
        if key in data:
            fields[key] = check.typed(key, data[key], kind, what)
    output = Path(check.typed("output", data.get("output", f"depthprobe-runs/{path.stem}"),
                              str, "a folder path"))

    overrides = dict(overrides or {})
    if "task_options" in overrides:
        try:
            extra = parse_task_options(overrides.get("task", task), overrides["task_options"])
        except ValueError as error:
            raise RecipeError(f"{path}: command-line task option: {error}") from None
        overrides["task_options"] = {**fields["task_options"], **extra}
    if "model" in overrides:
        models = [overrides.pop("model")]
    if "output_dir" in overrides:
        output = Path(overrides.pop("output_dir"))
    try:
        base = dataclasses.replace(RunConfig(**fields), **overrides)
    except TypeError as error:
        raise RecipeError(f"{path}: invalid override: {error}.") from None
    description = data.get("description", "")
    if "grid" in kinds and "patchscope" not in base.methods:
        raise check.fail("figures.kinds", "the 'grid' figure needs the patchscope method; "
                                          "add \"patchscope\" to methods.")
    if "compare" in kinds and len(models) < 2:
        raise check.fail("figures.kinds", "the 'compare' figure needs two or more models; "
                                          "list them under models.")
    return Recipe(path, text, str(description), models, base, kinds, output, overrides)


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read and check a recipe file (see :func:`parse_recipe`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe file {path} not found; recipes live in probes/ "
                                f"(e.g. probes/shell-game-smollm2.toml).")
    return parse_recipe(path.read_text(), path, overrides)


def check_recipe(recipe: Recipe) -> None:
    """Check every run of a recipe the way ``run`` would, before any model loads."""
    for config in recipe.configs():
        try:
            check_config(config)
        except ValueError as error:
            raise RecipeError(f"{recipe.path}: {error}") from None


def _copy_recipe(recipe: Recipe, folder: Path) -> Path:
    header = [f"# Recipe run by depthprobe {__version__} from {recipe.path.resolve()}"]
    shown = {key: value for key, value in recipe.overrides.items()
             if key not in ("overwrite", "progress")}
    if shown:
        header.append("# Command-line overrides: " + ", ".join(
            f"{key}={value!r}" for key, value in sorted(shown.items())))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RECIPE_FILE
    target.write_text("\n".join(header) + "\n" + recipe.text)
    return target


def _write(fig, path: Path, written: list[Path], errors: list[str]) -> None:
    try:
        written.append(write_figure(fig, path))
    except BrowserNotFoundError as error:
        # The HTML version is written; a missing browser only costs the static image.
        logger.error("%s", error)
        errors.append(str(error))
        written.append(path.with_suffix(".html"))


def _write_run_figures(recipe: Recipe, result: RunResult, written: list[Path],
                       errors: list[str]) -> None:
    folder = Path(result.config.output_dir)
    formats = recipe.base.figures
    for kind in recipe.figure_kinds:
        if kind in ("cascade", "compare"):
            continue  # the run writes the cascade; the recipe writes the comparison
        if kind in PER_METHOD_KINDS:
            for method in result.config.methods:
                fig = figure_from_run(folder, kind, method=method)
                for fmt in formats:
                    _write(fig, folder / f"{kind}-{method}.{fmt}", written, errors)
            continue
        fig = figure_from_run(folder, kind,
                              method="patchscope" if kind == "grid" else None)
        for fmt in formats:
            _write(fig, folder / f"{kind}.{fmt}", written, errors)


def run_recipe(recipe: Recipe | str | Path, loaded: Sequence[LoadedModel] = (),
               overrides: dict | None = None) -> RecipeResult:
    """Run every model of a recipe, write its figures, and copy the recipe into each folder.

    ``loaded`` are already loaded models, reused by the runs whose model name equals
    their ``name``; the others are loaded. Every run is checked before the first starts.
    With more than two models, the comparison figure draws the first two, and the depth
    figure of the output folder draws all of them.
    """
    reuse = {model.name: model for model in loaded}
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    check_recipe(recipe)
    runs, written, errors = {}, [], []
    for config in recipe.configs():
        logger.info("Running %s on %s into %s", config.task, config.model, config.output_dir)
        result = run(config, model=reuse.get(config.model))
        runs[config.model] = result
        _copy_recipe(recipe, Path(config.output_dir))
        _write_run_figures(recipe, result, written, errors)
        errors.extend(result.manifest.get("errors", []))

    if len(recipe.models) > 1:
        _copy_recipe(recipe, recipe.output)
        folders = [Path(config.output_dir) for config in recipe.configs()]
        if "compare" in recipe.figure_kinds:
            for method in recipe.base.methods:
                fig = figure_from_run(folders[0], "compare", method=method, others=folders[1:2])
                for fmt in recipe.base.figures:
                    _write(fig, recipe.output / f"compare-{method}.{fmt}", written, errors)
        if "depth" in recipe.figure_kinds:
            fig = figure_from_run(folders[0], "depth", others=folders[1:])
            for fmt in recipe.base.figures:
                _write(fig, recipe.output / f"depth.{fmt}", written, errors)
    return RecipeResult(recipe, runs, written, errors)
