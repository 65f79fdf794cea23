"""Activation patching (interchange): how much a site carries the state the model answers with.

A base prompt and a counterfactual prompt of the same token length differ in one earlier
update, so their answers differ. Copying the residual at a site from the counterfactual
run into the base run moves the base answer toward the counterfactual one by the
normalised logit difference

    (LD_patched - LD_base) / (LD_counterfactual - LD_base),

with ``LD`` the log probability of the base answer minus that of the counterfactual
answer at the prompt's last position: 0 means no effect, 1 a full switch. Pairs whose
``LD_counterfactual`` equals ``LD_base`` cannot be normalised and score NaN.

Scores of the ``interchange`` method: for each readout the task has a behaviour query for
(in the base text and in its counterfactual, the task's ``TextExample.counterfactual``),
the readout's position in the query prompt is patched at every layer ``0..L``, one layer
at a time, and the normalised logit difference is the per-readout score. Chance is 0.
Depth rule: the run's own (threshold relative to the best layer, held for ``persist``
layers), because the effect at one position can fall again at deep layers once later
positions have read the state. Readouts whose two prompts tokenize to different lengths
are skipped, with a warning giving their number.

Backpatching (:func:`backpatch`) writes a later layer's residual at a position into an
earlier layer at the same position of the same prompt, and counts how often that turns a
wrong answer right.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..capture import capture_residuals
from ..sites import Site
from ..tasks.base import BehaviourQuery
from .answers import readout_tables
from .base import MethodSpec, register_method
from .behaviour import choice_token_ids
from .patching import PatchedPrompt, run_patched
from .transformer_lens import as_loaded_model

logger = logging.getLogger(__name__)

METHOD = "interchange"


def _token_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    return list(prompt) if not isinstance(prompt, str) else tokenizer(prompt)["input_ids"]


def _answer_id(tokenizer, answer: str | int) -> int:
    if isinstance(answer, int):
        return answer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The answer {answer!r} has no tokens; give a word such as ' A'.")
    return ids[0]


def logit_difference(logits: Tensor, base_token: int, counterfactual_token: int) -> Tensor:
    """Return ``log p(base answer) - log p(counterfactual answer)`` per row of logits."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs[:, base_token] - log_probs[:, counterfactual_token]


@dataclass
class InterchangeResult:
    """Logit differences of a base run, a counterfactual run and patched base runs.

    ``patched[k]`` is the logit difference after patch set ``k``, and ``normalized[k]``
    its normalised logit difference (NaN when the two unpatched runs tie).
    """

    ld_base: float
    ld_counterfactual: float
    patched: np.ndarray
    normalized: np.ndarray


def _normalize(patched: np.ndarray, ld_base: float, ld_counterfactual: float) -> np.ndarray:
    span = ld_counterfactual - ld_base
    if span == 0:
        return np.full(len(patched), np.nan)
    return (patched - ld_base) / span


