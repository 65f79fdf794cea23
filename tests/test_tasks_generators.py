"""Generated tasks: labels agree with simulations written here, and seeds reproduce texts."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from depthprobe.tasks import (TASKS, Boxes, Location, NumberGuess, Parity, Permutation,
                              Polysemy, TwoHop, make_task)

GENERATED = ["parity", "permutation", "location", "boxes", "polysemy", "number-guess",
             "two-hop"]


def span_text(example, readout):
    return example.text[readout.span.start:readout.span.end]


# ---------------------------------------------------------------------------- parity
def test_parity_labels_match_running_sum():
    task = Parity(n_stories=40, n_bits=9, seed=3)
    for example in task.text_examples():
        bits = [int(ch) for ch in re.findall(r"[01]", example.text)]
        assert len(bits) == 9
        assert [span_text(example, r) for r in example.readouts] == [str(b) for b in bits]
        assert [r.step for r in example.readouts] == list(range(1, 10))
        assert [r.label for r in example.readouts] == [sum(bits[:k]) % 2 for k in range(1, 10)]


def test_parity_counterfactual_flips_every_label():
    for example in Parity(n_stories=20).text_examples():
        other = example.counterfactual
        assert len(other.text) == len(example.text)
        assert [1 - r.label for r in example.readouts] == [r.label for r in other.readouts]


# ------------------------------------------------------------------------ permutation
def permutation_matrix(digits):
    """Matrix P with P @ e_j = e_{digits[j]-1}; composing actions multiplies matrices."""
    n = len(digits)
    matrix = np.zeros((n, n), dtype=int)
    for j, digit in enumerate(digits):
        matrix[digit - 1, j] = 1
    return matrix


def brute_force_state(actions, n):
    """Compose by matrices: the state vector s becomes s @ P(a) column-wise."""
    state = np.arange(1, n + 1)
    for action in actions:
        state = state @ permutation_matrix(action)
    return tuple(int(x) for x in state)


def brute_force_parity(permutation):
    """Parity from the determinant of the permutation matrix: +1 even, -1 odd."""
    return 0 if round(np.linalg.det(permutation_matrix(permutation))) == 1 else 1


@pytest.mark.parametrize("n_elements", [3, 5])
def test_permutation_composition_matches_brute_force(n_elements):
    task = Permutation(n_stories=30, n_actions=7, n_elements=n_elements, seed=1)
    ordered = sorted(itertools.permutations(range(1, n_elements + 1)))
    assert task.n_classes == len(ordered)
    for example in task.text_examples():
        actions = [tuple(int(d) for d in word) for word in re.findall(r"\d+", example.text)]
        assert len(actions) == 7
        for k, readout in enumerate(example.readouts, start=1):
            # new[j] = state[a[j]-1], checked element by element as well as by matrices
            state = tuple(range(1, n_elements + 1))
            for action in actions[:k]:
                state = tuple(state[d - 1] for d in action)
            assert state == brute_force_state(actions[:k], n_elements)
            assert readout.label == ordered.index(state)
            assert readout.step == k
            assert span_text(example, readout) == ("," if k < 7 else ".")


def test_permutation_parity_target_matches_determinant():
    task = Permutation(n_stories=30, n_actions=6, n_elements=5, target="parity", seed=2)
    assert task.class_names == ["even", "odd"]
    for example in task.text_examples():
        actions = [tuple(int(d) for d in word) for word in re.findall(r"\d+", example.text)]
        for k, readout in enumerate(example.readouts, start=1):
            assert readout.label == brute_force_parity(brute_force_state(actions[:k], 5))


def test_permutation_counterfactual_changes_every_state():
    task = Permutation(n_stories=30, n_actions=5)
    parity = Permutation(n_stories=30, n_actions=5, target="parity")
    for example, flipped in zip(task.text_examples(), parity.text_examples()):
        assert example.text == flipped.text
        assert example.counterfactual.text == flipped.counterfactual.text
        assert all(a.label != b.label for a, b in
                   zip(example.readouts, example.counterfactual.readouts))
        assert all(a.label != b.label for a, b in
                   zip(flipped.readouts, flipped.counterfactual.readouts))


def test_permutation_rejects_s6_and_bad_target():
    with pytest.raises(ValueError, match="n_elements must be 3, 4 or 5, got 6"):
        make_task("permutation", n_elements="6")
    with pytest.raises(ValueError, match="target must be one of state, parity"):
        make_task("permutation", target="sign")


# -------------------------------------------------------------------------- location
def simulate_babi(sentences):
    """Replay sentences with regexes written here; yield (locations, update counts)."""
    where, carried_by, updates = {}, {}, {}
    for sentence in sentences:
        move = re.match(r"(\w+) (?:went|went back|journeyed|travelled|moved) to the (\w+)\.",
                        sentence)
        take = re.match(r"(\w+) (?:got|grabbed|picked up|took) the (\w+)", sentence)
        drop = re.match(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)", sentence)
        if move:
            person, place = move.groups()
            for entity in [person] + [i for i, p in carried_by.items() if p == person]:
                where[entity] = place
                updates[entity] = updates.get(entity, 0) + 1
        elif take:
            person, item = take.groups()
            carried_by[item] = person
            if item not in where and person in where:
                where[item] = where[person]
                updates[item] = updates.get(item, 0) + 1
        elif drop:
            carried_by.pop(drop.group(2), None)
        else:
            raise AssertionError(f"unexpected sentence {sentence!r}")
        yield dict(where), dict(updates)


@pytest.mark.parametrize("babi_task,entity", [(1, "Mary"), (1, "Daniel"), (2, "football"),
                                              (2, "milk")])
def test_location_labels_match_replay(babi_task, entity):
    task = Location(babi_task=babi_task, entity=entity, n_stories=40, n_updates=5,
                    n_distractors=2, handover_rate=0.5, seed=7)
    places = task.class_names
    for example in task.text_examples():
        sentences = re.findall(r"[^.]+\.", example.text)
        expected = [(places.index(where[entity]), updates[entity])
                    for where, updates in simulate_babi(s.strip() for s in sentences)
                    if entity in where]
        assert [(r.label, r.step) for r in example.readouts] == expected
        assert max(r.step for r in example.readouts) == 5
        assert {span_text(example, r) for r in example.readouts} == {"."}


def test_location_counterfactual_changes_final_place():
    for babi_task in (1, 2):
        for example in Location(babi_task=babi_task, n_stories=30).text_examples():
            other = example.counterfactual
            assert other.readouts[-1].label != example.readouts[-1].label
            assert [r.step for r in other.readouts] == [r.step for r in example.readouts]
            changed = [a != b for a, b in zip(example.meta["statements"],
                                              other.meta["statements"])]
            assert sum(changed) == 1


def test_location_queries_ask_each_readout():
    task = Location(n_stories=3)
    example = task.text_examples()[0]
    queries = task.behaviour_queries(example)
    assert len(queries) == len(example.readouts)
    assert queries[-1].prompt.endswith("Where is Mary? Answer: the")
    assert [q.answer for q in queries] == [r.label for r in example.readouts]
    assert queries[0].choices == [" " + place for place in task.class_names]


# ----------------------------------------------------------------------------- boxes
def simulate_boxes(text):
    """Replay a boxes story with regexes written here; return the queried box's states."""
    description, *operations = [s.strip() for s in text.split(".")]
    query = int(re.fullmatch(r"Box (\d+) contains", operations.pop()).group(1))
    boxes = {}
    for box, content in re.findall(r"Box (\d+) contains (nothing|the \w+)", description):
        boxes[int(box)] = None if content == "nothing" else content[4:]
    states, counts, count = [boxes[query]], [0], 0
    for operation in operations:
        before = boxes[query]
        if m := re.fullmatch(r"Move the (\w+) from Box (\d+) to Box (\d+)", operation):
            assert boxes[int(m[2])] == m[1]
            assert boxes[int(m[3])] is None
            boxes[int(m[2])], boxes[int(m[3])] = None, m[1]
        elif m := re.fullmatch(r"Remove the (\w+) from Box (\d+)", operation):
            assert boxes[int(m[2])] == m[1]
            boxes[int(m[2])] = None
        elif m := re.fullmatch(r"Put the (\w+) into Box (\d+)", operation):
            assert boxes[int(m[2])] is None
            assert m[1] not in boxes.values()
            boxes[int(m[2])] = m[1]
        else:
            raise AssertionError(operation)
        count += boxes[query] != before
        states.append(boxes[query])
        counts.append(count)
    return query, states, counts


