"""Loaders: the shared real files parse with exact counts, malformed files get clear errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from depthprobe.tasks import (Boxes, DataFileError, JsonlTask, Location, Polysemy, make_task,
                              parse_babi, read_wic)

DATA = Path("/work/shared/data")
BABI_QA1 = DATA / "babi" / "qa1_single-supporting-fact_test.txt"
WIC = DATA / "wic"

needs_babi = pytest.mark.skipif(not BABI_QA1.is_file(), reason="shared bAbI file not present")
needs_wic = pytest.mark.skipif(not WIC.is_dir(), reason="shared WiC folder not present")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem_fields(error):
    return [(problem.line, problem.field) for problem in error.value.problems]


# ------------------------------------------------------------------------------ bAbI
@needs_babi
def test_babi_task1_counts():
    stories = parse_babi(BABI_QA1)
    assert len(stories) == 200
    assert sum(len(story.questions) for story in stories) == 1000
    assert sum(len(story.statements) for story in stories) == 2000
    assert stories[0].questions[0].text == "Where is John?"
    assert stories[0].questions[0].answer == "hallway"
    assert stories[0].questions[0].supporting == (1,)


@needs_babi
def test_babi_loader_examples_and_queries():
    every = Location(path=str(BABI_QA1), entity="*")
    examples = every.text_examples()
    assert every.class_names == ["bathroom", "bedroom", "garden", "hallway", "kitchen",
                                 "office"]
    assert len({e.group for e in examples}) == 200
    queries = [q for e in examples for q in every.behaviour_queries(e)]
    assert len(queries) == 1000

    # Each query's answer is the file's answer, and the prompt stops at its question.
    lines = BABI_QA1.read_text().splitlines()
    answers = [line.split("\t")[1] for line in lines if "\t" in line]
    story_order = sorted(queries, key=lambda q: q.group)
    assert Counter(q.choices[q.answer].strip() for q in story_order) == Counter(answers)
    assert all(q.prompt.endswith("? Answer: the") for q in queries)


@needs_babi
def test_babi_default_entity_is_most_asked():
    task = Location(path=str(BABI_QA1))
    examples = task.text_examples()
    asked = Counter(line.split("\t")[0].split()[-1].rstrip("?")
                    for line in BABI_QA1.read_text().splitlines() if "\t" in line)
    top = min(asked, key=lambda name: (-asked[name], name))
    assert {e.meta["entity"] for e in examples} == {top}

    # One example per story in which the entity moves; the others have no readouts.
    moving, story = set(), -1
    for line in BABI_QA1.read_text().splitlines():
        number, sentence = line.split(" ", 1)
        story += number == "1"
        if sentence.startswith(top + " "):
            moving.add(story)
    assert sorted(e.group for e in examples) == sorted(moving)


@needs_babi
def test_babi_sparse_steps_dropped():
    every = Location(path=str(BABI_QA1), min_readouts=0)
    counts = Counter(r.step for e in every.text_examples() for r in e.readouts)
    assert min(counts.values()) < 20
    task = Location(path=str(BABI_QA1))
    examples = task.text_examples()
    kept = Counter(r.step for e in examples for r in e.readouts)
    assert kept == {step: count for step, count in counts.items() if count >= 20}
    for example in examples:
        for guesses in task.shortcuts(example).values():
            assert len(guesses) == len(example.readouts)


@needs_babi
def test_babi_readouts_agree_with_answers():
    """At each question, the last readout so far carries the file's answer."""
    task = Location(path=str(BABI_QA1), entity="*", min_readouts=0)
    stories = parse_babi(BABI_QA1)
    for example in task.text_examples():
        story = stories[example.group]
        periods = [i for i, ch in enumerate(example.text) if ch == "."]
        by_end = {r.span.end: r for r in example.readouts}
        for question in story.questions:
            if question.entity != example.meta["entity"]:
                continue
            readout = by_end[periods[question.n_statements - 1] + 1]
            assert task.class_names[readout.label] == question.answer


MALFORMED_BABI = (
    "1 John went to the kitchen.\n"
    "2 Mary flew to the moon.\n"                      # unknown sentence form
    "3 Where is John? \tkitchen\t1\n"
    "5 Where is John? \tgarden\t1\n"                  # ID jump and wrong answer
    "x Sandra went to the office.\n"                  # ID not a number
    "1 Mary went to the office.\n"
    "2 Where is Mary?\toffice\n"                      # two fields only
    "3 Where did Mary go?\toffice\t1\n"               # unknown question form
    "4 Where is Mary?\toffice\t9\n"                   # supporting ID not earlier
)


