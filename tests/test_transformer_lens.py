"""TransformerLens bridges: the same residuals, lens logits and run scores as HuggingFace."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from depthprobe.capture import capture_residuals
from depthprobe.methods.lens import LogitLens
from depthprobe.methods.transformer_lens import as_loaded_model, loaded_from_bridge
from depthprobe.run import RunConfig, run
from tiny_lm import tiny_with_tokenizer

bridge_module = pytest.importorskip("transformer_lens.model_bridge")
TEXT = "The ball is under cup A. Swap cups A and C."


def boot(loaded):
    """Wrap a tiny model's HuggingFace weights in a TransformerBridge (changes it in place)."""
    return bridge_module.TransformerBridge.boot_transformers(
        "tiny-llama", hf_model=loaded.model, tokenizer=loaded.tokenizer)


def every_residual(loaded, ids):
    return capture_residuals(loaded.model, loaded.layout, [ids], [list(range(len(ids)))],
                             progress=False)  # (positions, layers, d_model)


def test_logit_lens_matches_bridge(smollm2):
    loaded = tiny_with_tokenizer(smollm2.tokenizer)
    ids = smollm2.tokenizer(TEXT)["input_ids"]
    n_layers = loaded.layout.n_layers
    hf_residuals = every_residual(loaded, ids)
    with torch.no_grad():
        hf_logits = [LogitLens(loaded).logits(hf_residuals[:, layer], layer)
                     for layer in range(n_layers + 1)]

    bridge = boot(loaded)
    wrapped = loaded_from_bridge(bridge)
    assert wrapped.layout.n_layers == n_layers
    assert wrapped.device == torch.device("cpu")
    bridge_residuals = every_residual(wrapped, ids)
    assert torch.equal(bridge_residuals, hf_residuals)

    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([ids]))
        lens = LogitLens(wrapped)
        for layer in range(n_layers + 1):
            if layer == 0:
                residual = cache["resid_pre", 0][0]
            else:
                residual = cache["resid_post", layer - 1][0]
            assert torch.equal(residual, hf_residuals[:, layer]), layer
            tl_logits = bridge.unembed(bridge.ln_final(residual))
            assert torch.equal(lens.logits(residual, layer), tl_logits), layer
            assert torch.equal(tl_logits, hf_logits[layer]), layer


def test_run_scores_match_through_bridge(smollm2, tmp_path):
    settings = dict(n_stories=6, n_steps=2, n_folds=2, n_boot=20, behaviour=False,
                    figures=(), progress=False,
                    methods=("probe", "lens", "patchscope", "interchange"))
    bridge = boot(tiny_with_tokenizer(smollm2.tokenizer, seed=3))
    # The bridge's tokenizer prepends a BOS token, so the HuggingFace run uses it too.
    assert bridge.tokenizer("cup")["input_ids"][0] == bridge.tokenizer.bos_token_id
    same_weights = tiny_with_tokenizer(smollm2.tokenizer, seed=3)
    same_weights.tokenizer = bridge.tokenizer
    hf = run(RunConfig(output_dir=str(tmp_path / "hf"), **settings), model=same_weights)
    through_bridge = run(RunConfig(output_dir=str(tmp_path / "bridge"), **settings),
                         model=bridge)

    interchange = hf.scores["method"] == "interchange"
    pd.testing.assert_frame_equal(hf.scores[~interchange], through_bridge.scores[~interchange],
                                  rtol=1e-5, atol=1e-6)
    # The HuggingFace path reuses the shared prompt prefix's key-value cache and the
    # bridge runs in full; a random model's small logit differences magnify the rounding.
    pd.testing.assert_frame_equal(hf.scores[interchange], through_bridge.scores[interchange],
                                  rtol=1e-3, atol=1e-5)
    pd.testing.assert_frame_equal(hf.depths, through_bridge.depths, rtol=1e-3)
    for block in bridge.blocks:
        assert not block.hook_resid_pre._forward_pre_hooks
        assert not block.hook_resid_post._forward_hooks


def test_as_loaded_model_rejects_other_objects():
    with pytest.raises(TypeError, match="got Linear; load a model with depthprobe.load_model"):
        as_loaded_model(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Expected a TransformerLens TransformerBridge"):
        loaded_from_bridge(torch.nn.Linear(2, 2))
