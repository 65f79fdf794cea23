"""Patchscopes: decode a hidden state by writing it into a target prompt.

The residual at a source site (source prompt, position, layer) is written into a target
prompt at the placeholder's position and a target layer, and the model runs on. What it
predicts at the prompt's last position, the first generated one (and generates after
it, with the write kept in place), is what the state decodes to. Target prompts mark the
position to patch with ``{x}``, which is replaced by a filler text before tokenizing;
the write goes to the token that ends the filler. Built-in targets
(:data:`TARGET_PROMPTS`): ``identity`` and ``identity-lines`` (the identity prompt
``cat -> cat; 1135 -> 1135; hello -> hello; ?`` on one line or with its pairs on separate
lines) and ``description`` (a few-shot entity description). The built-in prompts end
with the separator after the placeholder (`` ->``, ``:``), so that the first generated
token is the decoded answer rather than the separator.

Scores of the ``patchscope`` method, per readout and layer: the residual the run captured
at the readout at layer ``l`` is written into the target prompt (``identity`` unless the
run option ``patchscope_target`` names another) at layer ``l``, and the first generated
position's logits are scored like the lens's (``p_class``, ``p_vocab``, ``rank``,
``top1_class``, ``top1_vocab``). The per-readout score that depth reads is ``top1_class``,
chance is the majority-class share per step, and the depth rule is the run's own (the
score must stay above the threshold for ``persist`` layers), because Patchscopes decode
worse again at the deepest layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..capture import capture_residuals
from ..sites import Site
from .answers import answer_token_scores, class_answer_tokens, majority_chance, readout_tables
from .base import MethodSpec, register_method
from .patching import PatchedPrompt, run_patched
from .transformer_lens import as_loaded_model

logger = logging.getLogger(__name__)

METHOD = "patchscope"
PLACEHOLDER = "{x}"


@dataclass(frozen=True)
class TargetPrompt:
    """A target prompt whose placeholder ``{x}`` marks the position to patch.

    ``filler`` replaces the placeholder before tokenizing, and the write goes to the token
    that ends it.
    """

    text: str
    filler: str = "?"

    def __post_init__(self) -> None:
        count = self.text.count(PLACEHOLDER)
        if count != 1:
            raise ValueError(
                f"The target prompt {self.text!r} has {count} placeholders {PLACEHOLDER}; "
                f"mark exactly one position to patch with {PLACEHOLDER}, e.g. "
                f"'cat -> cat; hello -> hello; {PLACEHOLDER} ->'.")
        if not self.filler:
            raise ValueError("The filler of a target prompt must not be empty; use e.g. '?'.")

    @property
    def rendered(self) -> str:
        return self.text.replace(PLACEHOLDER, self.filler)

    def encode(self, tokenizer) -> tuple[list[int], int]:
        """Tokenize the prompt; return its token ids and the placeholder's position.

        The decoded answer is read at the prompt's last position, the first generated one.
        """
        text = self.rendered
        end = self.text.index(PLACEHOLDER) + len(self.filler)
        encoded = tokenizer(text, return_offsets_mapping=True)
        for position, (start, stop) in enumerate(encoded["offset_mapping"]):
            if stop > start and stop == end:
                return list(encoded["input_ids"]), position
        raise ValueError(
            f"No token of the target prompt {text!r} ends where the filler {self.filler!r} "
            f"ends; put a space or punctuation after {PLACEHOLDER}, or choose another filler.")


TARGET_PROMPTS = {
    "identity": TargetPrompt("cat -> cat; 1135 -> 1135; hello -> hello; {x} ->"),
    "identity-lines": TargetPrompt("cat -> cat\n1135 -> 1135\nhello -> hello\n{x} ->"),
    "description": TargetPrompt(
        "Tokyo: capital city of Japan\nMarie Curie: Polish-French physicist and chemist\n"
        "Toyota: Japanese car manufacturer\n{x}:", filler="x"),
}


def target_prompt(target: str | TargetPrompt) -> TargetPrompt:
    """Resolve a built-in target name, or a prompt text holding ``{x}``."""
    if isinstance(target, TargetPrompt):
        return target
    if target in TARGET_PROMPTS:
        return TARGET_PROMPTS[target]
    if PLACEHOLDER not in target:
        raise ValueError(
            f"The target {target!r} is neither a built-in target ({', '.join(TARGET_PROMPTS)}) "
            f"nor a prompt with the placeholder {PLACEHOLDER}; mark the position to patch "
            f"with {PLACEHOLDER}, e.g. 'cat -> cat; hello -> hello; {PLACEHOLDER} ->'.")
    return TargetPrompt(target)


def resolve_position(position: int, n_tokens: int, prompt_name: str = "source prompt") -> int:
    """Turn a position (negative counts from the end) into 0..n-1, or raise ``ValueError``."""
    if not -n_tokens <= position < n_tokens:
        raise ValueError(
            f"Position {position} is outside the {prompt_name}, which has {n_tokens} tokens; use "
            f"0 to {n_tokens - 1}, or -{n_tokens} to -1 to count from the end.")
    return position % n_tokens


@dataclass
class PatchscopeResult:
    """Decodings of one source site per (source layer, target layer).

    ``table`` has one row per pair: ``source_layer``, ``target_layer``, the top token at
    the first generated position (``top_token``, ``top_token_id``), the expected token's probability
    over the vocabulary (``p_expected``) and rank (``expected_rank``, 0 = top),
    ``precision_at_1`` (1.0 when the top token is the expected one) and ``generated``
    (greedy continuation with the write kept in place; empty without generation).
    """

    table: pd.DataFrame
    source: str
    source_position: int
    source_token: str
    target: TargetPrompt
    expected: str

    def figure(self, title: str | None = None) -> go.Figure:
        """Draw the source-layer by target-layer grid of the expected token's probability."""
        grid = self.table.pivot(index="source_layer", columns="target_layer",
                                values="p_expected").sort_index()
        tokens = self.table.pivot(index="source_layer", columns="target_layer",
                                  values="top_token").reindex(index=grid.index,
                                                              columns=grid.columns)
        hover = np.vectorize(lambda token: f"top token {token!r}")(tokens.to_numpy(dtype=object))
        fig = go.Figure(go.Heatmap(
            z=grid.to_numpy(), x=grid.columns.tolist(), y=grid.index.tolist(),
            colorscale="Viridis", zmin=0, zmax=1, text=hover,
            hovertemplate="source layer %{y}, target layer %{x}<br>p = %{z:.3f}<br>"
                          "%{text}<extra></extra>",
            colorbar=dict(title=dict(text=f"p({self.expected!r})", side="right"))))
        fig.update_layout(
            title=dict(x=0.5, text=title or (
                f"Patchscope of {self.source_token!r} (position {self.source_position}) "
                f"through {self.target.rendered!r}")),
            xaxis_title="target layer", yaxis_title="source layer (0 = embeddings)",
            template="simple_white", width=760, height=680)
        return fig

    def decoded(self) -> pd.DataFrame:
        """Return the rows whose target layer equals the source layer, one per layer."""
        same = self.table[self.table["source_layer"] == self.table["target_layer"]]
        return same.reset_index(drop=True)


