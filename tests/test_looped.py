"""Looping a model's blocks: unrolled layers, exact identity at TIMES=1, and errors."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from depthprobe.capture import capture_residuals
from depthprobe.models import layout_for
from depthprobe.models.looped import LoopedBlock, LoopSpec, loop_model, parse_loop, unrolled_copy

from conftest import tiny_model
from test_architectures import recurrent_model

VOCAB = 500


def gemma_with_sliding_window(seed: int = 0):
    """Return a tiny Gemma 3 whose blocks alternate a 3-token sliding window and full attention."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=VOCAB, num_hidden_layers=4, hidden_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
        max_position_embeddings=256, sliding_window=3,
        layer_types=["sliding_attention", "full_attention"] * 2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def unrolled_reference(model, sources: list[tuple[int, int]]):
    """Build an ordinary model with ``len(sources)`` blocks from its config, and copy into
    block ``i`` the weights of original block ``sources[i][0]``: an unrolled looped model
    made without any depthprobe code."""
    config = copy.deepcopy(model.config)
    layer_types = getattr(model.config, "layer_types", None)
    config.num_hidden_layers = len(sources)
    if layer_types is not None:
        try:
            config.layer_types = [layer_types[block] for block, _ in sources]
        except AttributeError:
            pass  # derived from num_hidden_layers
    reference = AutoModelForCausalLM.from_config(
        config, attn_implementation=model.config._attn_implementation).eval()

    weights = model.state_dict()
    copied = {}
    for key in reference.state_dict():
        match = re.match(r"(.*(?:layers|\.h)\.)(\d+)(\..*)", key)
        if match is None:
            copied[key] = weights[key]
        else:
            block = sources[int(match.group(2))][0]
            copied[key] = weights[f"{match.group(1)}{block}{match.group(3)}"]
    reference.load_state_dict(copied)
    return reference


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def random_ids(rows: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_parse_loop_valid():
    assert parse_loop("10:14:3") == LoopSpec(10, 14, 3)
    assert parse_loop(" 0 : 2 : 1 ") == LoopSpec(0, 2, 1)
    assert str(LoopSpec(10, 14, 3)) == "10:14:3"


@pytest.mark.parametrize("text", ["10:14", "a:b:c", "10-14-3", "1:2:3:4", ""])
def test_parse_loop_rejects_form(text):
    with pytest.raises(ValueError, match="START:END:TIMES"):
        parse_loop(text)


def test_parse_loop_rejects_zero_times():
    with pytest.raises(ValueError, match="TIMES must be 1 or more"):
        parse_loop("1:3:0")


@pytest.mark.parametrize("spec", [LoopSpec(3, 3, 2), LoopSpec(2, 1, 2), LoopSpec(0, 5, 2),
                                  LoopSpec(-1, 2, 2)])
def test_loop_range_checked(spec):
    with pytest.raises(ValueError, match=r"4 blocks.*0 <= START < END <= 4"):
        spec.check(4)


def test_block_sources_order():
    sources = LoopSpec(1, 3, 3).block_sources(4)
    assert sources == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (2, 2), (3, 0)]


def test_loop_needs_end_and_times():
    with pytest.raises(TypeError, match="START:END:TIMES"):
        loop_model(tiny_model("llama", n_layers=2, width=32), 0)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma3_text"])
def test_times_one_is_identity(architecture):
    model = tiny_model(architecture, n_layers=4, width=64)
    looped = loop_model(model, 1, 3, 1)
    ids = random_ids()
    assert torch.equal(logits_of(looped.model, ids), logits_of(model, ids))

    sequences, positions = ids.tolist(), [[0, 4, 8]] * 2
    original = capture_residuals(model, layout_for(model), sequences, positions, progress=False)
    unrolled = capture_residuals(looped.model, looped.layout, sequences, positions,
                                 progress=False)
    assert torch.equal(unrolled, original)


