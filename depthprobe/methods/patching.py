"""Writing values into the residual stream during a forward pass.

A write replaces the residual at one :class:`~depthprobe.sites.Site` of one batch row.
Layer ``0`` is written as the input of block 0 and layer ``l >= 1`` as the output of
block ``l - 1``, the same convention that capture reads with. Hooks are installed only
inside a ``with`` block and removed in ``finally``, also when the forward pass raises.

:func:`run_patched` is the shared engine of the Patchscope and interchange methods: it
runs prompts with writes in place and returns the next-token logits at chosen positions.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..capture import ResidualRecorder, forward_for_capture, pad_batch
from ..models.layout import ModelLayout, unembed_residual
from ..sites import Site
from .transformer_lens import HookPointBlock


@dataclass(frozen=True)
class ResidualWrite:
    """A vector to write at one site of a batch.

    ``site.position`` counts columns of the padded batch that the forward pass runs on;
    ``row`` is the batch row, or ``None`` to write the same vector into every row.
    """

    site: Site
    value: Float[Tensor, "d_model"]
    row: int | None = None


def _hidden(output) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _with_hidden(output, hidden: Tensor):
    # Blocks return the hidden states alone or as the first item of a tuple.
    if isinstance(output, Tensor):
        return hidden
    return (hidden, *output[1:])


class ResidualPatcher:
    """Context manager that writes residual vectors during every forward pass inside it.

    All writes of one layer are applied by one hook, as a single indexed assignment on a
    copy of the hidden states, so the model's own tensors are never changed in place.
    """

    def __init__(self, layout: ModelLayout, writes: Sequence[ResidualWrite]):
        self.layout = layout
        by_layer: dict[int, list[ResidualWrite]] = defaultdict(list)
        for write in writes:
            layout.check_layer(write.site.layer)
            if write.site.position < 0:
                raise ValueError(
                    f"Write position {write.site.position} is negative; positions of a "
                    f"write count batch columns from 0.")
            if tuple(write.value.shape) != (layout.d_model,):
                raise ValueError(
                    f"A residual write needs a vector of shape ({layout.d_model},), got "
                    f"{tuple(write.value.shape)} at {write.site}.")
            by_layer[write.site.layer].append(write)
        self._by_layer = dict(by_layer)
        self._handles: list = []

    def __enter__(self) -> "ResidualPatcher":
        blocks = self.layout.blocks
        try:
            for layer, writes in self._by_layer.items():
                if layer == 0:
                    self._handles.append(blocks[0].register_forward_pre_hook(
                        self._make_pre_hook(writes), with_kwargs=True))
                else:
                    self._handles.append(blocks[layer - 1].register_forward_hook(
                        self._make_post_hook(writes)))
        except Exception:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _apply(hidden: Float[Tensor, "batch pos d_model"], writes) -> Tensor:
        hidden = hidden.clone()
        for write in writes:
            column = write.site.position
            if column >= hidden.shape[1]:
                raise ValueError(
                    f"Write position {column} is outside the batch of {hidden.shape[1]} "
                    f"columns; check the position against the prompt length.")
            rows = slice(None) if write.row is None else write.row
            hidden[rows, column] = write.value.to(hidden.device, hidden.dtype)
        return hidden

    def _make_pre_hook(self, writes):
        def hook(module, args, kwargs):
            if args:
                return (self._apply(args[0], writes), *args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=self._apply(kwargs["hidden_states"], writes))
            return args, kwargs
        return hook

    def _make_post_hook(self, writes):
        def hook(module, args, output):
            return _with_hidden(output, self._apply(_hidden(output), writes))
        return hook


@dataclass
class PatchedPrompt:
    """One prompt to run with writes in place, and the position whose logits to read.

    ``writes`` address sites by their position in the unpadded prompt, from 0;
    ``read_position`` is the position whose next-token logits are returned.
    """

    input_ids: list[int]
    read_position: int
    writes: list[tuple[Site, Tensor]] = field(default_factory=list)

    def check(self, layout: ModelLayout, index: int = 0) -> None:
        """Raise ``ValueError`` when a position lies outside the prompt or a layer outside 0..L."""
        n = len(self.input_ids)
        positions = [self.read_position] + [site.position for site, _ in self.writes]
        for position in positions:
            if not 0 <= position < n:
                raise ValueError(
                    f"Position {position} is outside prompt {index}, which has {n} tokens; "
                    f"use a position from 0 to {n - 1}.")
        for site, _ in self.writes:
            layout.check_layer(site.layer)


@torch.no_grad()
def run_patched(
    loaded,
    prompts: Sequence[PatchedPrompt],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "patched runs",
    shared_prefix: int = 0,
) -> Float[Tensor, "prompts vocab"]:
    """Run prompts with their writes in place; return each read position's logits.

    Prompts are left-padded into batches, and each write's position is shifted by its
    row's padding. The logits are the model's own next-token logits at the read
    position: the last block's output there, through the final norm and the
    unembedding (including any logit scale and soft-capping), as float32 on the CPU.

    ``shared_prefix`` > 0 declares that every prompt has the same length and the same
    first ``shared_prefix`` tokens, with no write or read before them. Those tokens then
    run once per batch, and the rest of each prompt runs on their key-value cache. The
    results equal a full run up to floating-point rounding. Models whose cache cannot
    be repeated over a batch, and TransformerLens bridges, run in full.
    """
    model, tokenizer, layout = loaded
    for index, prompt in enumerate(prompts):
        prompt.check(layout, index)
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}.")
    _check_shared_prefix(prompts, shared_prefix)
    unembed = unembed_residual(layout)
    final_norm_weight = next(layout.final_norm.parameters(), None)
    device = (final_norm_weight.device if final_norm_weight is not None
              else next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = prompts[start:start + batch_size]
        cache = _prefix_cache(model, layout, batch[0].input_ids[:shared_prefix], len(batch))
        if cache is None:
            ids, mask, positions, offsets = pad_batch([p.input_ids for p in batch], pad_id,
                                                      side="left")
        else:
            ids = torch.tensor([p.input_ids[shared_prefix:] for p in batch])
            mask = torch.ones((len(batch), len(batch[0].input_ids)), dtype=torch.long)
            positions = torch.arange(shared_prefix, mask.shape[1]).expand(len(batch), -1)
            offsets = [-shared_prefix] * len(batch)
        writes = [ResidualWrite(Site(site.layer, offsets[row] + site.position), value, row)
                  for row, prompt in enumerate(batch) for site, value in prompt.writes]
        rows = torch.arange(len(batch))
        cols = torch.tensor([offsets[row] + p.read_position for row, p in enumerate(batch)])
        # The patcher is entered first, so at a shared layer its hook runs before the
        # recorder's and the recorder reads the written values.
        with ResidualPatcher(layout, writes), \
                ResidualRecorder(layout, [layout.n_layers], dtype, device) as recorder:
            recorder.select(rows, cols)
            if cache is None:
                forward_for_capture(model, ids, mask, positions)
            else:
                _forward_on_cache(model, ids, mask, positions, cache)
            final = recorder.records[layout.n_layers]  # (batch, d_model)
            out.append(unembed(final).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _check_shared_prefix(prompts: Sequence[PatchedPrompt], shared_prefix: int) -> None:
    if shared_prefix < 0:
        raise ValueError(f"shared_prefix must be 0 or more, got {shared_prefix}.")
    if shared_prefix == 0 or not prompts:
        return
    first = prompts[0].input_ids
    for index, prompt in enumerate(prompts):
        if len(prompt.input_ids) != len(first) or prompt.input_ids[:shared_prefix] != \
                first[:shared_prefix]:
            raise ValueError(
                f"Prompt {index} does not share the first {shared_prefix} tokens and the "
                f"length of prompt 0; pass shared_prefix=0 for prompts that differ there.")
        positions = [prompt.read_position] + [site.position for site, _ in prompt.writes]
        if min(positions) < shared_prefix:
            raise ValueError(
                f"Prompt {index} reads or writes at position {min(positions)}, inside the "
                f"shared prefix of {shared_prefix} tokens; lower shared_prefix to at most "
                f"{min(positions)}.")


def _prefix_cache(model, layout: ModelLayout, prefix: list[int], n_rows: int):
    """Run the shared prefix once and return its key-value cache repeated over the rows.

    Returns ``None`` when there is no prefix, the model's cache cannot be repeated, or
    the model runs through a TransformerLens bridge: with transformer-lens 4.3, a bridge's
    attention on a key-value cache gives other logits than a full run (measured on a tiny
    Llama), so bridges always run in full.
    """
    if not prefix or isinstance(layout.blocks[0], HookPointBlock):
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prefix], device=device)
    try:
        output = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    except TypeError:
        # Some architectures have no logits_to_keep argument.
        output = model(input_ids=ids, use_cache=True)
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(n_rows)
    return cache


def _forward_on_cache(model, ids: Tensor, mask: Tensor, positions: Tensor, cache):
    # transformers 5.25 names the argument ``cache``; earlier 5.x releases name it
    # ``past_key_values``.
    parameters = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in parameters else "past_key_values"
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device),
                 position_ids=positions.to(device), use_cache=True, **{name: cache})
