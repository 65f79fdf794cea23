"""The objective that :class:`~depthprobe.methods.logistic_torch.BatchedLinearProbe` minimises.

:class:`PrimalObjective` contains every (layer, fold, label set) problem at once. The
weights ``W`` act on a layer's ``d_model`` standardized features, which all folds share,
and each fold's own standardization is applied through its weights. Parameters are laid out as
(layers, folds, sets, classes, d_model + 1), the last entry of each row being the
intercept, so that per-problem reductions run over contiguous memory. The objective
provides the loss and gradient of every problem, a preconditioner (an approximate inverse
Hessian at ``W = 0``) and the size of a gradient for the stopping rule.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

_MIN_EIGENVALUE = 1e-4  # eigenpairs below this fraction of the largest are left out


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Return the inner product of each problem's parameters: (layers, folds, sets)."""
    return torch.linalg.vecdot(a.flatten(3), b.flatten(3))


def _stable_eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecompose a batch of Gram matrices, also when some are degenerate.

    Identical rows (every readout the same token at layer 0, say) can make LAPACK's solver
    fail to converge. The retry adds a tiny multiple of the identity in float64; this only
    shapes the preconditioner, so the fitted probes solve the same objective.
    """
    try:
        return torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        wide = gram.double()
        size = wide.shape[-1]
        jitter = 1e-8 * wide.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
        wide = wide + jitter[:, None, None] * torch.eye(size, dtype=wide.dtype, device=wide.device)
        values, vectors = torch.linalg.eigh(wide)
        return values.to(gram.dtype), vectors.to(gram.dtype)


@dataclass
class Problems:
    """The classes, folds and class structure that the problems of every layer share."""

    present: Tensor  # (folds, sets, classes): the class occurs in the fold's training rows
    free: Tensor  # (folds, sets, classes, 1): 1 where the class has weights, else 0
    multinomial: Tensor  # (folds, sets, 1, 1): 1 for three or more classes, else 0
    curvature: Tensor  # (folds, sets): Hessian factor of the log-loss at W = 0
    onehot: Tensor  # (rows, sets, classes)
    train: Tensor  # (rows, folds): 1 for a training row of the fold
    n_train: Tensor  # (folds,)
    C: float

    @classmethod
    def build(cls, present: Tensor, onehot: Tensor, train: Tensor, C: float) -> "Problems":
        dtype = onehot.dtype
        n_present = present.sum(-1)  # (folds, sets)
        first = present & (present.cumsum(-1) == 1)
        # A binary problem keeps its first class's logit at 0; absent classes get no weights.
        free = present & ~(first & (n_present == 2)[..., None])
        # At W = 0 the classes are equally likely: the log-loss has curvature p (1 - p) =
        # 1/4 for a binary problem and 1/K on the class-centred part of a multinomial one.
        curvature = torch.where(n_present == 2, 0.25, 1.0 / n_present.clamp(min=1))
        return cls(present, free[..., None].to(dtype), (n_present >= 3)[..., None, None]
                   .to(dtype), curvature.to(dtype), onehot, train, train.sum(0), C)

    def centre(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Split multinomial weights (..., F, S, K, n) into their class mean and the rest.

        Adding the same vector to every class's weights leaves the probabilities alone, so
        that direction has only the penalty's curvature.
        """
        present = self.present[..., None].to(weights.dtype)
        class_mean = ((weights * present).sum(-2, keepdim=True)
                      / present.sum(-2, keepdim=True).clamp(min=1)) * self.multinomial
        return (weights - class_mean).mul_(present), class_mean

    def inverse_intercept_curvature(self) -> Tensor:
        return (1.0 / (self.curvature * self.n_train[:, None]).clamp(min=1e-12))[..., None]


def _select(instance, keep: Tensor):
    """Return a copy of a dataclass with its per-layer tensors sliced by ``keep``."""
    values = {}
    for field in fields(instance):
        value = getattr(instance, field.name)
        values[field.name] = value[keep] if isinstance(value, Tensor) else value
    return type(instance)(**values)


