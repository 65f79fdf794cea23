"""The batched torch probe against scikit-learn's LogisticRegression, the reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from depthprobe.capture import capture_residuals
from depthprobe.capture.store import ActivationStore
from depthprobe.methods import METHODS, MethodContext
from depthprobe.methods.probe import probe_scores
from depthprobe.methods.probe_torch import BatchedLinearProbe, probe_scores_torch
from depthprobe.tasks import align_examples
from depthprobe.tasks.permutation import Permutation
from depthprobe.tasks.shell_game import ShellGame


def _planted(n_rows=90, d_model=12, n_layers=3, n_classes=3, seed=0, noise=2.0):
    """Features whose layers expose the label more and more clearly, plus a raw offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_rows)
    directions = rng.normal(size=(n_classes, d_model))
    X = np.empty((n_layers, n_rows, d_model))
    for layer in range(n_layers):
        X[layer] = (layer + 0.5) * directions[labels] + noise * rng.normal(size=(n_rows, d_model))
    # Raw residual streams have large means and unequal scales, which standardization removes.
    X = X * rng.uniform(0.1, 30.0, size=d_model) + rng.normal(0, 50, size=d_model)
    return X, labels


def _sklearn_fit(X, y, C=1.0):
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(scaler.transform(X), y)
    return scaler, model


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_coefficients_match_sklearn(n_classes):
    X, y = _planted(n_classes=n_classes)
    train = np.zeros((2, len(y)), dtype=bool)
    train[0, :60] = True
    train[1, 30:] = True
    probe = BatchedLinearProbe(C=0.5, tol=1e-9, max_iter=2000).fit(
        torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(train))

    assert bool(probe.converged_.all())
    for layer in range(X.shape[0]):
        for fold in range(2):
            _, reference = _sklearn_fit(X[layer][train[fold]], y[train[fold]], C=0.5)
            coef = probe.coef_[layer, fold, 0].numpy()
            intercept = probe.intercept_[layer, fold, 0].numpy()
            if n_classes == 2:
                # The binary model fixes the first class at 0 and fits the second.
                np.testing.assert_allclose(coef[0], 0.0)
                np.testing.assert_allclose(coef[1], reference.coef_[0], atol=1e-5)
                np.testing.assert_allclose(intercept[1], reference.intercept_[0], atol=1e-5)
            else:
                np.testing.assert_allclose(coef, reference.coef_, atol=1e-5)
                np.testing.assert_allclose(intercept - intercept.mean(),
                                           reference.intercept_ - reference.intercept_.mean(),
                                           atol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_more_features_than_rows_match_sklearn(n_classes):
    X, y = _planted(n_rows=40, d_model=100, n_classes=n_classes, seed=6)
    train = np.zeros((2, len(y)), dtype=bool)
    train[0, :30] = True
    train[1, 10:] = True
    probe = BatchedLinearProbe(tol=1e-9, max_iter=2000).fit(
        torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(train))

    assert bool(probe.converged_.all())
    for layer in range(X.shape[0]):
        for fold in range(2):
            _, reference = _sklearn_fit(X[layer][train[fold]], y[train[fold]])
            coef = probe.coef_[layer, fold, 0].numpy()
            if n_classes == 2:
                np.testing.assert_allclose(coef[1], reference.coef_[0], atol=1e-5)
            else:
                np.testing.assert_allclose(coef, reference.coef_, atol=1e-5)


def test_predictions_match_sklearn_in_float32():
    X, y = _planted(n_rows=120, n_classes=4, seed=1)
    test = np.arange(len(y)) % 4 == 0
    train = ~test
    probe = BatchedLinearProbe().fit(torch.from_numpy(X).float(), torch.from_numpy(y),
                                     torch.from_numpy(train))
    predicted = probe.predict(torch.from_numpy(X[:, test]).float())[:, 0, 0].numpy()

    for layer in range(X.shape[0]):
        scaler, reference = _sklearn_fit(X[layer][train], y[train])
        expected = reference.predict(scaler.transform(X[layer][test]))
        assert (predicted[layer] != expected).sum() <= 1


def test_fold_missing_a_class_never_predicts_it():
    X, y = _planted(n_rows=80, n_classes=3, seed=2)
    train = (y != 2) & (np.arange(len(y)) < 60)
    probe = BatchedLinearProbe().fit(torch.from_numpy(X), torch.from_numpy(y),
                                     torch.from_numpy(train))
    predicted = probe.predict(torch.from_numpy(X))[:, 0, 0].numpy()

    assert not (predicted == 2).any()
    scaler, reference = _sklearn_fit(X[-1][train], y[train])
    expected = reference.predict(scaler.transform(X[-1]))
    assert (predicted[-1] != expected).sum() <= 1


def test_single_class_fold_predicts_that_class():
    X, y = _planted(n_rows=40, n_classes=3, seed=3)
    train = y == 1
    probe = BatchedLinearProbe().fit(torch.from_numpy(X), torch.from_numpy(y),
                                     torch.from_numpy(train))
    predicted = probe.predict(torch.from_numpy(X))

    assert (predicted == 1).all()


def test_label_values_are_kept():
    X, y = _planted(n_rows=60, n_classes=3, seed=4)
    values = np.array([7, 11, 42])[y]
    probe = BatchedLinearProbe().fit(torch.from_numpy(X), torch.from_numpy(values),
                                     torch.ones(1, len(y), dtype=torch.bool))

    assert set(probe.predict(torch.from_numpy(X)).unique().tolist()) <= {7, 11, 42}


def test_predict_before_fit_raises():
    with pytest.raises(ValueError, match="not fitted"):
        BatchedLinearProbe().predict(torch.zeros(1, 2, 3))


def test_bad_shapes_and_c_rejected():
    X = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="same rows"):
        BatchedLinearProbe().fit(X, torch.zeros(4, dtype=torch.long), torch.ones(1, 5).bool())
    with pytest.raises(ValueError, match="C must be positive"):
        BatchedLinearProbe(C=0).fit(X, torch.zeros(5, dtype=torch.long), torch.ones(1, 5).bool())
    with pytest.raises(TypeError, match="floating point"):
        BatchedLinearProbe().fit(X.long(), torch.zeros(5, dtype=torch.long),
                                 torch.ones(1, 5).bool())


