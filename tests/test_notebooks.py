"""Every notebook runs top to bottom on the bundled model; a failing cell fails its test."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Smaller sizes than the notebooks' own, set by a cell inserted after the cell tagged
# "parameters" (the papermill convention); every other cell runs as shipped.
TEST_SIZES = {
    "01-quickstart": "N_STORIES = 24\nN_STEPS = 1\nN_FOLDS = 2\nN_BOOT = 20\n"
                     "BEHAVIOUR_STORIES = 4",
    "02-shell-game-cascade": "N_STORIES = 24\nN_STEPS = 2\nN_FOLDS = 2\nN_BOOT = 20\n"
                             "BEHAVIOUR_STORIES = 4",
    "03-polysemy-race": "N_STORIES = 16\nN_AFTER = 1\nN_FOLDS = 2\nN_BOOT = 20\n"
                        "GRID_LAYERS = range(0, 31, 10)",
    "04-method-comparison": "N_STORIES = 16\nN_STEPS = 1\nN_FOLDS = 2\nN_BOOT = 20",
}


def _with_test_sizes(book, name: str):
    tagged = [index for index, cell in enumerate(book.cells)
              if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    book.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(TEST_SIZES[name]))
    return book


def test_notebooks_exist():
    assert {path.stem for path in NOTEBOOKS} == set(TEST_SIZES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    book = nbformat.read(path, as_version=4)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} of {path.name} keeps its outputs"
            assert cell.execution_count is None, f"cell {index} of {path.name}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    book = _with_test_sizes(nbformat.read(path, as_version=4), path.stem)
    # The notebook's working folder is a temporary one, so its run outputs land there.
    client = NotebookClient(book, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    last = code[-1].outputs
    assert any("text/html" in output.get("data", {})
               or "application/vnd.plotly.v1+json" in output.get("data", {})
               for output in last), f"the last cell of {path.name} shows no figure or table"
    assert any((tmp_path / "depthprobe-runs").iterdir())