def test_babi_malformed_lines_all_reported(tmp_path):
    path = write(tmp_path, "bad.txt", MALFORMED_BABI)
    with pytest.raises(DataFileError) as error:
        parse_babi(path)
    assert problem_fields(error) == [(2, "sentence"), (4, "ID"), (4, "answer"), (5, "ID"),
                                     (7, "question"), (8, "question"), (9, "supporting IDs")]
    message = str(error.value)
    assert f"{path}, line 4, field answer: is 'garden', but the story so far puts 'John' " \
           f"in the kitchen" in message
    assert "'Mary flew to the moon.' has none of the task 1-3 forms" in message


def test_babi_errors_before_any_example(tmp_path):
    path = write(tmp_path, "bad.txt", MALFORMED_BABI)
    with pytest.raises(DataFileError):
        make_task("location", path=str(path))


def test_babi_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.txt"):
        make_task("location", path=str(tmp_path / "no_such.txt"))


def test_babi_unknown_entity_lists_known(tmp_path):
    path = write(tmp_path, "ok.txt", "1 John went to the kitchen.\n2 Where is John?\tkitchen\t1\n")
    with pytest.raises(ValueError, match="entity 'Fred' does not occur.*John"):
        make_task("location", path=str(path), entity="Fred")


def test_babi_task2_and_task3_lines(tmp_path):
    text = ("1 Mary got the milk there.\n"
            "2 Mary went to the bathroom.\n"
            "3 Where is the milk? \tbathroom\t1 2\n"
            "4 Mary travelled to the kitchen.\n"
            "5 Mary discarded the milk.\n"
            "6 John went back to the garden.\n"
            "7 Where is the milk? \tkitchen\t4 5\n"
            "8 Where was the milk before the kitchen? \tbathroom\t2 4 5\n")
    path = write(tmp_path, "qa3.txt", text)
    task = Location(path=str(path), min_readouts=0)
    (example,) = task.text_examples()
    assert example.meta["entity"] == "milk"
    assert [(task.class_names[r.label], r.step) for r in example.readouts] == \
        [("bathroom", 1), ("kitchen", 2), ("kitchen", 2), ("kitchen", 2)]
    queries = task.behaviour_queries(example)
    assert [(q.choices[q.answer], q.step) for q in queries] == \
        [(" bathroom", 1), (" kitchen", 2), (" bathroom", 2)]
    assert queries[2].prompt.endswith("garden. Where was the milk before the kitchen? Answer: the")


# ------------------------------------------------------------------------------- WiC
@needs_wic
def test_wic_dev_counts():
    pairs = read_wic(WIC / "dev.data.txt")
    assert len(pairs) == 638
    assert sum(pair.same_sense for pair in pairs) == 319
    task = Polysemy(source="wic", path=str(WIC))
    examples = task.text_examples()
    assert len(examples) == 638
    assert sum(e.readouts[0].label for e in examples) == 319
    first = examples[0]
    assert first.text == "Room and board . He nailed boards across the windows ."
    assert [first.text[r.span.start:r.span.end] for r in first.readouts] == \
        ["boards", "across", "the", "windows", "."]


def write_wic(tmp_path, data, gold):
    write(tmp_path, "x.gold.txt", gold)
    return write(tmp_path, "x.data.txt", data)


def test_wic_malformed_lines_all_reported(tmp_path):
    data = ("board\tN\t2-2\tRoom and board .\tHe nailed boards across the windows .\n"
            "hook\tX\t0-1\tHook a fish .\tHe hooked a snake .\n"        # bad part of speech
            "hook\tV\t0-x\tHook a fish .\tHe hooked a snake .\n"        # bad positions
            "hook\tV\t0-9\tHook a fish .\tHe hooked a snake .\n"        # past sentence 2
            "hook\tV\tHook a fish .\tHe hooked a snake .\n"             # 4 fields
            "board\tN\t2-2\tRoom and board .\tHe nailed boards .\n")    # gold not T/F
    path = write_wic(tmp_path, data, "F\nT\nT\nT\nT\nmaybe\n")
    with pytest.raises(DataFileError) as error:
        read_wic(path)
    assert problem_fields(error) == [(2, "part of speech"), (3, "positions"), (4, "positions"),
                                     (5, "(line)"), (6, "gold")]
    assert "position 9 is past the end of sentence2 (5 words)" in str(error.value)


def test_wic_gold_length_mismatch(tmp_path):
    data = "board\tN\t2-2\tRoom and board .\tHe nailed boards .\n" * 2
    path = write_wic(tmp_path, data, "F\n")
    with pytest.raises(DataFileError, match="x.data.txt has 2 lines but x.gold.txt has 1"):
        read_wic(path)


def test_wic_folder_with_two_data_files(tmp_path):
    write_wic(tmp_path, "", "")
    write(tmp_path, "y.data.txt", "")
    with pytest.raises(ValueError, match=r"several \*\.data\.txt files \(x.data.txt, y.data.txt\)"):
        make_task("polysemy", source="wic", path=str(tmp_path))