def _layer_pairs(layers: list[int], target_layers) -> list[tuple[int, int]]:
    if target_layers is None or target_layers == "same":
        return [(layer, layer) for layer in layers]
    if isinstance(target_layers, int):
        return [(layer, target_layers) for layer in layers]
    return [(source, target) for source in layers for target in target_layers]


@torch.no_grad()
def patchscope(
    loaded,
    source: str,
    position: int = -1,
    target: str | TargetPrompt = "identity",
    source_layers: Sequence[int] | None = None,
    target_layers: str | int | Sequence[int] | None = "same",
    expected: str | None = None,
    max_new_tokens: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> PatchscopeResult:
    """Decode the residual of ``source`` at ``position`` through a target prompt.

    ``source_layers`` defaults to every layer ``0..L``. ``target_layers`` is ``"same"``
    (write each source layer into the same target layer), one layer for all, or a list
    (every source layer into every target layer: the grid). ``expected`` is the answer to
    score (default: the source token itself, the identity prompt's answer); only its
    first token counts. ``max_new_tokens`` > 0 also generates greedily with the write
    kept in place.
    """
    loaded = as_loaded_model(loaded)
    model, tokenizer, layout = loaded
    layout.require_unembed("patchscope")
    prompt = target_prompt(target)
    source_ids = tokenizer(source)["input_ids"]
    position = resolve_position(position, len(source_ids))
    layers = list(range(layout.n_layers + 1)) if source_layers is None else list(source_layers)
    pairs = _layer_pairs(layers, target_layers)
    for source_layer, target_layer in pairs:
        layout.check_layer(source_layer)
        layout.check_layer(target_layer)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")
    target_ids, target_position = prompt.encode(tokenizer)
    source_token = tokenizer.decode([source_ids[position]])
    if expected is None:
        expected_id = source_ids[position]
    else:
        expected_ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
        if not expected_ids:
            raise ValueError(f"The expected answer {expected!r} has no tokens; give a word.")
        expected_id = expected_ids[0]

    residuals = capture_residuals(model, layout, [source_ids], [[position]], layers=layers,
                                  pad_token_id=tokenizer.pad_token_id or 0, progress=False)[0]
    column = {layer: index for index, layer in enumerate(layers)}
    read = len(target_ids) - 1
    rows = [PatchedPrompt(target_ids, read,
                          [(Site(target_layer, target_position), residuals[column[source_layer]])])
            for source_layer, target_layer in pairs]
    logits = run_patched(loaded, rows, batch_size=batch_size, progress=progress,
                         desc="patchscope", shared_prefix=target_position)
    generated = (generate_patched(loaded, rows, max_new_tokens, batch_size, target_position)
                 if max_new_tokens else [""] * len(rows))

    probs = torch.softmax(logits, dim=-1)
    top = probs.argmax(-1)
    expected_rank = (logits > logits[:, expected_id][:, None]).sum(-1)
    table = pd.DataFrame(dict(
        source_layer=[s for s, _ in pairs], target_layer=[t for _, t in pairs],
        top_token_id=top.numpy(), top_token=[tokenizer.decode([int(t)]) for t in top],
        p_expected=probs[:, expected_id].numpy(), expected_rank=expected_rank.numpy(),
        precision_at_1=(top == expected_id).float().numpy(), generated=generated))
    return PatchscopeResult(table, source, position, source_token, prompt,
                            tokenizer.decode([expected_id]))


def patchscope_grid(loaded, source: str, position: int = -1,
                    target: str | TargetPrompt = "identity", layers: Sequence[int] | None = None,
                    expected: str | None = None, batch_size: int = 16,
                    progress: bool = True) -> PatchscopeResult:
    """Decode every source layer through every target layer (both default to ``0..L``)."""
    loaded = as_loaded_model(loaded)
    layers = list(range(loaded.layout.n_layers + 1)) if layers is None else list(layers)
    return patchscope(loaded, source, position, target, source_layers=layers,
                      target_layers=layers, expected=expected, batch_size=batch_size,
                      progress=progress)


@torch.no_grad()
def generate_patched(loaded, prompts: Sequence[PatchedPrompt], max_new_tokens: int,
                     batch_size: int = 16, shared_prefix: int = 0) -> list[str]:
    """Generate greedily after each prompt with its writes kept in place; return the texts.

    Each new token runs the whole prompt again, so the writes stay at their positions
    while the text grows; ``shared_prefix`` is passed to :func:`run_patched`. A text ends
    at the end-of-sequence token.
    """
    tokenizer = loaded.tokenizer
    grown = [PatchedPrompt(list(p.input_ids), len(p.input_ids) - 1, list(p.writes))
             for p in prompts]
    new_tokens: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        logits = run_patched(loaded, grown, batch_size=batch_size,
                             shared_prefix=shared_prefix)
        for index, token in enumerate(logits.argmax(-1).tolist()):
            new_tokens[index].append(token)
            grown[index].input_ids.append(token)
            grown[index].read_position += 1
    eos = tokenizer.eos_token_id
    texts = []
    for tokens in new_tokens:
        if eos in tokens:
            tokens = tokens[:tokens.index(eos)]
        texts.append(tokenizer.decode(tokens))
    return texts


@torch.no_grad()
def readout_patchscope(loaded, features: Float[Tensor, "readouts layers d_model"],
                       layers: Sequence[int], answers: Sequence[int], class_tokens: Sequence[int],
                       target: str | TargetPrompt = "identity", batch_size: int = 32,
                       progress: bool = True) -> pd.DataFrame:
    """Decode each readout's captured residuals through ``target``, each layer into itself.

    Returns one row per (readout, layer) with the answer scores of
    :func:`~depthprobe.methods.answers.answer_token_scores`.
    """
    loaded = as_loaded_model(loaded)
    loaded.layout.require_unembed("patchscope")
    prompt = target_prompt(target)
    target_ids, target_position = prompt.encode(loaded.tokenizer)
    answers = np.asarray(answers)
    frames = []
    chunk = max(1, batch_size // len(layers))
    bar = tqdm(total=len(answers), desc=METHOD, unit="readout", disable=not progress)
    for start in range(0, len(answers), chunk):
        stop = min(start + chunk, len(answers))
        rows = [PatchedPrompt(target_ids, len(target_ids) - 1,
                              [(Site(layer, target_position), features[i, column])])
                for i in range(start, stop) for column, layer in enumerate(layers)]
        logits = run_patched(loaded, rows, batch_size=batch_size, shared_prefix=target_position)
        repeated = np.repeat(answers[start:stop], len(layers))
        scores = answer_token_scores(logits, repeated, class_tokens)
        frames.append(pd.DataFrame(dict(
            readout_id=np.repeat(np.arange(start, stop), len(layers)),
            layer=np.tile(list(layers), stop - start), **scores)))
        bar.update(stop - start)
    bar.close()
    return pd.concat(frames, ignore_index=True)


def _score_with_patchscope(context) -> tuple[pd.DataFrame, pd.DataFrame]:
    if context.features is None:
        raise ValueError(f"The {METHOD} method reads captured residuals, but the run "
                         f"captured none.")
    loaded = as_loaded_model(context.loaded)
    target = context.options.get("patchscope_target", "identity")
    class_tokens = class_answer_tokens(context.task, context.text_examples, loaded.tokenizer,
                                       METHOD)
    details = readout_patchscope(loaded, context.features, context.layers, context.labels,
                                 class_tokens, target,
                                 batch_size=int(context.options.get("patchscope_batch", 64)),
                                 progress=context.progress)
    hits = details.pivot(index="readout_id", columns="layer", values="top1_class")
    hits = hits.reindex(index=range(len(context.labels)), columns=context.layers)
    return readout_tables(METHOD, hits.to_numpy(dtype=float), context.layers, context.steps,
                          context.groups, majority_chance(context.labels, context.steps))


register_method(MethodSpec(
    name=METHOD, score=_score_with_patchscope,
    summary="Patchscope (identity prompt): does the readout's state decode to the answer",
    needs_unembed=True,
    cost="one forward pass of the target prompt per readout and layer"))
