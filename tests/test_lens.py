"""Logit lens and tuned lens: exact identities, save and load, planted answers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthprobe.capture import capture_residuals
from depthprobe.methods.answers import class_answer_tokens, readout_tables
from depthprobe.methods.lens import LogitLens, lens_details, top_tokens
from depthprobe.methods.tuned_lens import TunedLens
from depthprobe.models import LoadedModel
from depthprobe.tasks import make_task
from depthprobe.tasks.base import Task
from tiny_lm import ByteTokenizer, tiny_loaded

ARCHITECTURES = ["llama", "gemma2", "gemma3_text", "gpt2"]
TOKENS = [3, 17, 42, 99, 5, 7, 250]


def all_layers(loaded: LoadedModel, ids=TOKENS) -> torch.Tensor:
    """Residuals at every position and layer, shaped (positions, layers, d_model)."""
    return capture_residuals(loaded.model, loaded.layout, [ids], [list(range(len(ids)))],
                             progress=False)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logit_lens_last_layer_is_model_logits(architecture):
    loaded = tiny_loaded(architecture)
    features = all_layers(loaded)
    lens = LogitLens(loaded)
    with torch.no_grad():
        mine = lens.logits(features[None, :, -1], loaded.layout.n_layers)
        theirs = loaded.model(torch.tensor([TOKENS])).logits
    assert torch.equal(mine, theirs)


def test_gemma2_lens_applies_softcap():
    loaded = tiny_loaded("gemma2")
    assert loaded.layout.logit_softcap is not None
    features = all_layers(loaded)
    with torch.no_grad():
        logits = LogitLens(loaded).logits(features[:, 2] * 1e3, 2)
    assert logits.abs().max() <= loaded.layout.logit_softcap


@pytest.mark.parametrize("architecture", ["llama", "gemma3_text"])
def test_tuned_lens_at_init_is_logit_lens(architecture):
    loaded = tiny_loaded(architecture)
    features = all_layers(loaded)
    tuned, logit = TunedLens(loaded), LogitLens(loaded)
    with torch.no_grad():
        for layer in range(loaded.layout.n_layers + 1):
            assert torch.equal(tuned.logits(features[:, layer], layer),
                               logit.logits(features[:, layer], layer)), layer


def test_tuned_lens_training_lowers_kl():
    loaded = tiny_loaded()
    texts = ["the ball is under cup A.", "swap cups B and C.", "where is the ball now?"]
    lens = TunedLens(loaded).fit(texts, n_steps=25, lr=1e-2, batch_size=3, progress=False)
    assert len(lens.loss_log_) == 25
    assert lens.loss_log_[-1] < 0.5 * lens.loss_log_[0]
    features = all_layers(loaded)
    with torch.no_grad():
        last = loaded.layout.n_layers
        assert torch.equal(lens.logits(features[:, last], last),
                           LogitLens(loaded).logits(features[:, last], last))


def test_tuned_lens_save_load_round_trip(tmp_path):
    loaded = tiny_loaded()
    lens = TunedLens(loaded).fit(["some text to train on", "and another one"], n_steps=3,
                                 lr=1e-2, batch_size=2, progress=False)
    lens.save(tmp_path / "lens")
    again = TunedLens.load(tmp_path / "lens", loaded)
    features = all_layers(loaded)
    with torch.no_grad():
        for layer in range(loaded.layout.n_layers + 1):
            assert torch.equal(lens.logits(features[:, layer], layer),
                               again.logits(features[:, layer], layer)), layer
    assert again.loss_log_ == lens.loss_log_
    assert again.training_info["n_steps"] == 3


def test_tuned_lens_rejects_other_model(tmp_path):
    TunedLens(tiny_loaded(seed=0)).save(tmp_path / "lens")
    with pytest.raises(ValueError, match="fingerprint") as error:
        TunedLens.load(tmp_path / "lens", tiny_loaded(seed=1))
    assert "TunedLens(model).fit" in str(error.value)
    with pytest.raises(ValueError, match="n_layers 4 .this model has 3.") as error:
        TunedLens.load(tmp_path / "lens", tiny_loaded(n_layers=3))
    assert "tiny-llama" in str(error.value)


def test_tuned_lens_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="tuned_lens.safetensors"):
        TunedLens.load(tmp_path / "nothing", tiny_loaded())


def test_lens_rejects_layer_outside_range():
    loaded = tiny_loaded()
    features = all_layers(loaded)
    with pytest.raises(ValueError, match=r"Layer 5 is outside 0\.\.4"):
        LogitLens(loaded).logits(features[:, 0], 5)
    with pytest.raises(ValueError, match=r"Layer -1 is outside 0\.\.4"):
        top_tokens(loaded, "abc", layers=[-1])


def test_top_tokens_last_layer_matches_model():
    loaded = tiny_loaded()
    table = top_tokens(loaded, "hello", k=2)
    ids = ByteTokenizer()("hello")["input_ids"]
    assert len(table) == len(ids) * (loaded.layout.n_layers + 1) * 2
    with torch.no_grad():
        expected = loaded.model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
    top = table[(table["layer"] == loaded.layout.n_layers) & (table["rank"] == 0)]
    assert top.sort_values("position")["token_id"].tolist() == expected


def test_lens_details_planted_answers():
    # A residual along the unembedding row of token t makes t the top token of the
    # logit lens: the row's dot product with itself beats its dot products with the rest.
    loaded = tiny_loaded()
    unembed = loaded.model.lm_head.weight.detach()
    class_tokens = [10, 20, 30]
    labels = np.array([0, 1, 2, 0])
    steps = np.array([0, 0, 1, 1])
    planted = [0, 1, 2, 0]
    wrong = [1, 2, 0, 2]
    features = torch.stack([
        torch.stack([unembed[class_tokens[wrong[i]]], unembed[class_tokens[planted[i]]]])
        for i in range(4)]) * 50  # (readouts, 2 layers, d_model)
    details = lens_details(LogitLens(loaded), features, [0, 1], labels, class_tokens,
                           progress=False)
    by_layer = details.groupby("layer")
    assert by_layer["top1_class"].mean().tolist() == [0.0, 1.0]
    assert (details[details["layer"] == 1]["rank"] == 0).all()
    assert (details[details["layer"] == 1]["top1_vocab"] == 1).all()
    assert (details[details["layer"] == 0]["p_class"] < 1 / 3).all()

    hits = details.pivot(index="readout_id", columns="layer", values="top1_class").to_numpy()
    scores, readouts = readout_tables("lens", hits, [0, 1], steps, np.array([0, 0, 1, 1]),
                                      {0: 0.5, 1: 0.5})
    assert scores["score"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert scores["count"].tolist() == [2, 2, 2, 2]
    assert len(readouts) == 8


def test_class_answer_tokens_from_shell_game(smollm2):
    task = make_task("shell-game", n_stories=3, n_swaps=2, n_cups=4)
    tokens = class_answer_tokens(task, task.text_examples(), smollm2.tokenizer, "lens")
    expected = [smollm2.tokenizer(f" {cup}", add_special_tokens=False)["input_ids"][0]
                for cup in "ABCD"]
    assert tokens == expected


class NoQuestions(Task):
    name = "no-questions"
    summary = "a task without behaviour queries"
    state_variable = step_meaning = readout_meaning = "none"

    @property
    def class_names(self):
        return ["a", "b"]

    def text_examples(self):
        return []


def test_class_answer_tokens_need_queries():
    with pytest.raises(ValueError, match="'no-questions' has no behaviour queries.*probe"):
        class_answer_tokens(NoQuestions(), [], ByteTokenizer(), "lens")
