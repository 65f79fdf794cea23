"""Many standardized logistic regressions fitted at once with torch, on CPU or GPU.

:class:`BatchedLinearProbe` fits the same model as :class:`~depthprobe.methods.probe.LinearProbe`
(scikit-learn's ``LogisticRegression`` with the ``lbfgs`` solver on features standardized
inside each training fold), for every (layer, fold, label set) in one go. Each problem
minimises

    sum over training rows of the log-loss  +  0.5 / C * ||W||^2

on its standardized features, with the intercept unpenalised. As in scikit-learn, a
problem whose training fold contains two classes is a binary logistic regression: one
weight vector, with the first class's logit fixed at 0. A problem with three or more
classes is multinomial, with a weight vector per class. Classes missing from the training
fold are never predicted.

The optimiser is a preconditioned L-BFGS with a backtracking line search, run per problem
but computed for all problems with batched matrix products. A problem stops when the
largest entry of its gradient, divided by its number of training rows, falls to ``tol``
(the criterion of scikit-learn's ``lbfgs``) or its line search makes no progress.
"""

from __future__ import annotations

import logging

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .logistic_objectives import PrimalObjective, Problems, dot

logger = logging.getLogger(__name__)

_MIN_SCALE = 1e-5  # as scikit-learn's StandardScaler, a zero-variance feature is unscaled
_ARMIJO = 1e-4  # sufficient-decrease constant of the line search
_MAX_BACKTRACKS = 20
_LOSS_ROUNDING = 1e-6  # relative change of a float32 loss that counts as rounding
_MAX_FLAT = 5  # iterations without a lower loss after which a problem has stalled
_COMPACT_BELOW = 0.75  # drop finished layers once the active ones are this fraction or less


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
        problems = self._encode_labels(labels, train, X.dtype)
        X = self._standardize(X, problems)
        objective = PrimalObjective.build(problems, X, self.fold_mean_, self.fold_scale_,
                                          self.preconditioner_rank)

        theta, self.n_iter_, self.converged_ = _minimise(
            objective, problems.n_train, self.max_iter, self.tol, self.history)
        self.coef_, self.intercept_ = objective.to_primal(theta)
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
        objective = PrimalObjective(self._problems, X, 1.0 / self.fold_scale_,
                                    self.fold_mean_ / self.fold_scale_)
        theta = torch.cat([self.coef_, self.intercept_[..., None]], -1)
        encoded = objective.logits(theta).argmax(-1)  # (layers, rows, folds, sets)
        encoded = encoded.permute(0, 2, 3, 1)  # (layers, folds, sets, rows)
        sets = torch.arange(encoded.shape[2], device=encoded.device)[None, None, :, None]
        return self.classes_[sets, encoded]

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

    def _encode_labels(self, labels: Tensor, train: Tensor, dtype: torch.dtype) -> Problems:
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
        self.present_ = present
        self._problems = Problems.build(present, onehot.permute(1, 0, 2).to(dtype),
                                        train.T.to(dtype), self.C)
        return self._problems

    def _standardize(self, X: Tensor, problems: Problems) -> Tensor:
        # Standardizing by all rows first keeps the per-fold standardization, which is done
        # through the weights, well conditioned in float32. The two compose to exactly the
        # per-fold standardization.
        self.global_mean_ = X.mean(1)  # (layers, d_model)
        scale = X.std(1, correction=0)
        self.global_scale_ = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
        X = (X - self.global_mean_[:, None]) / self.global_scale_[:, None]

        weights = problems.train / problems.n_train  # (rows, folds)
        mean = torch.einsum("nf,lnd->lfd", weights, X)
        var = torch.einsum("nf,lnd->lfd", weights, X * X) - mean * mean
        std = var.clamp(min=0).sqrt()
        self.fold_mean_ = mean  # (layers, folds, d_model), in globally standardized units
        self.fold_scale_ = torch.where(std > _MIN_SCALE, std, torch.ones_like(std))
        return X


