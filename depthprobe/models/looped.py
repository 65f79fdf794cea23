"""Looping a pretrained model: a range of its blocks run several times, unrolled as layers.

A loop ``START:END:TIMES`` runs blocks ``START..END-1`` ``TIMES`` times in a row, as
training-free looped transformers do, so a 30-block model looped with ``10:14:3`` has
``30 + 4 * 2 = 38`` blocks. The unrolled stack is the layer axis: ``layout.blocks[i]`` is
the ``i``-th block that runs, so residual capture and every method work unchanged, and
``layout.block_sources[i]`` gives the original block and the pass of each one.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass

from torch import nn

from .layout import ModelLayout, layout_for
from .loading import LoadedModel

logger = logging.getLogger(__name__)

_LOOP_PATTERN = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*:\s*(-?\d+)\s*$")

# Config lists with one entry per block, which the unrolled stack repeats like its blocks.
_PER_BLOCK_CONFIG_LISTS = ("layer_types",)

# Architectures whose blocks depend on their own index beyond the cache slot.
_UNLOOPABLE = {
    "zamba2": "its hybrid blocks pick their shared-attention adapter weights by layer index",
}


@dataclass(frozen=True)
class LoopSpec:
    """A block range ``[start, end)`` that runs ``times`` times (``times=1``: no loop)."""

    start: int
    end: int
    times: int

    def __str__(self) -> str:
        return f"{self.start}:{self.end}:{self.times}"

    def check(self, n_blocks: int) -> "LoopSpec":
        """Return the spec if it fits a model of ``n_blocks`` blocks, else raise ``ValueError``."""
        if not 0 <= self.start < self.end <= n_blocks:
            raise ValueError(
                f"Loop {self} is invalid for a model with {n_blocks} blocks: START:END is the "
                f"block range START..END-1, so it needs 0 <= START < END <= {n_blocks}."
            )
        if self.times < 1:
            raise ValueError(
                f"Loop {self} has TIMES={self.times}; TIMES counts the passes through the "
                f"range and must be 1 or more (1 runs the model unchanged)."
            )
        return self

    def block_sources(self, n_blocks: int) -> list[tuple[int, int]]:
        """List ``(original block, pass)`` for each block of the unrolled stack, passes from 0."""
        self.check(n_blocks)
        sources = [(block, 0) for block in range(self.start)]
        for pass_index in range(self.times):
            sources.extend((block, pass_index) for block in range(self.start, self.end))
        sources.extend((block, 0) for block in range(self.end, n_blocks))
        return sources


def parse_loop(text: str) -> LoopSpec:
    """Parse a loop written ``START:END:TIMES`` (for example ``10:14:3``) into a :class:`LoopSpec`.

    Raises ``ValueError`` for text of another form or a ``TIMES`` below 1. The range is
    checked against a model's block count by :meth:`LoopSpec.check`.
    """
    match = _LOOP_PATTERN.match(str(text))
    if match is None:
        raise ValueError(
            f"Invalid loop {text!r}; write START:END:TIMES with whole numbers, for example "
            f"10:14:3 to run blocks 10..13 three times."
        )
    spec = LoopSpec(*(int(group) for group in match.groups()))
    if spec.times < 1:
        raise ValueError(f"Loop {text!r} has TIMES={spec.times}; TIMES must be 1 or more.")
    return spec


class LoopedBlock(nn.Module):
    """One pass of a decoder block in an unrolled stack.

    Several ``LoopedBlock`` wrap the same block when its range is looped, so the passes
    share weights but each has its own forward hooks. During its forward pass the wrapper
    sets every ``layer_idx`` inside the block to its place in the unrolled stack, so that
    each pass reads and writes its own slot of a key-value or state cache. Attributes that
    the wrapper lacks (``attention_type``, ``layer_type``) are read from the block.
    """

    def __init__(self, block: nn.Module, layer_idx: int, source: int, pass_index: int):
        super().__init__()
        self.block = block
        self.layer_idx = layer_idx
        self.source = source
        self.pass_index = pass_index

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)

    def forward(self, *args, **kwargs):
        indexed = [module for module in self.block.modules()
                   if isinstance(getattr(module, "layer_idx", None), int)]
        saved = [module.layer_idx for module in indexed]
        for module in indexed:
            module.layer_idx = self.layer_idx
        try:
            return self.block(*args, **kwargs)
        finally:
            for module, layer_idx in zip(indexed, saved):
                module.layer_idx = layer_idx

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, source={self.source}, pass_index={self.pass_index}"


def _as_spec(start, end, times) -> LoopSpec:
    if isinstance(start, LoopSpec):
        return start
    if isinstance(start, str):
        return parse_loop(start)
    if end is None or times is None:
        raise TypeError(
            f"loop_model got start={start!r} without end and times; pass start, end and "
            f"times as integers, a 'START:END:TIMES' string or a LoopSpec."
        )
    return LoopSpec(int(start), int(end), int(times))


def _parent_and_name(model: nn.Module, layout: ModelLayout) -> tuple[nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is layout.blocks:
                return module, name
    raise ValueError(f"The blocks of this {layout.architecture} model are not among its modules.")


def _check_loopable(model: nn.Module, layout: ModelLayout) -> None:
    if layout.architecture in _UNLOOPABLE:
        raise ValueError(
            f"Looping a {layout.architecture} model is not supported: "
            f"{_UNLOOPABLE[layout.architecture]}."
        )
    if layout.is_looped:
        raise ValueError(
            f"This {layout.architecture} model is already looped; loop the original model "
            f"instead, with one range."
        )
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError(
            "This GPT-2 model scales attention by its layer index "
            "(scale_attn_by_inverse_layer_idx), so a repeated block would compute a different "
            "function on each pass; looping it is not supported."
        )
    if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
        raise ValueError(
            "This model is spread over several devices with a device_map; load it on one "
            "device to loop it."
        )


def _unroll_config(config, sources: list[tuple[int, int]], layout: ModelLayout) -> None:
    # Per-block lists such as layer_types are repeated like the blocks. Some configs derive
    # them from the block count (a read-only property), and those must come out the same.
    expected = {}
    for key in _PER_BLOCK_CONFIG_LISTS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == layout.n_layers:
            expected[key] = [values[block] for block, _ in sources]

    config.num_hidden_layers = len(sources)
    for key, values in expected.items():
        try:
            setattr(config, key, values)
        except AttributeError:
            pass  # a property computed from num_hidden_layers, checked next
        if list(getattr(config, key)) != values:
            raise ValueError(
                f"Cannot loop this {layout.architecture} model with these blocks: its config "
                f"derives {key} from the block count and gives {list(getattr(config, key))}, "
                f"not the unrolled {values}, so looping this range is not supported."
            )


def loop_model(loaded_or_model: LoadedModel | nn.Module, start: int | str | LoopSpec,
               end: int | None = None, times: int | None = None) -> LoadedModel:
    """Build a copy of the model that runs blocks ``start..end-1`` ``times`` times, unrolled.

    ``start`` may also be a ``"START:END:TIMES"`` string or a :class:`LoopSpec`. The result
    is a new module tree that shares every weight with the original, which is left as it
    was. Its ``layout.blocks`` is the unrolled stack (one :class:`LoopedBlock` per block
    run), ``layout.block_sources`` gives each one's original block and pass, and its config
    counts the unrolled blocks and records the loop (``depthprobe_loop``). ``times=1``
    reproduces the original outputs exactly. Given a :class:`LoadedModel`, the result keeps
    its tokenizer and weights hash; given a bare model, the tokenizer is ``None``.

    NOTE: the looped model shares tensors between blocks, so ``save_pretrained`` on it does
    not write a checkpoint that reloads; :func:`unrolled_copy` makes one that does.
    """
    if isinstance(loaded_or_model, LoadedModel):
        model, tokenizer, layout = loaded_or_model
        name, digest = loaded_or_model.name, loaded_or_model.weights_hash
    else:
        model, tokenizer = loaded_or_model, None
        layout = layout_for(model)
        name, digest = type(model).__name__, None
    spec = _as_spec(start, end, times).check(layout.n_layers)
    _check_loopable(model, layout)

    # A deep copy whose memo maps every parameter and buffer to itself copies the module
    # tree but shares the weights, so the original model keeps its blocks, hooks and config.
    memo = {id(tensor): tensor for tensor in list(model.parameters()) + list(model.buffers())}
    looped = copy.deepcopy(model, memo)
    original = layout_for(looped)
    parent, attribute = _parent_and_name(looped, original)

    sources = spec.block_sources(original.n_layers)
    unrolled = [LoopedBlock(original.blocks[block], index, block, pass_index)
                for index, (block, pass_index) in enumerate(sources)]
    setattr(parent, attribute, nn.ModuleList(unrolled))

    _unroll_config(looped.config, sources, original)
    config = looped.config
    config.depthprobe_loop = str(spec)
    config.depthprobe_block_sources = [list(source) for source in sources]

    new_layout = layout_for(looped)
    logger.info("Looped %s with %s: %d blocks unrolled to %d.", name, spec,
                original.n_layers, new_layout.n_layers)
    return LoadedModel(looped, tokenizer, new_layout, name=f"{name} loop {spec}",
                       weights_hash=digest)


def unrolled_copy(looped_model: nn.Module) -> nn.Module:
    """Return an ordinary model with one independent copy of the weights per unrolled block.

    The copy computes the same function as the looped model, has no :class:`LoopedBlock`
    wrappers, and saves with ``save_pretrained`` into a checkpoint that loads like any
    other. Its config keeps ``depthprobe_block_sources``, so :func:`layout_for` still
    labels each layer with its original block and pass.
    """
    layout = layout_for(looped_model)
    if not layout.is_looped:
        raise ValueError("This model is not looped; pass the model that loop_model returned.")
    copied = copy.deepcopy(looped_model)
    copied_layout = layout_for(copied)
    parent, attribute = _parent_and_name(copied, copied_layout)

    blocks = []
    for index, wrapper in enumerate(copied_layout.blocks):
        block = copy.deepcopy(wrapper.block) if isinstance(wrapper, LoopedBlock) else wrapper
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
        blocks.append(block)
    setattr(parent, attribute, nn.ModuleList(blocks))
    return copied