@torch.no_grad()
def interchange(loaded, base: str | Sequence[int], counterfactual: str | Sequence[int],
                base_answer: str | int, counterfactual_answer: str | int,
                patch_sets: Sequence[Sequence[Site]], source: str | Sequence[int] | None = None,
                batch_size: int = 16, progress: bool = False) -> InterchangeResult:
    """Patch each set of sites into the base run and measure the answer's move.

    Every site of ``patch_sets[k]`` is written, in one run, with the residual of the
    ``source`` run (default: the counterfactual) at that site. Prompts are strings or
    token id lists and must have the same number of tokens; answers are strings (their
    first token counts) or token ids. Site positions count from 0 in the prompt.

    NOTE: the source values come from a separate run of one prompt. Some architectures
    round differently in a batch of another size (by about 1e-6), so writing the base
    run's own values reproduces ``ld_base`` exactly only with ``batch_size=1``.
    """
    loaded = as_loaded_model(loaded)
    tokenizer, layout = loaded.tokenizer, loaded.layout
    base_ids = _token_ids(tokenizer, base)
    counterfactual_ids = _token_ids(tokenizer, counterfactual)
    source_ids = counterfactual_ids if source is None else _token_ids(tokenizer, source)
    for name, ids in (("counterfactual", counterfactual_ids), ("source", source_ids)):
        if len(ids) != len(base_ids):
            raise ValueError(
                f"The base prompt has {len(base_ids)} tokens but the {name} prompt has "
                f"{len(ids)}; interchange patching copies sites by position, so reword the "
                f"prompts to tokenize to the same length.")
    base_token = _answer_id(tokenizer, base_answer)
    counterfactual_token = _answer_id(tokenizer, counterfactual_answer)
    if base_token == counterfactual_token:
        raise ValueError(
            f"The base answer {base_answer!r} and the counterfactual answer "
            f"{counterfactual_answer!r} start with the same token ({base_token}), so their "
            f"logit difference is always 0; give answers that start with different tokens.")
    sites = sorted({site for patch_set in patch_sets for site in patch_set},
                   key=lambda s: (s.layer, s.position))
    for site in sites:
        layout.check_layer(site.layer)
        if not 0 <= site.position < len(base_ids):
            raise ValueError(
                f"Position {site.position} is outside the base prompt, which has "
                f"{len(base_ids)} tokens; use a position from 0 to {len(base_ids) - 1}.")

    values = _site_values(loaded, source_ids, sites)
    last = len(base_ids) - 1
    base_rows = [PatchedPrompt(base_ids, last)] + [
        PatchedPrompt(base_ids, last, [(site, values[site]) for site in patch_set])
        for patch_set in patch_sets]
    counterfactual_row = PatchedPrompt(counterfactual_ids, last)
    # The base runs share every token before the first patched position, so that prefix
    # runs once per batch. The counterfactual prompt differs earlier and runs on its own.
    prefix = min([last] + [site.position for site in sites])
    if prefix == 0:
        logits = run_patched(loaded, [base_rows[0], counterfactual_row] + base_rows[1:],
                             batch_size=batch_size, progress=progress, desc="interchange")
        logits = torch.cat([logits[:1], logits[2:], logits[1:2]])
    else:
        logits = torch.cat([
            run_patched(loaded, base_rows, batch_size=batch_size, progress=progress,
                        desc="interchange", shared_prefix=prefix),
            run_patched(loaded, [counterfactual_row])])
    differences = logit_difference(logits, base_token, counterfactual_token).numpy()
    ld_base, ld_counterfactual = float(differences[0]), float(differences[-1])
    patched = differences[1:-1].astype(float)
    return InterchangeResult(ld_base, ld_counterfactual, patched,
                             _normalize(patched, ld_base, ld_counterfactual))


def _site_values(loaded, ids: list[int], sites: Sequence[Site]) -> dict[Site, Tensor]:
    if not sites:
        return {}
    layers = sorted({site.layer for site in sites})
    positions = sorted({site.position for site in sites})
    captured = capture_residuals(loaded.model, loaded.layout, [ids], [positions], layers=layers,
                                 pad_token_id=loaded.tokenizer.pad_token_id or 0,
                                 progress=False)  # (positions, layers, d_model)
    return {site: captured[positions.index(site.position), layers.index(site.layer)]
            for site in sites}


def interchange_sweep(loaded, base: str | Sequence[int], counterfactual: str | Sequence[int],
                      base_answer: str | int, counterfactual_answer: str | int,
                      layers: Sequence[int] | None = None,
                      positions: Sequence[int] | None = None, batch_size: int = 16,
                      progress: bool = True) -> pd.DataFrame:
    """Patch one site at a time over layers and positions; return the effect per site.

    Returns one row per (layer, position) with the position's base token, the patched
    logit difference ``ld`` and the normalised logit difference ``normalized_ld``.
    Layers and positions default to all; negative positions count from the end.
    """
    loaded = as_loaded_model(loaded)
    tokenizer = loaded.tokenizer
    base_ids = _token_ids(tokenizer, base)
    n = len(base_ids)
    layers = list(range(loaded.layout.n_layers + 1)) if layers is None else list(layers)
    if positions is None:
        positions = list(range(n))
    else:
        for position in positions:
            if not -n <= position < n:
                raise ValueError(
                    f"Position {position} is outside the base prompt, which has {n} tokens; "
                    f"use 0 to {n - 1}, or -{n} to -1 to count from the end.")
        positions = [p % n for p in positions]
    sites = [Site(layer, position) for layer in layers for position in positions]
    result = interchange(loaded, base_ids, counterfactual, base_answer, counterfactual_answer,
                         [[site] for site in sites], batch_size=batch_size, progress=progress)
    return pd.DataFrame(dict(
        layer=[s.layer for s in sites], position=[s.position for s in sites],
        token=[tokenizer.decode([base_ids[s.position]]) for s in sites],
        ld=result.patched, normalized_ld=result.normalized))


