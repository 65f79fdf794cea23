"""Resolution depth against step, with bootstrap bands, for several methods or models."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .tables import STEP_TITLE

# Okabe and Ito's palette, distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
           "#F0E442"]
DEPTH_CURVE_COLUMNS = ["step", "depth", "depth_low", "depth_high"]


def curves_by_method(depths: pd.DataFrame, prefix: str = "") -> dict[str, pd.DataFrame]:
    """Split a run's depth table into one curve per method, labelled ``prefix + method``."""
    return {f"{prefix}{method}": rows for method, rows in depths.groupby("method", sort=False)}


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[i: i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Return the index arrays of consecutive True stretches of ``mask``."""
    runs, current = [], []
    for i, flag in enumerate(mask):
        if flag:
            current.append(i)
        elif current:
            runs.append(np.array(current))
            current = []
    if current:
        runs.append(np.array(current))
    return runs


def _scale_for(label: str, n_layers, normalise: bool) -> float:
    if not normalise:
        return 1.0
    value = n_layers.get(label) if isinstance(n_layers, Mapping) else n_layers
    if value is None:
        raise ValueError(f"Normalising depth needs the number of layers of {label!r}; pass "
                         f"n_layers as a number or a mapping from curve label to layers.")
    return float(value)


def dodge(index: int, count: int, width: float = 0.16) -> float:
    """Return a small step-axis offset for curve ``index`` of ``count``, so markers do not hide."""
    return 0.0 if count < 2 else (index / (count - 1) - 0.5) * width


def _top_layer(curves: Mapping[str, pd.DataFrame], n_layers) -> float:
    if isinstance(n_layers, Mapping) and n_layers:
        return float(max(n_layers.values()))
    if isinstance(n_layers, (int, float)):
        return float(n_layers)
    highs = [pd.to_numeric(t["depth_high"], errors="coerce").max() for t in curves.values()]
    return float(np.nanmax(highs + [0.0]))


def add_depth_curves(fig: go.Figure, curves: Mapping[str, pd.DataFrame],
                     n_layers: Mapping[str, int] | int | None = None, normalise: bool = False,
                     row: int | None = None, col: int | None = None) -> None:
    """Add one line with its interval band per curve to ``fig`` (in a subplot if given)."""
    where = dict(row=row, col=col) if row is not None else {}
    marker_height = 1.05 if normalise else _top_layer(curves, n_layers) + 1
    for index, (label, table) in enumerate(curves.items()):
        missing = [c for c in DEPTH_CURVE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"The depth curve {label!r} lacks the columns {missing}; pass "
                             f"rows of a run's depth table.")
        colour = PALETTE[index % len(PALETTE)]
        scale = _scale_for(label, n_layers, normalise)
        table = table.sort_values("step")
        steps = table["step"].to_numpy()
        depth = table["depth"].astype("Float64").to_numpy(dtype=float, na_value=np.nan) / scale
        low = table["depth_low"].to_numpy(dtype=float) / scale
        high = table["depth_high"].to_numpy(dtype=float) / scale

        for stretch in _runs(np.isfinite(depth) & np.isfinite(low) & np.isfinite(high)):
            x = steps[stretch].astype(float)
            if len(stretch) == 1:
                # A lone step gets a narrow box, since a one-point band has no area.
                x, stretch = np.array([x[0] - 0.08, x[0] + 0.08]), np.repeat(stretch, 2)
            fig.add_trace(go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([high[stretch], low[stretch][::-1]]), fill="toself",
                mode="lines", fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip",
                legendgroup=label, showlegend=False, name=f"{label} interval"), **where)
        symbol = "d/L" if normalise else "d"
        fig.add_trace(go.Scatter(
            x=steps, y=depth, mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=colour, width=2.5), marker=dict(size=8, color=colour),
            customdata=np.stack([low, high], axis=1),
            hovertemplate=(f"{label}<br>step %{{x}}: {symbol} = %{{y:.3g}}"
                           "<br>95% interval %{customdata[0]:.3g} to %{customdata[1]:.3g}"
                           "<extra></extra>")), **where)

        unresolved = ~np.isfinite(depth)
        if unresolved.any():
            fig.add_trace(go.Scatter(
                x=steps[unresolved] + dodge(index, len(curves)),
                y=np.full(unresolved.sum(), marker_height),
                mode="markers", marker=dict(symbol="x", size=11, color=colour),
                legendgroup=label, name=f"{label}: no layer resolves the state",
                hovertemplate=f"{label}<br>step %{{x}}: no resolution depth<extra></extra>"),
                **where)


def depth_curves_figure(curves: Mapping[str, pd.DataFrame],
                        n_layers: Mapping[str, int] | int | None = None,
                        normalise: bool = False, title: str | None = None,
                        step_title: str = STEP_TITLE) -> go.Figure:
    """Draw resolution depth ``d(t)`` against step for several curves on one plot.

    ``curves`` maps a label (a method, a model, or both) to rows of a depth table.
    ``normalise`` divides each curve's depth and interval by its number of layers
    ``L`` (from ``n_layers``, a number or a mapping from label to number), so models of
    different depth share one axis running from 0 (embeddings) to 1 (last block). Steps
    with no depth are marked with a cross above the top layer.
    """
    if not curves:
        raise ValueError("No depth curve given; pass a mapping from label to depth rows.")
    fig = go.Figure()
    add_depth_curves(fig, curves, n_layers, normalise)
    style_depth_axes(fig, curves, n_layers, normalise, step_title=step_title)
    fig.update_layout(title=dict(text=title or "Resolution depth per step", x=0.5),
                      template="simple_white", width=820, height=520,
                      legend=dict(orientation="h", yref="container", y=0.01,
                                  yanchor="bottom", x=0),
                      margin=dict(b=120))
    return fig


def style_depth_axes(fig: go.Figure, curves: Mapping[str, pd.DataFrame], n_layers,
                     normalise: bool, row: int | None = None, col: int | None = None,
                     step_title: str = STEP_TITLE) -> None:
    """Label the axes of a depth plot and fix its range to the layer stack."""
    where = dict(row=row, col=col) if row is not None else {}
    if normalise:
        fig.update_yaxes(title_text="resolution depth d(t) / L (0 = embeddings, 1 = last block)",
                         range=[-0.04, 1.1], **where)
    else:
        top = _top_layer(curves, n_layers)
        fig.update_yaxes(title_text="resolution depth d(t) (layer, 0 = embeddings)",
                         range=[-0.8, top + 2], **where)
    fig.update_xaxes(title_text=step_title, dtick=1, **where)
