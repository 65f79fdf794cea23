"""Where each supported architecture keeps its decoder blocks, final norm and unembedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class _Paths:
    blocks: str
    final_norm: str
    unembed: str
    embed: str


# Attribute paths inside the ``*ForCausalLM`` model of each architecture.
_ARCHITECTURES: dict[str, _Paths] = {
    "llama": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "mistral": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "qwen2": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "gemma2": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "gemma3_text": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "gpt2": _Paths("transformer.h", "transformer.ln_f", "lm_head", "transformer.wte"),
    "gpt_neox": _Paths("gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
                       "gpt_neox.embed_in"),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCHITECTURES))


def _get(model: nn.Module, path: str) -> nn.Module:
    module = model
    for name in path.split("."):
        module = getattr(module, name)
    return module


@dataclass
class ModelLayout:
    """The parts of a causal LM that depthprobe reads and writes.

    ``blocks[i]`` is decoder block ``i``; the residual stream after it is layer ``i + 1``.
    ``final_norm`` and ``unembed`` turn a residual into logits, and ``logit_softcap`` is
    the tanh soft-capping value that Gemma 2 and 3 apply to the logits (``None`` if unset).
    """

    architecture: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    embed: nn.Module
    d_model: int
    logit_softcap: float | None = None
    model_class: str = ""

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks ``L``; layer indices run over ``0..L``."""
        return len(self.blocks)

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it lies in ``0..L``, else raise a ``ValueError``."""
        if not isinstance(layer, int) or not 0 <= layer <= self.n_layers:
            raise ValueError(
                f"Layer {layer!r} is outside 0..{self.n_layers} for this {self.architecture} "
                f"model: 0 is the embedding output and {self.n_layers} the last block's output."
            )
        return layer


def layout_for(model: nn.Module) -> ModelLayout:
    """Find the blocks, final norm and unembedding of a HuggingFace causal LM.

    Raises ``ValueError`` naming the architecture when it is not supported.
    """
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type == "gemma3" and hasattr(config, "text_config"):
        raise ValueError(
            "This is a multimodal Gemma 3 model; load its text part with "
            "AutoModelForCausalLM (model_type 'gemma3_text') instead."
        )
    paths = _ARCHITECTURES.get(model_type)
    if paths is None:
        raise ValueError(
            f"Architecture {model_type!r} ({type(model).__name__}) is not supported; "
            f"supported architectures are {', '.join(SUPPORTED_ARCHITECTURES)}."
        )

    softcap = getattr(config, "final_logit_softcapping", None)
    return ModelLayout(
        architecture=model_type,
        blocks=_get(model, paths.blocks),
        final_norm=_get(model, paths.final_norm),
        unembed=_get(model, paths.unembed),
        embed=_get(model, paths.embed),
        d_model=int(getattr(config, "hidden_size", None) or config.n_embd),
        logit_softcap=float(softcap) if softcap else None,
        model_class=type(model).__name__,
    )


def unembed_residual(layout: ModelLayout) -> Callable:
    """Return a function mapping a residual ``(..., d_model)`` to logits ``(..., vocab)``.

    It applies the final norm, the unembedding and, where the model sets it, the logit
    soft-capping, as the model's own forward pass does after its last block.
    """
    import torch

    def apply(residual):
        logits = layout.unembed(layout.final_norm(residual))
        if layout.logit_softcap:
            logits = torch.tanh(logits / layout.logit_softcap) * layout.logit_softcap
        return logits

    return apply
