"""Redraw any figure of a finished run from its saved tables, without loading a model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from .cascade import cascade_figure
from .compare import compare_figure
from .curves import curves_by_method, depth_curves_figure
from .diagram import average_diagram, example_diagram
from .grid import patchscope_grid_figure
from .heatmap import heatmap_figure
from .recurrence import recurrence_diagram
from .tables import GRID_FILE, STEP_TITLE, RunTables, load_run

FIGURE_KINDS = {
    "cascade": "layer-by-step score with each step's resolution depth and the model's accuracy",
    "diagram": "cascade diagram of one example: its tokens across, layers upward",
    "diagram-average": "cascade diagram averaged over examples, one column per step",
    "heatmap": "layer-by-step score beside the control task and chance",
    "depth": "resolution depth against step with bootstrap bands, every method (and run)",
    "grid": "Patchscope source-layer by target-layer grid",
    "compare": "two runs side by side: normalised depth curves and answer accuracy",
    "recurrence": "each step's state box in the grid of steps and layers, with arrows that "
                  "climb (feedforward) or run sideways (recurrent)",
}


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known figure kind; raise ``ValueError`` listing them."""
    if kind not in FIGURE_KINDS:
        raise ValueError(f"Unknown figure kind {kind!r}; choose one of "
                         f"{', '.join(FIGURE_KINDS)}.")
    return kind


def _tables(run: str | Path | RunTables) -> RunTables:
    return run if isinstance(run, RunTables) else load_run(run)


def figure_from_run(
    run: str | Path | RunTables,
    kind: str = "cascade",
    method: str | None = None,
    others: Sequence[str | Path | RunTables] = (),
    example: int = 0,
    schematic: bool = False,
    normalise: bool | None = None,
) -> go.Figure:
    """Draw one kind of figure (see :data:`FIGURE_KINDS`) from a run folder's tables.

    ``method`` defaults to the run's first method. ``others`` are further run folders:
    ``compare`` needs exactly one, ``depth`` overlays each run's curves (and then
    normalises depth by each model's layers unless ``normalise`` is false).
    ``example`` and ``schematic`` apply to the diagrams.
    """
    check_kind(kind)
    tables = _tables(run)
    method = tables.check_method(method)
    others = [_tables(other) for other in others]
    if others and kind not in ("compare", "depth"):
        raise ValueError(f"Figure kind {kind!r} draws one run; only 'compare' and 'depth' "
                         f"take further run folders.")

    if kind == "cascade":
        return cascade_figure(tables.scores, tables.depths, tables.behaviour, method=method,
                              title=tables.title(method, "State resolution depth per step"),
                              n_layers=tables.n_layers, step_title=tables.step_title,
                              layer_labels=tables.layer_labels)
    if kind == "recurrence":
        return recurrence_diagram(tables.depths, n_layers=tables.n_layers, method=method,
                                  layer_labels=tables.layer_labels,
                                  title=tables.title(method, "Where the state resolves at each "
                                                             "step"))
    if kind == "diagram":
        return example_diagram(tables, example=example, method=method, schematic=schematic)
    if kind == "diagram-average":
        return average_diagram(tables, method=method, schematic=schematic)
    if kind == "heatmap":
        return heatmap_figure(tables.scores, method,
                              title=tables.title(method, "Score per layer and step"),
                              step_title=tables.step_title)
    if kind == "grid":
        if tables.grid is None:
            raise ValueError(f"The run in {tables.path} has no {GRID_FILE}; run it with "
                             f"--methods patchscope to get a source-by-target grid.")
        return patchscope_grid_figure(
            tables.grid, title=tables.title("patchscope", "Patchscope source-by-target grid"),
            facet="step" if "step" in tables.grid.columns else None)
    if kind == "compare":
        if len(others) != 1:
            raise ValueError(f"Figure kind 'compare' needs exactly one second run folder, "
                             f"got {len(others)}.")
        return compare_figure(tables, others[0], method=method,
                              normalise=True if normalise is None else normalise)
    return _depth_figure(tables, others, normalise)


def _depth_figure(tables: RunTables, others: list[RunTables], normalise: bool | None
                  ) -> go.Figure:
    runs = [tables, *others]
    if len(runs) == 1:
        curves = curves_by_method(tables.depths)
        n_layers = {label: tables.n_layers for label in curves}
        title = (f"Resolution depth per step<br><sup>{tables.model_name} · {tables.task_name}"
                 f" · {', '.join(curves)}</sup>")
        return depth_curves_figure(curves, n_layers, normalise=bool(normalise), title=title,
                                   step_title=tables.step_title)

    curves, n_layers = {}, {}
    for run in runs:
        for label, rows in curves_by_method(run.depths, prefix=f"{run.model_name} · ").items():
            if label in curves:
                label = f"{label} ({run.path.name})"
            curves[label] = rows
            n_layers[label] = run.n_layers
    tasks = sorted({run.task_name for run in runs})
    title = f"Resolution depth per step<br><sup>{', '.join(tasks)}</sup>"
    step_titles = {run.step_title for run in runs}
    return depth_curves_figure(curves, n_layers, normalise=normalise is not False, title=title,
                               step_title=step_titles.pop() if len(step_titles) == 1
                               else STEP_TITLE)