@dataclass
class PrimalObjective:
    """Weights on the standardized features; the folds of a layer share its features."""

    problems: Problems
    X: Tensor  # (layers, rows, d_model), standardized over all rows
    inverse_scale: Tensor  # (layers, folds, d_model): 1 / the fold's standard deviation
    shift: Tensor  # (layers, folds, d_model): the fold's mean / its standard deviation
    basis: Tensor | None = None  # (layers, d_model, k): top eigenvectors of X'X
    inverse_top: Tensor | None = None  # (layers, folds, sets, k): preconditioner on the basis
    inverse_rest: Tensor | None = None  # (layers, folds, sets): preconditioner off it

    @classmethod
    def build(cls, problems: Problems, X: Tensor, fold_mean: Tensor, fold_scale: Tensor,
              rank: int) -> "PrimalObjective":
        """Prepare the objective and its preconditioner.

        The preconditioner approximates the Hessian of a problem's weights at ``W = 0``,
        ``c * X'X + I / C``. ``X'X`` comes from the top ``rank`` eigenpairs of a layer's
        rows, scaled to each fold's training rows and standardization. The rest of the
        spectrum is replaced by the mean of the remaining eigenvalues.
        """
        n_layers, n_rows, d_model = X.shape
        if n_rows <= d_model:
            values, vectors = _stable_eigh(torch.bmm(X, X.transpose(1, 2)))
        else:
            values, vectors = _stable_eigh(torch.bmm(X.transpose(1, 2), X))
        values, vectors = values.flip(-1).clamp(min=0), vectors.flip(-1)
        full_rank = min(n_rows, d_model)
        k = min(rank, full_rank)
        top_values, top_vectors = values[:, :k], vectors[:, :, :k]
        if n_rows <= d_model:
            # Eigenvectors of X X^T map to those of X^T X through X^T u / sqrt(lambda).
            top_vectors = torch.bmm(X.transpose(1, 2), top_vectors)
            top_vectors = top_vectors / top_values.clamp(min=1e-12).sqrt()[:, None]
        top_vectors = top_vectors * (top_values > _MIN_EIGENVALUE * values[:, :1])[:, None]
        remaining = values[:, k:full_rank]
        rest = remaining.mean(-1) if remaining.shape[-1] else torch.zeros_like(values[:, 0])

        scale = problems.curvature * (problems.n_train / n_rows)[:, None]  # (folds, sets)
        inverse_top = 1.0 / (scale[..., None] * top_values[:, None, None] + 1.0 / problems.C)
        inverse_rest = 1.0 / (scale * rest[:, None, None] + 1.0 / problems.C)
        return cls(problems, X, 1.0 / fold_scale, fold_mean / fold_scale, top_vectors,
                   inverse_top, inverse_rest)

    def zeros(self) -> Tensor:
        n_layers, d_model = self.X.shape[0], self.X.shape[2]
        shape = (n_layers, *self.problems.present.shape, d_model + 1)
        return torch.zeros(shape, dtype=self.X.dtype, device=self.X.device)

    def select(self, keep: Tensor) -> "PrimalObjective":
        return _select(self, keep)

    def to_primal(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta[..., :-1], theta[..., -1]

    def gradient_size(self, grad: Tensor) -> Tensor:
        return grad.abs().flatten(3).amax(-1)

    def logits(self, theta: Tensor) -> Tensor:
        """Return masked logits (layers, rows, folds, sets, classes) for all problems."""
        n_layers, n_rows, d_model = self.X.shape
        weights, intercept = theta[..., :-1], theta[..., -1]
        scaled = weights * self.inverse_scale[:, :, None, None]  # (layers, F, S, K, d)
        offset = (weights * self.shift[:, :, None, None]).sum(-1)  # (layers, F, S, K)
        logits = torch.bmm(self.X, scaled.view(n_layers, -1, d_model).transpose(1, 2))
        logits = logits.view(n_layers, n_rows, *theta.shape[1:4])
        logits += (intercept - offset)[:, None]
        return logits.masked_fill_(~self.problems.present, float("-inf"))

    def loss_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Return each problem's objective (layers, folds, sets) and its gradient."""
        problems = self.problems
        n_layers, n_rows, d_model = self.X.shape
        log_prob = self.logits(theta).log_softmax(-1)
        weights = theta[..., :-1]
        train = problems.train[None, :, :, None]  # (1, rows, folds, 1)
        onehot = problems.onehot[:, None]  # (rows, 1, sets, classes)

        picked = (log_prob.masked_fill(~problems.present, 0.0) * onehot).sum(-1)
        # Sums in float64 keep small decreases of the loss visible to the line search.
        data_loss = -(picked * train).sum(1, dtype=torch.float64)
        penalty = (weights * weights).flatten(3).sum(-1, dtype=torch.float64)
        loss = data_loss + (0.5 / problems.C) * penalty  # (layers, F, S)

        residual = log_prob.exp_().sub_(onehot).mul_(train[..., None])
        grad_intercept = residual.sum(1)  # (layers, F, S, K)
        grad_scaled = torch.bmm(residual.view(n_layers, n_rows, -1).transpose(1, 2), self.X)
        grad = torch.empty_like(theta)
        torch.mul(grad_scaled.view(weights.shape), self.inverse_scale[:, :, None, None],
                  out=grad[..., :-1])
        grad[..., :-1] -= self.shift[:, :, None, None] * grad_intercept[..., None]
        grad[..., :-1] += weights * (1.0 / problems.C)
        grad[..., -1] = grad_intercept
        return loss, grad.mul_(problems.free)

    def precondition(self, direction: Tensor) -> Tensor:
        """Apply the approximate inverse Hessian to ``direction`` (layers, F, S, K, d+1)."""
        problems = self.problems
        n_layers, d_model = self.X.shape[0], self.X.shape[2]
        centred, class_mean = problems.centre(direction[..., :-1])
        # The fold's standardization divides each feature by the fold's standard
        # deviation, which scales the Hessian by the same factor on each side.
        fold_scale = 1.0 / self.inverse_scale[:, :, None, None]
        centred *= fold_scale

        coords = torch.bmm(centred.view(n_layers, -1, d_model), self.basis)  # (L, FSK, k)
        coords = coords.view(*centred.shape[:4], -1)
        coords *= (self.inverse_top - self.inverse_rest[..., None])[:, :, :, None]
        result = torch.empty_like(direction)
        back = torch.bmm(coords.view(n_layers, -1, coords.shape[-1]), self.basis.transpose(1, 2))
        result[..., :-1] = back.view(centred.shape)
        result[..., :-1] += centred * self.inverse_rest[..., None, None]
        result[..., :-1] *= fold_scale
        result[..., :-1] += class_mean * problems.C
        result[..., -1] = direction[..., -1] * problems.inverse_intercept_curvature()
        return result.mul_(problems.free)