# ------------------------------------------------------------------------- CoarseWSD
def write_coarse(tmp_path, data, gold, classes='{"0": "bank_(finance)", "1": "bank_(geography)"}'):
    folder = tmp_path / "bank"
    folder.mkdir()
    write(folder, "classes_map.txt", classes)
    write(folder, "test.gold.txt", gold)
    return write(folder, "test.data.txt", data)


def test_coarsewsd_loads_senses(tmp_path):
    path = write_coarse(tmp_path, "1\tthe bank raised its rates .\n"
                                  "3\twe sat on the bank of the river .\n", "0\n1\n")
    task = Polysemy(source="coarsewsd", path=str(path), n_after=2)
    assert task.class_names == ["bank_(finance)", "bank_(geography)"]
    first, second = task.text_examples()
    assert [first.text[r.span.start:r.span.end] for r in first.readouts] == ["bank", "raised",
                                                                             "its"]
    assert {r.label for r in first.readouts} == {0}
    assert {r.label for r in second.readouts} == {1}
    assert [r.step for r in second.readouts] == [0, 1, 2]


def test_coarsewsd_malformed_lines_all_reported(tmp_path):
    path = write_coarse(tmp_path, "1\tthe bank raised its rates .\n"
                                  "a\tthe bank .\n"
                                  "7\tthe bank .\n"
                                  "no tab here\n"
                                  "1\tthe bank .\n", "0\n1\n1\n0\n5\n")
    with pytest.raises(DataFileError) as error:
        make_task("polysemy", source="coarsewsd", path=str(path))
    assert problem_fields(error) == [(2, "position"), (3, "position"), (4, "(line)"),
                                     (5, "gold")]
    assert "'5', which is not a sense id of classes_map.txt (0, 1)" in str(error.value)


def test_coarsewsd_bad_classes_map(tmp_path):
    path = write_coarse(tmp_path, "1\tthe bank .\n", "0\n", classes="{not json")
    with pytest.raises(ValueError, match="classes_map.txt is not valid JSON"):
        make_task("polysemy", source="coarsewsd", path=str(path))


# ----------------------------------------------------------------------------- boxes
def boxes_line(sentence, answer, sample_id=0, numops=0):
    return json.dumps({"sentence": sentence, "masked_content": f"<extra_id_0> {answer}",
                       "sample_id": sample_id, "numops": numops})


START = ("Box 0 contains the car, Box 1 contains the cross, Box 2 contains the bag and "
         "the machine, Box 3 contains nothing.")


def test_boxes_loader_replays_operations(tmp_path):
    lines = [
        boxes_line(f"{START} Box 2 contains the bag and the machine.", "the bag and the machine",
                   numops=0),
        boxes_line(f"{START} Move the car from Box 0 to Box 2. Box 2 contains the bag and "
                   f"the car and the machine.", "the bag and the car and the machine", numops=1),
        boxes_line(f"{START} Move the car from Box 0 to Box 2. Remove the bag and the machine "
                   f"from Box 2. Box 2 contains the car.", "the car", numops=2),
        boxes_line(f"{START} Move the car from Box 0 to Box 2. Remove the bag and the machine "
                   f"from Box 2. Box 0 contains nothing.", "nothing", numops=1),
    ]
    path = write(tmp_path, "boxes.jsonl", "\n".join(lines) + "\n")
    task = Boxes(path=str(path), box=2, min_readouts=0)
    examples = task.text_examples()
    assert len(examples) == 3
    assert examples[-1].text.endswith("from Box 2. Box 2 contains")
    names = task.class_names
    # Shorter lines are prefixes of the last one, so they add only their query readout.
    assert [len(e.readouts) for e in examples] == [1, 1, 4]
    assert [(names[r.label], r.step) for r in examples[-1].readouts] == [
        ("the bag and the machine", 0), ("the bag and the car and the machine", 1),
        ("the car", 2), ("the car", 2)]
    assert [names[e.readouts[-1].label] for e in examples] == [
        "the bag and the machine", "the bag and the car and the machine", "the car"]
    assert task.behaviour_queries(examples[0]) == []  # multi-object states
    every = Boxes(path=str(path), box=-1, min_readouts=0)
    assert len(every.text_examples()) == 4


