"""Toy models: the task tokenizer, training that lowers the loss, and checkpoints that reload."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from depthprobe.capture import capture_residuals
from depthprobe.models import load_model
from depthprobe.sites import Span
from depthprobe.tasks import (BehaviourQuery, LabelledSpan, Task, TextExample, align_examples,
                              make_task)
from depthprobe.toys import (METADATA_FILE, ToyConfig, build_task_tokenizer, label_token_ids,
                             train_toy)

# Short stories and a narrow model keep every training run in these tests to seconds.
SMALL = dict(n_layers=2, d_model=32, n_heads=4, d_state=8, batch_size=16, n_stories=200,
             warmup_steps=5, eval_every=5, learning_rate=3e-3)

# Optimizer steps per architecture: Mamba's PyTorch scan is the slowest to train on a CPU,
# and the transformer gets enough steps to learn the opening sentence's cup.
STEPS = {"transformer": 40, "mamba": 10, "mamba2": 25, "looped": 25}


def shell_game(seed: int = 1, n_swaps: int = 3):
    return make_task("shell-game", n_swaps=n_swaps, seed=seed)


@dataclass
class _Colours(Task):
    """A task without behaviour queries, with classes named "colour red" and "colour blue"."""

    name = "colours"
    summary = "test task"
    state_variable = "colour"
    step_meaning = "position"
    readout_meaning = "each word"
    n_stories: int = field(default=20)

    @property
    def class_names(self) -> list[str]:
        return ["colour red", "colour blue"]

    def text_examples(self) -> list[TextExample]:
        examples = []
        for index in range(self.n_stories):
            text = "red blue" if index % 2 else "blue red"
            first = 0 if text.startswith("red") else 1
            readouts = [LabelledSpan(Span(0, text.index(" ")), first, 1)]
            examples.append(TextExample(text, readouts, index))
        return examples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run per architecture, saved, keyed by architecture name.

    The looped toy runs its two distinct blocks twice, four blocks in all."""
    runs = {}
    for arch, steps in STEPS.items():
        path = tmp_path_factory.mktemp(arch) / "toy"
        settings = dict(SMALL, n_layers=4) if arch == "looped" else SMALL
        runs[arch] = train_toy(arch, shell_game(), output_dir=path, progress=False,
                               steps=steps, **settings)
    return runs


def test_tokenizer_covers_task_texts():
    task = shell_game()
    text_examples = task.text_examples()
    tokenizer = build_task_tokenizer(task, text_examples)
    examples = align_examples(text_examples, tokenizer)
    for example in examples:
        assert tokenizer.unk_token_id not in example.input_ids
        assert example.input_ids[0] == tokenizer.bos_token_id
    tokens = tokenizer.convert_ids_to_tokens(examples[0].input_ids)
    for readout in examples[0].readouts:
        assert tokens[readout.position] == "."
    assert tokenizer.convert_ids_to_tokens(label_token_ids(task, text_examples, tokenizer)) \
        == ["A", "B", "C"]


def test_tokenizer_save_reload(tmp_path):
    from transformers import AutoTokenizer

    task = shell_game()
    tokenizer = build_task_tokenizer(task, task.text_examples())
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = task.text_examples()[0].text
    assert reloaded(text, return_offsets_mapping=True) == \
        tokenizer(text, return_offsets_mapping=True)
    assert reloaded.pad_token_id == tokenizer.pad_token_id


