"""Train a toy transformer and a toy Mamba 2 on the shell game and compare their cascades.

Both toys have 4 blocks of width 64 and learn to name the ball's cup after every swap. Each
trained toy then goes through the main job: a linear probe per layer and step, on stories
the toy did not train on. The two depth-versus-step curves are drawn on one figure, with
depth as a fraction of each model's blocks. A feedforward stack must resolve the state
deeper at every swap, while a recurrence along the sequence can keep it at one depth.
Training both at full size takes an estimated 15 minutes on a 2-core CPU.

    python examples/toy_comparison.py [OUTPUT_DIR]            # full size
    python examples/toy_comparison.py OUTPUT_DIR --check      # validate the settings only
    python examples/toy_comparison.py OUTPUT_DIR --quick      # tiny sizes, end to end
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from depthprobe import RunConfig, run
from depthprobe.plots import curves_by_method, depth_curves_figure, write_figure
from depthprobe.run import check_config
from depthprobe.tasks import make_task
from depthprobe.toys import ToyConfig, train_toy

ARCHITECTURES = ("transformer", "mamba2")
TASK = "shell-game"
SWAPS = 8

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("output", nargs="?", default="depthprobe-runs/toy-comparison")
parser.add_argument("--check", action="store_true", help="validate the settings and stop")
parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
args = parser.parse_args()
output = Path(args.output)

if args.quick:
    toy_settings = ToyConfig(steps=4, n_stories=40, eval_every=2, warmup_steps=1, d_model=16,
                             n_heads=2, n_layers=2)
    run_sizes = dict(n_stories=30, n_folds=3, n_boot=50)
else:
    toy_settings = ToyConfig()  # 4 blocks of width 64, 800 steps on 3000 stories
    run_sizes = dict(n_stories=300, n_folds=5, n_boot=1000)

# Every setting is checked before the first toy trains.
task = make_task(TASK, n_swaps=SWAPS)
base = RunConfig(task=TASK, n_steps=SWAPS, seed=1, behaviour=False, figures=("html",),
                 overwrite=True, progress=True, **run_sizes)
for arch in ARCHITECTURES:
    toy_settings.check(arch)
    check_config(dataclasses.replace(base, output_dir=str(output / f"run-{arch}")))
if args.check:
    print(f"settings valid: {', '.join(ARCHITECTURES)} toys, {toy_settings.steps} steps each")
    raise SystemExit(0)

curves, n_layers = {}, {}
for arch in ARCHITECTURES:
    toy = train_toy(arch, task, toy_settings, output_dir=output / f"toy-{arch}", overwrite=True)
    print(f"{arch}: {toy.n_parameters} parameters, held-out accuracy {toy.heldout_accuracy:.3f}")
    # The toy trained on the task's default stories, so the run probes another seed's.
    config = dataclasses.replace(base, model=str(toy.path), output_dir=str(output / f"run-{arch}"))
    result = run(config, model=toy.loaded)
    print(result.summary())
    for label, rows in curves_by_method(result.depths, prefix=f"toy {arch} · ").items():
        curves[label] = rows
        n_layers[label] = toy.loaded.layout.n_layers

figure = depth_curves_figure(
    curves, n_layers, normalise=True,
    title="Resolution depth per swap: toy transformer and toy Mamba 2 on the shell game")
print(f"figure: {write_figure(figure, output / 'toy-depth-curves.html')}")
