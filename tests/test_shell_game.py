"""The shell game: labels against an independent simulation, token alignment."""

from __future__ import annotations

import re

import pytest

from depthprobe.tasks import ShellGame, align_examples, make_task


def _simulate(text: str) -> list[str]:
    """Follow the ball through the text with a dictionary of cup contents."""
    start = re.match(r"The ball is under cup ([A-E])\.", text).group(1)
    contents = {cup: cup == start for cup in "ABCDE"}
    states = [start]
    for a, b in re.findall(r"Swap cups ([A-E]) and ([A-E])\.", text):
        contents[a], contents[b] = contents[b], contents[a]
        states.append(next(cup for cup, has_ball in contents.items() if has_ball))
    return states


@pytest.mark.parametrize("n_cups", [3, 4, 5])
def test_labels_match_simulation(n_cups):
    task = ShellGame(n_stories=50, n_swaps=6, n_cups=n_cups, seed=3)
    for example in task.text_examples():
        expected = _simulate(example.text)
        labels = [task.cups[r.label] for r in example.readouts]
        assert labels == expected
        assert [r.step for r in example.readouts] == list(range(7))


def test_readout_spans_end_each_sentence():
    task = ShellGame(n_stories=5, n_swaps=4)
    for example in task.text_examples():
        ends = [m.end() for m in re.finditer(r"\.", example.text)]
        assert [r.span.end for r in example.readouts] == ends


def test_swaps_are_ordered_pairs_of_distinct_cups():
    task = ShellGame(n_stories=400, n_swaps=8, n_cups=3, seed=0)
    pairs = [tuple(p) for ex in task.text_examples() for p in ex.meta["swaps"]]
    assert all(a != b for a, b in pairs)
    # All six ordered pairs occur, so the letter order carries no information.
    assert len(set(pairs)) == 6


def test_seed_reproduces_texts():
    first = [ex.text for ex in ShellGame(n_stories=20, seed=7).text_examples()]
    again = [ex.text for ex in ShellGame(n_stories=20, seed=7).text_examples()]
    other = [ex.text for ex in ShellGame(n_stories=20, seed=8).text_examples()]
    assert first == again
    assert first != other


def test_counterfactual_changes_every_state():
    for example in ShellGame(n_stories=30, n_swaps=5).text_examples():
        counterfactual = example.counterfactual
        assert counterfactual.meta["swaps"] == example.meta["swaps"]
        for base, other in zip(example.readouts, counterfactual.readouts):
            assert base.label != other.label


def test_shortcut_last_cup_named():
    task = ShellGame(n_stories=3, n_swaps=3, seed=1)
    example = task.text_examples()[0]
    named = re.findall(r"([A-E])\.", example.text)
    guesses = task.shortcuts(example)["last cup named"]
    assert [task.cups[g] for g in guesses] == named


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_readout_tokens_decode_to_period(fixture, request):
    loaded = request.getfixturevalue(fixture)
    task = ShellGame(n_stories=20, n_swaps=8, n_cups=5, seed=2)
    for example in align_examples(task.text_examples(), loaded.tokenizer):
        tokens = [loaded.tokenizer.decode([example.input_ids[r.position]])
                  for r in example.readouts]
        assert [t.strip() for t in tokens] == ["."] * 9


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="n_cups must be 3, 4 or 5, got 6"):
        make_task("shell-game", n_cups=6)
    with pytest.raises(ValueError, match="n_swaps .* must be 1 or more, got 0"):
        make_task("shell-game", n_swaps=0)
    with pytest.raises(ValueError, match="Unknown option 'cups'.*n_cups \\(int, default 3\\)"):
        make_task("shell-game", cups=4)
    with pytest.raises(ValueError, match="Unknown task 'shell'"):
        make_task("shell")
