"""Linear probes: held-out accuracy of a logistic regression at every layer and step."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from jaxtyping import Float
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ..scores import make_readout_scores, make_scores
from .base import MethodSpec, register_method

logger = logging.getLogger(__name__)

METHOD = "probe"


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on standardized features.

    The scaler is fitted in :meth:`fit`, so inside cross-validation it only sees the
    training fold. ``C`` is the inverse L2 regularisation strength, as in scikit-learn.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 500, tol: float = 1e-4):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y) -> "LinearProbe":
        self.scaler_ = StandardScaler().fit(X)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        self.classifier_.fit(self.scaler_.transform(X), y)
        self.classes_ = self.classifier_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "classifier_")
        return self.classifier_.predict_proba(self.scaler_.transform(X))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "classifier_")
        return self.classifier_.predict(self.scaler_.transform(X))


def control_labels(keys: list[tuple], n_classes: int, seed: int = 0) -> np.ndarray:
    """Assign each readout a control label that is a fixed random function of its key.

    The key identifies the readout's surface form (here the readout token and the token
    before it), so a probe that reaches high control accuracy is memorising tokens rather
    than reading the state. Equal keys always get equal labels.
    """
    unique = sorted(set(keys))
    rng = np.random.default_rng(seed)
    mapping = dict(zip(unique, rng.integers(0, n_classes, size=len(unique))))
    return np.array([mapping[key] for key in keys])


def _held_out_correct(X, y, groups, folds, probe: LinearProbe) -> tuple[np.ndarray, list[float]]:
    correct = np.zeros(len(y), dtype=float)
    fold_scores = []
    for train, test in folds:
        if len(np.unique(y[train])) < 2:
            # One class in the training fold: the only sensible guess is that class.
            predicted = np.full(len(test), y[train][0])
        else:
            predicted = probe.fit(X[train], y[train]).predict(X[test])
        hits = predicted == y[test]
        correct[test] = hits
        fold_scores.append(float(hits.mean()))
    return correct, fold_scores


def check_probe_data(labels: np.ndarray, steps: np.ndarray, groups: np.ndarray,
                     n_folds: int) -> None:
    """Raise ``ValueError`` when a step has one class, or too few groups for the folds."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be 2 or more, got {n_folds}.")
    for step in np.unique(steps):
        n_classes = len(np.unique(labels[steps == step]))
        if n_classes < 2:
            raise ValueError(
                f"Step {step} has readouts of only {n_classes} class; a probe needs at "
                f"least 2, so use more stories."
            )
        n_groups = len(np.unique(groups[steps == step]))
        if n_groups < n_folds:
            raise ValueError(
                f"Step {step} has readouts from only {n_groups} stories, fewer than the "
                f"{n_folds} folds; use more stories or fewer folds."
            )


def probe_scores(
    features: Float[np.ndarray, "readouts layers d_model"],
    labels: np.ndarray,
    steps: np.ndarray,
    groups: np.ndarray,
    layers: list[int] | None = None,
    control: np.ndarray | None = None,
    n_folds: int = 5,
    probe: LinearProbe | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cross-validate a linear probe for every (layer, step), folds grouped by story.

    Returns the tidy scores table (mean held-out accuracy, its standard deviation over
    folds, majority-class chance, control-task accuracy) and the per-readout table of
    held-out correctness (1 or 0), which depth intervals are bootstrapped from.
    """
    features = np.asarray(features)
    labels, steps, groups = np.asarray(labels), np.asarray(steps), np.asarray(groups)
    layers = list(range(features.shape[1])) if layers is None else list(layers)
    check_probe_data(labels, steps, groups, n_folds)
    probe = probe or LinearProbe()
    readout_ids = np.arange(len(labels))

    rows, per_readout = [], []
    unique_steps = np.unique(steps)
    bar = tqdm(total=len(unique_steps) * len(layers), desc="probe", unit="fit",
               disable=not progress)
    for step in unique_steps:
        index = np.flatnonzero(steps == step)
        y, g = labels[index], groups[index]
        folds = list(GroupKFold(n_splits=n_folds).split(index, y, g))
        chance = float(np.bincount(y).max() / len(y))
        for column, layer in enumerate(layers):
            X = features[index, column]
            correct, fold_scores = _held_out_correct(X, y, g, folds, probe)
            control_score = np.nan
            if control is not None:
                control_correct, _ = _held_out_correct(X, control[index], g, folds, probe)
                control_score = float(control_correct.mean())
            rows.append(dict(method=METHOD, layer=layer, step=int(step),
                             score=float(correct.mean()), spread=float(np.std(fold_scores)),
                             chance=chance, control=control_score, count=len(index)))
            per_readout.append(pd.DataFrame(dict(
                method=METHOD, readout_id=readout_ids[index], group=g, step=int(step),
                layer=layer, score=correct)))
            bar.update()
    bar.close()
    return make_scores(rows), make_readout_scores(pd.concat(per_readout, ignore_index=True))


def _score_with_probe(context) -> tuple[pd.DataFrame, pd.DataFrame]:
    probe = LinearProbe(C=context.options.get("probe_c", 1.0))
    return probe_scores(
        context.features.numpy(), context.labels, context.steps, context.groups,
        layers=context.layers, control=context.control, n_folds=context.n_folds,
        probe=probe, progress=context.progress)


register_method(MethodSpec(
    name=METHOD, score=_score_with_probe,
    summary="held-out accuracy of a linear probe, folds grouped by story",
    cost="one logistic regression per layer, step and fold (plus the control task)"))