def _prompt_position(tokenizer, prompt: str, char_end: int) -> int | None:
    """Return the token of ``prompt`` whose text ends at character ``char_end``."""
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and end == char_end:
            return position
    return None


@dataclass
class _ReadoutPair:
    readout_id: int
    base: BehaviourQuery
    counterfactual: BehaviourQuery
    position: int


def _readout_pairs(context, tokenizer) -> tuple[list[_ReadoutPair], int]:
    """Pair each readout's behaviour query with its counterfactual; count the skipped ones."""
    pairs, skipped, readout_id = [], 0, 0
    for example in context.text_examples:
        ids_by_step = {}
        for offset, readout in enumerate(example.readouts):
            ids_by_step.setdefault(readout.step, (readout_id + offset, readout))
        readout_id += len(example.readouts)
        if example.counterfactual is None:
            skipped += len(context.task.behaviour_queries(example))
            continue
        queries = context.task.behaviour_queries(example)
        others = context.task.behaviour_queries(example.counterfactual)
        for query, other in zip(queries, others):
            if query.step not in ids_by_step or query.step != other.step:
                skipped += 1
                continue
            index, readout = ids_by_step[query.step]
            position = _prompt_position(tokenizer, query.prompt, readout.span.end)
            same_length = (len(tokenizer(query.prompt)["input_ids"])
                           == len(tokenizer(other.prompt)["input_ids"]))
            if position is None or not same_length or query.answer == other.answer:
                skipped += 1
                continue
            pairs.append(_ReadoutPair(index, query, other, position))
    return pairs, skipped


def _score_with_interchange(context) -> tuple[pd.DataFrame, pd.DataFrame]:
    loaded = as_loaded_model(context.loaded)
    tokenizer = loaded.tokenizer
    if not any(example.counterfactual is not None for example in context.text_examples):
        raise ValueError(
            f"Task {context.task.name!r} builds no counterfactual examples, but the "
            f"{METHOD} method patches from a counterfactual run; use the probe or a lens "
            f"for this task.")
    pairs, skipped = _readout_pairs(context, tokenizer)
    if skipped:
        logger.warning("%s: skipped %d readouts without a same-length counterfactual query "
                       "with a different answer.", METHOD, skipped)
    if not pairs:
        raise ValueError(
            f"The {METHOD} method found no readout of task {context.task.name!r} with a "
            f"behaviour query whose counterfactual has the same token length and another "
            f"answer; use the probe or a lens for this task.")

    layers = context.layers
    values = np.full((len(context.labels), len(layers)), np.nan)
    for pair in tqdm(pairs, desc=METHOD, unit="readout", disable=not context.progress):
        choice_ids = choice_token_ids(tokenizer, pair.base.choices)
        result = interchange(
            loaded, pair.base.prompt, pair.counterfactual.prompt,
            choice_ids[pair.base.answer], choice_ids[pair.counterfactual.answer],
            [[Site(layer, pair.position)] for layer in layers],
            batch_size=max(context.batch_size, len(layers) + 2))
        values[pair.readout_id] = result.normalized
    scored = ~np.isnan(values).all(axis=1)
    chance = {int(step): 0.0 for step in np.unique(context.steps[scored])}
    return readout_tables(METHOD, values[scored], layers, context.steps[scored],
                          context.groups[scored], chance, np.flatnonzero(scored))


