"""Residual capture: exact agreement with HF and TransformerLens, padding, hook cleanup."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from depthprobe.capture import ResidualRecorder, capture_residuals
from depthprobe.models import layout_for, load_model

ARCHITECTURES = ["llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt2", "gpt_neox"]


def _random_sequences(n: int, seed: int = 0, vocab: int = 500) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 17, (n,), generator=generator)
    return [torch.randint(1, vocab, (int(k),), generator=generator).tolist() for k in lengths]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    # Per-vector relative error, so tokens with huge norms (attention sinks) are not
    # judged on an absolute scale.
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-6)).max())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_capture_equals_hf_hidden_states(architecture):
    model = tiny_model(architecture)
    layout = layout_for(model)
    sequence = _random_sequences(1, seed=1)[0]
    positions = list(range(len(sequence)))

    captured = capture_residuals(model, layout, [sequence], [positions], progress=False)
    with torch.no_grad():
        hidden = model(torch.tensor([sequence]), output_hidden_states=True).hidden_states

    # hidden_states[l] for l < L is the input of block l; the last entry is taken after
    # the final norm, so layer L is checked through the final norm instead.
    for layer in range(layout.n_layers):
        assert torch.equal(captured[:, layer], hidden[layer][0]), f"layer {layer}"
    with torch.no_grad():
        normed = layout.final_norm(captured[:, layout.n_layers])
    torch.testing.assert_close(normed, hidden[-1][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("architecture", ["llama", "gemma3_text", "gpt2"])
def test_batched_equals_one_by_one(architecture, side):
    model = tiny_model(architecture)
    layout = layout_for(model)
    sequences = _random_sequences(6, seed=2)
    positions = [[0, len(s) // 2, len(s) - 1] for s in sequences]

    single = capture_residuals(model, layout, sequences, positions, batch_size=1,
                               progress=False)
    batched = capture_residuals(model, layout, sequences, positions, batch_size=4,
                                padding_side=side, pad_token_id=0, progress=False)
    assert batched.shape == (18, layout.n_layers + 1, layout.d_model)
    assert _relative_error(batched, single) < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_by_one_on_smollm2(smollm2, side):
    model, tokenizer, layout = smollm2
    texts = ["The ball is under cup A. Swap cups C and A.", "Hi.",
             "I flew to Paris last week and the bank by the river was closed."]
    sequences = [tokenizer(t)["input_ids"] for t in texts]
    positions = [[0, len(s) - 1] for s in sequences]

    single = capture_residuals(model, layout, sequences, positions, batch_size=1,
                               progress=False)
    batched = capture_residuals(model, layout, sequences, positions, batch_size=3,
                                padding_side=side, pad_token_id=tokenizer.pad_token_id,
                                progress=False)
    assert _relative_error(batched, single) < 1e-4


def test_capture_equals_transformer_lens_resid_post():
    from transformer_lens.model_bridge import TransformerBridge

    # A private copy: booting a bridge replaces the model's blocks in place.
    model, tokenizer, layout = load_model("smollm2-135m", attn_implementation="eager")
    ids = tokenizer("The ball is under cup A. Swap cups C and A.", return_tensors="pt")
    ids = ids["input_ids"]
    ours = capture_residuals(model, layout, [ids[0].tolist()], [list(range(ids.shape[1]))],
                             progress=False)

    bridge = TransformerBridge.boot_transformers(
        "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=model, tokenizer=tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)

    for block in range(layout.n_layers):
        expected = cache[f"blocks.{block}.hook_resid_post"][0]
        assert torch.equal(ours[:, block + 1], expected), f"block {block}"


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hook_survives_exception():
    model = tiny_model("llama")
    layout = layout_for(model)
    before = _hook_count(model)

    with pytest.raises(RuntimeError, match="planted failure"):
        with ResidualRecorder(layout) as recorder:
            assert _hook_count(model) == before + layout.n_layers + 1
            recorder.select(torch.tensor([0]), torch.tensor([0]))
            model(torch.tensor([[1, 2, 3]]))
            raise RuntimeError("planted failure")
    assert _hook_count(model) == before


def test_no_hook_survives_failed_forward():
    model = tiny_model("llama")
    layout = layout_for(model)
    before = _hook_count(model)
    # Token id 10_000 is outside the 500-token vocabulary, so the forward pass raises.
    with pytest.raises(IndexError):
        capture_residuals(model, layout, [[1, 10_000]], [[1]], progress=False)
    assert _hook_count(model) == before


def test_position_outside_text_is_rejected():
    model = tiny_model("llama")
    layout = layout_for(model)
    with pytest.raises(ValueError, match="Readout position 7 of sequence 0"):
        capture_residuals(model, layout, [[1, 2, 3]], [[7]], progress=False)


def test_unknown_padding_side_is_rejected():
    model = tiny_model("llama")
    layout = layout_for(model)
    with pytest.raises(ValueError, match="'middle' is invalid"):
        capture_residuals(model, layout, [[1, 2, 3]], [[1]], padding_side="middle",
                          progress=False)
