"""The cascade diagram: tokens across, layers upward, and the state's climb through the grid.

Each block is one site (layer, token position). A readout's column is coloured by a
method's score for the state at that site. The block where the state resolves (its
resolution depth) is outlined, and arrows join the resolution blocks of consecutive
steps. The schematic style draws plain blocks, green state boxes and purple input arrows
instead of colours, like the block diagrams of transformers in the literature.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..depth import DepthRule, resolution_depth
from .tables import RunTables

COLORSCALE = "Viridis"
BLOCK_GREY = "#dee2e6"
OUTLINE = "black"
ARROW = "#d62728"
STATE_GREEN = "#40c057"
STATE_GREEN_EDGE = "#2b8a3e"
INPUT_PURPLE = "#7048e8"
MAX_CELL_TEXT = 5  # characters of decoded text shown inside a block; hover shows all

SCORE_LABELS = {
    "probe": "held-out probe correct (1) or wrong (0)",
    "lens": "answer probability under the lens",
    "logit-lens": "answer probability under the logit lens",
    "tuned-lens": "answer probability under the tuned lens",
    "patchscope": "Patchscope answer score",
    "interchange": "normalised logit difference",
}
MEAN_SCORE_LABELS = {"probe": "held-out probe accuracy"}


def display_token(token: str) -> str:
    """Return a token as a readable axis label: no leading space, visible blanks."""
    shown = token.replace("\n", "↵").replace("\t", "⇥").strip(" ")
    if not shown:
        return "␣" * max(len(token), 1) if token else "∅"
    return shown


def score_label(method: str, averaged: bool = False) -> str:
    """Return the colour-bar title for a method's per-readout or averaged score."""
    if averaged and method in MEAN_SCORE_LABELS:
        return MEAN_SCORE_LABELS[method]
    label = SCORE_LABELS.get(method, f"{method} score")
    return f"mean {label}" if averaged and method not in MEAN_SCORE_LABELS else label


def _format(value, digits: int = 3) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _depth_text(row) -> str:
    depth = row.get("depth")
    if depth is None or pd.isna(depth):
        return "no resolution depth (no layer resolves the state)"
    text = f"resolution depth d = {int(depth)}"
    low, high = row.get("depth_low"), row.get("depth_high")
    if low is not None and not pd.isna(low):
        text += f" (95% interval {low:.0f} to {high:.0f})"
    return text


