"""Models split across devices by accelerate give the same residuals and scores.

Torch has one CPU device (``cpu:1`` is the same device as ``cpu``). The CPU tests
therefore split a model between the CPU and accelerate's disk offload. The second half of
the blocks keeps its weights in an offload folder and on the ``meta`` device, and
accelerate's hooks load them for each forward pass, the same hook machinery as a split over
several GPUs. A test with two GPUs runs where torch sees them.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from accelerate import dispatch_model

from conftest import tiny_model
from depthprobe.capture import capture_residuals
from depthprobe.models import LoadedModel, layout_for, load_model
from tiny_lm import ByteTokenizer

N_LAYERS = 4
SEQUENCES = [[5, 9, 17, 33, 2, 8, 71], [3, 4, 99, 12], [41, 7, 7, 7, 19, 250]]
POSITIONS = [[0, 3, 6], [1, 3], [2, 5]]


def _split_map(first, second, n_layers: int = N_LAYERS) -> dict:
    """Put the embedding and the first half of the blocks on ``first``, the rest on
    ``second``."""
    device_map = {"model.embed_tokens": first, "model.rotary_emb": first}
    for block in range(n_layers):
        device_map[f"model.layers.{block}"] = first if block < n_layers // 2 else second
    device_map.update({"model.norm": second, "lm_head": second})
    return device_map


@pytest.fixture
def split_model(tmp_path):
    """A tiny Llama split between the CPU and disk offload, and an unsplit copy."""
    model = tiny_model("llama", n_layers=N_LAYERS, width=32)
    reference = copy.deepcopy(model)
    split = dispatch_model(model, _split_map("cpu", "disk"), offload_dir=str(tmp_path))
    return split, reference


def test_split_really_offloads_half(split_model):
    split, _ = split_model
    blocks = layout_for(split).blocks

    assert all(hasattr(block, "_hf_hook") for block in blocks)
    assert next(blocks[0].parameters()).device.type == "cpu"
    assert next(blocks[-1].parameters()).device.type == "meta"


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_split_model_gives_same_residuals(split_model, padding_side):
    split, reference = split_model
    expected = capture_residuals(reference, layout_for(reference), SEQUENCES, POSITIONS,
                                 batch_size=3, padding_side=padding_side, progress=False)
    captured = capture_residuals(split, layout_for(split), SEQUENCES, POSITIONS,
                                 batch_size=3, padding_side=padding_side, progress=False)

    assert captured.device.type == "cpu"
    assert torch.equal(captured, expected)


def test_split_model_gives_same_run_tables(split_model, tmp_path):
    from depthprobe.run import RunConfig, run

    split, reference = split_model
    config = RunConfig(n_stories=12, n_steps=2, behaviour=False, figures=(), n_boot=20,
                       progress=False)
    whole = run(config, output_dir=str(tmp_path / "whole"), model=LoadedModel(
        reference, ByteTokenizer(), layout_for(reference), name="tiny"))
    parted = run(config, output_dir=str(tmp_path / "split"), model=LoadedModel(
        split, ByteTokenizer(), layout_for(split), name="tiny"))

    pd.testing.assert_frame_equal(parted.scores, whole.scores, check_exact=True)
    pd.testing.assert_frame_equal(parted.depths, whole.depths, check_exact=True)


def _save_tiny_checkpoint(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny_model("llama", n_layers=N_LAYERS, width=32).save_pretrained(folder)
    vocabulary = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i for i in range(2, 500)}}
    word_level = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]",
                            pad_token="[PAD]").save_pretrained(folder)


@pytest.mark.parametrize("device_map", ["auto", "explicit"])
def test_load_model_with_device_map(tmp_path, device_map):
    _save_tiny_checkpoint(tmp_path)
    plain = load_model(str(tmp_path), attn_implementation="eager")
    mapped = load_model(str(tmp_path), attn_implementation="eager",
                        device_map=_split_map("cpu", "cpu") if device_map == "explicit"
                        else device_map)
    expected = capture_residuals(plain.model, plain.layout, SEQUENCES, POSITIONS,
                                 progress=False)
    captured = capture_residuals(mapped.model, mapped.layout, SEQUENCES, POSITIONS,
                                 progress=False)

    assert torch.equal(captured, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_split_gives_same_residuals():
    model = tiny_model("llama", n_layers=N_LAYERS, width=32)
    expected = capture_residuals(model, layout_for(model), SEQUENCES, POSITIONS,
                                 progress=False)
    split = dispatch_model(model, _split_map(0, 1))
    blocks = layout_for(split).blocks
    captured = capture_residuals(split, layout_for(split), SEQUENCES, POSITIONS,
                                 progress=False)

    assert next(blocks[0].parameters()).device == torch.device("cuda", 0)
    assert next(blocks[-1].parameters()).device == torch.device("cuda", 1)
    assert captured.device.type == "cpu"
    torch.testing.assert_close(captured, expected, atol=1e-4, rtol=1e-4)
