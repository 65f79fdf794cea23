"""Two runs side by side: normalised depth curves and the models' own accuracy."""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import PALETTE, add_depth_curves, dodge, style_depth_axes
from .tables import RunTables

logger = logging.getLogger(__name__)


def _labels(runs: list[RunTables]) -> list[str]:
    names = [run.model_name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.model_name} ({run.path.name})" for run in runs]


def compare_figure(first: RunTables, second: RunTables, method: str | None = None,
                   normalise: bool = True, title: str | None = None) -> go.Figure:
    """Compare two runs, typically two models on one task.

    The left panel draws each run's resolution depth per step with its bootstrap band,
    divided by the model's number of blocks when ``normalise`` is true, so a 30-block and
    an 18-block model share one axis. The right panel draws each model's answer accuracy
    per step with chance, where the runs asked the models (their ``behaviour.csv``), and
    otherwise each step's best score above chance.
    """
    runs = [first, second]
    method = first.check_method(method)
    second.check_method(method)
    if first.task_name != second.task_name:
        logger.warning("Comparing runs of different tasks: %s and %s.", first.task_name,
                       second.task_name)
    labels = _labels(runs)
    curves = {label: run.depths[run.depths["method"] == method]
              for label, run in zip(labels, runs)}
    n_layers = {label: run.n_layers for label, run in zip(labels, runs)}
    has_behaviour = all(run.behaviour is not None for run in runs)

    right = "model's answer accuracy" if has_behaviour else "best score above chance"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["resolution depth" + (" / L" if normalise else ""),
                                        right])
    add_depth_curves(fig, curves, n_layers, normalise, row=1, col=1)
    style_depth_axes(fig, curves, n_layers, normalise, row=1, col=1,
                     step_title=first.step_title)

    for index, (label, run) in enumerate(zip(labels, runs)):
        colour = PALETTE[index % len(PALETTE)]
        if has_behaviour:
            table = run.behaviour.sort_values("step")
            fig.add_trace(go.Scatter(
                x=table["step"] + dodge(index, len(runs)), y=table["accuracy"],
                mode="lines+markers", legendgroup=label,
                showlegend=False, name=f"{label} accuracy", line=dict(color=colour, width=2),
                error_y=dict(type="data", symmetric=False, visible=True,
                             array=np.minimum(1.96 * table["stderr"], 1 - table["accuracy"]),
                             arrayminus=np.minimum(1.96 * table["stderr"], table["accuracy"])),
                hovertemplate=f"{label}<br>step %{{x}}: accuracy %{{y:.3f}}<extra></extra>"),
                row=1, col=2)
        else:
            table = curves[label].sort_values("step")
            fig.add_trace(go.Scatter(
                x=table["step"], y=table["best_score"] - table["chance"], mode="lines+markers",
                legendgroup=label, showlegend=False, name=f"{label} best score",
                line=dict(color=colour, width=2),
                hovertemplate=f"{label}<br>step %{{x}}: %{{y:.3f}} above chance<extra></extra>"),
                row=1, col=2)
    if has_behaviour:
        chance = first.behaviour.sort_values("step")
        fig.add_trace(go.Scatter(
            x=chance["step"], y=chance["chance"], mode="lines", name="chance",
            line=dict(color="grey", dash="dash"), hoverinfo="skip"), row=1, col=2)
        fig.update_yaxes(title_text="answer accuracy (fraction correct)", range=[0, 1.05],
                         row=1, col=2)
    else:
        fig.update_yaxes(title_text=f"best {method} score minus chance", row=1, col=2)
    fig.update_xaxes(title_text="step t", dtick=1, row=1, col=2)

    default = (f"Model comparison: {' vs '.join(labels)}<br><sup>{first.task_name} · "
               f"{method}</sup>")
    fig.update_layout(title=dict(text=title or default, x=0.5), template="simple_white",
                      width=1100, height=540, margin=dict(b=120),
                      legend=dict(orientation="h", yref="container", y=0.01, yanchor="bottom",
                                  x=0))
    return fig