def cascade_diagram(
    tokens: Sequence[str],
    cells: pd.DataFrame,
    readouts: pd.DataFrame,
    n_layers: int,
    start: int = 0,
    cell_text: Mapping[tuple[int, int], str] | None = None,
    schematic: bool = False,
    colorbar_title: str = "score",
    title: str | None = None,
    zrange: tuple[float, float] | None = None,
    column_labels: Sequence[str] | None = None,
    x_title: str = "token (position in the text)",
    tick_angle: float = -60,
) -> go.Figure:
    """Draw a cascade diagram from explicit cells and readouts.

    ``tokens[i]`` is the token at position ``start + i`` (shown as the column label
    unless ``column_labels`` is given). ``cells`` has columns ``position``, ``layer``,
    ``score`` for the sites that have a score. ``readouts`` has one row per readout
    with ``position``, ``step`` and ``depth`` (the resolution layer, missing when none),
    and optionally ``depth_low``, ``depth_high``, ``label_name``, ``readout_id``.
    ``cell_text`` maps ``(layer, position)`` to text shown in that block, for example
    what the logit lens decodes there. Layers run ``0..n_layers``.
    """
    positions = np.arange(start, start + len(tokens))
    layers = np.arange(n_layers + 1)
    if len(positions) == 0:
        raise ValueError("A cascade diagram needs at least one token.")
    for name, frame, columns in (("cells", cells, ["position", "layer", "score"]),
                                 ("readouts", readouts, ["position", "step", "depth"])):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"The {name} table lacks the columns {missing}; "
                             f"it needs {columns}.")
    cell_text = dict(cell_text or {})
    column = {int(p): i for i, p in enumerate(positions)}
    readouts = readouts[readouts["position"].isin(column)].sort_values("position")

    grid = np.full((len(layers), len(positions)), np.nan)
    for row in cells.itertuples():
        if int(row.position) in column and 0 <= int(row.layer) <= n_layers:
            grid[int(row.layer), column[int(row.position)]] = row.score
    if zrange is None:
        finite = grid[np.isfinite(grid)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        zrange = (0.0, 1.0) if low >= 0 and high <= 1 else (low, max(high, low + 1e-6))

    labels = list(column_labels) if column_labels is not None else [
        display_token(t) for t in tokens]
    hover = _hover_grid(tokens, positions, layers, grid, readouts, cell_text, colorbar_title)
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=np.zeros_like(grid), x=positions, y=layers, hovertext=hover, hoverinfo="text",
        colorscale=[[0, BLOCK_GREY], [1, BLOCK_GREY]], showscale=False, xgap=2, ygap=2,
        name="blocks"))
    if not schematic:
        fig.add_trace(go.Heatmap(
            z=grid, x=positions, y=layers, colorscale=COLORSCALE, zmin=zrange[0],
            zmax=zrange[1], xgap=2, ygap=2, hoverinfo="skip", hoverongaps=False,
            colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=14),
            name="score"))

    _add_cell_text(fig, cell_text, column, grid, zrange, schematic)
    _add_states(fig, readouts, schematic)
    if schematic:
        _add_inputs(fig, positions)
    _add_unresolved(fig, readouts, n_layers)

    bottom = -2.6 if schematic else -0.5
    width = int(np.clip(140 + 30 * len(positions), 640, 2600))
    height = int(np.clip(230 + 17 * (n_layers + 1), 460, 1100))
    fig.update_xaxes(title_text=x_title, tickmode="array", tickvals=positions,
                     ticktext=labels, tickangle=tick_angle, range=[positions[0] - 0.5,
                                                            positions[-1] + 0.5],
                     showgrid=False, zeroline=False, ticks="")
    fig.update_yaxes(title_text="layer (0 = embeddings, L = last block)",
                     range=[bottom, n_layers + 1.7], tickmode="array",
                     tickvals=list(range(0, n_layers + 1, 5 if n_layers > 12 else 1)),
                     showgrid=False, zeroline=False)
    fig.update_layout(title=dict(text=title or "State cascade", x=0.5), width=width,
                      height=height, template="simple_white", plot_bgcolor="white",
                      legend=dict(orientation="h", yref="container", yanchor="bottom",
                                  y=0.01, x=0),
                      margin=dict(b=170))
    return fig


def _hover_grid(tokens, positions, layers, grid, readouts, cell_text, score_name) -> np.ndarray:
    by_position = {int(r["position"]): r for r in readouts.to_dict("records")}
    hover = np.empty(grid.shape, dtype=object)
    for j, position in enumerate(positions):
        readout = by_position.get(int(position))
        for i, layer in enumerate(layers):
            lines = [f"<b>{tokens[j]!r}</b> (position {position}), layer {layer}"]
            if readout is not None:
                state = readout.get("label_name")
                lines.append(f"readout at step {readout['step']}"
                             + (f", state {state}" if state is not None and not pd.isna(state)
                                else ""))
                lines.append(f"{score_name}: {_format(grid[i, j])}")
                lines.append(_depth_text(readout))
            elif np.isfinite(grid[i, j]):
                lines.append(f"{score_name}: {_format(grid[i, j])}")
            else:
                lines.append("no readout at this token (not scored)")
            text = cell_text.get((int(layer), int(position)))
            if text is not None:
                lines.append(f"decodes as {text!r}")
            hover[i, j] = "<br>".join(lines)
    return hover


def _add_cell_text(fig, cell_text, column, grid, zrange, schematic) -> None:
    xs, ys, texts, colours = [], [], [], []
    for (layer, position), text in cell_text.items():
        if position not in column or layer >= grid.shape[0] or layer < 0:
            continue
        value = grid[layer, column[position]]
        dark = False
        if not schematic and np.isfinite(value):
            # Viridis is dark below about 55% of its range, so white text reads there.
            dark = (value - zrange[0]) / max(zrange[1] - zrange[0], 1e-12) < 0.55
        shown = display_token(str(text))
        xs.append(position)
        ys.append(layer)
        texts.append(shown if len(shown) <= MAX_CELL_TEXT else shown[: MAX_CELL_TEXT - 1] + "…")
        colours.append("white" if dark else "black")
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, text=texts, mode="text", hoverinfo="skip",
                                 textfont=dict(size=9, color=colours), showlegend=False,
                                 name="decoded text"))


