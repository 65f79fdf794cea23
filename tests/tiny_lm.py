"""A byte tokenizer and tiny random-weight models wrapped as ``LoadedModel`` for method tests."""

from __future__ import annotations

import torch

from conftest import tiny_config, tiny_model
from depthprobe.models import LoadedModel, layout_for


class ByteTokenizer:
    """Map each byte of a text to one token id (byte + 2), below the tiny vocabulary of 500.

    Offsets are per byte, so ASCII texts align character by character.
    """

    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False, **kwargs):
        encoded = {"input_ids": [2 + byte for byte in text.encode()]}
        if return_offsets_mapping:
            encoded["offset_mapping"] = [(i, i + 1) for i in range(len(text.encode()))]
        return encoded

    def decode(self, ids):
        return "".join(chr(i - 2) if i >= 2 else "" for i in ids)


def tiny_loaded(architecture: str = "llama", seed: int = 0, n_layers: int = 4) -> LoadedModel:
    """A tiny random model with the byte tokenizer."""
    model = tiny_model(architecture, n_layers=n_layers, seed=seed)
    return LoadedModel(model, ByteTokenizer(), layout_for(model), name=f"tiny-{architecture}")


def tiny_with_tokenizer(tokenizer, architecture: str = "llama", seed: int = 0,
                        n_layers: int = 4) -> LoadedModel:
    """A tiny random model whose vocabulary fits a real tokenizer, for task texts."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(architecture, n_layers=n_layers)
    config.vocab_size = len(tokenizer)
    config.architectures = [{"llama": "LlamaForCausalLM"}.get(architecture, "")]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return LoadedModel(model, tokenizer, layout_for(model), name=f"tiny-{architecture}")