def test_label_tokens_of_their_own():
    task = _Colours()
    examples = task.text_examples()
    tokenizer = build_task_tokenizer(task, examples)
    ids = label_token_ids(task, examples, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["[class 0]", "[class 1]"]
    for example in align_examples(examples, tokenizer):
        assert not set(ids) & set(example.input_ids)


def test_shared_answer_words_fall_back():
    class SharedAnswers(_Colours):
        def behaviour_queries(self, example):
            return [BehaviourQuery(example.text + " Colour?", [" colour red", " colour blue"],
                                   r.label, r.step, example.group) for r in example.readouts]

    task = SharedAnswers()
    examples = task.text_examples()
    tokenizer = build_task_tokenizer(task, examples)
    ids = label_token_ids(task, examples, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["[class 0]", "[class 1]"]


@pytest.mark.parametrize("arch", ["transformer", "mamba", "mamba2", "looped"])
def test_training_lowers_loss(trained, arch):
    history = trained[arch].history
    assert list(history.columns) == ["step", "loss", "heldout_accuracy"]
    assert history["step"].iloc[-1] == STEPS[arch]
    first, last = history["loss"].iloc[0], history["loss"].iloc[-1]
    assert last < 0.8 * first, f"{arch} loss went from {first:.3f} to {last:.3f}"


def test_transformer_beats_chance(trained):
    result = trained["transformer"]
    # Step 0 is the opening sentence, which names the cup outright.
    assert result.accuracy_by_step[0] > 0.9
    assert 0 <= result.heldout_accuracy <= 1


@pytest.mark.parametrize("arch", ["transformer", "mamba", "mamba2", "looped"])
def test_checkpoint_reloads_identically(trained, arch):
    result = trained[arch]
    reloaded = load_model(str(result.path))
    assert reloaded.layout.architecture == result.loaded.layout.architecture
    assert reloaded.layout.block_sources == result.loaded.layout.block_sources
    assert (result.path / METADATA_FILE).is_file()

    task = shell_game(seed=7)
    examples = align_examples(task.text_examples()[:6], reloaded.tokenizer)
    sequences = [e.input_ids for e in examples]
    positions = [[r.position for r in e.readouts] for e in examples]
    before = capture_residuals(result.loaded.model, result.loaded.layout, sequences, positions,
                               progress=False)
    after = capture_residuals(reloaded.model, reloaded.layout, sequences, positions,
                              progress=False)
    assert torch.equal(after, before)

    ids = torch.tensor([sequences[0]])
    with torch.no_grad():
        logits_before = result.loaded.model(input_ids=ids, use_cache=False).logits
        logits_after = reloaded.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(logits_after, logits_before)


def test_looped_toy_shares_blocks(trained):
    layout = trained["looped"].loaded.layout
    assert layout.block_sources == ((0, 0), (1, 0), (0, 1), (1, 1))
    assert layout.layer_label(3) == "3 (block 0, pass 2)"
    first, third = layout.blocks[0].state_dict(), layout.blocks[2].state_dict()
    for key in first:
        assert torch.equal(first[key], third[key])


def test_kinds_of_toys(trained):
    assert trained["transformer"].loaded.layout.kind == "feedforward"
    assert trained["mamba"].loaded.layout.kind == "recurrent"
    assert trained["mamba2"].loaded.layout.kind == "recurrent"
    assert trained["looped"].loaded.layout.kind == "feedforward"


@pytest.mark.parametrize("arch, overrides, message", [
    ("lstm", {}, "Unknown toy architecture 'lstm'"),
    ("looped", {"n_layers": 3, "loop_times": 2}, "not a multiple of loop_times"),
    ("transformer", {"d_model": 30, "n_heads": 4}, "multiple of n_heads"),
    ("transformer", {"steps": 0}, "steps must be 1 or more"),
    ("transformer", {"eval_fraction": 1.0}, "eval_fraction"),
])
def test_invalid_settings_rejected(arch, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_toy(arch, shell_game(), progress=False, **overrides)


def test_unknown_setting_rejected():
    with pytest.raises(TypeError, match="n_blocks"):
        train_toy("transformer", shell_game(), progress=False, n_blocks=3)


def test_nonempty_output_rejected(tmp_path):
    (tmp_path / "old.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        train_toy("transformer", shell_game(), output_dir=tmp_path, progress=False)
    assert (tmp_path / "old.txt").read_text() == "keep"


def test_missing_task_rejected():
    with pytest.raises(ValueError, match="needs a task"):
        train_toy("transformer")


def test_settings_defaults_valid():
    for arch in ("transformer", "mamba", "mamba2", "looped"):
        ToyConfig().check(arch)
