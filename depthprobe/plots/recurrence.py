"""The recurrence diagram: each step's state box in the unrolled grid of blocks.

Steps run across and layers upward, one grey block per (step, layer), like the unrolling
figures of recurrent and feedforward networks. The layer where a step's state resolves
(its resolution depth) is drawn as a green state box with its bootstrap interval. An
arrow joins consecutive steps. It climbs when the state resolves deeper at the next step,
as a feedforward stack must, and runs sideways when the state stays at one layer, as a
recurrence along the sequence allows. A purple arrow marks each step's input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

BLOCK_GREY = "#dee2e6"
STATE_GREEN = "#40c057"
STATE_GREEN_EDGE = "#2b8a3e"
INTERVAL_GREEN = "rgba(64, 192, 87, 0.25)"
INPUT_PURPLE = "#7048e8"
MOVE_COLOURS = {"climbs": "#d62728", "sideways": "#1c7ed6", "falls": "#868e96"}
MOVE_NAMES = {"climbs": "state climbs a layer or more", "sideways": "state stays at its layer",
              "falls": "state resolves shallower"}
REQUIRED_COLUMNS = ("step", "depth", "depth_low", "depth_high")


def _check(depths: pd.DataFrame, method: str | None) -> pd.DataFrame:
    missing = [column for column in REQUIRED_COLUMNS if column not in depths.columns]
    if missing:
        raise ValueError(
            f"The depth table lacks the columns {missing}; pass a run's depth table "
            f"(depth.csv), which has {', '.join(REQUIRED_COLUMNS)}."
        )
    if "method" in depths.columns:
        methods = sorted(depths["method"].unique())
        if method is None and len(methods) > 1:
            raise ValueError(f"The depth table has several methods {methods}; choose one "
                             f"with method=.")
        if method is not None:
            if method not in methods:
                raise ValueError(f"The depth table has no rows for method {method!r}; it "
                                 f"has {methods}.")
            depths = depths[depths["method"] == method]
    if depths.empty:
        raise ValueError("The depth table is empty; there is no step to draw.")
    return depths.sort_values("step").reset_index(drop=True)


def move_kind(depth: float, next_depth: float) -> str:
    """Name the move from one step's resolution depth to the next: climbs, sideways or falls."""
    if next_depth > depth:
        return "climbs"
    if next_depth == depth:
        return "sideways"
    return "falls"


