"""A finished run's saved tables, read back for drawing figures without a model.

A run folder contains ``manifest.json``, ``scores.csv``, ``readout_scores.csv`` and
``depth.csv``, and optionally ``behaviour.csv``, ``tokens.csv`` (every token of every
example, with its readout if it has one; see :func:`token_table`) and
``patchscope_grid.csv`` (a Patchscope source-layer by target-layer grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..depth import read_depths
from ..scores import read_readout_scores, read_scores
from ..sites import Example
from ..tasks import get_task

MANIFEST_FILE = "manifest.json"
TOKENS_FILE = "tokens.csv"
GRID_FILE = "patchscope_grid.csv"
TOKEN_COLUMNS = ["example", "group", "position", "token_id", "token", "readout_id", "step",
                 "label", "label_name"]
GRID_COLUMNS = ["source_layer", "target_layer", "score"]
STEP_TITLE = "step t (updates so far)"


def token_table(examples: Sequence[Example], tokenizer,
                class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Return one row per token of each aligned example, with its readout where it has one.

    ``readout_id`` numbers readouts in the order of ``examples`` and then of each
    example's readouts, the order of a run's per-readout table. ``token`` is the token
    decoded on its own, with its leading space kept. Columns ``readout_id``, ``step``,
    ``label`` and ``label_name`` are empty for tokens that carry no readout.
    """
    rows = []
    readout_id = 0
    for index, example in enumerate(examples):
        if example.input_ids is None:
            raise ValueError(f"Example {index} (group {example.group!r}) has no input_ids; "
                             f"align it with depthprobe.tasks.align_examples first.")
        readouts = {}
        for readout in example.readouts:
            readouts[readout.position] = (readout_id, readout)
            readout_id += 1
        for position, token_id in enumerate(example.input_ids):
            found = readouts.get(position)
            row = dict(example=index, group=example.group, position=position,
                       token_id=int(token_id), token=tokenizer.decode([int(token_id)]),
                       readout_id=None, step=None, label=None, label_name=None)
            if found is not None:
                number, readout = found
                row.update(readout_id=number, step=readout.step, label=readout.label,
                           label_name=(class_names[readout.label] if class_names is not None
                                       else str(readout.label)))
            rows.append(row)
    return _typed_tokens(pd.DataFrame(rows, columns=TOKEN_COLUMNS))


def _typed_tokens(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"example": int, "position": int, "token_id": int,
                          "readout_id": "Int64", "step": "Int64", "label": "Int64"})
    frame["group"] = frame["group"].astype(str)
    frame["token"] = frame["token"].fillna("").astype(str)
    names = frame["label_name"].astype(object)
    frame["label_name"] = names.where(names.notna(), None)
    return frame


def read_tokens(path: str | Path) -> pd.DataFrame:
    """Read a token table written from :func:`token_table`."""
    # keep_default_na=False keeps tokens such as "NA" or "" as text, not missing values.
    frame = pd.read_csv(path, keep_default_na=False, na_values={"readout_id": [""],
                        "step": [""], "label": [""], "label_name": [""]})
    missing = [c for c in TOKEN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a token table: it lacks the columns {missing}.")
    return _typed_tokens(frame[TOKEN_COLUMNS])


def check_grid(grid: pd.DataFrame) -> pd.DataFrame:
    """Check a Patchscope grid table's columns and types; return it typed."""
    missing = [c for c in GRID_COLUMNS if c not in grid.columns]
    if missing:
        raise ValueError(f"A Patchscope grid table needs the columns {GRID_COLUMNS}; it lacks "
                         f"{missing} (it has {list(grid.columns)}).")
    return grid.astype({"source_layer": int, "target_layer": int, "score": float})


@dataclass
class RunTables:
    """The tables of one finished run folder, as read by :func:`load_run`."""

    path: Path
    manifest: dict
    scores: pd.DataFrame
    readout_scores: pd.DataFrame
    depths: pd.DataFrame
    behaviour: pd.DataFrame | None = None
    tokens: pd.DataFrame | None = None
    grid: pd.DataFrame | None = None

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model", {}).get("name", "unknown model"))

    @property
    def task_name(self) -> str:
        return str(self.manifest.get("settings", {}).get("task", "unknown task"))

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks ``L`` (layer indices run ``0..L``)."""
        n_layers = self.manifest.get("model", {}).get("n_layers")
        return int(n_layers) if n_layers is not None else int(self.scores["layer"].max())

    @property
    def layer_labels(self) -> list[str] | None:
        """Return each layer's label (block and pass of a looped model), or ``None``."""
        labels = self.manifest.get("model", {}).get("layer_labels")
        return [str(label) for label in labels] if labels else None

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.scores["method"]))

    def check_method(self, method: str | None) -> str:
        """Return ``method``, or the run's first method when it is ``None``."""
        if method is None:
            return self.methods[0]
        if method not in self.methods:
            raise ValueError(f"The run in {self.path} has no scores for method {method!r}; "
                             f"it has {', '.join(self.methods)}.")
        return method

    @property
    def step_title(self) -> str:
        """Return the step axis title, with the task's own meaning of a step when known."""
        try:
            meaning = get_task(self.task_name).step_meaning
        except ValueError:
            return STEP_TITLE
        return f"step t: {meaning}"

    def title(self, method: str, what: str) -> str:
        """Return a figure title naming the model, the task and the method."""
        return f"{what}<br><sup>{self.model_name} · {self.task_name} · {method}</sup>"


def _optional(path: Path, reader):
    return reader(path) if path.is_file() else None


def load_run(run_dir: str | Path) -> RunTables:
    """Read a finished run folder's tables (no model is loaded).

    Raises ``FileNotFoundError`` naming the folder and the missing file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist; pass the output folder "
                                f"of `depthprobe run` (its -o/--output).")
    required = [MANIFEST_FILE, "scores.csv", "readout_scores.csv", "depth.csv"]
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Run folder {run_dir} lacks {', '.join(missing)}; pass the output folder of a "
            f"finished `depthprobe run`.")
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    return RunTables(
        path=run_dir, manifest=manifest,
        scores=read_scores(run_dir / "scores.csv"),
        readout_scores=read_readout_scores(run_dir / "readout_scores.csv"),
        depths=read_depths(run_dir / "depth.csv"),
        behaviour=_optional(run_dir / "behaviour.csv", pd.read_csv),
        tokens=_optional(run_dir / TOKENS_FILE, read_tokens),
        grid=_optional(run_dir / GRID_FILE, lambda p: check_grid(pd.read_csv(p))),
    )
