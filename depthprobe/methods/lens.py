"""The logit lens: each layer's residual read through the model's own final norm and unembedding.

:class:`Lens` is the small base that the logit lens and the tuned lens share: it maps a
residual at layer ``l`` to next-token logits. The logit lens applies the final norm, the
unembedding, the logit scale and the soft-capping exactly as the model does after its last
block, so at layer ``L`` it returns the model's own logits.

Scores of the ``lens`` method, per readout and layer, from the residuals the run captured
at the readouts:

* ``p_class``: the answer token's probability among the class answer tokens (softmax over
  those tokens only), ``p_vocab``: its probability over the whole vocabulary;
* ``rank``: its rank over the whole vocabulary (0 = the top token);
* ``top1_class``: 1 if the answer is the most likely of the class answer tokens, else 0;
  ``top1_vocab``: 1 if it is the top token of the whole vocabulary (precision@1).

The per-readout score that depth reads is ``top1_class``; chance is the majority-class
share at each step, as for the probe. Depth rule: the resolution depth is the first layer
from which the top-1 accuracy stays at or above the threshold through the last layer
(``persist=None``), because the logit lens is expected to keep the answer once the layers
have written it in vocabulary space.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..capture import capture_residuals
from ..models.layout import unembed_residual
from .answers import (answer_token_scores, class_answer_tokens, majority_chance,
                      readout_tables)
from .base import MethodSpec, register_method
from .transformer_lens import as_loaded_model

logger = logging.getLogger(__name__)

METHOD = "lens"
LENS_DEPTH_RULE = {"persist": None}
DETAIL_COLUMNS = ["readout_id", "layer", "p_class", "p_vocab", "rank", "top1_class",
                  "top1_vocab"]


class Lens(ABC):
    """Maps the residual at a layer to next-token logits through a model's unembedding."""

    method_name = "lens"

    def __init__(self, loaded):
        self.loaded = as_loaded_model(loaded)
        self.n_layers = self.loaded.layout.n_layers
        self.loaded.layout.require_unembed(self.method_name)
        self._unembed = unembed_residual(self.loaded.layout)
        reference = next(self.loaded.layout.final_norm.parameters(), None)
        if reference is None:
            reference = next(self.loaded.model.parameters())
        self.device, self.dtype = reference.device, next(self.loaded.model.parameters()).dtype

    @abstractmethod
    def transform(self, residual: Float[Tensor, "... d_model"], layer: int
                  ) -> Float[Tensor, "... d_model"]:
        """Map a residual at ``layer`` to the space the final norm expects."""

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it lies in ``0..L``, else raise ``ValueError``."""
        return self.loaded.layout.check_layer(layer)

    def logits(self, residual: Float[Tensor, "... d_model"], layer: int
               ) -> Float[Tensor, "... vocab"]:
        """Return the lens's next-token logits for residuals at ``layer``, in the model's dtype."""
        self.check_layer(layer)
        residual = residual.to(self.device, self.dtype)
        return self._unembed(self.transform(residual, layer).to(self.dtype))


class LogitLens(Lens):
    """The logit lens: the identity map before the model's final norm and unembedding."""

    method_name = "logit lens"

    def transform(self, residual, layer):
        self.check_layer(layer)
        return residual


@torch.no_grad()
def lens_details(lens: Lens, features: Float[Tensor, "readouts layers d_model"],
                 layers: Sequence[int], answers: Sequence[int], class_tokens: Sequence[int],
                 chunk: int = 256, progress: bool = True, desc: str = "lens") -> pd.DataFrame:
    """Score each readout's answer token under ``lens`` at every layer.

    ``answers[i]`` is the class label of readout ``i`` and ``class_tokens[k]`` the token
    that names class ``k``. Returns one row per (readout, layer) with ``p_class``,
    ``p_vocab``, ``rank``, ``top1_class`` and ``top1_vocab`` (see the module docstring).
    """
    if features.shape[1] != len(layers):
        raise ValueError(f"features hold {features.shape[1]} layers but {len(layers)} layer "
                         f"indices were given; pass one index per feature column.")
    answers = np.asarray(answers)
    n = features.shape[0]
    frames = []
    for column, layer in enumerate(tqdm(layers, desc=desc, unit="layer", disable=not progress)):
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = lens.logits(features[start:stop, column], layer)
            scores = answer_token_scores(logits, answers[start:stop], class_tokens)
            frames.append(pd.DataFrame(dict(readout_id=np.arange(start, stop), layer=layer,
                                            **scores)))
    return pd.concat(frames, ignore_index=True)[DETAIL_COLUMNS]


