"""The model's own answers: does its next token name the right state?"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..capture.residuals import forward_for_capture, pad_batch
from ..tasks.base import BehaviourQuery


def choice_token_ids(tokenizer, choices: Sequence[str]) -> list[int]:
    """Return the first token id of each answer; raise if two answers share it."""
    ids = [tokenizer(choice, add_special_tokens=False)["input_ids"][0] for choice in choices]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"The answers {list(choices)} do not start with distinct tokens on this "
            f"tokenizer ({ids}); reword them so each starts with its own token."
        )
    return ids


@torch.no_grad()
def behaviour_answers(model, tokenizer, queries: Sequence[BehaviourQuery], batch_size: int = 8,
                      progress: bool = True) -> pd.DataFrame:
    """Score the model's next-token choice among each query's answers.

    Prompts are left-padded so the next-token logits sit at the last position, and only
    that position's logits are computed. Returns one row per query: ``step``, ``group``,
    ``answer``, ``predicted``, ``correct`` and ``p_answer`` (the right answer's share of
    the probability given to the answer tokens).
    """
    rows = []
    batches = [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for batch in tqdm(batches, desc="behaviour", unit="batch", disable=not progress):
        encoded = [tokenizer(q.prompt)["input_ids"] for q in batch]
        ids, mask, positions, _ = pad_batch(encoded, pad_id, side="left")
        logits = forward_for_capture(model, ids, mask, positions).logits[:, -1].float().cpu()
        for row, query in enumerate(batch):
            choice_ids = choice_token_ids(tokenizer, query.choices)
            probs = torch.softmax(logits[row, choice_ids], dim=-1)
            predicted = int(torch.argmax(probs))
            rows.append(dict(step=query.step, group=query.group, answer=query.answer,
                             predicted=predicted, correct=predicted == query.answer,
                             p_answer=float(probs[query.answer])))
    return pd.DataFrame(rows, columns=["step", "group", "answer", "predicted", "correct",
                                       "p_answer"])


def behaviour_by_step(answers: pd.DataFrame, n_choices: int) -> pd.DataFrame:
    """Summarise per step: accuracy, its standard error, count and chance (1/n_choices)."""
    grouped = answers.groupby("step")["correct"]
    table = grouped.agg(accuracy="mean", count="size").reset_index()
    table["stderr"] = np.sqrt(table["accuracy"] * (1 - table["accuracy"]) / table["count"])
    table["chance"] = 1.0 / n_choices
    return table