def recurrence_diagram(
    depths: pd.DataFrame,
    n_layers: int | None = None,
    method: str | None = None,
    layer_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Draw each step's resolution depth as a state box in the grid of steps and layers.

    ``depths`` has one row per step with ``step``, ``depth`` (NaN where no layer resolves
    the state), ``depth_low`` and ``depth_high``. When it has a ``method`` column, only
    the rows of ``method`` are drawn. ``n_layers`` is the block count ``L`` (default: the deepest layer in the
    table); an unresolved step gets a hollow box above layer ``L``. ``layer_labels`` names
    layers ``0..L`` on the axis, for example ``layout.layer_label(l)`` of a looped model.
    Raises ``ValueError`` for a table without those columns or rows.
    """
    rows = _check(depths, method)
    steps = rows["step"].tolist()
    resolved = rows.dropna(subset=["depth"])
    deepest = int(np.nanmax(rows[["depth", "depth_high"]].to_numpy(dtype=float), initial=0))
    top = n_layers if n_layers is not None else deepest
    if layer_labels is not None and len(layer_labels) != top + 1:
        raise ValueError(f"Got {len(layer_labels)} layer labels for layers 0..{top}; give "
                         f"one per layer.")

    fig = go.Figure()
    _add_blocks(fig, steps, top)
    _add_inputs(fig, steps)
    _add_intervals(fig, resolved)
    _add_moves(fig, rows)
    _add_states(fig, resolved)
    _add_unresolved(fig, rows[rows["depth"].isna()], top)

    fig.update_xaxes(title_text="step (updates so far)", tickvals=steps, showgrid=False,
                     zeroline=False, range=[min(steps) - 0.7, max(steps) + 0.7])
    fig.update_yaxes(title_text="layer (0 = embeddings)", showgrid=False, zeroline=False,
                     range=[-1.2, top + 1.8], tickvals=list(range(top + 1)),
                     ticktext=list(layer_labels) if layer_labels is not None else None)
    fig.update_layout(title=title or "Where the state resolves at each step",
                      plot_bgcolor="white",
                      legend=dict(orientation="h", yanchor="top", y=-0.22),
                      margin=dict(b=150),
                      height=max(420, 28 * (top + 3) + 150),
                      width=max(520, 70 * (len(steps) + 2)))
    return fig


def _add_blocks(fig: go.Figure, steps: list[int], top: int) -> None:
    for step in steps:
        for layer in range(top + 1):
            fig.add_shape(type="rect", x0=step - 0.35, x1=step + 0.35, y0=layer - 0.35,
                          y1=layer + 0.35, line=dict(width=0), fillcolor=BLOCK_GREY,
                          layer="below")


def _add_inputs(fig: go.Figure, steps: list[int]) -> None:
    for step in steps:
        fig.add_annotation(x=step, y=-0.4, ax=step, ay=-1.1, xref="x", yref="y", axref="x",
                           ayref="y", showarrow=True, arrowhead=2, arrowwidth=2,
                           arrowcolor=INPUT_PURPLE, text="")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="input at each step",
                             line=dict(color=INPUT_PURPLE, width=2)))


def _add_intervals(fig: go.Figure, resolved: pd.DataFrame) -> None:
    for row in resolved.itertuples():
        if pd.isna(row.depth_low) or pd.isna(row.depth_high):
            continue
        fig.add_shape(type="rect", x0=row.step - 0.42, x1=row.step + 0.42,
                      y0=row.depth_low - 0.42, y1=row.depth_high + 0.42,
                      line=dict(color=STATE_GREEN_EDGE, width=1, dash="dot"),
                      fillcolor=INTERVAL_GREEN, layer="below")


def _add_moves(fig: go.Figure, rows: pd.DataFrame) -> None:
    shown = set()
    for current, following in zip(rows.itertuples(), rows.iloc[1:].itertuples()):
        if pd.isna(current.depth) or pd.isna(following.depth):
            continue
        kind = move_kind(current.depth, following.depth)
        fig.add_annotation(x=following.step - 0.3, y=following.depth, ax=current.step + 0.3,
                           ay=current.depth, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=2, arrowwidth=2.5,
                           arrowcolor=MOVE_COLOURS[kind], text="")
        shown.add(kind)
    for kind in MOVE_COLOURS:
        if kind in shown:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=MOVE_NAMES[kind],
                                     line=dict(color=MOVE_COLOURS[kind], width=2.5)))


def _add_states(fig: go.Figure, resolved: pd.DataFrame) -> None:
    hover = [f"step {r.step}: resolves at layer {r.depth:.0f}<br>95% interval "
             f"[{r.depth_low:.0f}, {r.depth_high:.0f}]" for r in resolved.itertuples()]
    fig.add_trace(go.Scatter(
        x=resolved["step"], y=resolved["depth"], mode="markers", name="state (resolution depth)",
        marker=dict(symbol="square", size=22, color=STATE_GREEN,
                    line=dict(color=STATE_GREEN_EDGE, width=2)),
        hovertext=hover, hoverinfo="text"))


def _add_unresolved(fig: go.Figure, unresolved: pd.DataFrame, top: int) -> None:
    if unresolved.empty:
        return
    fig.add_trace(go.Scatter(
        x=unresolved["step"], y=[top + 1] * len(unresolved), mode="markers",
        name="no layer resolves the state",
        marker=dict(symbol="square-open", size=22, color=STATE_GREEN_EDGE),
        hovertext=[f"step {s}: no layer resolves the state" for s in unresolved["step"]],
        hoverinfo="text"))
