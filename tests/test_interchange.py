"""Activation patching: exact end points, the run method on the shell game, backpatching."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from depthprobe.methods import behaviour_answers
from depthprobe.methods.agreement import depth_agreement
from depthprobe.methods.interchange import (backpatch, backpatch_pairs, interchange,
                                            interchange_sweep)
from depthprobe.run import RunConfig, run
from depthprobe.sites import Site
from depthprobe.tasks import make_task
from tiny_lm import tiny_loaded, tiny_with_tokenizer

ARCHITECTURES = ["llama", "gemma3_text", "gpt2"]
BASE = "the ball is under cup A. where?"
COUNTERFACTUAL = "the ball is under cup B. where?"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layer0_every_position_gives_one_and_zero(architecture):
    loaded = tiny_loaded(architecture)
    every = [[Site(0, p) for p in range(len(BASE))]]
    from_counterfactual = interchange(loaded, BASE, COUNTERFACTUAL, "A", "B", every)
    from_base = interchange(loaded, BASE, COUNTERFACTUAL, "A", "B", every, source=BASE)
    assert from_counterfactual.ld_base != from_counterfactual.ld_counterfactual
    assert from_counterfactual.normalized.tolist() == [1.0]
    assert from_base.normalized.tolist() == [0.0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_patching_own_value_keeps_logit_difference(architecture):
    loaded = tiny_loaded(architecture)
    sites = [[Site(layer, position)] for layer in range(5) for position in (0, 22, 30)]
    # One prompt per forward pass, as when the source values were captured, because a
    # different batch size may round differently.
    result = interchange(loaded, BASE, COUNTERFACTUAL, "A", "B", sites, source=BASE,
                         batch_size=1)
    assert (result.patched == result.ld_base).all()


def test_sweep_end_points():
    loaded = tiny_loaded()
    sweep = interchange_sweep(loaded, BASE, COUNTERFACTUAL, "A", "B", progress=False)
    assert len(sweep) == 5 * len(BASE)
    differing = BASE.index("A")
    layer0 = sweep[sweep["layer"] == 0].set_index("position")["normalized_ld"]
    # At layer 0 only the token that differs carries the counterfactual.
    assert layer0[differing] == 1.0
    assert (layer0.drop(differing) == 0.0).all()
    last = sweep[(sweep["layer"] == 4) & (sweep["position"] == len(BASE) - 1)]
    assert last["normalized_ld"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    earlier = sweep[(sweep["layer"] == 4) & (sweep["position"] < len(BASE) - 1)]
    assert (earlier["normalized_ld"] == 0.0).all()


def test_interchange_rejects_bad_input():
    loaded = tiny_loaded()
    with pytest.raises(ValueError, match="base prompt has 31 tokens but the counterfactual "
                                         "prompt has 32"):
        interchange(loaded, BASE, COUNTERFACTUAL + "!", "A", "B", [[Site(0, 0)]])
    with pytest.raises(ValueError, match="Position 31 is outside the base prompt"):
        interchange(loaded, BASE, COUNTERFACTUAL, "A", "B", [[Site(0, 31)]])
    with pytest.raises(ValueError, match=r"Layer 5 is outside 0\.\.4"):
        interchange(loaded, BASE, COUNTERFACTUAL, "A", "B", [[Site(5, 0)]])
    with pytest.raises(ValueError, match="start with the same token"):
        interchange(loaded, BASE, COUNTERFACTUAL, " A", " B", [[Site(0, 0)]])
    with pytest.raises(ValueError, match="Position -40 is outside"):
        interchange_sweep(loaded, BASE, COUNTERFACTUAL, "A", "B", positions=[-40])


def test_backpatch_counts_match_behaviour():
    loaded = tiny_loaded()
    task = make_task("shell-game", n_stories=4, n_swaps=2, query=" Answer:")
    queries = [q for example in task.text_examples() for q in task.behaviour_queries(example)]
    pairs = backpatch_pairs(loaded.layout.n_layers, stride=2)
    assert pairs == [(2, 0), (4, 0), (4, 2)]
    table = backpatch(loaded, queries, pairs, progress=False)
    answers = behaviour_answers(loaded.model, loaded.tokenizer, queries, progress=False)
    assert (table["n_wrong"] == int((~answers["correct"]).sum())).all()
    assert (table["n_fixed"] <= table["n_wrong"]).all()
    with pytest.raises(ValueError, match=r"pair \(2, 3\) has source layer <= target layer"):
        backpatch(loaded, queries, [(2, 3)], progress=False)


def test_agreement_of_depth_curves():
    from depthprobe.depth import DepthRule, cascade

    rows = []
    for method, depths in (("a", [1, 2, 3, 4]), ("b", [2, 3, 5, 6]), ("c", [4, 3, 2, 1])):
        for step, depth in enumerate(depths):
            for layer in range(8):
                for group in range(4):
                    rows.append(dict(method=method, readout_id=step * 4 + group, group=group,
                                     step=step, layer=layer, score=float(layer >= depth)))
    readouts = pd.DataFrame(rows)
    rule = DepthRule(persist=None, n_boot=0)
    cascades = {m: cascade(readouts, {s: 0.0 for s in range(4)}, m, rule) for m in "abc"}
    agreement = depth_agreement(cascades)
    assert agreement.table.columns.tolist() == ["step", "depth_a", "depth_b", "depth_c"]
    assert agreement.table["depth_b"].tolist() == [2, 3, 5, 6]
    rho = agreement.pairs.set_index(["method_a", "method_b"])["spearman"]
    assert rho[("a", "b")] == pytest.approx(1.0)
    assert rho[("a", "c")] == pytest.approx(-1.0)
    summary = agreement.summary()
    assert summary["a vs b"]["mean_difference"] == pytest.approx(1.5)


def test_run_with_lens_and_interchange(smollm2, tmp_path):
    loaded = tiny_with_tokenizer(smollm2.tokenizer)
    config = RunConfig(n_stories=6, n_steps=2, methods=("lens", "interchange"), n_folds=2,
                       n_boot=20, behaviour=False, figures=(), progress=False,
                       output_dir=str(tmp_path / "run"))
    result = run(config, model=loaded)
    scores = result.scores
    assert set(scores["method"]) == {"lens", "interchange"}
    assert sorted(scores["layer"].unique()) == list(range(5))
    # The readout token (a period) is the same in both stories, so patching its
    # embedding moves nothing.
    layer0 = result.readout_scores.query("method == 'interchange' and layer == 0")
    assert (layer0["score"] == 0.0).all()
    assert len(layer0) == 6 * 3
    agreement = pd.read_csv(tmp_path / "run" / "agreement.csv")
    assert agreement.columns.tolist() == ["step", "depth_lens", "depth_interchange"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "lens vs interchange" in manifest["agreement"]
    assert "agreement of the depth curves" in result.summary()
    lens = scores[scores["method"] == "lens"]
    assert np.allclose(lens.groupby("step")["chance"].first(), [4 / 6, 3 / 6, 3 / 6])
