"""The Patchscope grid: how well a state read at one layer decodes when written into another."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tables import check_grid

COLORSCALE = "Viridis"
MAX_FACETS = 8


def _mean_grid(rows: pd.DataFrame):
    mean = rows.groupby(["target_layer", "source_layer"])["score"].agg(["mean", "size"])
    score = mean["mean"].unstack("source_layer").sort_index().sort_index(axis=1)
    count = mean["size"].unstack("source_layer").reindex_like(score)
    return score, count


def patchscope_grid_figure(grid: pd.DataFrame, title: str | None = None,
                           score_title: str = "Patchscope score", facet: str | None = None,
                           value: str = "score") -> go.Figure:
    """Draw a source-layer by target-layer grid of Patchscope scores.

    ``grid`` has columns ``source_layer`` (where the state was read), ``target_layer``
    (where it was written into the target prompt) and ``score``. Rows that share a cell
    (several examples or positions) are averaged, and the hover text gives the mean and
    the number of rows. ``facet`` names a further column, such as ``step``, to draw one
    panel per value. The dashed diagonal marks writing a state back into the layer it
    came from. ``value`` names the score column when it is not ``score``, e.g.
    ``p_expected`` or ``precision_at_1`` of a Patchscope result's table.
    """
    if value != "score":
        if value not in grid.columns:
            raise ValueError(f"Score column {value!r} is not in the grid table; it has "
                             f"{list(grid.columns)}.")
        grid = grid.drop(columns=["score"], errors="ignore").rename(columns={value: "score"})
    grid = check_grid(grid)
    if facet is not None and facet not in grid.columns:
        raise ValueError(f"Facet column {facet!r} is not in the grid table; it has "
                         f"{list(grid.columns)}.")
    panels = ([(None, grid)] if facet is None
              else list(grid.groupby(facet, sort=True))[:MAX_FACETS])
    low, high = float(grid["score"].min()), float(grid["score"].max())
    zmin, zmax = (0.0, 1.0) if low >= 0 and high <= 1 else (low, max(high, low + 1e-6))
    top = int(max(grid["source_layer"].max(), grid["target_layer"].max()))

    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"{facet} {value}" if facet else ""
                                        for value, _ in panels])
    for col, (value, rows) in enumerate(panels, start=1):
        score, count = _mean_grid(rows)
        fig.add_trace(go.Heatmap(
            z=score.to_numpy(), x=score.columns.tolist(), y=score.index.tolist(),
            customdata=np.nan_to_num(count.to_numpy(), nan=0).astype(int),
            colorscale=COLORSCALE, zmin=zmin, zmax=zmax, showscale=col == 1,
            colorbar=dict(title=dict(text=score_title, side="right")),
            hovertemplate=("source layer %{x} → target layer %{y}<br>score %{z:.3f} "
                           "(mean of %{customdata} rows)<extra></extra>")), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[0, top], y=[0, top], mode="lines", hoverinfo="skip", showlegend=False,
            line=dict(color="white", dash="dash", width=1.5)), row=1, col=col)
        fig.update_xaxes(title_text="source layer (read from)", range=[-0.5, top + 0.5],
                         row=1, col=col)
    # A grey stand-in, because the white diagonal would not show on the white legend.
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="target layer = source layer",
                             line=dict(color="grey", dash="dash", width=1.5)))
    fig.update_yaxes(title_text="target layer (written into)", range=[-0.5, top + 0.5],
                     row=1, col=1)
    fig.update_layout(title=dict(text=title or "Patchscope source-by-target layer grid", x=0.5),
                      template="simple_white", width=min(420 * len(panels) + 200, 2400),
                      height=560, legend=dict(orientation="h", yref="container", y=0.01,
                                              yanchor="bottom", x=0), margin=dict(b=90))
    return fig