@pytest.mark.parametrize("box", [0, 3, -1])
def test_boxes_labels_match_replay(box):
    task = Boxes(box=box, n_stories=40, seed=5, min_readouts=0)
    names = task.class_names
    queried = set()
    for example in task.text_examples():
        query, states, counts = simulate_boxes(example.text)
        queried.add(query)
        expected = [names.index("nothing" if s is None else f"the {s}") for s in states]
        assert [r.label for r in example.readouts] == expected + expected[-1:]
        assert [r.step for r in example.readouts] == counts + counts[-1:]
        assert [span_text(example, r) for r in example.readouts] == ["."] * 7 + ["contains"]
    assert queried == ({box} if box >= 0 else set(range(5)))


def test_boxes_drops_sparse_steps():
    every = Boxes(n_stories=30, min_readouts=0).text_examples()
    counts = {}
    for example in every:
        for readout in example.readouts:
            counts[readout.step] = counts.get(readout.step, 0) + 1
    kept = Boxes(n_stories=30, min_readouts=25).text_examples()
    steps = {readout.step for example in kept for readout in example.readouts}
    assert steps == {step for step, count in counts.items() if count >= 25}
    assert steps != set(counts)


def test_boxes_query_only_readouts():
    task = Boxes(readout_at="query", n_stories=10, min_readouts=0)
    for example in task.text_examples():
        assert [span_text(example, r) for r in example.readouts] == ["contains"]
        query = task.behaviour_queries(example)[0]
        assert query.prompt.endswith("Question: What is in Box 0? Answer:")
        assert query.choices[query.answer] == " " + task.class_names[
            example.readouts[0].label].removeprefix("the ")


