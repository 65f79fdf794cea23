"""The token that names each class, and tidy tables from per-readout scores.

The lens, Patchscope and interchange methods score a readout by what the model would
say next, so they need the token that names each value of the state. A task states it
through its behaviour queries: each query's ``choices`` are the answers, and its
``answer`` indexes the right one. When the choices are the same for every query, one per
class, and each query's answer equals the label of the readout at its step, the first
token of choice ``k`` names class ``k``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..scores import make_readout_scores, make_scores
from ..tasks.base import Task, TextExample
from .behaviour import choice_token_ids


def class_answer_tokens(task: Task, text_examples: Sequence[TextExample], tokenizer,
                        method: str) -> list[int]:
    """Return the first token id of each class's answer, indexed by label.

    Raises ``ValueError`` naming ``method`` and the task when the task's behaviour queries
    do not name its classes (no queries, per-example choices, or answers that are not
    the readout labels).
    """
    reason = (f"the {method} method reads the token that names each class from the task's "
           f"behaviour queries")
    choices = None
    for example in text_examples:
        labels = {readout.step: readout.label for readout in example.readouts}
        for query in task.behaviour_queries(example):
            if choices is None:
                choices = list(query.choices)
            if list(query.choices) != choices:
                raise ValueError(
                    f"Task {task.name!r} asks with different answers per example "
                    f"({choices} and {list(query.choices)}), but {reason}, which must be the "
                    f"same for every example; use the probe for this task.")
            if query.step in labels and labels[query.step] != query.answer:
                raise ValueError(
                    f"Task {task.name!r} has a behaviour query at step {query.step} whose "
                    f"answer ({query.answer}) is not the readout's label "
                    f"({labels[query.step]}), but {reason}; use the probe for this task.")
    if choices is None:
        raise ValueError(
            f"Task {task.name!r} has no behaviour queries, but {reason}; use the probe for "
            f"this task.")
    if len(choices) != task.n_classes:
        raise ValueError(
            f"Task {task.name!r} has {task.n_classes} classes but its behaviour queries "
            f"offer {len(choices)} answers ({choices}), and {reason}; use the probe for this "
            f"task.")
    return choice_token_ids(tokenizer, choices)


def answer_token_scores(logits: Float[Tensor, "n vocab"], answers: Sequence[int],
                        class_tokens: Sequence[int]) -> dict[str, np.ndarray]:
    """Score the answer token of each row of next-token logits.

    ``answers[i]`` is row ``i``'s class and ``class_tokens[k]`` the token naming class
    ``k``. Returns arrays ``p_class`` (the answer's probability among the class tokens),
    ``p_vocab`` (its probability over the vocabulary), ``rank`` (its rank over the
    vocabulary, 0 = top), ``top1_class`` (1.0 if it is the top class token) and
    ``top1_vocab`` (1.0 if it is the top token of the vocabulary, precision@1).
    """
    logits = logits.float().cpu()
    answers = torch.as_tensor(np.asarray(answers), dtype=torch.long)
    class_ids = torch.as_tensor(list(class_tokens), dtype=torch.long)
    answer_ids = class_ids[answers]
    answer_logit = logits.gather(1, answer_ids[:, None])[:, 0]
    class_logits = logits[:, class_ids]
    rank = (logits > answer_logit[:, None]).sum(-1)
    return dict(
        p_class=torch.softmax(class_logits, dim=-1).gather(1, answers[:, None])[:, 0].numpy(),
        p_vocab=torch.softmax(logits, dim=-1).gather(1, answer_ids[:, None])[:, 0].numpy(),
        rank=rank.numpy(),
        top1_class=(class_logits.argmax(-1) == answers).float().numpy(),
        top1_vocab=(rank == 0).float().numpy())


def majority_chance(labels: np.ndarray, steps: np.ndarray) -> dict[int, float]:
    """Return, per step, the share of the most frequent label (the majority-class score)."""
    return {int(step): float(np.bincount(labels[steps == step]).max() / np.sum(steps == step))
            for step in np.unique(steps)}


def readout_tables(method: str, values: np.ndarray, layers: Sequence[int], steps: np.ndarray,
                   groups: np.ndarray, chance: dict[int, float],
                   readout_ids: np.ndarray | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn per-readout scores ``values[i, l]`` into the scores and per-readout tables.

    ``values`` has one row per readout and one column per entry of ``layers``; rows with
    NaN are scores the method could not compute and are left out. ``spread`` is the
    standard deviation over readouts, and ``control`` is NaN (these methods have no
    control task).
    """
    values = np.asarray(values, dtype=float)
    readout_ids = np.arange(len(values)) if readout_ids is None else np.asarray(readout_ids)
    rows, per_readout = [], []
    for step in np.unique(steps):
        index = np.flatnonzero(steps == step)
        for column, layer in enumerate(layers):
            scores = values[index, column]
            scored = ~np.isnan(scores)
            if not scored.any():
                continue
            rows.append(dict(method=method, layer=int(layer), step=int(step),
                             score=float(scores[scored].mean()),
                             spread=float(scores[scored].std()), chance=chance[int(step)],
                             control=np.nan, count=int(scored.sum())))
            per_readout.append(pd.DataFrame(dict(
                method=method, readout_id=readout_ids[index][scored], group=groups[index][scored],
                step=int(step), layer=int(layer), score=scores[scored])))
    if not rows:
        raise ValueError(f"The {method} method could not score any readout.")
    return make_scores(rows), make_readout_scores(pd.concat(per_readout, ignore_index=True))
