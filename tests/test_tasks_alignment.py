"""On both bundled tokenizers, every readout token decodes to the word or mark it labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from depthprobe.tasks import align_examples, make_task

DATA = Path("/work/shared/data")
BABI_QA1 = DATA / "babi" / "qa1_single-supporting-fact_test.txt"
WIC = DATA / "wic"

# Task options, and the span texts every readout of the task may carry (None: any word).
GENERATED = [
    ("parity", {}, {"0", "1"}),
    ("permutation", {}, {",", "."}),
    ("permutation", {"n_elements": 5, "target": "parity"}, {",", "."}),
    ("location", {}, {"."}),
    ("location", {"babi_task": 2}, {"."}),
    ("boxes", {"box": -1}, {".", "contains"}),
    ("polysemy", {}, None),
    ("polysemy", {"word": "bass", "n_distractors": 2}, None),
    ("number-guess", {}, {"."}),
    ("two-hop", {}, None),
    ("shell-game", {}, {"."}),
]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def tokenizer(request):
    return request.getfixturevalue(request.param).tokenizer


def readout_tokens(examples, tokenizer):
    """Yield (span text, decoded readout token) for every readout of ``examples``."""
    for example, aligned in zip(examples, align_examples(examples, tokenizer)):
        for labelled, readout in zip(example.readouts, aligned.readouts):
            span = example.text[labelled.span.start:labelled.span.end]
            yield span, tokenizer.decode([aligned.input_ids[readout.position]]).strip()


@pytest.mark.parametrize("name,options,allowed", GENERATED,
                         ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}"
                              for n, o, _ in GENERATED])
def test_generated_readouts_decode_to_their_word(tokenizer, name, options, allowed):
    task = make_task(name, n_stories="40", **options)
    examples = task.text_examples()
    pairs = list(readout_tokens(examples, tokenizer))
    assert len(pairs) == sum(len(e.readouts) for e in examples)
    for span, token in pairs:
        assert token == span
        if allowed is not None:
            assert span in allowed


@pytest.mark.parametrize("name,options", [(n, o) for n, o, _ in GENERATED])
def test_counterfactual_keeps_token_positions(tokenizer, name, options):
    examples = [e for e in make_task(name, n_stories="30", **options).text_examples()
                if e.counterfactual is not None]
    if name == "boxes":
        assert not examples
        return
    assert examples
    originals = align_examples(examples, tokenizer)
    changed = align_examples([e.counterfactual for e in examples], tokenizer)
    for original, other in zip(originals, changed):
        assert len(original.input_ids) == len(other.input_ids)
        assert [r.position for r in original.readouts] == [r.position for r in other.readouts]
        assert original.input_ids != other.input_ids


@pytest.mark.parametrize("name,options", [(n, o) for n, o, _ in GENERATED])
def test_behaviour_choices_differ_in_first_token(tokenizer, name, options):
    task = make_task(name, n_stories="10", **options)
    for example in task.text_examples():
        for query in task.behaviour_queries(example):
            firsts = [tokenizer(choice, add_special_tokens=False)["input_ids"][0]
                      for choice in query.choices]
            assert len(set(firsts)) == len(firsts), query.choices


@pytest.mark.skipif(not BABI_QA1.is_file(), reason="shared bAbI file not present")
def test_babi_readouts_decode_to_periods(tokenizer):
    task = make_task("location", path=str(BABI_QA1), entity="*")
    pairs = list(readout_tokens(task.text_examples(), tokenizer))
    assert len(pairs) > 4000
    assert {(span, token) for span, token in pairs} == {(".", ".")}


@pytest.mark.skipif(not WIC.is_dir(), reason="shared WiC folder not present")
def test_wic_readouts_end_their_word(tokenizer):
    """A WiC word may span several tokens; its readout token is the word's last piece."""
    task = make_task("polysemy", source="wic", path=str(WIC))
    examples = task.text_examples()
    words = [example.text.split(" ")[len(example.text[:r.span.start].split(" ")) - 1]
             for example in examples for r in example.readouts]
    pairs = list(readout_tokens(examples, tokenizer))
    assert [span for span, _ in pairs] == words
    whole = 0
    for span, token in pairs:
        assert token and span.endswith(token)
        whole += token == span
    assert whole > 0.8 * len(pairs)


def test_jsonl_readouts_decode_to_their_word(tokenizer, tmp_path):
    text = "Anna put the key in the drawer. Later she moved it to the box."
    readouts = [{"start": text.index("drawer"), "end": text.index("drawer") + 6,
                 "label": "drawer", "step": 1},
                {"start": text.index("box"), "end": text.index("box") + 3, "label": "box",
                 "step": 2}]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": text, "readouts": readouts}), encoding="utf-8")
    task = make_task("jsonl", path=str(path))
    assert list(readout_tokens(task.text_examples(), tokenizer)) == [("drawer", "drawer"),
                                                                     ("box", "box")]


def test_span_inside_a_token_names_example(tokenizer, tmp_path):
    text = "Anna put the key in the drawer."
    readouts = [{"start": text.index("drawer"), "end": text.index("drawer") + 3,
                 "label": "drawer", "step": 1}]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": text, "readouts": readouts, "group": "g7"}),
                    encoding="utf-8")
    task = make_task("jsonl", path=str(path))
    with pytest.raises(ValueError, match=r"'dra'\) of example 0 \(group 'g7'\) does not end "
                                         r"on a token boundary"):
        align_examples(task.text_examples(), tokenizer)