def _add_states(fig, readouts: pd.DataFrame, schematic: bool) -> None:
    resolved = readouts[readouts["depth"].notna()]
    points = [(int(r.position), int(r.depth)) for r in resolved.itertuples()]
    for x, y in points:
        box = dict(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5, layer="above",
                   opacity=1)  # the simple_white template draws shapes at opacity 0.3
        if schematic:
            fig.add_shape(**box, fillcolor=STATE_GREEN,
                          line=dict(color=STATE_GREEN_EDGE, width=2))
        else:
            # A black frame over a wider white one keeps a white edge on both sides of the
            # black, so the outline shows on every colour of the scale.
            fig.add_shape(**box, fillcolor="rgba(0,0,0,0)", line=dict(color="white", width=7))
            fig.add_shape(**box, fillcolor="rgba(0,0,0,0)", line=dict(color=OUTLINE, width=3))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x",
                           ayref="y", showarrow=True, arrowhead=3, arrowsize=1.1,
                           arrowwidth=2.2, standoff=9, startstandoff=9, text="",
                           arrowcolor=STATE_GREEN_EDGE if schematic else ARROW)
    if points:
        # Legend entries for the outline and the arrows (shapes have none of their own).
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", name="resolution block d(t) of a readout",
            marker=dict(symbol="square", size=12,
                        color=STATE_GREEN if schematic else "rgba(0,0,0,0)",
                        line=dict(color=STATE_GREEN_EDGE if schematic else OUTLINE,
                                  width=2))))
    if len(points) > 1:
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="lines", name="state carried to the next step",
            line=dict(color=STATE_GREEN_EDGE if schematic else ARROW, width=2)))


def _add_inputs(fig, positions) -> None:
    for x in positions:
        fig.add_annotation(x=x, y=-0.55, ax=x, ay=-2.3, xref="x", yref="y", axref="x",
                           ayref="y", showarrow=True, arrowhead=2, arrowwidth=1.6,
                           arrowcolor=INPUT_PURPLE, text="")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="token input",
                             line=dict(color=INPUT_PURPLE, width=2)))


def _add_unresolved(fig, readouts: pd.DataFrame, n_layers: int) -> None:
    unresolved = readouts[readouts["depth"].isna()]
    if unresolved.empty:
        return
    fig.add_trace(go.Scatter(
        x=unresolved["position"], y=[n_layers + 1] * len(unresolved), mode="markers",
        marker=dict(symbol="x", size=11, color=ARROW), name="no layer resolves the state",
        hovertemplate="step %{customdata}: no resolution depth<extra></extra>",
        customdata=unresolved["step"]))


def _rule(tables: RunTables, method: str) -> DepthRule:
    saved = tables.manifest.get("cascades", {}).get(method, {}).get("rule")
    return DepthRule(**saved) if saved else DepthRule()


def _need_tokens(tables: RunTables) -> pd.DataFrame:
    if tables.tokens is None:
        raise ValueError(
            f"The run in {tables.path} has no tokens.csv, which a one-example diagram needs; "
            f"rerun it with this version of depthprobe, or draw the averaged diagram.")
    return tables.tokens