def _grouped_data(n_stories=40, n_steps=3, d_model=10, n_layers=4, seed=5):
    """Stories with one readout per step; layer ``l`` exposes steps up to ``l`` clearly."""
    rng = np.random.default_rng(seed)
    steps = np.tile(np.arange(n_steps), n_stories)
    groups = np.repeat(np.arange(n_stories), n_steps)
    labels = rng.integers(0, 3, len(steps))
    directions = rng.normal(size=(3, d_model))
    features = rng.normal(size=(len(steps), n_layers, d_model))
    for layer in range(n_layers):
        clear = steps <= layer
        features[clear, layer] += 3 * directions[labels[clear]]
    control = rng.integers(0, 3, len(steps))
    return features.astype(np.float32), labels, steps, groups, control


def test_scores_match_sklearn_reference():
    features, labels, steps, groups, control = _grouped_data()
    torch_scores, torch_readouts = probe_scores_torch(
        features, labels, steps, groups, control=control, progress=False)
    sklearn_scores, sklearn_readouts = probe_scores(
        features, labels, steps, groups, control=control, progress=False)

    assert list(torch_scores.columns) == list(sklearn_scores.columns)
    for column in ["method", "layer", "step", "chance", "count"]:
        assert torch_scores[column].tolist() == sklearn_scores[column].tolist()
    # With 40 readouts per step, one readout is 2.5 points: allow one near-tie per row.
    one_readout = 1 / torch_scores["count"] + 1e-9
    assert (np.abs(torch_scores["score"] - sklearn_scores["score"]) <= one_readout).all()
    assert (np.abs(torch_scores["control"] - sklearn_scores["control"]) <= one_readout).all()
    disagreements = (torch_readouts["score"] != sklearn_readouts["score"]).sum()
    assert disagreements <= 2