@torch.no_grad()
def backpatch(loaded, queries: Sequence[BehaviourQuery], pairs: Sequence[tuple[int, int]],
              positions: Sequence[int] | None = None, batch_size: int = 16,
              progress: bool = True) -> pd.DataFrame:
    """Write a later layer's residual into an earlier layer; count wrong answers it fixes.

    ``pairs`` are ``(source_layer, target_layer)`` with ``source_layer > target_layer``;
    ``positions[i]`` is the position patched in query ``i``'s prompt (default: its last
    token, negative counts from the end). The model's answer is its top choice among the
    query's answer tokens at the last position. Returns one row per pair with the number
    of queries answered wrong unpatched (``n_wrong``), of those answered right after the
    patch (``n_fixed``), their share (``fixed_fraction``), and the number of right
    answers the patch made wrong (``n_broken``).
    """
    loaded = as_loaded_model(loaded)
    model, tokenizer, layout = loaded
    for source_layer, target_layer in pairs:
        layout.check_layer(source_layer)
        layout.check_layer(target_layer)
        if source_layer <= target_layer:
            raise ValueError(
                f"Backpatching writes a later layer into an earlier one, but the pair "
                f"({source_layer}, {target_layer}) has source layer <= target layer; give "
                f"(source, target) with source > target.")
    encoded = [tokenizer(query.prompt)["input_ids"] for query in queries]
    if positions is None:
        positions = [len(ids) - 1 for ids in encoded]
    if len(positions) != len(queries):
        raise ValueError(f"Got {len(queries)} queries but {len(positions)} positions; give "
                         f"one position per query.")
    positions = [_resolved(p, len(ids), i) for i, (p, ids) in enumerate(zip(positions, encoded))]
    sources = sorted({s for s, _ in pairs})

    counts = {pair: dict(n_wrong=0, n_fixed=0, n_broken=0) for pair in pairs}
    for index in tqdm(range(len(queries)), desc="backpatch", unit="query", disable=not progress):
        query, ids, position = queries[index], encoded[index], positions[index]
        choice_ids = choice_token_ids(tokenizer, query.choices)
        captured = capture_residuals(model, layout, [ids], [[position]], layers=sources,
                                     pad_token_id=tokenizer.pad_token_id or 0,
                                     progress=False)[0]
        last = len(ids) - 1
        rows = [PatchedPrompt(ids, last)] + [
            PatchedPrompt(ids, last, [(Site(target, position), captured[sources.index(source)])])
            for source, target in pairs]
        logits = run_patched(loaded, rows, batch_size=batch_size,
                             shared_prefix=position)[:, choice_ids]
        right = (logits.argmax(-1) == query.answer).tolist()
        for pair, patched_right in zip(pairs, right[1:]):
            if not right[0]:
                counts[pair]["n_wrong"] += 1
                counts[pair]["n_fixed"] += int(patched_right)
            elif not patched_right:
                counts[pair]["n_broken"] += 1
    table = pd.DataFrame([dict(source_layer=s, target_layer=t, **counts[(s, t)])
                          for s, t in pairs])
    table["fixed_fraction"] = table["n_fixed"] / table["n_wrong"].where(table["n_wrong"] > 0)
    return table


def _resolved(position: int, n: int, index: int) -> int:
    if not -n <= position < n:
        raise ValueError(
            f"Position {position} is outside prompt {index}, which has {n} tokens; use 0 to "
            f"{n - 1}, or -{n} to -1 to count from the end.")
    return position % n


def backpatch_pairs(n_layers: int, stride: int = 4) -> list[tuple[int, int]]:
    """Return (source, target) pairs over every ``stride``-th layer, source above target."""
    if stride < 1:
        raise ValueError(f"stride must be 1 or more, got {stride}.")
    layers = list(range(0, n_layers + 1, stride))
    return [(source, target) for source in layers for target in layers if source > target]


register_method(MethodSpec(
    name=METHOD, score=_score_with_interchange,
    summary="activation patching from the counterfactual story at each readout and layer",
    needs_features=False,
    cost="one forward pass of the behaviour query per readout and layer"))
