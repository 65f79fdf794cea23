"""The tidy scores table that every method writes and depth and plots read.

One row per (method, layer, step). ``score`` is the method's mean score over readouts
(held-out accuracy for the probe), ``spread`` its standard deviation over folds or
readouts, ``chance`` the score of guessing the majority class, ``control`` the score of
the same method on the control task (NaN where a method has none), and ``count`` the
number of readouts behind the row.

A second, per-readout table (``readout_id``, ``group``, ``step``, ``layer``, ``method``,
``score``) keeps every readout's own score, so depth intervals can be bootstrapped over
stories.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SCORE_COLUMNS = ["method", "layer", "step", "score", "spread", "chance", "control", "count"]
READOUT_COLUMNS = ["method", "readout_id", "group", "step", "layer", "score"]


def _check_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} is missing the columns {missing}; expected the columns {columns}."
        )


def make_scores(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Build a scores table from rows, checking the schema and sorting it."""
    frame = pd.DataFrame(rows)
    _check_columns(frame, SCORE_COLUMNS, "A scores table")
    frame = frame[SCORE_COLUMNS].astype(
        {"method": str, "layer": int, "step": int, "score": float, "spread": float,
         "chance": float, "control": float, "count": int}
    )
    return frame.sort_values(["method", "step", "layer"], ignore_index=True)


def make_readout_scores(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Build a per-readout scores table from rows, checking the schema."""
    frame = pd.DataFrame(rows)
    _check_columns(frame, READOUT_COLUMNS, "A per-readout scores table")
    frame = frame[READOUT_COLUMNS].astype(
        {"method": str, "readout_id": int, "step": int, "layer": int, "score": float}
    )
    return frame.sort_values(["method", "readout_id", "layer"], ignore_index=True)


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a scores table written by :func:`write_table`."""
    return make_scores(pd.read_csv(path))


def read_readout_scores(path: str | Path) -> pd.DataFrame:
    """Read a per-readout scores table written by :func:`write_table`."""
    return make_readout_scores(pd.read_csv(path))


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV through a temporary file, so a crash leaves no half file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