def test_store_and_array_give_same_scores(tmp_path):
    features, labels, steps, groups, control = _grouped_data(n_stories=30)
    counts = [3] * 30
    store = ActivationStore.create(tmp_path, {"model": "test"}, list(range(4)), 10, counts,
                                   shard_mb=6 * 4 * 10 * 4 / 2**20)
    for shard in store.shards:
        store.write_shard(shard.index, torch.from_numpy(
            features[shard.row_start:shard.row_stop]))

    from_array = probe_scores_torch(features, labels, steps, groups, control=control,
                                    progress=False)
    from_store = probe_scores_torch(ActivationStore.open(tmp_path), labels, steps, groups,
                                    control=control, progress=False, max_mb=0.01)

    pd.testing.assert_frame_equal(from_store[0], from_array[0])
    pd.testing.assert_frame_equal(from_store[1], from_array[1])


def _context(features, labels, steps, groups, control, **options) -> MethodContext:
    return MethodContext(
        task=None, loaded=None, text_examples=[], examples=[], features=features,
        layers=list(range(features.shape[1])), labels=labels, steps=steps, groups=groups,
        control=control, progress=False, options=options)


def test_backend_option_selects_implementation():
    features, labels, steps, groups, control = _grouped_data(n_stories=25)
    method = METHODS["probe"]

    default, _ = method.score(_context(torch.from_numpy(features), labels, steps, groups,
                                       control))
    reference, _ = method.score(_context(torch.from_numpy(features), labels, steps, groups,
                                         control, probe_backend="sklearn"))
    expected_torch, _ = probe_scores_torch(features, labels, steps, groups, control=control,
                                           progress=False)
    expected_sklearn, _ = probe_scores(features, labels, steps, groups, control=control,
                                       progress=False)

    pd.testing.assert_frame_equal(default, expected_torch)
    pd.testing.assert_frame_equal(reference, expected_sklearn)
    with pytest.raises(ValueError, match="torch, sklearn"):
        method.score(_context(torch.from_numpy(features), labels, steps, groups, control,
                              probe_backend="jax"))


# --- real model, real tasks ---------------------------------------------------------------

# A subset of SmolLM2's 31 layers keeps the scikit-learn reference fits short.
LAYERS = [0, 3, 8, 14, 20, 26, 30]


def _real_inputs(loaded, task):
    text_examples = task.text_examples()
    examples = align_examples(text_examples, loaded.tokenizer)
    features = capture_residuals(
        loaded.model, loaded.layout, [ex.input_ids for ex in examples],
        [[r.position for r in ex.readouts] for ex in examples], layers=LAYERS,
        batch_size=16, pad_token_id=loaded.tokenizer.pad_token_id or 0, progress=False)
    labels = np.array([r.label for ex in examples for r in ex.readouts])
    steps = np.array([r.step for ex in examples for r in ex.readouts])
    groups = np.array([ex.group for ex in examples for r in ex.readouts])
    return features.numpy(), labels, steps, groups


@pytest.mark.slow
@pytest.mark.parametrize("task", [ShellGame(n_stories=200, n_swaps=2, seed=0),
                                  Permutation(n_stories=200, n_actions=2, seed=0)],
                         ids=["shell-game", "permutation"])
def test_real_task_accuracies_match_sklearn(smollm2, task):
    features, labels, steps, groups = _real_inputs(smollm2, task)
    torch_scores, _ = probe_scores_torch(features, labels, steps, groups, layers=LAYERS,
                                         progress=False)
    sklearn_scores, _ = probe_scores(features, labels, steps, groups, layers=LAYERS,
                                     progress=False)

    difference = np.abs(torch_scores["score"] - sklearn_scores["score"])
    assert difference.max() <= 0.01, torch_scores.assign(sklearn=sklearn_scores["score"])
    # The probes find the state where it is plain, so the comparison is not all chance.
    assert torch_scores["score"].max() > torch_scores["chance"].max() + 0.3
