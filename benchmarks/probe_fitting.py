"""Batched torch probe fitting against a loop of scikit-learn fits, in one process.

Captures shell-game residuals of every layer on the bundled model, then scores the same
layers, steps and folds (task labels and control labels) twice: with
:func:`depthprobe.methods.probe_torch.probe_scores_torch`, which fits all layers and folds
of a step at once, and with :func:`depthprobe.methods.probe.probe_scores`, one
scikit-learn ``LogisticRegression`` per layer, step, fold and label set. Prints both
times, the speed-up (goal: at least 10x) and the largest difference in held-out accuracy.

    OMP_NUM_THREADS=1 python benchmarks/probe_fitting.py --stories 100 --steps 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import machine, shell_game_inputs, timed
from depthprobe.capture import capture_residuals
from depthprobe.methods import control_labels
from depthprobe.methods.probe import probe_scores
from depthprobe.methods.probe_torch import probe_scores_torch
from depthprobe.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stories", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4, help="swaps per story")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default=None, help="device of the torch fits")
    args = parser.parse_args()

    loaded = load_model(args.model)
    task, examples, sequences, positions = shell_game_inputs(loaded.tokenizer, args.stories,
                                                             args.steps)
    with torch.no_grad():
        features = capture_residuals(loaded.model, loaded.layout, sequences, positions,
                                     pad_token_id=loaded.tokenizer.pad_token_id or 0,
                                     progress=False).numpy()
    labels = np.array([r.label for ex in examples for r in ex.readouts])
    steps = np.array([r.step for ex in examples for r in ex.readouts])
    groups = np.array([ex.group for ex in examples for r in ex.readouts])
    keys = [(ex.input_ids[r.position], ex.input_ids[r.position - 1])
            for ex in examples for r in ex.readouts]
    control = control_labels(keys, task.n_classes)
    common = dict(control=control, n_folds=args.folds, progress=False)

    results = {}
    seconds_torch = timed(lambda: results.update(torch=probe_scores_torch(
        features, labels, steps, groups, device=args.device, **common)))
    seconds_sklearn = timed(lambda: results.update(sklearn=probe_scores(
        features, labels, steps, groups, **common)))

    n_fits = features.shape[1] * len(np.unique(steps)) * args.folds * 2
    torch_scores, sklearn_scores = results["torch"][0], results["sklearn"][0]
    print(f"machine: {machine()}")
    print(f"model {args.model}: {args.stories} stories x {args.steps} steps, "
          f"{len(labels)} readouts, {features.shape[1]} layers, {args.folds} folds, task and "
          f"control labels: {n_fits} logistic regressions")
    print(f"  torch (batched) {seconds_torch:8.2f} s")
    print(f"  scikit-learn    {seconds_sklearn:8.2f} s")
    print(f"speed-up: {seconds_sklearn / seconds_torch:.1f}x (goal >= 10x)")
    score_gap = np.abs(torch_scores["score"] - sklearn_scores["score"])
    control_gap = np.abs(torch_scores["control"] - sklearn_scores["control"])
    print(f"held-out accuracy difference: max {score_gap.max():.4f}, mean "
          f"{score_gap.mean():.5f}; control: max {control_gap.max():.4f} "
          f"(one readout is {1 / torch_scores['count'].min():.4f})")


if __name__ == "__main__":
    main()
