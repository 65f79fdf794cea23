"""The cascade figure: layer-by-step scores, each step's resolution depth, and behaviour."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tables import STEP_TITLE

# Perceptually uniform and readable by colour-blind readers and in greyscale print.
COLORSCALE = "Viridis"


def score_grid(scores: pd.DataFrame, method: str) -> tuple[np.ndarray, list[int], list[int]]:
    """Pivot a scores table into a (layers, steps) grid of score minus chance."""
    rows = scores[scores["method"] == method]
    if rows.empty:
        raise ValueError(f"The scores table has no rows for method {method!r}; it has "
                         f"{sorted(scores['method'].unique())}.")
    above = rows.assign(above=rows["score"] - rows["chance"])
    grid = above.pivot(index="layer", columns="step", values="above").sort_index()
    return grid.to_numpy(), grid.index.tolist(), grid.columns.tolist()


def _hover(rows: pd.DataFrame, layers, steps, layer_labels=None) -> np.ndarray:
    lookup = {(r.layer, r.step): r for r in rows.itertuples()}
    names = {layer: (layer_labels[layer] if layer_labels is not None
                     and 0 <= layer < len(layer_labels) else str(layer)) for layer in layers}
    text = np.empty((len(layers), len(steps)), dtype=object)
    for i, layer in enumerate(layers):
        for j, step in enumerate(steps):
            r = lookup.get((layer, step))
            if r is None:
                text[i, j] = ""
                continue
            text[i, j] = (f"layer {names[layer]}, step {step}<br>score {r.score:.3f} "
                          f"(± {r.spread:.3f} over folds)<br>chance {r.chance:.3f}, "
                          f"control {r.control:.3f}<br>{r.count} readouts")
    return text


def cascade_figure(
    scores: pd.DataFrame,
    depths: pd.DataFrame | None = None,
    behaviour: pd.DataFrame | None = None,
    method: str = "probe",
    title: str | None = None,
    n_layers: int | None = None,
    step_title: str = STEP_TITLE,
    layer_labels: Sequence[str] | None = None,
) -> go.Figure:
    """Draw the cascade: steps across, layers upward, cells coloured by score above chance.

    ``depths`` (a run's depth table) adds each step's resolution depth with its bootstrap
    interval and an arrow to the next step's depth. ``behaviour`` (per-step accuracy with
    ``step``, ``accuracy``, ``stderr``, ``chance``) adds the model's own accuracy in a
    panel below, on the same step axis. ``layer_labels`` names layers ``0..L`` in the
    hover text, for example the block and pass of each layer of a looped model.
    """
    grid, layers, steps = score_grid(scores, method)
    rows = scores[scores["method"] == method]
    has_behaviour = behaviour is not None and not behaviour.empty
    fig = make_subplots(rows=2 if has_behaviour else 1, cols=1, shared_xaxes=True,
                        row_heights=[0.75, 0.25] if has_behaviour else [1.0],
                        vertical_spacing=0.06)

    fig.add_trace(go.Heatmap(
        z=grid, x=steps, y=layers, colorscale=COLORSCALE, zmin=0,
        zmax=max(float(np.nanmax(grid)), 1e-6),
        colorbar=dict(title=dict(text=f"{method} score − chance", side="right"),
                      len=0.75 if has_behaviour else 1.0,
                      y=0.625 if has_behaviour else 0.5),
        text=_hover(rows, layers, steps, layer_labels), hoverinfo="text", name=method,
    ), row=1, col=1)

    if depths is not None:
        _add_depths(fig, depths[depths["method"] == method], max(layers))
    if has_behaviour:
        _add_behaviour(fig, behaviour)

    top = n_layers if n_layers is not None else max(layers)
    unresolved = depths is not None and depths[depths["method"] == method]["depth"].isna().any()
    fig.update_yaxes(title_text="layer (0 = embeddings)",
                     range=[-0.5, top + (1.5 if unresolved else 0.5)],
                     row=1, col=1)
    fig.update_xaxes(title_text=step_title, dtick=1,
                     row=2 if has_behaviour else 1, col=1)
    fig.update_layout(title=dict(text=title or f"State cascade ({method})", x=0.5),
                      template="simple_white", width=900, height=700 if has_behaviour else 560,
                      legend=dict(orientation="h", y=-0.12 if has_behaviour else -0.15))
    return fig


def _add_depths(fig: go.Figure, depths: pd.DataFrame, top_layer: int) -> None:
    resolved = depths[depths["depth"].notna()]
    depth = resolved["depth"].astype(float)
    fig.add_trace(go.Scatter(
        x=resolved["step"], y=depth, mode="markers", name="resolution depth d(t)",
        marker=dict(symbol="square", size=13, color="white", line=dict(color="black", width=2)),
        error_y=dict(type="data", symmetric=False, color="black", thickness=1.5,
                     array=(resolved["depth_high"] - depth).clip(lower=0),
                     arrayminus=(depth - resolved["depth_low"]).clip(lower=0)),
        hovertemplate="step %{x}: d(t) = %{y}<extra></extra>",
    ), row=1, col=1)

    points = list(zip(resolved["step"], depth))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=3, arrowsize=1.2, arrowwidth=2,
                           arrowcolor="#d62728", standoff=8, startstandoff=8, text="")

    unresolved = depths[depths["depth"].isna()]
    if not unresolved.empty:
        fig.add_trace(go.Scatter(
            # Drawn one row above the top layer, so it cannot read as a depth there.
            x=unresolved["step"], y=[top_layer + 1] * len(unresolved), mode="markers",
            name="no layer resolves the state (drawn above the top layer)",
            marker=dict(symbol="x", size=12, color="#d62728"),
            hovertemplate="step %{x}: no depth<extra></extra>",
        ), row=1, col=1)


def _add_behaviour(fig: go.Figure, behaviour: pd.DataFrame) -> None:
    fig.add_trace(go.Scatter(
        x=behaviour["step"], y=behaviour["accuracy"], mode="lines+markers",
        name="model's answer accuracy", line=dict(color="#1f77b4"),
        error_y=dict(type="data", symmetric=False, visible=True,
                     array=np.minimum(1.96 * behaviour["stderr"], 1 - behaviour["accuracy"]),
                     arrayminus=np.minimum(1.96 * behaviour["stderr"], behaviour["accuracy"])),
        hovertemplate="step %{x}: accuracy %{y:.2f}<extra></extra>",
    ), row=2, col=1)
    fig.add_trace(go.Scatter(
        x=behaviour["step"], y=behaviour["chance"], mode="lines", name="chance",
        line=dict(color="grey", dash="dash"), hoverinfo="skip",
    ), row=2, col=1)
    fig.update_yaxes(title_text="answer accuracy (fraction)", range=[0, 1.05], row=2, col=1)
