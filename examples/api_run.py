"""Run depthprobe from Python, without the command line, and write its figures.

Loads the bundled SmolLM2-135M, measures the resolution depth of the shell game's state
per swap with a linear probe, prints the summary and writes three figures next to the
run's tables. Small sizes keep it to about a minute on a laptop CPU.

    python examples/api_run.py [OUTPUT_DIR]
"""

import sys

from depthprobe import RunConfig, load_model, run
from depthprobe.plots import average_diagram, heatmap_figure, load_run, write_figure

output = sys.argv[1] if len(sys.argv) > 1 else "depthprobe-runs/api-example"
loaded = load_model("smollm2-135m")
config = RunConfig(task="shell-game", task_options={"n_cups": 3}, n_stories=40, n_steps=2,
                   n_folds=3, n_boot=100, behaviour_stories=10, figures=("html",),
                   output_dir=output, overwrite=True, progress=False)
result = run(config, model=loaded)
print(result.summary())

# The result contains the tables, and so does the run folder, for redrawing later.
print(result.summary_table().to_string(index=False))
tables = load_run(result.output_dir)
write_figure(result.figure("probe"), f"{output}/example-cascade.html")
write_figure(average_diagram(tables), f"{output}/example-diagram.html")
write_figure(heatmap_figure(result.scores, "probe"), f"{output}/example-heatmap.html")
print(f"figures written to {output}")