def test_boxes_malformed_lines_all_reported(tmp_path):
    lines = [
        boxes_line(f"{START} Box 0 contains the car.", "the car"),
        "{not json",
        json.dumps({"sentence": f"{START} Box 0 contains the car.", "sample_id": 0,
                    "numops": 0}),
        boxes_line(f"{START} Box 0 contains the car.", "the cross"),
        boxes_line(f"{START} Remove the cross from Box 0. Box 0 contains the car.", "the car"),
        boxes_line(f"{START} Move the car from Box 0 to Box 3. Box 3 contains the car.",
                   "the car", numops=0),
        boxes_line(f"{START} Paint the car red. Box 0 contains the car.", "the car"),
        json.dumps({"sentence": f"{START} Box 0 contains the car.", "sample_id": "a",
                    "masked_content": "<extra_id_0> the car", "numops": 0}),
    ]
    path = write(tmp_path, "boxes.jsonl", "\n".join(lines))
    with pytest.raises(DataFileError) as error:
        Boxes(path=str(path)).check()
    assert problem_fields(error) == [(2, "(line)"), (3, "masked_content"), (4, "masked_content"),
                                     (5, "sentence"), (6, "numops"), (7, "sentence"),
                                     (8, "sample_id")]
    message = str(error.value)
    assert "line 5, field sentence: operation 'Remove the cross from Box 0': Box 0 does not " \
           "hold the cross" in message
    assert "line 6, field numops: is 0, but 1 operation(s) change Box 3" in message


# ----------------------------------------------------------------------------- jsonl
def test_jsonl_loads_string_labels(tmp_path):
    rows = [{"text": "Anna has a cat. Then a dog.", "group": "s1",
             "readouts": [{"start": 14, "end": 15, "label": "cat", "step": 1},
                          {"start": 26, "end": 27, "label": "dog", "step": 2}],
             "counterfactual": {"text": "Anna has a dog. Then a dog.",
                                "readouts": [{"start": 14, "end": 15, "label": "dog", "step": 1},
                                             {"start": 26, "end": 27, "label": "dog", "step": 2}]}},
            {"text": "A bird.", "readouts": [{"start": 2, "end": 6, "label": "bird", "step": 0}]}]
    path = write(tmp_path, "mine.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = make_task("jsonl", path=str(path))
    assert task.class_names == ["bird", "cat", "dog"]
    first, second = task.text_examples()
    assert [(r.label, r.step) for r in first.readouts] == [(1, 1), (2, 2)]
    assert first.group == "s1"
    assert second.group == 2
    assert [r.label for r in first.counterfactual.readouts] == [2, 2]
    assert second.text[second.readouts[0].span.start:second.readouts[0].span.end] == "bird"


def test_jsonl_integer_labels(tmp_path):
    path = write(tmp_path, "ints.jsonl",
                 json.dumps({"text": "a b", "readouts": [{"start": 0, "end": 1, "label": 3,
                                                          "step": 0}]}))
    task = JsonlTask(path=str(path))
    assert task.class_names == ["0", "1", "2", "3"]
    assert task.text_examples()[0].readouts[0].label == 3


def test_jsonl_malformed_lines_all_reported(tmp_path):
    good = {"start": 0, "end": 1, "label": "x", "step": 0}
    rows = [
        json.dumps({"text": "ab", "readouts": [good]}),
        "[1, 2]",
        json.dumps({"readouts": [good]}),
        json.dumps({"text": "ab", "readouts": []}),
        json.dumps({"text": "ab", "readouts": [{"start": 0, "end": 9, "label": "x", "step": 0}]}),
        json.dumps({"text": "ab", "readouts": [{"start": 0, "end": 1, "label": 1.5, "step": -1}]}),
        json.dumps({"text": "ab", "readouts": [{"start": 0, "label": "x", "step": 0}]}),
        json.dumps({"text": "ab", "readouts": [good], "group": [1]}),
        json.dumps({"text": "ab", "readouts": [good],
                    "counterfactual": {"text": "ab", "readouts": [good, good]}}),
        "{broken",
    ]
    path = write(tmp_path, "bad.jsonl", "\n".join(rows))
    with pytest.raises(DataFileError) as error:
        make_task("jsonl", path=str(path))
    assert problem_fields(error) == [
        (2, "(line)"), (3, "text"), (4, "readouts"), (5, "readouts[0].end"),
        (6, "readouts[0].step"), (6, "readouts[0].label"), (7, "readouts[0].end"),
        (8, "group"), (9, "counterfactual.readouts"), (10, "(line)")]
    message = str(error.value)
    assert f"{path}, line 5, field readouts[0].end: span 0:9 must satisfy start < end <= 2" \
           in message
    assert "line 7, field readouts[0].end: is missing" in message
    assert "has 10 malformed field(s)" in message


def test_jsonl_mixed_label_kinds(tmp_path):
    rows = [{"text": "ab", "readouts": [{"start": 0, "end": 1, "label": "x", "step": 0}]},
            {"text": "ab", "readouts": [{"start": 0, "end": 1, "label": 0, "step": 0}]}]
    path = write(tmp_path, "mixed.jsonl", "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataFileError, match="line 2, field readouts\\[\\].label: mixes integer"):
        make_task("jsonl", path=str(path))


def test_jsonl_empty_path_names_option():
    with pytest.raises(ValueError, match="Task option path is empty"):
        make_task("jsonl")
