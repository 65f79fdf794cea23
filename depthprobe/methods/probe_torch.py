"""Linear probes fitted in batches with torch: every layer, fold and label set at once.

:class:`BatchedLinearProbe` fits the same model as :class:`~depthprobe.methods.probe.LinearProbe`
(scikit-learn's ``LogisticRegression`` with the ``lbfgs`` solver on features standardized
inside each training fold), for many problems in one go. Each problem minimises

    sum over training rows of the log-loss  +  0.5 / C * ||W||^2

on its standardized features, with the intercept unpenalised. As in scikit-learn, a
problem whose training fold contains two classes is a binary logistic regression (one weight
vector, the first class's logit fixed at 0), one with three or more classes is multinomial
with a weight vector per class, and classes missing from the training fold are never
predicted. The optimiser is a preconditioned L-BFGS with a backtracking (Armijo) line search,
run per problem but computed for all problems with batched matrix products; a problem stops
when the largest entry of its gradient, divided by its number of training rows, falls to
``tol`` (the criterion of scikit-learn's ``lbfgs``) or its line search makes no progress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sklearn.model_selection import GroupKFold
from torch import Tensor
from tqdm.auto import tqdm

from ..scores import make_readout_scores, make_scores
from .base import MethodSpec, register_method
from .probe import METHOD, _score_with_probe, check_probe_data

logger = logging.getLogger(__name__)

PROBE_BACKENDS = ("torch", "sklearn")

# scikit-learn's StandardScaler leaves a feature with (numerically) zero variance unscaled.
_MIN_SCALE = 1e-5
_ARMIJO = 1e-4  # sufficient-decrease constant of the line search
_MAX_BACKTRACKS = 20
_LOSS_ROUNDING = 1e-6  # relative change of a float32 loss that counts as rounding
_MIN_EIGENVALUE = 1e-4  # eigenpairs below this fraction of the largest are left out
_COMPACT_BELOW = 0.75  # drop finished layers once the active ones are this fraction or less

# Internal layout of the parameters: (layers, folds, sets, classes, d_model + 1), the last
# entry of each row being the intercept. Per-problem reductions then run over contiguous
# memory, and the batched matrix products read the weights as transposed operands.


@dataclass
class _LayerData:
    """The per-layer tensors of a fit, sliced together when layers finish."""

    X: Tensor  # (layers, rows, d_model), standardized over all rows
    inverse_scale: Tensor  # (layers, folds, d_model): 1 / the fold's standard deviation
    shift: Tensor  # (layers, folds, d_model): the fold's mean / its standard deviation
    basis: Tensor  # (layers, d_model, k): top eigenvectors of X'X
    inverse_top: Tensor  # (layers, folds, sets, k): preconditioner on the basis
    inverse_rest: Tensor  # (layers, folds, sets): preconditioner off the basis

    def select(self, keep: Tensor) -> "_LayerData":
        return _LayerData(*(getattr(self, name)[keep] for name in self.__dataclass_fields__))


class BatchedLinearProbe:
    """Many standardized multinomial logistic regressions, fitted at once.

    Problems are indexed by (layer, fold, label set): :meth:`fit` takes the features of
    every layer for the same rows, one or more label vectors (for example the task's labels
    and the control labels) and one boolean training mask per fold. ``C``, ``max_iter`` and
    ``tol`` are those of :class:`~depthprobe.methods.probe.LinearProbe`. ``history`` is the
    number of L-BFGS correction pairs kept, and ``preconditioner_rank`` the number of
    eigenvectors per layer in the preconditioner. ``device`` is where the fit runs
    (default: the features' device).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 500, tol: float = 1e-4,
                 history: int = 5, preconditioner_rank: int = 64,
                 device: str | torch.device | None = None):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.history = history
        self.preconditioner_rank = preconditioner_rank
        self.device = device

    def fit(self, X: Float[Tensor, "layers rows d_model"], labels: Int[Tensor, "sets rows"],
            train: Bool[Tensor, "folds rows"]) -> "BatchedLinearProbe":
        """Fit one probe per (layer, fold, label set) on that fold's training rows."""
        X, labels, train = self._check_inputs(X, labels, train)
        self._encode_labels(labels, train, X.dtype)
        X = self._standardize(X, train)
        data = self._layer_data(X)

        theta, self.n_iter_, self.converged_ = self._lbfgs(data)
        self.coef_ = theta[..., :-1]  # (layers, folds, sets, classes, d_model)
        self.intercept_ = theta[..., -1]  # (layers, folds, sets, classes)
        n_unconverged = int((~self.converged_).sum())
        if n_unconverged:
            logger.warning("%d of %d probes did not converge in %d iterations; raise "
                           "max_iter or lower C.", n_unconverged, self.converged_.numel(),
                           self.max_iter)
        return self

    def predict(self, X: Float[Tensor, "layers rows d_model"]
                ) -> Int[Tensor, "layers folds sets rows"]:
        """Return each probe's predicted labels (original label values) for the rows of ``X``."""
        if not hasattr(self, "coef_"):
            raise ValueError("This BatchedLinearProbe is not fitted yet; call fit() first.")
        X = torch.as_tensor(X, device=self.coef_.device).to(self.coef_.dtype)
        X = (X - self.global_mean_[:, None]) / self.global_scale_[:, None]
        theta = torch.cat([self.coef_, self.intercept_[..., None]], -1)
        data = _LayerData(X, *self._fold_terms(), None, None, None)
        encoded = self._logits(data, theta).argmax(-1)  # (layers, rows, folds, sets)
        encoded = encoded.permute(0, 2, 3, 1)  # (layers, folds, sets, rows)
        sets = torch.arange(encoded.shape[2], device=encoded.device)[None, None, :, None]
        return self.classes_[sets, encoded]

    # --- set-up -------------------------------------------------------------------------

    def _check_inputs(self, X, labels, train):
        if self.C <= 0:
            raise ValueError(f"C must be positive, got {self.C}.")
        device = self.device if self.device is not None else getattr(X, "device", "cpu")
        X = torch.as_tensor(X, device=device)
        if not X.is_floating_point():
            raise TypeError(f"Features must be floating point, got {X.dtype}.")
        if X.dtype in (torch.float16, torch.bfloat16):
            X = X.float()
        labels = torch.as_tensor(labels, device=device).long()
        train = torch.as_tensor(train, device=device).bool()
        if labels.ndim == 1:
            labels = labels[None]
        if train.ndim == 1:
            train = train[None]
        if X.ndim != 3 or labels.shape[1] != X.shape[1] or train.shape[1] != X.shape[1]:
            raise ValueError(
                f"Expected features (layers, rows, d_model), labels (sets, rows) and training "
                f"masks (folds, rows) with the same rows; got shapes {tuple(X.shape)}, "
                f"{tuple(labels.shape)} and {tuple(train.shape)}.")
        if not train.any(1).all():
            raise ValueError("Every fold needs at least one training row.")
        return X, labels, train

    def _encode_labels(self, labels: Tensor, train: Tensor, dtype: torch.dtype) -> None:
        # Classes are numbered per label set in sorted order, as scikit-learn's classes_.
        per_set = [torch.unique(row) for row in labels]
        n_classes = max(len(classes) for classes in per_set)
        self.classes_ = torch.stack([
            torch.cat([c, c[-1:].expand(n_classes - len(c))]) for c in per_set])
        encoded = torch.stack([torch.searchsorted(c, row.contiguous())
                               for c, row in zip(per_set, labels)])
        onehot = torch.nn.functional.one_hot(encoded, n_classes)  # (sets, rows, classes)

        # present[f, s, k]: class k of label set s occurs in fold f's training rows.
        present = torch.einsum("fn,snk->fsk", train.float(), onehot.float()) > 0
        n_present = present.sum(-1)
        first = present & (present.cumsum(-1) == 1)
        # A binary problem keeps its first class's logit at 0; absent classes get no weights.
        self.present_ = present
        self.free_ = present & ~(first & (n_present == 2)[..., None])
        self._multinomial = n_present >= 3  # (folds, sets)
        self._onehot = onehot.permute(1, 0, 2)[:, None].to(dtype)  # (rows, 1, sets, classes)
        self._train = train.T.to(dtype)  # (rows, folds)
        self._n_train = train.sum(1).to(dtype)  # (folds,)

    def _standardize(self, X: Tensor, train: Tensor) -> Tensor:
        # Standardizing by all rows first keeps the per-fold standardization, which is done
        # through the weights, well conditioned in float32. The two compose to exactly the
        # per-fold standardization.
        self.global_mean_ = X.mean(1)  # (layers, d_model)
        scale = X.std(1, correction=0)
        self.global_scale_ = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
        X = (X - self.global_mean_[:, None]) / self.global_scale_[:, None]

        weights = self._train / self._n_train  # (rows, folds)
        mean = torch.einsum("nf,lnd->lfd", weights, X)
        var = torch.einsum("nf,lnd->lfd", weights, X * X) - mean * mean
        std = var.clamp(min=0).sqrt()
        self.fold_mean_ = mean  # (layers, folds, d_model), in globally standardized units
        self.fold_scale_ = torch.where(std > _MIN_SCALE, std, torch.ones_like(std))
        return X

    def _fold_terms(self) -> tuple[Tensor, Tensor]:
        return 1.0 / self.fold_scale_, self.fold_mean_ / self.fold_scale_

    def _layer_data(self, X: Tensor) -> _LayerData:
        """Prepare an approximate inverse Hessian at the starting point, per problem.

        At ``W = 0`` every class is equally likely, so the Hessian of a problem's weights
        is close to ``c * X'X + I / C``. Here ``c = 1/4`` for a binary problem, and
        ``c = 1/K`` on the class-centred part of a multinomial one, whose class-mean part
        has only the penalty's curvature. ``X'X`` is taken per layer from the top eigenpairs of all rows, scaled to
        each fold's training rows; the rest of the spectrum is replaced by the mean of the
        remaining eigenvalues. The preconditioner speeds up L-BFGS and leaves the optimum
        unchanged.
        """
        n_layers, n_rows, d_model = X.shape
        if n_rows <= d_model:
            values, vectors = torch.linalg.eigh(torch.bmm(X, X.transpose(1, 2)))
        else:
            values, vectors = torch.linalg.eigh(torch.bmm(X.transpose(1, 2), X))
        values, vectors = values.flip(-1).clamp(min=0), vectors.flip(-1)
        rank = min(n_rows, d_model)
        k = min(self.preconditioner_rank, rank)
        top_values, top_vectors = values[:, :k], vectors[:, :, :k]
        if n_rows <= d_model:
            # Eigenvectors of X X^T map to those of X^T X through X^T u / sqrt(lambda).
            top_vectors = torch.bmm(X.transpose(1, 2), top_vectors)
            top_vectors = top_vectors / top_values.clamp(min=1e-12).sqrt()[:, None]
        reliable = top_values > _MIN_EIGENVALUE * values[:, :1]
        top_vectors = top_vectors * reliable[:, None]
        remaining = values[:, k:rank]
        rest = remaining.mean(-1) if remaining.shape[-1] else torch.zeros_like(values[:, 0])

        n_present = self.present_.sum(-1)  # (folds, sets)
        curvature = torch.where(n_present == 2, 0.25, 1.0 / n_present.clamp(min=1))
        scale = curvature * (self._n_train / n_rows)[:, None]  # (folds, sets)
        inverse_top = 1.0 / (scale[..., None] * top_values[:, None, None] + 1.0 / self.C)
        inverse_rest = 1.0 / (scale * rest[:, None, None] + 1.0 / self.C)
        self._inverse_intercept = 1.0 / (curvature * self._n_train[:, None]).clamp(min=1e-12)
        self._inverse_intercept = self._inverse_intercept[..., None]  # (folds, sets, 1)
        return _LayerData(X, *self._fold_terms(), top_vectors, inverse_top, inverse_rest)

    # --- objective ----------------------------------------------------------------------

    def _logits(self, data: _LayerData, theta: Tensor) -> Tensor:
        """Return masked logits (layers, rows, folds, sets, classes) for all problems."""
        n_layers, n_rows, d_model = data.X.shape
        weights, intercept = theta[..., :-1], theta[..., -1]
        scaled = weights * data.inverse_scale[:, :, None, None]  # (layers, F, S, K, d)
        offset = (weights * data.shift[:, :, None, None]).sum(-1)  # (layers, F, S, K)
        logits = torch.bmm(data.X, scaled.view(n_layers, -1, d_model).transpose(1, 2))
        logits = logits.view(n_layers, n_rows, *theta.shape[1:4])
        logits += (intercept - offset)[:, None]
        return logits.masked_fill_(~self.present_, float("-inf"))

    def _loss_and_grad(self, data: _LayerData, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Return each problem's objective (layers, folds, sets) and its gradient."""
        n_layers, n_rows, d_model = data.X.shape
        log_prob = self._logits(data, theta).log_softmax(-1)
        weights = theta[..., :-1]

        picked = (log_prob.masked_fill(~self.present_, 0.0) * self._onehot).sum(-1)
        # Sums in float64 keep small decreases of the loss visible to the line search.
        data_loss = -(picked * self._train[None, :, :, None]).sum(1, dtype=torch.float64)
        penalty = (weights * weights).flatten(3).sum(-1, dtype=torch.float64)
        loss = data_loss + (0.5 / self.C) * penalty  # (layers, F, S)

        residual = log_prob.exp_().sub_(self._onehot).mul_(self._train[None, :, :, None, None])
        grad_intercept = residual.sum(1)  # (layers, F, S, K)
        grad_scaled = torch.bmm(residual.view(n_layers, n_rows, -1).transpose(1, 2), data.X)
        grad_scaled = grad_scaled.view(weights.shape)  # (layers, F, S, K, d)
        grad = torch.empty_like(theta)
        torch.mul(grad_scaled, data.inverse_scale[:, :, None, None], out=grad[..., :-1])
        grad[..., :-1] -= data.shift[:, :, None, None] * grad_intercept[..., None]
        grad[..., :-1] += weights * (1.0 / self.C)
        grad[..., -1] = grad_intercept
        return loss, grad.mul_(self._free_wide)

    def _precondition(self, data: _LayerData, direction: Tensor) -> Tensor:
        """Apply the approximate inverse Hessian to ``direction`` (layers, F, S, K, d+1)."""
        n_layers, d_model = data.X.shape[0], data.X.shape[2]
        present = self._present_wide
        weights = direction[..., :-1]
        class_mean = (weights * present).sum(3, keepdim=True) / present.sum(3, keepdim=True
                                                                            ).clamp(min=1)
        class_mean *= self._multinomial[..., None, None]
        centred = (weights - class_mean).mul_(present)  # (layers, F, S, K, d)
        # The fold's standardization rescales the features by 1 / its standard deviation,
        # which rescales the Hessian of all rows by the same factor on each side.
        fold_scale = 1.0 / data.inverse_scale[:, :, None, None]
        centred *= fold_scale

        coords = torch.bmm(centred.view(n_layers, -1, d_model), data.basis)  # (L, FSK, k)
        coords = coords.view(*centred.shape[:4], -1)
        coords *= (data.inverse_top - data.inverse_rest[..., None])[:, :, :, None]
        result = torch.empty_like(direction)
        back = torch.bmm(coords.view(n_layers, -1, coords.shape[-1]), data.basis.transpose(1, 2))
        result[..., :-1] = back.view(centred.shape)
        result[..., :-1] += centred * data.inverse_rest[..., None, None]
        result[..., :-1] *= fold_scale
        result[..., :-1] += class_mean * self.C
        result[..., -1] = direction[..., -1] * self._inverse_intercept
        return result.mul_(self._free_wide)

    # --- optimiser ----------------------------------------------------------------------

    def _lbfgs(self, data: _LayerData):
        n_layers, n_rows, d_model = data.X.shape
        shape = (n_layers, *self.free_.shape, d_model + 1)
        theta = torch.zeros(shape, dtype=data.X.dtype, device=data.X.device)
        final = theta.clone()
        n_iter = torch.zeros(shape[:3], dtype=torch.long, device=theta.device)
        final_converged = torch.zeros_like(n_iter, dtype=torch.bool)
        layer_ids = torch.arange(n_layers, device=theta.device)
        self._free_wide = self.free_[..., None].to(theta.dtype)  # (F, S, K, 1)
        self._present_wide = self.present_[..., None].to(theta.dtype)

        def small(grad: Tensor) -> Tensor:
            largest = grad.abs().flatten(3).amax(-1)
            return largest / self._n_train[None, :, None] <= self.tol

        loss, grad = self._loss_and_grad(data, theta)
        active = ~small(grad)
        history = _History(self.history)
        for _ in range(self.max_iter):
            if not active.any():
                break
            direction = history.apply(grad, lambda q: self._precondition(data, q)).neg_()
            uphill = _dot(grad, direction) >= 0
            if uphill.any():  # the curvature pairs mislead: fall back to steepest descent
                direction = torch.where(uphill[..., None, None], -grad, direction)
            direction.mul_(active[..., None, None])

            new_theta, new_loss, new_grad, accepted = self._line_search(
                data, theta, loss, grad, direction, _dot(grad, direction), active)
            history.add(new_theta - theta, new_grad - grad, accepted & active)
            stalled = active & ~accepted
            theta, loss, grad = new_theta, new_loss, new_grad
            n_iter[layer_ids] += active.long()
            active = active & ~small(grad) & ~stalled

            finished = ~active.any(-1).any(-1)
            if finished.any() and (~finished).sum() <= _COMPACT_BELOW * len(layer_ids):
                # Every problem of a finished layer stopped before max_iter.
                final[layer_ids[finished]] = theta[finished]
                final_converged[layer_ids[finished]] = True
                keep = ~finished
                layer_ids, data = layer_ids[keep], data.select(keep)
                theta, loss, grad, active = theta[keep], loss[keep], grad[keep], active[keep]
                history.select(keep)

        final[layer_ids] = theta
        final_converged[layer_ids] = small(grad) | ~active
        return final, n_iter, final_converged

    def _line_search(self, data, theta, loss, grad, direction, slope, active):
        """Backtrack each problem's step until the step is acceptable.

        A step is acceptable when the loss decreases enough (Armijo), or, near the optimum
        where float32 losses no longer resolve the decrease, when the loss is within
        rounding of the old one and the slope along the direction has not turned steeply
        uphill (the approximate Wolfe condition of Hager and Zhang). A problem with no
        acceptable step after the last backtrack is returned as not accepted: it stalled.
        """
        step = torch.ones(loss.shape, dtype=theta.dtype, device=theta.device)
        accepted = ~active
        slack = _LOSS_ROUNDING * loss.abs()
        for _ in range(_MAX_BACKTRACKS):
            trial = theta + step[..., None, None] * direction
            trial_loss, trial_grad = self._loss_and_grad(data, trial)
            armijo = trial_loss <= loss + _ARMIJO * step * slope
            approximate = ((trial_loss <= loss + slack)
                           & (_dot(trial_grad, direction) <= -0.8 * slope))
            accepted = accepted | (active & (armijo | approximate))
            if accepted.all():
                break
            step = torch.where(accepted, step, step * 0.5)
        moved = accepted & active
        wide = moved[..., None, None]
        return (torch.where(wide, trial, theta), torch.where(moved, trial_loss, loss),
                torch.where(wide, trial_grad, grad), accepted)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Return the inner product of each problem's parameters: (layers, folds, sets)."""
    return (a * b).flatten(3).sum(-1)


class _History:
    """The L-BFGS correction pairs of every problem, and the two-loop recursion."""

    def __init__(self, size: int):
        self.size = size
        self.steps: list[Tensor] = []  # s = theta_new - theta_old
        self.changes: list[Tensor] = []  # y = grad_new - grad_old
        self.rho: list[Tensor] = []  # 1 / (s . y), 0 where the pair is not used

    def add(self, step: Tensor, change: Tensor, moved: Tensor) -> None:
        curvature = _dot(step, change)
        usable = moved & (curvature > 1e-10 * _dot(change, change).clamp(min=1e-30))
        wide = usable[..., None, None]
        self.steps.append(step.mul_(wide))
        self.changes.append(change.mul_(wide))
        self.rho.append(torch.where(usable, 1.0 / curvature.clamp(min=1e-30),
                                    torch.zeros_like(curvature)))
        if len(self.steps) > self.size:
            self.steps.pop(0), self.changes.pop(0), self.rho.pop(0)

    def select(self, keep: Tensor) -> None:
        self.steps = [s[keep] for s in self.steps]
        self.changes = [y[keep] for y in self.changes]
        self.rho = [r[keep] for r in self.rho]

    def apply(self, grad: Tensor, precondition) -> Tensor:
        """Return the approximate inverse Hessian times ``grad``, per problem."""
        q = grad.clone()
        alphas = []
        for s, y, r in zip(reversed(self.steps), reversed(self.changes), reversed(self.rho)):
            alpha = r * _dot(s, q)
            q -= alpha[..., None, None] * y
            alphas.append(alpha)
        q = precondition(q)
        for s, y, r, alpha in zip(self.steps, self.changes, self.rho, reversed(alphas)):
            beta = r * _dot(y, q)
            q += s * (alpha - beta)[..., None, None]
        return q


def _read_rows(features, index: np.ndarray, columns: list[int]) -> Tensor:
    """Return ``features[index][:, columns]`` as float32 (rows, layers, d_model).

    ``features`` is an array, a tensor, or an object with a ``read(rows, columns=...)``
    method such as :class:`~depthprobe.capture.store.ActivationStore`, which reads only
    the requested slice from disk.
    """
    if hasattr(features, "read"):
        return features.read(index, columns=columns)
    if isinstance(features, np.ndarray):
        return torch.from_numpy(features[index][:, columns]).float()
    return torch.as_tensor(features)[torch.as_tensor(index)][:, columns].float()


def _layer_chunks(n_layers: int, n_rows: int, d_model: int, max_mb: float) -> list[range]:
    """Split layers into chunks whose fits need about ``max_mb`` of memory or less."""
    # Features, their standardized copy and the preconditioner's basis, in float32.
    per_layer = 4 * (3 * n_rows * d_model + min(n_rows, d_model) ** 2)
    size = max(1, min(n_layers, int(max_mb * 2**20 // per_layer)))
    return [range(start, min(start + size, n_layers)) for start in range(0, n_layers, size)]


def probe_scores_torch(
    features,
    labels: np.ndarray,
    steps: np.ndarray,
    groups: np.ndarray,
    layers: Sequence[int] | None = None,
    control: np.ndarray | None = None,
    n_folds: int = 5,
    C: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    max_mb: float = 2048.0,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cross-validate a linear probe for every (layer, step), all layers and folds at once.

    Takes and returns the same as :func:`~depthprobe.methods.probe.probe_scores`.
    ``features`` (readouts, layers, d_model) is an array, a tensor or an activation store,
    read one step at a time. Folds are grouped by story with the same ``GroupKFold``
    split. Task and control labels are fitted together. Layers are fitted in chunks that
    need about ``max_mb`` of memory; ``device`` defaults to a GPU when torch sees one.
    """
    labels, steps, groups = np.asarray(labels), np.asarray(steps), np.asarray(groups)
    n_columns = features.shape[1]
    layers = list(range(n_columns)) if layers is None else list(layers)
    if len(layers) != n_columns:
        raise ValueError(f"Got {len(layers)} layer indices for features with {n_columns} "
                         f"layers; give one index per feature column.")
    check_probe_data(labels, steps, groups, n_folds)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    readout_ids = np.arange(len(labels))
    label_sets = np.stack([labels] if control is None else [labels, np.asarray(control)])

    unique_steps = np.unique(steps)
    rows, per_readout = [], []
    bar = tqdm(total=len(unique_steps) * n_columns, desc="probe", unit="layer",
               disable=not progress)
    for step in unique_steps:
        index = np.flatnonzero(steps == step)
        y, g = labels[index], groups[index]
        folds = list(GroupKFold(n_splits=n_folds).split(index, y, g))
        train = np.zeros((n_folds, len(index)), dtype=bool)
        test_fold = np.zeros(len(index), dtype=np.int64)
        for fold, (train_rows, test_rows) in enumerate(folds):
            train[fold, train_rows] = True
            test_fold[test_rows] = fold
        chance = float(np.bincount(y).max() / len(y))
        step_labels = torch.as_tensor(label_sets[:, index])

        for chunk in _layer_chunks(n_columns, len(index), features.shape[2], max_mb):
            X = _read_rows(features, index, list(chunk)).transpose(0, 1).contiguous()
            probe = BatchedLinearProbe(C=C, max_iter=max_iter, tol=tol, device=device)
            predicted = probe.fit(X, step_labels, torch.as_tensor(train)).predict(X)
            # Each readout is scored by the fold that held it out.
            by_row = predicted.permute(0, 3, 1, 2)  # (layers, rows, folds, sets)
            held_out = by_row[:, torch.arange(len(index)), torch.as_tensor(test_fold)]
            correct = held_out.cpu().numpy() == label_sets[:, index].T[None]  # (L, rows, sets)
            for offset, column in enumerate(chunk):
                hits = correct[offset, :, 0].astype(float)
                fold_scores = [hits[test].mean() for _, test in folds]
                control_score = (float(correct[offset, :, 1].mean()) if control is not None
                                 else np.nan)
                rows.append(dict(method=METHOD, layer=layers[column], step=int(step),
                                 score=float(hits.mean()), spread=float(np.std(fold_scores)),
                                 chance=chance, control=control_score, count=len(index)))
                per_readout.append(pd.DataFrame(dict(
                    method=METHOD, readout_id=readout_ids[index], group=g, step=int(step),
                    layer=layers[column], score=hits)))
            bar.update(len(chunk))
    bar.close()
    return make_scores(rows), make_readout_scores(pd.concat(per_readout, ignore_index=True))


def _score_probe(context) -> tuple[pd.DataFrame, pd.DataFrame]:
    backend = context.options.get("probe_backend", "torch")
    if backend not in PROBE_BACKENDS:
        raise ValueError(f"Unknown probe backend {backend!r}; choose one of "
                         f"{', '.join(PROBE_BACKENDS)}.")
    if backend == "sklearn":
        return _score_with_probe(context)
    return probe_scores_torch(
        context.features, context.labels, context.steps, context.groups,
        layers=context.layers, control=context.control, n_folds=context.n_folds,
        C=context.options.get("probe_c", 1.0), device=context.options.get("probe_device"),
        progress=context.progress)


# Replaces the scikit-learn-only registration of ``probe``: the method keeps its name and
# tables, and ``options["probe_backend"]`` chooses the implementation.
register_method(MethodSpec(
    name=METHOD, score=_score_probe,
    summary="held-out accuracy of a linear probe, folds grouped by story",
    cost="one logistic regression per layer, step and fold (plus the control task), "
         "fitted in batches with torch unless probe_backend is sklearn"))
