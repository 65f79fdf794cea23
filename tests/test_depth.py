"""Resolution depth: the threshold rule, the bootstrap, and a planted-signal model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model

from depthprobe.capture import capture_residuals
from depthprobe.depth import DepthRule, cascade, resolution_depth
from depthprobe.methods import control_labels, probe_scores
from depthprobe.models import layout_for


def test_rule_finds_first_persistent_layer():
    curve = [0.3, 0.35, 0.95, 0.4, 0.9, 0.97, 0.99, 0.98]
    # Layer 2 passes alone but layer 3 drops, so with persist=3 the depth is layer 4.
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(persist=3)) == 4
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(persist=1)) == 2
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(persist=None)) == 4


def test_rule_counts_layers_past_the_top_as_passing():
    curve = [0.3, 0.3, 0.3, 0.3, 0.9]
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(persist=3)) == 4


def test_rule_gives_no_depth_without_clear_margin():
    curve = [0.33, 0.36, 0.40, 0.41]
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(min_margin=0.1)) is None
    assert resolution_depth(curve, chance=0.33, rule=DepthRule(min_margin=0.05)) == 2


def test_rule_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="relative must lie in"):
        DepthRule(relative=1.5)
    with pytest.raises(ValueError, match="persist must be 1 or more"):
        DepthRule(persist=0)


def _readout_table(curves: dict[int, list[float]], n_groups: int = 20) -> pd.DataFrame:
    rows = []
    readout = 0
    for step, curve in curves.items():
        for group in range(n_groups):
            for layer, score in enumerate(curve):
                rows.append(dict(method="m", readout_id=readout, group=group, step=step,
                                 layer=layer, score=score))
            readout += 1
    return pd.DataFrame(rows)


def test_cascade_slope_and_exhaustion():
    # Step t resolves at layer 2t, and step 3 never does: slope 2, exhaustion step 3.
    curves = {t: [0.0] * (2 * t) + [1.0] * (8 - 2 * t) for t in range(3)}
    curves[3] = [0.0] * 8
    result = cascade(_readout_table(curves), {t: 0.0 for t in range(4)}, "m",
                     DepthRule(n_boot=50))
    assert result.table["depth"].tolist()[:3] == [0, 2, 4]
    assert pd.isna(result.table["depth"].iloc[3])
    assert result.slope == pytest.approx(2.0)
    assert result.exhaustion_step == 3
    # Every story has the same curve, so every bootstrap draw agrees.
    assert result.table["depth_low"].tolist()[:3] == [0, 2, 4]
    assert result.table["depth_high"].tolist()[:3] == [0, 2, 4]


def test_cascade_interval_widens_with_disagreeing_stories():
    rows = []
    for group in range(40):
        resolved_at = 2 if group % 2 else 5
        for layer in range(8):
            rows.append(dict(method="m", readout_id=group, group=group, step=0, layer=layer,
                             score=float(layer >= resolved_at)))
    result = cascade(pd.DataFrame(rows), {0: 0.0}, "m", DepthRule(n_boot=200, relative=0.5))
    row = result.table.iloc[0]
    assert row["depth_low"] < row["depth_high"]
    assert row["depth_low"] <= row["depth"] <= row["depth_high"]


class PlantedSignal:
    """Adds a label-dependent vector to one block's output, keyed on the input text.

    A pre-hook on the whole model keeps the batch's input ids, and a forward hook on
    ``blocks[layer - 1]`` adds ``vectors[label]`` at every real token of each row, so
    the label exists in the residual stream from layer ``layer`` on and nowhere below.
    """

    def __init__(self, model, layout, layer: int, labels: dict[tuple, int], n_classes: int):
        generator = torch.Generator().manual_seed(1)
        self.vectors = 4.0 * torch.randn(n_classes, layout.d_model, generator=generator)
        self.labels = labels
        self.batch = None
        self.handles = [
            model.register_forward_pre_hook(self._keep_batch, with_kwargs=True),
            layout.blocks[layer - 1].register_forward_hook(self._add),
        ]

    def _keep_batch(self, module, args, kwargs):
        self.batch = (kwargs["input_ids"], kwargs["attention_mask"])

    def _add(self, module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        ids, mask = self.batch
        for row in range(ids.shape[0]):
            key = tuple(ids[row][mask[row] == 1].tolist())
            real = mask[row] == 1
            hidden[row, real] += self.vectors[self.labels[key]]
        return output

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("planted_layer", [2, 4])
def test_planted_signal_resolves_at_planted_layer(planted_layer):
    model = tiny_model("llama", n_layers=6)
    layout = layout_for(model)
    rng = np.random.default_rng(0)
    n_examples, n_classes = 80, 3
    sequences = [rng.integers(1, 500, size=12).tolist() for _ in range(n_examples)]
    example_labels = rng.integers(0, n_classes, size=n_examples)
    positions = [[2, 5, 8, 11]] * n_examples  # readouts for steps 0..3

    planted = PlantedSignal(model, layout, planted_layer,
                            {tuple(s): int(y) for s, y in zip(sequences, example_labels)},
                            n_classes)
    try:
        features = capture_residuals(model, layout, sequences, positions, batch_size=8,
                                     progress=False)
    finally:
        planted.remove()

    labels = np.repeat(example_labels, 4)
    steps = np.tile(np.arange(4), n_examples)
    groups = np.repeat(np.arange(n_examples), 4)
    control = control_labels([(int(t),) for t in labels], n_classes)
    scores, readouts = probe_scores(features.numpy(), labels, steps, groups, control=control,
                                    progress=False)
    chance = scores.groupby("step")["chance"].first().to_dict()
    result = cascade(readouts, chance, "probe", DepthRule(n_boot=100))

    assert result.table["depth"].tolist() == [planted_layer] * 4
    below = scores[scores["layer"] < planted_layer]
    assert (below["score"] < below["chance"] + 0.25).all()
    above = scores[scores["layer"] >= planted_layer]
    assert (above["score"] > 0.95).all()
    assert result.slope == pytest.approx(0.0)