def details_to_matrix(details: pd.DataFrame, column: str, n_readouts: int,
                      layers: Sequence[int]) -> np.ndarray:
    """Pivot a detail table into a (readouts, layers) array of one column."""
    grid = details.pivot(index="readout_id", columns="layer", values=column)
    grid = grid.reindex(index=range(n_readouts), columns=list(layers))
    return grid.to_numpy(dtype=float)


@torch.no_grad()
def top_tokens(loaded, text: str, k: int = 5, layers: Sequence[int] | None = None,
               lens: Lens | None = None) -> pd.DataFrame:
    """Return the lens's top ``k`` next tokens at every position and layer of ``text``.

    One row per (position, layer, rank) with the position's own token, the predicted
    token's id and text, and its probability over the vocabulary.
    """
    loaded = as_loaded_model(loaded)
    model, tokenizer, layout = loaded
    layers = list(range(layout.n_layers + 1)) if layers is None else list(layers)
    for layer in layers:
        layout.check_layer(layer)
    if k < 1:
        raise ValueError(f"k (tokens per layer) must be 1 or more, got {k}.")
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError("The text is empty after tokenization; give some text.")
    lens = lens or LogitLens(loaded)
    features = capture_residuals(model, layout, [ids], [list(range(len(ids)))], layers=layers,
                                 pad_token_id=tokenizer.pad_token_id or 0, progress=False)
    rows = []
    for column, layer in enumerate(layers):
        probs = torch.softmax(lens.logits(features[:, column], layer).float(), dim=-1).cpu()
        values, indices = probs.topk(k, dim=-1)
        for position, token in enumerate(ids):
            for rank in range(k):
                predicted = int(indices[position, rank])
                rows.append(dict(position=position, token=tokenizer.decode([token]),
                                 layer=layer, rank=rank, token_id=predicted,
                                 predicted=tokenizer.decode([predicted]),
                                 probability=float(values[position, rank])))
    return pd.DataFrame(rows)


def score_with_lens(context, lens: Lens, method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a run's captured readouts with ``lens``; shared by the lens methods."""
    if context.features is None:
        raise ValueError(f"The {method} method reads captured residuals, but the run "
                         f"captured none.")
    class_tokens = class_answer_tokens(context.task, context.text_examples,
                                       lens.loaded.tokenizer, method)
    details = lens_details(lens, context.features, context.layers, context.labels,
                           class_tokens, progress=context.progress, desc=method)
    hits = details_to_matrix(details, "top1_class", len(context.labels), context.layers)
    logger.info("%s: mean answer rank over the vocabulary at the last layer: %.1f", method,
                details[details["layer"] == context.layers[-1]]["rank"].mean())
    return readout_tables(method, hits, context.layers, context.steps, context.groups,
                          majority_chance(context.labels, context.steps))


def _score_with_logit_lens(context) -> tuple[pd.DataFrame, pd.DataFrame]:
    return score_with_lens(context, LogitLens(context.loaded), METHOD)


register_method(MethodSpec(
    name=METHOD, score=_score_with_logit_lens,
    summary="logit lens: is the answer token the top class token at each layer",
    depth_rule=LENS_DEPTH_RULE, needs_unembed=True,
    cost="one unembedding per readout and layer on the captured residuals"))
