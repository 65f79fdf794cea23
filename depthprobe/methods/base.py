"""The inputs every scoring method receives, and the method registry of ``depthprobe run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..sites import Example
from ..tasks.base import Task, TextExample


@dataclass
class MethodContext:
    """The inputs of one run that a method may score.

    ``features[i, l]`` is readout ``i``'s residual at layer ``layers[l]``; readouts are
    numbered in the order of ``examples`` and then of each example's readouts, and
    ``labels``, ``steps``, ``groups`` and ``control`` follow that order. ``loaded`` is
    the :class:`~depthprobe.models.LoadedModel` for methods that run the model again.
    """

    task: Task
    loaded: object
    text_examples: list[TextExample]
    examples: list[Example]
    features: torch.Tensor | None
    layers: list[int]
    labels: np.ndarray
    steps: np.ndarray
    groups: np.ndarray
    control: np.ndarray | None
    n_folds: int = 5
    batch_size: int = 8
    seed: int = 0
    progress: bool = True
    options: dict = field(default_factory=dict)


ScoreFunction = Callable[[MethodContext], "tuple[pd.DataFrame, pd.DataFrame]"]


@dataclass(frozen=True)
class MethodSpec:
    """A scoring method as registered for ``depthprobe run --methods``.

    ``score`` returns the tidy scores table and the per-readout table for the method.
    ``needs_features`` says whether it reads captured residuals (so the run captures them);
    ``depth_rule`` overrides fields of the run's :class:`~depthprobe.depth.DepthRule`, for
    methods whose scores need a different threshold; ``cost`` is one line for the help.
    ``needs_unembed`` says whether it reads logits through the model's unembedding, so a
    run rejects a model without one before capturing anything.
    """

    name: str
    score: ScoreFunction
    summary: str
    needs_features: bool = True
    depth_rule: dict = field(default_factory=dict)
    cost: str = ""
    needs_unembed: bool = False


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry under its name."""
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """Return a registered method; raise ``ValueError`` listing the names."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.")
    return METHODS[name]
