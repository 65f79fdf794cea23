"""Layouts and residual capture on state-space and hybrid models built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from depthprobe.capture import capture_residuals
from depthprobe.models import layout_for, unembed_residual
from depthprobe.models.layout import KINDS, MIXERS, kind_of

from conftest import tiny_model

WIDTH = 64
VOCAB = 500

# Tiny configs: 4 blocks (3 for the pure state-space models), width 64, and MoE layers
# cut to two or four small experts. Scans run in chunks of 16 tokens, because the PyTorch
# fallback of the Mamba 2 scan pads every sequence to a whole chunk (256 by default). Falcon-H1 and Granite get a logit scale other than 1 so
# that the unembedding test can see whether the layout applies it.
_CONFIGS = {
    "mamba": dict(num_hidden_layers=3, state_size=8, expand=2, conv_kernel=4),
    "mamba2": dict(num_hidden_layers=3, state_size=8, expand=2, n_groups=1, num_heads=8,
                   head_dim=16, conv_kernel=4, chunk_size=16),
    "falcon_mamba": dict(num_hidden_layers=3, state_size=8, expand=2),
    "jamba": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=1, num_experts=2,
                  mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8),
    "bamba": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, mamba_d_state=8, mamba_n_heads=8, mamba_d_head=16,
                  mamba_expand=2, attn_layer_indices=[1, 3], mamba_chunk_size=16),
    "zamba2": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=128, mamba_d_state=8, mamba_expand=2, n_mamba_heads=8,
                   layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
                   attention_head_dim=16, chunk_size=16),
    "falcon_h1": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, mamba_d_state=8, mamba_n_heads=8,
                      mamba_d_head="auto", mamba_d_ssm=None, mamba_expand=2,
                      lm_head_multiplier=0.5, mamba_chunk_size=16),
    "granitemoehybrid": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, mamba_d_state=8, mamba_n_heads=8,
                             mamba_d_head=16, mamba_expand=2, num_local_experts=0,
                             layer_types=["mamba", "attention", "mamba", "attention"],
                             logits_scaling=4.0, mamba_chunk_size=16),
    "qwen3_next": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, head_dim=16, linear_num_key_heads=2,
                       linear_num_value_heads=4, linear_key_head_dim=16,
                       linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, shared_expert_intermediate_size=32,
                       layer_types=["linear_attention", "full_attention",
                                    "linear_attention", "full_attention"]),
}

ARCHITECTURES = sorted(_CONFIGS)

# The mixer of each block that each config above must produce.
EXPECTED_MIXERS = {
    "mamba": ("recurrent",) * 3,
    "mamba2": ("recurrent",) * 3,
    "falcon_mamba": ("recurrent",) * 3,
    "jamba": ("recurrent", "attention") * 2,
    "bamba": ("recurrent", "attention") * 2,
    "zamba2": ("recurrent", "attention+recurrent") * 2,
    "falcon_h1": ("attention+recurrent",) * 4,
    "granitemoehybrid": ("recurrent", "attention") * 2,
    "qwen3_next": ("recurrent", "attention") * 2,
}

# Mamba and Falcon-Mamba return the block outputs and the normed last one as their hidden
# states. They leave out the embedding output, which the others return first.
NO_EMBEDDING_STATE = {"mamba", "falcon_mamba"}


def recurrent_model(architecture: str, seed: int = 0):
    """Build a tiny random-weight causal LM of a state-space or hybrid architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(architecture, vocab_size=VOCAB, hidden_size=WIDTH,
                                  **_CONFIGS[architecture])
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def built(request):
    model = recurrent_model(request.param)
    return request.param, model, layout_for(model)


def random_sequences(count: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (count, length), generator=generator).tolist()


def test_layout_mixers_and_kind(built):
    architecture, model, layout = built
    assert layout.block_mixers == EXPECTED_MIXERS[architecture]
    assert set(layout.block_mixers) <= set(MIXERS)
    assert layout.kind in KINDS
    expected_kind = "recurrent" if architecture in ("mamba", "mamba2", "falcon_mamba") else "hybrid"
    assert layout.kind == expected_kind
    assert layout.d_model == WIDTH
    assert layout.unembed is model.lm_head
    assert layout.n_layers == model.config.num_hidden_layers


def test_transformer_layouts_are_feedforward():
    for architecture in ("llama", "gpt2", "gemma3_text"):
        layout = layout_for(tiny_model(architecture, n_layers=2, width=32))
        assert layout.kind == "feedforward"
        assert layout.block_mixers == ("attention", "attention")
        assert layout.block_sources is None
        assert layout.layer_label(2) == "2"


def test_kind_of_mixed_stack():
    assert kind_of(("attention", "attention")) == "feedforward"
    assert kind_of(("recurrent",)) == "recurrent"
    assert kind_of(("attention+recurrent", "attention+recurrent")) == "hybrid"
    assert kind_of(("recurrent", "attention")) == "hybrid"