def _minimise(objective, n_train: Tensor, max_iter: int, tol: float, history_size: int):
    """Run L-BFGS on every problem of ``objective``; return parameters, iterations, and
    whether each problem stopped before ``max_iter``.

    Layers whose problems have all stopped are dropped from the computation once the
    active layers are few enough, so late iterations cost less.
    """
    theta = objective.zeros()
    final = theta.clone()
    n_iter = torch.zeros(theta.shape[:3], dtype=torch.long, device=theta.device)
    stopped = torch.zeros_like(n_iter, dtype=torch.bool)
    layer_ids = torch.arange(theta.shape[0], device=theta.device)

    def small(gradient: Tensor) -> Tensor:
        return objective.gradient_size(gradient) / n_train[None, :, None] <= tol

    loss, grad = objective.loss_and_grad(theta)
    active = ~small(grad)
    flat = torch.zeros_like(n_iter)  # iterations in a row without a lower loss
    history = _History(history_size)
    for _ in range(max_iter):
        if not active.any():
            break
        direction = history.apply(grad, objective.precondition).neg_()
        uphill = dot(grad, direction) >= 0
        if uphill.any():  # the curvature pairs mislead: fall back to steepest descent
            direction = torch.where(uphill[..., None, None], -grad, direction)
        direction.mul_(active[..., None, None])

        new_theta, new_loss, new_grad, accepted = _line_search(
            objective, theta, loss, grad, direction, dot(grad, direction), active)
        history.add(new_theta - theta, new_grad - grad, accepted & active)
        # A problem whose loss stops going down has reached float32 precision: it stalled.
        flat = torch.where(new_loss < loss, torch.zeros_like(flat), flat + 1)
        stalled = active & (~accepted | (flat >= _MAX_FLAT))
        theta, loss, grad = new_theta, new_loss, new_grad
        n_iter[layer_ids] += active.long()
        active = active & ~small(grad) & ~stalled

        finished = ~active.any(-1).any(-1)
        if finished.any() and (~finished).sum() <= _COMPACT_BELOW * len(layer_ids):
            # Every problem of a finished layer stopped before max_iter.
            final[layer_ids[finished]] = theta[finished]
            stopped[layer_ids[finished]] = True
            keep = ~finished
            layer_ids, objective = layer_ids[keep], objective.select(keep)
            theta, loss, grad, active = theta[keep], loss[keep], grad[keep], active[keep]
            flat = flat[keep]
            history.select(keep)

    final[layer_ids] = theta
    stopped[layer_ids] = small(grad) | ~active
    return final, n_iter, stopped


def _line_search(objective, theta, loss, grad, direction, slope, active):
    """Backtrack each problem's step until the step is acceptable.

    A step is acceptable when the loss decreases enough (the Armijo condition). Near the
    optimum, float32 losses no longer resolve the decrease, so a step is also acceptable
    when its loss is within rounding of the old one and the slope along the direction has
    not turned steeply uphill (an approximate Wolfe condition).
    A problem with no acceptable step after the last backtrack is returned as not
    accepted: it stalled.
    """
    step = torch.ones(loss.shape, dtype=theta.dtype, device=theta.device)
    accepted = ~active
    slack = _LOSS_ROUNDING * loss.abs()
    for _ in range(_MAX_BACKTRACKS):
        trial = theta + step[..., None, None] * direction
        trial_loss, trial_grad = objective.loss_and_grad(trial)
        armijo = trial_loss <= loss + _ARMIJO * step * slope
        approximate = (trial_loss <= loss + slack) & (dot(trial_grad, direction) <= -0.8 * slope)
        accepted = accepted | (active & (armijo | approximate))
        if accepted.all():
            break
        step = torch.where(accepted, step, step * 0.5)
    moved = accepted & active
    wide = moved[..., None, None]
    return (torch.where(wide, trial, theta), torch.where(moved, trial_loss, loss),
            torch.where(wide, trial_grad, grad), accepted)


class _History:
    """The L-BFGS correction pairs of every problem, and the two-loop recursion."""

    def __init__(self, size: int):
        self.size = size
        self.steps: list[Tensor] = []  # s = theta_new - theta_old
        self.changes: list[Tensor] = []  # y = grad_new - grad_old
        self.rho: list[Tensor] = []  # 1 / (s . y), 0 where the pair is not used

    def add(self, step: Tensor, change: Tensor, moved: Tensor) -> None:
        curvature = dot(step, change)
        usable = moved & (curvature > 1e-10 * dot(change, change).clamp(min=1e-30))
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
            alpha = r * dot(s, q)
            q.addcmul_(y, alpha[..., None, None], value=-1.0)
            alphas.append(alpha)
        q = precondition(q)
        for s, y, r, alpha in zip(self.steps, self.changes, self.rho, reversed(alphas)):
            beta = r * dot(y, q)
            q.addcmul_(s, (alpha - beta)[..., None, None])
        return q
