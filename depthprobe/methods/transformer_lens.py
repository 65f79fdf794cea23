"""Run depthprobe on a TransformerLens ``TransformerBridge``.

``TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)``
(transformer-lens 4.x) replaces the HuggingFace model's blocks, final norm and
unembedding with bridge components in place, so running the HuggingFace model runs
through the bridge and fires its hook points. :func:`loaded_from_bridge` wraps a bridge
into a :class:`~depthprobe.models.LoadedModel` whose blocks read and write the residual
stream through each block's ``hook_resid_pre`` and ``hook_resid_post`` hook points, so
capture, the lenses, Patchscopes and patching all run through the bridge.

transformer-lens is an optional dependency: this module imports it only to check a
bridge's type, and only when the caller has imported it already.
"""

from __future__ import annotations

import dataclasses
import sys

from torch import nn

from ..models import LoadedModel, layout_for


class HookPointBlock(nn.Module):
    """Stand-in for one decoder block that hooks its residual hook points.

    A forward hook registered here goes to the block's ``hook_resid_post`` (the residual
    after the block), and a forward pre-hook to its ``hook_resid_pre`` (the residual
    entering it), so code written against decoder blocks reads and writes the same
    residuals through the bridge. It is never called itself.
    """

    def __init__(self, block: nn.Module, index: int):
        super().__init__()
        for name in ("hook_resid_pre", "hook_resid_post"):
            if not isinstance(getattr(block, name, None), nn.Module):
                raise TypeError(
                    f"Block {index} of the TransformerBridge has no {name} hook point; "
                    f"depthprobe needs both hook_resid_pre and hook_resid_post on every "
                    f"block.")
        self.resid_pre = block.hook_resid_pre
        self.resid_post = block.hook_resid_post
        self.index = index

    def register_forward_hook(self, hook, *args, **kwargs):
        return self.resid_post.register_forward_hook(hook, *args, **kwargs)

    def register_forward_pre_hook(self, hook, *args, **kwargs):
        return self.resid_pre.register_forward_pre_hook(hook, *args, **kwargs)

    def forward(self, *args, **kwargs):
        raise RuntimeError("HookPointBlock only forwards hooks; run the model instead.")


def is_transformer_bridge(model) -> bool:
    """Tell whether ``model`` is a TransformerLens ``TransformerBridge``."""
    module = sys.modules.get("transformer_lens.model_bridge.transformer_bridge")
    return module is not None and isinstance(model, module.TransformerBridge)


def loaded_from_bridge(bridge, name: str | None = None, tokenizer=None) -> LoadedModel:
    """Wrap a ``TransformerBridge`` into a :class:`LoadedModel` that runs through it.

    The model is the bridge's HuggingFace model (whose components the bridge replaced),
    and the layout's blocks are :class:`HookPointBlock` stand-ins; the final norm and
    unembedding are the bridge's components. Texts are tokenized with ``tokenizer``, by
    default the bridge's own, which TransformerLens sets up to prepend a BOS token
    (``cfg.default_prepend_bos``), so pass the HuggingFace tokenizer to tokenize as the
    HuggingFace model does.
    """
    if not is_transformer_bridge(bridge):
        raise TypeError(f"Expected a TransformerLens TransformerBridge, got "
                        f"{type(bridge).__name__}.")
    model = bridge.original_model
    layout = layout_for(model)
    blocks = nn.ModuleList(HookPointBlock(block, index)
                           for index, block in enumerate(bridge.blocks))
    if len(blocks) != layout.n_layers:
        raise ValueError(
            f"The TransformerBridge has {len(blocks)} blocks but its HuggingFace model has "
            f"{layout.n_layers}; depthprobe supports bridges over decoder-only models "
            f"whose blocks map one to one.")
    layout = dataclasses.replace(layout, blocks=blocks)
    if name is None:
        name = getattr(bridge.cfg, "model_name", None) or type(model).__name__
    return LoadedModel(model, tokenizer or bridge.tokenizer, layout, name=str(name))


def as_loaded_model(model) -> LoadedModel:
    """Return ``model`` as a :class:`LoadedModel`, wrapping a ``TransformerBridge``.

    Raises ``TypeError`` for anything else, saying how to get a model depthprobe takes.
    """
    if isinstance(model, LoadedModel):
        return model
    if is_transformer_bridge(model):
        return loaded_from_bridge(model)
    raise TypeError(
        f"Expected a LoadedModel or a TransformerLens TransformerBridge, got "
        f"{type(model).__name__}; load a model with depthprobe.load_model(name), or wrap "
        f"a HuggingFace model with TransformerBridge.boot_transformers(name, "
        f"hf_model=model, tokenizer=tokenizer).")