def test_capture_matches_hidden_states(built):
    architecture, model, layout = built
    sequences = random_sequences(3, 9)
    positions = [[0, 4, 8]] * 3
    captured = capture_residuals(model, layout, sequences, positions, batch_size=3,
                                 progress=False)  # (9 readouts, L + 1, d_model)

    with torch.no_grad():
        out = model(input_ids=torch.tensor(sequences), output_hidden_states=True,
                    use_cache=False)
    states = torch.stack(out.hidden_states, dim=1)[:, :, [0, 4, 8]]  # (seq, states, pos, d)
    states = states.permute(0, 2, 1, 3).reshape(9, len(out.hidden_states), WIDTH)

    L = layout.n_layers
    if architecture in NO_EMBEDDING_STATE:
        assert len(out.hidden_states) == L + 1
        torch.testing.assert_close(captured[:, 1:L], states[:, : L - 1], rtol=0, atol=1e-5)
    else:
        assert len(out.hidden_states) == L + 1
        torch.testing.assert_close(captured[:, :L], states[:, :L], rtol=0, atol=1e-5)
    # The last hidden state is taken after the final norm, so it is not layer L.
    with torch.no_grad():
        normed = layout.final_norm(captured[:, L])
    torch.testing.assert_close(normed, states[:, -1], rtol=0, atol=1e-5)


def test_unembed_reproduces_logits(built):
    architecture, model, layout = built
    sequences = random_sequences(2, 6, seed=1)
    captured = capture_residuals(model, layout, sequences, [[5], [5]], layers=[layout.n_layers],
                                 progress=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(sequences), use_cache=False).logits[:, -1]
        lens = unembed_residual(layout)(captured[:, 0])
    torch.testing.assert_close(lens, logits.float(), rtol=0, atol=1e-4)


def test_capture_same_with_left_padding(built):
    architecture, model, layout = built
    sequences = random_sequences(4, 9, seed=2)
    sequences = [seq[: 5 + i] for i, seq in enumerate(sequences)]
    positions = [[len(seq) - 1, 2] for seq in sequences]
    right = capture_residuals(model, layout, sequences, positions, batch_size=4,
                              padding_side="right", progress=False)
    left = capture_residuals(model, layout, sequences, positions, batch_size=4,
                             padding_side="left", progress=False)
    alone = capture_residuals(model, layout, sequences, positions, batch_size=1, progress=False)
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-4)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-4)


def test_missing_unembed_rejected(built):
    architecture, model, layout = built
    lm_head = layout.unembed
    layout.unembed = None
    try:
        with pytest.raises(ValueError, match="needs an unembedding.*probe"):
            unembed_residual(layout)
    finally:
        layout.unembed = lm_head


class _PlantedLabel:
    """Add ``+v`` or ``-v`` to a block's output at one position, by a label per sequence.

    The label of a sequence is looked up by its token ids, which an embedding pre-hook
    records, so that nothing in the input predicts it and only layers at or above the
    planted one can expose it.
    """

    def __init__(self, labels: dict[tuple[int, ...], int], vector: torch.Tensor, position: int):
        self.labels, self.vector, self.position = labels, vector, position
        self.ids = None

    def record_ids(self, module, args):
        self.ids = args[0]

    def add(self, module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        for row, ids in enumerate(self.ids.tolist()):
            sign = 1.0 if self.labels[tuple(ids[: self.position + 1])] else -1.0
            hidden[row, self.position] += sign * self.vector


def probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, features, labels, groups=groups,
                                 cv=GroupKFold(n_splits=5)).mean())


def test_planted_signal_found_at_its_layer(built):
    architecture, model, layout = built
    planted_layer = 2  # the output of block 1
    sequences = random_sequences(160, 8, seed=3)
    position = 6
    generator = torch.Generator().manual_seed(4)
    label_list = torch.randint(0, 2, (len(sequences),), generator=generator).tolist()
    labels = {tuple(seq[: position + 1]): label for seq, label in zip(sequences, label_list)}
    vector = torch.randn(WIDTH, generator=generator)
    vector = 4.0 * vector / vector.norm() * WIDTH ** 0.5

    planter = _PlantedLabel(labels, vector, position)
    handles = [layout.embed.register_forward_pre_hook(planter.record_ids),
               layout.blocks[planted_layer - 1].register_forward_hook(planter.add)]
    try:
        captured = capture_residuals(model, layout, sequences, [[position]] * len(sequences),
                                     batch_size=32, progress=False)
    finally:
        for handle in handles:
            handle.remove()

    y = np.array(label_list)
    groups = np.arange(len(sequences))
    scores = [probe_accuracy(captured[:, layer].numpy(), y, groups)
              for layer in range(layout.n_layers + 1)]
    for layer, score in enumerate(scores):
        if layer < planted_layer:
            assert score < 0.7, f"layer {layer} scored {score:.2f} before the planted layer"
        else:
            assert score > 0.9, f"layer {layer} scored {score:.2f} at or after the planted layer"
