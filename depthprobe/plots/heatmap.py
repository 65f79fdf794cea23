"""Layer-by-step heatmaps of one method's score, beside its control task and chance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tables import STEP_TITLE

COLORSCALE = "Viridis"


def _pivot(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    return rows.pivot(index="layer", columns="step", values=column).sort_index()


def _hover(rows: pd.DataFrame, layers: list[int], steps: list[int]) -> np.ndarray:
    lookup = {(r.layer, r.step): r for r in rows.itertuples()}
    text = np.empty((len(layers), len(steps)), dtype=object)
    for i, layer in enumerate(layers):
        for j, step in enumerate(steps):
            r = lookup.get((layer, step))
            if r is None:
                text[i, j] = f"layer {layer}, step {step}: not scored"
                continue
            lines = [f"layer {layer}, step {step}",
                     f"score {r.score:.3f} (spread {r.spread:.3f})",
                     f"chance {r.chance:.3f}, above chance {r.score - r.chance:+.3f}"]
            if not np.isnan(r.control):
                lines.append(f"control task {r.control:.3f}, selectivity "
                             f"{r.score - r.control:+.3f}")
            lines.append(f"{r.count} readouts")
            text[i, j] = "<br>".join(lines)
    return text


def heatmap_figure(scores: pd.DataFrame, method: str = "probe", title: str | None = None,
                   score_title: str | None = None, step_title: str = STEP_TITLE
                   ) -> go.Figure:
    """Draw a method's score for every layer and step, with its control task and chance.

    The left panel is the score; the right panel, drawn when the method has a control
    task (the probe does), is the same method's score on control labels, so a layer that
    only memorises tokens shows up bright on both sides. The strip below each panel is the
    chance level per step on the same colour scale, so a cell of the chance colour is at
    chance. Hover text gives the exact numbers.
    """
    rows = scores[scores["method"] == method]
    if rows.empty:
        raise ValueError(f"The scores table has no rows for method {method!r}; it has "
                         f"{sorted(scores['method'].unique())}.")
    score = _pivot(rows, "score")
    layers, steps = score.index.tolist(), score.columns.tolist()
    has_control = bool(rows["control"].notna().any())
    values = [rows["score"], rows["chance"]] + ([rows["control"]] if has_control else [])
    low = float(min(v.min() for v in values))
    high = float(max(v.max() for v in values))
    zmin, zmax = (0.0, 1.0) if low >= 0 and high <= 1 else (low, max(high, low + 1e-6))
    colour = dict(colorscale=COLORSCALE, zmin=zmin, zmax=zmax)
    hover = _hover(rows, layers, steps)
    chance = rows.groupby("step")["chance"].first().reindex(steps).to_numpy()[None, :]

    columns = 2 if has_control else 1
    titles = [f"{method} score", "control task (random label per token pair)"][:columns]
    fig = make_subplots(rows=2, cols=columns, shared_xaxes=True, row_heights=[0.9, 0.1],
                        vertical_spacing=0.04, horizontal_spacing=0.07,
                        subplot_titles=titles + [""] * columns)
    fig.add_trace(go.Heatmap(
        z=score.to_numpy(), x=steps, y=layers, hovertext=hover, hoverinfo="text",
        colorbar=dict(title=dict(text=score_title or f"{method} score", side="right"),
                      len=0.85, y=0.55), **colour), row=1, col=1)
    if has_control:
        fig.add_trace(go.Heatmap(
            z=_pivot(rows, "control").to_numpy(), x=steps, y=layers, hovertext=hover,
            hoverinfo="text", showscale=False, **colour), row=1, col=2)
    for col in range(1, columns + 1):
        fig.add_trace(go.Heatmap(
            z=chance, x=steps, y=["chance"], text=np.round(chance, 2), texttemplate="%{text}",
            hovertemplate="step %{x}: chance %{z:.3f}<extra></extra>", showscale=False,
            **colour), row=2, col=col)
        fig.update_yaxes(title_text="layer (0 = embeddings)" if col == 1 else None,
                         row=1, col=col)
        fig.update_xaxes(title_text=step_title, dtick=1, row=2, col=col)

    fig.update_layout(title=dict(text=title or f"Score per layer and step ({method})", x=0.5),
                      template="simple_white", width=520 * columns + 160, height=620)
    return fig
