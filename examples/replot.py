"""Redraw every figure of a finished run from its saved tables, without loading a model.

    python examples/replot.py RUN_DIR [SECOND_RUN_DIR]

RUN_DIR is the output folder of `depthprobe run` (or of examples/api_run.py). With a
second run folder, the model comparison is drawn too. The same is available on the
command line as `depthprobe plot RUN_DIR --kind KIND -o FILE`.
"""

import sys
from pathlib import Path

from depthprobe.plots import FIGURE_KINDS, BrowserNotFoundError, figure_from_run, load_run
from depthprobe.plots import write_figure

if len(sys.argv) < 2:
    sys.exit(__doc__)
run_dir = Path(sys.argv[1])
others = sys.argv[2:3]
tables = load_run(run_dir)
print(f"{tables.model_name} on {tables.task_name}: methods {', '.join(tables.methods)}")

for kind in FIGURE_KINDS:
    if kind == "grid" and tables.grid is None:
        continue  # only runs with a Patchscope grid table have one
    if kind == "compare" and not others:
        continue
    fig = figure_from_run(tables, kind, others=others if kind == "compare" else ())
    path = run_dir / f"replot-{kind}.html"
    write_figure(fig, path)
    print(f"{kind:<16} {path}")

# A static image needs a Chromium-family browser; without one the HTML is written instead.
try:
    print(write_figure(figure_from_run(tables, "diagram-average"), run_dir / "replot.png"))
except BrowserNotFoundError as error:
    print(error)
