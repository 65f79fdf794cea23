"""The recurrence diagram: state boxes, climbing and sideways arrows, and bad tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from depthprobe.plots.recurrence import (INPUT_PURPLE, MOVE_COLOURS, move_kind,
                                         recurrence_diagram)

NAN = math.nan


def depth_table(depths, low=None, high=None, method=None) -> pd.DataFrame:
    table = pd.DataFrame({"step": range(len(depths)), "depth": depths,
                          "depth_low": low or depths, "depth_high": high or depths})
    if method is not None:
        table.insert(0, "method", method)
    return table


def arrows_by_colour(fig) -> dict[str, int]:
    counts = {}
    for annotation in fig.layout.annotations:
        counts[annotation.arrowcolor] = counts.get(annotation.arrowcolor, 0) + 1
    return counts


def trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"expected one trace named {name!r}, got {len(found)}"
    return found[0]


def test_move_kind():
    assert move_kind(2, 3) == "climbs"
    assert move_kind(2, 2) == "sideways"
    assert move_kind(3, 1) == "falls"


def test_climbing_cascade_arrows():
    fig = recurrence_diagram(depth_table([1, 2, 4, 5]), n_layers=6)
    counts = arrows_by_colour(fig)
    assert counts[MOVE_COLOURS["climbs"]] == 3
    assert MOVE_COLOURS["sideways"] not in counts
    assert counts[INPUT_PURPLE] == 4
    states = trace(fig, "state (resolution depth)")
    assert list(states.y) == [1, 2, 4, 5]
    assert list(states.x) == [0, 1, 2, 3]


def test_recurrent_state_moves_sideways():
    fig = recurrence_diagram(depth_table([1, 2, 2, 2, 1]), n_layers=4)
    counts = arrows_by_colour(fig)
    assert counts[MOVE_COLOURS["climbs"]] == 1
    assert counts[MOVE_COLOURS["sideways"]] == 2
    assert counts[MOVE_COLOURS["falls"]] == 1


def test_unresolved_step_above_stack():
    fig = recurrence_diagram(depth_table([1, 2, NAN, 3]), n_layers=4)
    unresolved = trace(fig, "no layer resolves the state")
    assert list(unresolved.x) == [2]
    assert list(unresolved.y) == [5]
    # No arrow may start or end at a step without a depth.
    counts = arrows_by_colour(fig)
    assert counts == {INPUT_PURPLE: 4, MOVE_COLOURS["climbs"]: 1}


def test_blocks_cover_grid():
    fig = recurrence_diagram(depth_table([1, 1, 2], low=[0, 1, 1], high=[2, 1, 3]), n_layers=3)
    blocks = [s for s in fig.layout.shapes if s.fillcolor == "#dee2e6"]
    assert len(blocks) == 3 * 4  # steps x layers 0..3
    intervals = [s for s in fig.layout.shapes if s.fillcolor != "#dee2e6"]
    assert sorted((s.y0 + 0.42, s.y1 - 0.42) for s in intervals) == [(0, 2), (1, 1), (1, 3)]


def test_method_filter():
    table = pd.concat([depth_table([1, 2], method="probe"), depth_table([3, 3], method="lens")])
    fig = recurrence_diagram(table, n_layers=4, method="lens")
    assert list(trace(fig, "state (resolution depth)").y) == [3, 3]
    with pytest.raises(ValueError, match="several methods.*method="):
        recurrence_diagram(table)
    with pytest.raises(ValueError, match="no rows for method 'patchscope'"):
        recurrence_diagram(table, method="patchscope")


def test_layer_labels_on_axis():
    labels = ["0", "1 (block 0, pass 1)", "2 (block 0, pass 2)"]
    fig = recurrence_diagram(depth_table([1, 2]), n_layers=2, layer_labels=labels)
    assert list(fig.layout.yaxis.ticktext) == labels
    with pytest.raises(ValueError, match="2 layer labels for layers 0..2"):
        recurrence_diagram(depth_table([1, 2]), n_layers=2, layer_labels=labels[:2])


def test_missing_columns_rejected():
    with pytest.raises(ValueError, match=r"lacks the columns \['depth_low', 'depth_high'\]"):
        recurrence_diagram(pd.DataFrame({"step": [0], "depth": [1]}))


def test_empty_table_rejected():
    with pytest.raises(ValueError, match="empty"):
        recurrence_diagram(depth_table([]))