# --------------------------------------------------------------------------- polysemy
@pytest.mark.parametrize("word", ["bank", "bass"])
def test_polysemy_dialog_labels_follow_cue(word):
    task = Polysemy(word=word, n_stories=60, n_after=6, n_distractors=2, seed=4)
    cue_sense = {"wallet": "money", "card": "money", "cash": "money", "coins": "money",
                 "canoe": "river", "guitar": "music", "amp": "music", "drum": "music",
                 "speaker": "music", "net": "fish"}
    for example in task.text_examples():
        noun = re.search(r"[Mm]y (?:old )?(\w+)", example.text).group(1)
        sense = cue_sense.get(noun) or ("river" if word == "bank" else "fish")
        labels = {task.class_names[r.label] for r in example.readouts}
        assert labels == {f"{word} ({sense})"}
        assert span_text(example, example.readouts[0]) == word
        assert [r.step for r in example.readouts] == list(range(7))
        after = re.findall(r"\w+|[^\w\s]", example.text[example.readouts[0].span.end:])[:6]
        assert [span_text(example, r) for r in example.readouts[1:]] == after
        other = example.counterfactual
        assert {task.class_names[r.label] for r in other.readouts} != labels


# ----------------------------------------------------------------------- number-guess
def test_number_guess_intervals_match_brute_force():
    task = NumberGuess(n_stories=60, n_guesses=5, n_buckets=5, seed=9)
    for example in task.text_examples():
        pairs = re.findall(r"Is it (\d+)\? (Higher|Lower)\.", example.text)
        possible = set(range(1, 101))
        for k, (guess, answer) in enumerate(pairs):
            guess = int(guess)
            possible = {n for n in possible if (n > guess if answer == "Higher" else n < guess)}
            assert example.meta["secret"] in possible
            midpoint = (min(possible) + max(possible)) / 2
            readout = example.readouts[k]
            assert readout.label == min(4, int((midpoint - 1) // 20))
            assert readout.step == k + 1
            assert span_text(example, readout) == "."
        assert len(pairs) == 5 or len(possible) == 1


def test_number_guess_query_answer_follows_interval():
    task = NumberGuess(n_stories=20)
    for example in task.text_examples():
        for query, (lo, hi) in zip(task.behaviour_queries(example), example.meta["intervals"]):
            probe = int(re.search(r"Is it (\d+)\?$", query.prompt).group(1))
            assert not lo <= probe <= hi
            assert query.choices[query.answer] == (" Higher" if probe < lo else " Lower")


# ---------------------------------------------------------------------------- two-hop
def test_two_hop_labels_resolve_both_hops():
    task = TwoHop(n_stories=40, n_facts=4, seed=6)
    for example in task.text_examples():
        spouse = dict(re.findall(r"The \w+ of (\w+ \w+) is (\w+ \w+)\.", example.text))
        born = dict(re.findall(r"(\w+ \w+) was born in (\w+)\.", example.text))
        subject = re.search(r"The \w+ of (\w+ \w+) was born in$", example.text).group(1)
        first, second = example.readouts
        assert task.class_names[first.label] == spouse[subject]
        assert task.class_names[second.label] == born[spouse[subject]]
        assert (first.step, second.step) == (1, 2)
        assert span_text(example, first) == subject.split()[1]
        assert span_text(example, second) == "in"
        other = example.counterfactual.readouts
        assert other[0].label != first.label
        assert other[1].label != second.label


# ------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("name", GENERATED)
def test_seed_reproduces_texts(name):
    first = make_task(name, n_stories="15", seed="11").text_examples()
    again = make_task(name, n_stories="15", seed="11").text_examples()
    other = make_task(name, n_stories="15", seed="12").text_examples()
    assert [e.text for e in first] == [e.text for e in again]
    assert [[(r.span, r.label, r.step) for r in e.readouts] for e in first] == \
        [[(r.span, r.label, r.step) for r in e.readouts] for e in again]
    assert [e.text for e in first] != [e.text for e in other]


@pytest.mark.parametrize("name", GENERATED)
def test_labels_index_class_names(name):
    task = make_task(name, n_stories="20")
    for example in task.text_examples():
        assert example.readouts
        assert all(0 <= r.label < task.n_classes for r in example.readouts)
        for query in task.behaviour_queries(example):
            assert 0 <= query.answer < len(query.choices)
        for guesses in task.shortcuts(example).values():
            assert len(guesses) == len(example.readouts)


def test_registry_lists_every_task():
    assert set(TASKS) == {"shell-game", "parity", "permutation", "location", "boxes",
                          "polysemy", "number-guess", "two-hop", "jsonl"}
    for task in TASKS.values():
        assert task.summary
        assert task.state_variable
        assert task.step_meaning
        assert all(option.help for option in task.options())
        if task.steps_option is not None:
            assert task.steps_option in {option.name for option in task.options()}


@pytest.mark.parametrize("name", ["parity", "permutation", "location", "boxes", "polysemy",
                                  "number-guess"])
def test_steps_option_sets_max_step(name):
    option = TASKS[name].steps_option
    extra = {"min_readouts": "0"} if name == "boxes" else {}
    task = make_task(name, n_stories="10", **{option: "3"}, **extra)
    assert max(r.step for e in task.text_examples() for r in e.readouts) == 3


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown option 'bits'.*n_bits \(int, default 12\)"):
        make_task("parity", bits="3")
