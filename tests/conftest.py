"""Shared fixtures: the bundled real checkpoints, loaded once per test run."""

from __future__ import annotations

import pytest
import torch

from depthprobe.models import load_model


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M in float32 with eager attention, loaded once."""
    torch.manual_seed(0)
    return load_model("smollm2-135m", dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="session")
def gemma3():
    """The bundled Gemma 3 270M in float32 with eager attention, loaded once."""
    return load_model("gemma3-270m", dtype="float32", attn_implementation="eager")


def tiny_config(architecture: str = "llama", n_layers: int = 4, width: int = 64):
    """Return a transformers config for a tiny random-weight model of one architecture."""
    from transformers import AutoConfig

    common = dict(vocab_size=500, num_hidden_layers=n_layers, hidden_size=width,
                  num_attention_heads=4, intermediate_size=2 * width)
    if architecture == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=500, n_layer=n_layers, n_embd=width,
                                    n_head=4, n_positions=256)
    if architecture == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", **common, max_position_embeddings=256)
    if architecture in ("gemma2", "gemma3_text"):
        return AutoConfig.for_model(architecture, **common, num_key_value_heads=2,
                                    head_dim=width // 4, max_position_embeddings=256)
    return AutoConfig.for_model(architecture, **common, num_key_value_heads=2,
                                max_position_embeddings=256)


def tiny_model(architecture: str = "llama", n_layers: int = 4, width: int = 64, seed: int = 0):
    """Build a tiny random-weight causal LM with eager attention, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(architecture, n_layers, width)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()
