"""The decoder blocks, final norm and unembedding of each supported architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

# Sequence mixers of one block: attention, a recurrence (a state-space scan, or linear
# attention with the delta rule), or both side by side in one block.
MIXERS = ("attention", "recurrent", "attention+recurrent")

# Model kinds by the mixers of their blocks: attention in every block (a causal
# transformer), a recurrence in every block, or a mix of the two.
KINDS = ("feedforward", "recurrent", "hybrid")

# Values of transformers' ``config.layer_types`` (v5) and what each means here.
_LAYER_TYPE_MIXERS = {
    "full_attention": "attention",
    "sliding_attention": "attention",
    "chunked_attention": "attention",
    "linear_attention": "recurrent",
    "mamba": "recurrent",
    "attention": "attention",
    "hybrid": "attention+recurrent",
}


@dataclass(frozen=True)
class _Paths:
    blocks: str
    final_norm: str
    unembed: str
    embed: str
    mixer: str | None = None  # the mixer of every block; None reads config.layer_types


_LLAMA_LIKE = _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens", "attention")
_MAMBA_LIKE = _Paths("backbone.layers", "backbone.norm_f", "lm_head", "backbone.embeddings",
                     "recurrent")
_HYBRID = _Paths("model.layers", "model.final_layernorm", "lm_head", "model.embed_tokens")

# Attribute paths inside the ``*ForCausalLM`` model of each architecture.
_ARCHITECTURES: dict[str, _Paths] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gpt2": _Paths("transformer.h", "transformer.ln_f", "lm_head", "transformer.wte",
                   "attention"),
    "gpt_neox": _Paths("gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
                       "gpt_neox.embed_in", "attention"),
    # State-space models: every block is a selective scan along the sequence.
    "mamba": _MAMBA_LIKE,
    "mamba2": _MAMBA_LIKE,
    "falcon_mamba": _MAMBA_LIKE,
    # Hybrids: config.layer_types names the blocks that attend and those that recur.
    "jamba": _HYBRID,
    "bamba": _HYBRID,
    "zamba2": _HYBRID,
    "falcon_h1": _HYBRID,
    "granitemoehybrid": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
    "qwen3_next": _Paths("model.layers", "model.norm", "lm_head", "model.embed_tokens"),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCHITECTURES))


def _get(model: nn.Module, path: str) -> nn.Module | None:
    module = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


@dataclass
class ModelLayout:
    """The parts of a causal LM that depthprobe reads and writes.

    ``blocks[i]`` is decoder block ``i``; the residual stream after it is layer ``i + 1``.
    ``final_norm`` and ``unembed`` turn a residual into logits (``unembed`` is ``None`` for
    a model without an unembedding, and methods that need one reject such a model).
    ``logit_scale`` multiplies the logits: it is Falcon-H1's ``lm_head_multiplier`` or the
    inverse of Granite's ``logits_scaling``, and ``None`` if unset. ``logit_softcap`` is the
    tanh soft-capping value that Gemma 2 and 3 apply after that (``None`` if unset).

    ``kind`` is one of :data:`KINDS` and ``block_mixers[i]`` one of :data:`MIXERS`, so a
    method can tell whether the model carries state along the sequence in a recurrence.
    ``block_sources[i]`` is ``(original block index, pass)`` when the stack is a looped
    model's unrolled blocks (passes count from 0), and ``None`` otherwise.
    """

    architecture: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module | None
    embed: nn.Module
    d_model: int
    logit_softcap: float | None = None
    model_class: str = ""
    kind: str = "feedforward"
    block_mixers: tuple[str, ...] = ()
    logit_scale: float | None = None
    block_sources: tuple[tuple[int, int], ...] | None = None

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks ``L``; layer indices run over ``0..L``."""
        return len(self.blocks)

    @property
    def is_looped(self) -> bool:
        """Whether the blocks are a looped model's unrolled stack."""
        return self.block_sources is not None

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it lies in ``0..L``, else raise a ``ValueError``."""
        if not isinstance(layer, int) or not 0 <= layer <= self.n_layers:
            raise ValueError(
                f"Layer {layer!r} is outside 0..{self.n_layers} for this {self.architecture} "
                f"model: 0 is the embedding output and {self.n_layers} the last block's output."
            )
        return layer

    def layer_label(self, layer: int) -> str:
        """Name layer ``layer`` for tables and figures.

        ``"0"`` is the embedding output and ``"l"`` the output of block ``l - 1``. In a
        looped model, a layer produced by a repeated block reads ``"13 (block 12, pass 2)"``:
        the unrolled layer index, then the original block index and the pass counted from 1.
        """
        self.check_layer(layer)
        if layer == 0 or self.block_sources is None:
            return str(layer)
        block, pass_index = self.block_sources[layer - 1]
        return f"{layer} (block {block}, pass {pass_index + 1})"

    def require_unembed(self, method: str) -> nn.Module:
        """Return the unembedding, or raise ``ValueError`` saying ``method`` needs one."""
        if self.unembed is None:
            raise ValueError(
                f"The {method} method needs an unembedding (an LM head), but this "
                f"{self.architecture} model ({self.model_class}) has none; use a method that "
                f"reads residuals only, such as the probe."
            )
        return self.unembed


def _block_mixers(config, paths: _Paths, n_blocks: int, model_type: str) -> tuple[str, ...]:
    if paths.mixer is not None:
        return (paths.mixer,) * n_blocks
    layer_types = list(getattr(config, "layer_types", None) or [])
    unknown = sorted({t for t in layer_types if t not in _LAYER_TYPE_MIXERS})
    if len(layer_types) != n_blocks or unknown:
        raise ValueError(
            f"Invalid config.layer_types {layer_types!r} for this {model_type!r} model: "
            f"expected {n_blocks} entries, one per block, each one of "
            f"{', '.join(_LAYER_TYPE_MIXERS)}; fix the config's layer_types."
        )
    return tuple(_LAYER_TYPE_MIXERS[t] for t in layer_types)


def kind_of(block_mixers: tuple[str, ...]) -> str:
    """Return the model kind (one of :data:`KINDS`) of a stack of block mixers."""
    if all(mixer == "attention" for mixer in block_mixers):
        return "feedforward"
    if all(mixer == "recurrent" for mixer in block_mixers):
        return "recurrent"
    return "hybrid"


def _logit_scale(config, model_type: str) -> float | None:
    if model_type == "falcon_h1":
        scale = getattr(config, "lm_head_multiplier", None)
        return None if scale in (None, 1, 1.0) else float(scale)
    if model_type == "granitemoehybrid":
        divisor = getattr(config, "logits_scaling", None)
        return None if divisor in (None, 1, 1.0) else 1.0 / float(divisor)
    return None


def _block_sources(config, n_blocks: int) -> tuple[tuple[int, int], ...] | None:
    # A looped model's config lists (original block, pass) for each unrolled block.
    sources = getattr(config, "depthprobe_block_sources", None)
    if sources is None:
        return None
    if len(sources) != n_blocks:
        raise ValueError(
            f"The config lists {len(sources)} depthprobe_block_sources for {n_blocks} blocks; "
            f"remove depthprobe_block_sources from config.json, or give one per block."
        )
    return tuple((int(block), int(pass_index)) for block, pass_index in sources)


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

    missing = [path for path in (paths.blocks, paths.final_norm, paths.embed)
               if _get(model, path) is None]
    if missing:
        raise ValueError(
            f"This {model_type!r} model ({type(model).__name__}) has no {', '.join(missing)}; "
            f"load it as a causal LM with AutoModelForCausalLM."
        )

    blocks = _get(model, paths.blocks)
    mixers = _block_mixers(config, paths, len(blocks), model_type)
    softcap = getattr(config, "final_logit_softcapping", None)
    return ModelLayout(
        architecture=model_type,
        blocks=blocks,
        final_norm=_get(model, paths.final_norm),
        unembed=_get(model, paths.unembed),
        embed=_get(model, paths.embed),
        d_model=int(getattr(config, "hidden_size", None) or config.n_embd),
        logit_softcap=float(softcap) if softcap else None,
        model_class=type(model).__name__,
        kind=kind_of(mixers),
        block_mixers=mixers,
        logit_scale=_logit_scale(config, model_type),
        block_sources=_block_sources(config, len(blocks)),
    )


def unembed_residual(layout: ModelLayout) -> Callable:
    """Return a function mapping a residual ``(..., d_model)`` to logits ``(..., vocab)``.

    It applies the final norm, the unembedding, the logit scale and, where the model sets
    it, the logit soft-capping, as the model's own forward pass does after its last block.
    Raises ``ValueError`` when the model has no unembedding.
    """
    import torch

    unembed = layout.require_unembed("logit lens")

    def apply(residual):
        logits = unembed(layout.final_norm(residual))
        if layout.logit_scale is not None:
            logits = logits * layout.logit_scale
        if layout.logit_softcap:
            logits = torch.tanh(logits / layout.logit_softcap) * layout.logit_softcap
        return logits

    return apply