@pytest.mark.parametrize("build", [
    lambda: tiny_model("llama", n_layers=4, width=64),
    lambda: tiny_model("gpt2", n_layers=4, width=64),
    gemma_with_sliding_window,
    lambda: recurrent_model("mamba"),
    lambda: recurrent_model("jamba"),
], ids=["llama", "gpt2", "gemma3-sliding", "mamba", "jamba"])
def test_loop_matches_unrolled_reference(build):
    model = build()
    looped = loop_model(model, "1:3:3")
    sources = LoopSpec(1, 3, 3).block_sources(model.config.num_hidden_layers)
    ids = random_ids(length=10)
    reference = unrolled_reference(model, sources)
    torch.testing.assert_close(logits_of(looped.model, ids), logits_of(reference, ids),
                               rtol=0, atol=1e-5)

    sequences, positions = ids.tolist(), [[2, 9]] * 2
    ours = capture_residuals(looped.model, looped.layout, sequences, positions, progress=False)
    theirs = capture_residuals(reference, layout_for(reference), sequences, positions,
                               progress=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_original_model_left_unchanged():
    model = tiny_model("llama", n_layers=4, width=64)
    ids = random_ids()
    before = logits_of(model, ids)
    blocks = list(layout_for(model).blocks)
    looped = loop_model(model, 0, 2, 3)

    assert model.config.num_hidden_layers == 4
    assert not hasattr(model.config, "depthprobe_loop")
    assert list(layout_for(model).blocks) == blocks
    assert torch.equal(logits_of(model, ids), before)
    assert looped.model.config.num_hidden_layers == 8
    assert looped.model.config.depthprobe_loop == "0:2:3"
    shared = looped.layout.blocks[0].block.self_attn.q_proj.weight
    assert shared is model.model.layers[0].self_attn.q_proj.weight


def test_layout_labels_passes():
    looped = loop_model(tiny_model("llama", n_layers=4, width=32), 1, 3, 2)
    layout = looped.layout
    assert layout.n_layers == 6
    assert layout.is_looped
    assert all(isinstance(block, LoopedBlock) for block in layout.blocks)
    assert layout.block_sources == ((0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (3, 0))
    assert layout.layer_label(0) == "0"
    assert layout.layer_label(2) == "2 (block 1, pass 1)"
    assert layout.layer_label(4) == "4 (block 1, pass 2)"
    assert layout.layer_label(6) == "6 (block 3, pass 1)"
    assert layout.blocks[1].block is layout.blocks[3].block


def test_passes_recorded_separately():
    looped = loop_model(tiny_model("llama", n_layers=4, width=32), 1, 2, 3)
    captured = capture_residuals(looped.model, looped.layout, [[5, 6, 7, 8]], [[3]],
                                 progress=False)
    # Layers 2, 3 and 4 are the three passes through block 1, each on the previous output.
    assert not torch.equal(captured[0, 2], captured[0, 3])
    assert not torch.equal(captured[0, 3], captured[0, 4])


@pytest.mark.parametrize("build", [gemma_with_sliding_window, lambda: recurrent_model("mamba")],
                         ids=["gemma3-sliding", "mamba"])
def test_generate_with_cache_matches(build):
    looped = loop_model(build(), 0, 2, 2)
    ids = random_ids(rows=1, length=6, seed=3)
    with torch.no_grad():
        cached = looped.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True,
                                       attention_mask=torch.ones_like(ids))
        uncached = looped.model.generate(ids, max_new_tokens=6, do_sample=False,
                                         use_cache=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(cached, uncached)


def test_unrolled_copy_saves_and_reloads(tmp_path):
    looped = loop_model(gemma_with_sliding_window(), 1, 3, 2)
    ids = random_ids(length=8)
    ordinary = unrolled_copy(looped.model)
    assert not any(isinstance(module, LoopedBlock) for module in ordinary.modules())
    assert torch.equal(logits_of(ordinary, ids), logits_of(looped.model, ids))

    ordinary.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits_of(reloaded, ids), logits_of(looped.model, ids))
    assert layout_for(reloaded).block_sources == looped.layout.block_sources


def test_unrolled_copy_needs_looped_model():
    with pytest.raises(ValueError, match="not looped"):
        unrolled_copy(tiny_model("llama", n_layers=2, width=32))


def test_already_looped_rejected():
    looped = loop_model(tiny_model("llama", n_layers=4, width=32), 1, 3, 2)
    with pytest.raises(ValueError, match="already looped"):
        loop_model(looped, 0, 1, 2)


def test_zamba2_rejected():
    with pytest.raises(ValueError, match="zamba2.*not supported"):
        loop_model(recurrent_model("zamba2"), 0, 2, 2)


def test_smollm2_times_one_is_identity(smollm2):
    model, tokenizer, layout = smollm2
    looped = loop_model(smollm2, 10, 14, 1)
    assert looped.tokenizer is tokenizer
    assert looped.weights_hash == smollm2.weights_hash
    texts = ["The ball is under cup A. Swap cups A and B.", "I flew to Paris."]
    sequences = [tokenizer(text)["input_ids"] for text in texts]
    positions = [[len(seq) - 1, 3] for seq in sequences]
    original = capture_residuals(model, layout, sequences, positions, batch_size=2,
                                 progress=False)
    unrolled = capture_residuals(looped.model, looped.layout, sequences, positions,
                                 batch_size=2, progress=False)
    assert torch.equal(unrolled, original)


def test_smollm2_loop_range_checked(smollm2):
    with pytest.raises(ValueError, match=r"30 blocks.*END <= 30"):
        loop_model(smollm2, "20:31:2")


def test_smollm2_middle_loop_runs(smollm2):
    model, tokenizer, layout = smollm2
    looped = loop_model(smollm2, "10:14:2")
    assert looped.layout.n_layers == 34
    assert looped.layout.layer_label(15) == "15 (block 10, pass 2)"
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    logits = logits_of(looped.model, ids)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, logits_of(model, ids))