def example_diagram(
    tables: RunTables,
    example: int = 0,
    method: str | None = None,
    resolution: str = "step",
    cell_text: Mapping[tuple[int, int], str] | None = None,
    schematic: bool = False,
    window: tuple[int, int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Draw the cascade diagram of one example of a finished run.

    ``resolution="step"`` outlines each readout's block at its step's resolution depth
    (the run's ``d(t)``, with its interval in the hover text). ``"readout"`` applies the
    run's depth rule to the readout's own layer curve instead. ``window=(first, stop)`` limits
    the tokens shown to positions ``first..stop-1``.
    """
    if resolution not in ("step", "readout"):
        raise ValueError(f"Unknown resolution {resolution!r}; choose 'step' (the run's "
                         f"d(t) per step) or 'readout' (each readout's own curve).")
    method = tables.check_method(method)
    tokens = _need_tokens(tables)
    examples = sorted(tokens["example"].unique())
    if example not in examples:
        raise ValueError(f"Example {example} is not in the run in {tables.path}; it has "
                         f"examples 0 to {max(examples)}.")
    text = tokens[tokens["example"] == example].sort_values("position")
    if window is not None:
        first, stop = window
        last = int(text["position"].max())
        text = text[(text["position"] >= first) & (text["position"] < stop)]
        if text.empty:
            raise ValueError(f"The window {window} contains no token of example {example}, "
                             f"which has positions 0 to {last}.")

    marked = text[text["readout_id"].notna()].astype({"readout_id": int})
    per_readout = tables.readout_scores[tables.readout_scores["method"] == method]
    cells = per_readout.merge(marked[["readout_id", "position"]], on="readout_id")
    readouts = marked[["readout_id", "position", "step", "label_name"]].copy()
    readouts["step"] = readouts["step"].astype(int)
    readouts = readouts.merge(
        tables.depths[tables.depths["method"] == method][
            ["step", "depth", "depth_low", "depth_high", "chance"]],
        on="step", how="left")
    if resolution == "readout":
        rule = _rule(tables, method)
        own = []
        for row in readouts.itertuples():
            curve = cells[cells["readout_id"] == row.readout_id].sort_values("layer")["score"]
            own.append(resolution_depth(curve.to_numpy(), float(row.chance), rule))
        readouts["depth"] = pd.array(own, dtype="Int64")
        readouts["depth_low"] = np.nan
        readouts["depth_high"] = np.nan

    what = f"Cascade diagram of example {example}" + (" (schematic)" if schematic else "")
    return cascade_diagram(
        tokens=text["token"].tolist(), cells=cells, readouts=readouts,
        n_layers=tables.n_layers, start=int(text["position"].iloc[0]), cell_text=cell_text,
        schematic=schematic, colorbar_title=score_label(method),
        title=title or tables.title(method, what))


def average_diagram(tables: RunTables, method: str | None = None, schematic: bool = False,
                    title: str | None = None) -> go.Figure:
    """Draw the cascade diagram averaged over a run's examples: one column per step.

    Each block is the mean per-readout score at that step and layer. Each column's label
    is the token most readouts of that step sit on, with the share of readouts on it.
    """
    method = tables.check_method(method)
    per_readout = tables.readout_scores[tables.readout_scores["method"] == method]
    steps = sorted(per_readout["step"].unique())
    mean = per_readout.groupby(["step", "layer"], as_index=False)["score"].mean()
    cells = mean.rename(columns={"step": "position"})
    readouts = pd.DataFrame({"position": steps, "step": steps}).merge(
        tables.depths[tables.depths["method"] == method][
            ["step", "depth", "depth_low", "depth_high"]], on="step", how="left")

    tokens, labels = [], []
    for step in steps:
        token = f"step {step}"
        if tables.tokens is not None:
            at_step = tables.tokens[tables.tokens["step"] == step]["token"]
            if not at_step.empty:
                common, count = Counter(at_step).most_common(1)[0]
                token = common
                share = count / len(at_step)
                labels.append(f"‘{display_token(common)}’"
                              + ("" if share == 1 else f" ({share:.0%})") + f"<br>step {step}")
                tokens.append(token)
                continue
        tokens.append(token)
        labels.append(f"step {step}")
    what = "Cascade diagram, mean over examples" + (" (schematic)" if schematic else "")
    fig = cascade_diagram(
        tokens=tokens, cells=cells, readouts=readouts, n_layers=tables.n_layers,
        start=int(steps[0]), schematic=schematic,
        colorbar_title=score_label(method, averaged=True), column_labels=labels,
        title=title or tables.title(method, what),
        x_title=f"readout token and {tables.step_title}", tick_angle=0)
    _add_intervals(fig, readouts)
    return fig


def _add_intervals(fig: go.Figure, readouts: pd.DataFrame) -> None:
    resolved = readouts[readouts["depth"].notna() & readouts["depth_low"].notna()]
    if resolved.empty:
        return
    depth = resolved["depth"].astype(float)
    fig.add_trace(go.Scatter(
        x=resolved["position"] + 0.38, y=depth, mode="markers",
        marker=dict(symbol="line-ns", size=10, line=dict(color=OUTLINE, width=1.5)),
        error_y=dict(type="data", symmetric=False, color=OUTLINE, thickness=1.5, width=3,
                     array=(resolved["depth_high"] - depth).clip(lower=0),
                     arrayminus=(depth - resolved["depth_low"]).clip(lower=0)),
        name="95% bootstrap interval of d(t)", hoverinfo="skip"))

