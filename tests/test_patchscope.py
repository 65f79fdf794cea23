"""Residual writes and Patchscopes: exact no-op writes, hooks removed, padding, decoding."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from depthprobe.capture import capture_residuals
from depthprobe.methods.patching import PatchedPrompt, ResidualPatcher, ResidualWrite, run_patched
from depthprobe.methods.patchscope import (TARGET_PROMPTS, TargetPrompt, patchscope,
                                           patchscope_grid, readout_patchscope, target_prompt)
from depthprobe.sites import Site
from tiny_lm import tiny_loaded

ARCHITECTURES = ["llama", "gemma3_text", "gpt2"]
PROMPT = [5, 40, 77, 12, 99, 31, 8]


def hook_count(layout) -> int:
    return sum(len(block._forward_hooks) + len(block._forward_pre_hooks)
               for block in layout.blocks)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_writing_own_value_changes_nothing(architecture):
    loaded = tiny_loaded(architecture)
    n_layers = loaded.layout.n_layers
    residuals = capture_residuals(loaded.model, loaded.layout, [PROMPT],
                                  [list(range(len(PROMPT)))], progress=False)
    last = len(PROMPT) - 1
    plain = run_patched(loaded, [PatchedPrompt(PROMPT, last)])
    for layer in range(n_layers + 1):
        for position in (0, 3, last):
            write = (Site(layer, position), residuals[position, layer])
            patched = run_patched(loaded, [PatchedPrompt(PROMPT, last, [write])])
            assert torch.equal(patched, plain), (layer, position)


def test_write_changes_later_positions_only():
    loaded = tiny_loaded()
    noise = torch.randn(loaded.layout.d_model, generator=torch.Generator().manual_seed(0))
    write = [(Site(2, 3), noise * 10)]
    before = [run_patched(loaded, [PatchedPrompt(PROMPT, p)]) for p in range(len(PROMPT))]
    after = [run_patched(loaded, [PatchedPrompt(PROMPT, p, write)]) for p in range(len(PROMPT))]
    for position in range(3):
        assert torch.equal(before[position], after[position]), position
    for position in range(3, len(PROMPT)):
        assert not torch.allclose(before[position], after[position]), position


def test_patcher_removes_hooks_after_error():
    loaded = tiny_loaded()
    value = torch.zeros(loaded.layout.d_model)
    writes = [ResidualWrite(Site(0, 50), value), ResidualWrite(Site(3, 50), value)]
    with pytest.raises(ValueError, match="Write position 50 is outside the batch of 7"):
        with ResidualPatcher(loaded.layout, writes):
            assert hook_count(loaded.layout) == 2
            loaded.model(torch.tensor([PROMPT]))
    assert hook_count(loaded.layout) == 0


def test_left_padding_matches_single_prompts():
    loaded = tiny_loaded("gemma3_text")
    short, long = PROMPT[:4], PROMPT + [3, 4, 6]
    value = torch.ones(loaded.layout.d_model)
    prompts = [PatchedPrompt(short, 3, [(Site(1, 2), value)]),
               PatchedPrompt(long, 6, [(Site(2, 5), value)])]
    together = run_patched(loaded, prompts, batch_size=2)
    alone = torch.cat([run_patched(loaded, [p], batch_size=1) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_prefix_matches_full_run(architecture):
    loaded = tiny_loaded(architecture)
    value = torch.randn(loaded.layout.d_model, generator=torch.Generator().manual_seed(1))
    prompts = [PatchedPrompt(PROMPT, 6, [(Site(layer, 4), value)]) for layer in range(5)]
    prompts.append(PatchedPrompt(PROMPT, 6))
    full = run_patched(loaded, prompts, batch_size=4)
    reused = run_patched(loaded, prompts, batch_size=4, shared_prefix=4)
    assert torch.allclose(full, reused, atol=1e-5)
    with pytest.raises(ValueError, match="writes at position 4, inside the shared prefix of 5"):
        run_patched(loaded, prompts, shared_prefix=5)


def test_patched_prompt_rejects_bad_sites():
    loaded = tiny_loaded()
    value = torch.zeros(loaded.layout.d_model)
    with pytest.raises(ValueError, match="Position 7 is outside prompt 0, which has 7 tokens"):
        run_patched(loaded, [PatchedPrompt(PROMPT, 7)])
    with pytest.raises(ValueError, match=r"Layer 5 is outside 0\.\.4"):
        run_patched(loaded, [PatchedPrompt(PROMPT, 6, [(Site(5, 1), value)])])


def test_target_prompt_needs_one_placeholder():
    with pytest.raises(ValueError, match=r"nor a prompt with the placeholder \{x\}"):
        target_prompt("cat -> cat; ? ->")
    with pytest.raises(ValueError, match=r"has 0 placeholders \{x\}.*mark exactly one"):
        TargetPrompt("cat -> cat; ? ->")
    with pytest.raises(ValueError, match=r"has 2 placeholders"):
        TargetPrompt("{x} and {x}")
    assert target_prompt("say {x} again").filler == "?"
    assert target_prompt("identity") is TARGET_PROMPTS["identity"]


def test_identity_placeholder_position(smollm2):
    for name in ("identity", "identity-lines"):
        ids, position = TARGET_PROMPTS[name].encode(smollm2.tokenizer)
        assert smollm2.tokenizer.decode([ids[position]]).strip() == "?"
        assert smollm2.tokenizer.decode(ids[position + 1:]).strip() == "->"
    ids, position = TARGET_PROMPTS["description"].encode(smollm2.tokenizer)
    assert smollm2.tokenizer.decode([ids[position]]).strip() == "x"


def test_patchscope_rejects_bad_input():
    loaded = tiny_loaded()
    with pytest.raises(ValueError, match="Position 9 is outside the source prompt, which has 5"):
        patchscope(loaded, "hello", position=9, progress=False)
    with pytest.raises(ValueError, match="Position -6 is outside"):
        patchscope(loaded, "hello", position=-6, progress=False)
    with pytest.raises(ValueError, match=r"Layer 7 is outside 0\.\.4"):
        patchscope(loaded, "hello", source_layers=[1, 7], progress=False)
    with pytest.raises(ValueError, match=r"Layer 9 is outside 0\.\.4"):
        patchscope(loaded, "hello", target_layers=9, progress=False)
    with pytest.raises(ValueError, match=r"placeholder \{x\}"):
        patchscope(loaded, "hello", target="no placeholder here", progress=False)


def test_patchscope_grid_diagonal_matches_same_layer():
    loaded = tiny_loaded()
    same = patchscope(loaded, "hello", target="copy {x} ->", progress=False)
    grid = patchscope_grid(loaded, "hello", target="copy {x} ->", progress=False)
    n = loaded.layout.n_layers + 1
    assert len(grid.table) == n * n
    assert torch.equal(torch.tensor(grid.decoded()["p_expected"].to_numpy()),
                       torch.tensor(same.table["p_expected"].to_numpy()))
    assert same.expected == "o"
    figure = grid.figure()
    assert isinstance(figure, go.Figure)
    assert len(figure.data[0].z) == n


def test_generation_starts_with_top_token():
    loaded = tiny_loaded()
    result = patchscope(loaded, "hello", target="copy {x} ->", max_new_tokens=3, progress=False)
    for row in result.table.itertuples():
        assert row.generated.startswith(row.top_token)
        assert 1 <= len(row.generated) <= 3


def test_readout_patchscope_matches_patchscope():
    loaded = tiny_loaded()
    ids = loaded.tokenizer("hello")["input_ids"]
    features = capture_residuals(loaded.model, loaded.layout, [ids], [[4]], progress=False)
    layers = list(range(loaded.layout.n_layers + 1))
    expected = ids[4]
    details = readout_patchscope(loaded, features, layers, [0], [expected, 3],
                                 target="copy {x} ->", batch_size=4, progress=False)
    direct = patchscope(loaded, "hello", position=4, target="copy {x} ->", progress=False)
    assert details["p_vocab"].tolist() == pytest.approx(direct.table["p_expected"].tolist(),
                                                        abs=1e-6)
    assert details["rank"].tolist() == direct.table["expected_rank"].tolist()


def test_identity_patchscope_decodes_paris(smollm2):
    result = patchscope(smollm2, "I flew to Paris", position=-1, target="identity",
                        source_layers=range(1, 10), progress=False)
    assert result.source_token == " Paris"
    assert result.table["top_token"].tolist() == [" Paris"] * 9
    assert (result.table["precision_at_1"] == 1).all()
