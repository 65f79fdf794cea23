"""The user's own labelled texts, one JSON object per line."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..sites import Span
from .base import LabelledSpan, Task, TextExample
from .files import ProblemLog, existing_file, read_lines

FORMAT = ('{"text": "...", "readouts": [{"start": 0, "end": 5, "label": "A", "step": 0}], '
          '"group": "story-1"}')


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_readouts(number: int, prefix: str, text: str, readouts, problems: ProblemLog):
    """Check a ``readouts`` list and return ``(start, end, label, step)`` tuples."""
    if not isinstance(readouts, list) or not readouts:
        problems.add(number, prefix + "readouts", "must be a non-empty list of objects")
        return None
    parsed = []
    for index, readout in enumerate(readouts):
        name = f"{prefix}readouts[{index}]"
        if not isinstance(readout, dict):
            problems.add(number, name, f"must be an object like {json.dumps(readouts[0])}")
            continue
        missing = [key for key in ("start", "end", "label", "step") if key not in readout]
        for key in missing:
            problems.add(number, f"{name}.{key}", "is missing")
        if missing:
            continue
        start, end, label, step = (readout[key] for key in ("start", "end", "label", "step"))
        bad = False
        for key, value in (("start", start), ("end", end), ("step", step)):
            if not _is_int(value) or value < 0:
                problems.add(number, f"{name}.{key}", f"must be an integer 0 or more, got "
                                                      f"{value!r}")
                bad = True
        if not bad and not start < end <= len(text):
            problems.add(number, f"{name}.end", f"span {start}:{end} must satisfy start < end "
                                                f"<= {len(text)} (the text's length)")
            bad = True
        if not (_is_int(label) and label >= 0) and not isinstance(label, str):
            problems.add(number, f"{name}.label", f"must be a class name (string) or a class "
                                                  f"index (integer 0 or more), got {label!r}")
            bad = True
        if not bad:
            parsed.append((start, end, label, step))
    return parsed


def _parse_record(number: int, record: dict, problems: ProblemLog, prefix: str = ""):
    count = len(problems.problems)
    if "text" not in record:
        problems.add(number, prefix + "text", "is missing")
        return None
    text = record["text"]
    if not isinstance(text, str) or not text:
        problems.add(number, prefix + "text", "must be a non-empty string")
        return None
    readouts = _parse_readouts(number, prefix, text, record.get("readouts"), problems)
    if len(problems.problems) > count:
        return None
    return text, readouts


def _parse_counterfactual(number: int, value, parsed, problems: ProblemLog):
    if not isinstance(value, dict):
        problems.add(number, "counterfactual", "must be an object with text and readouts")
        return None
    counterfactual = _parse_record(number, value, problems, "counterfactual.")
    if counterfactual is not None and parsed is not None \
            and len(counterfactual[1]) != len(parsed[1]):
        problems.add(number, "counterfactual.readouts",
                     f"has {len(counterfactual[1])} readouts but readouts has "
                     f"{len(parsed[1])}; give both the same number, in the same order")
    return counterfactual


def read_jsonl(path: Path) -> list[dict]:
    """Read and check a labelled-text JSONL file.

    Each line is an object with ``text``, ``readouts`` (each with ``start`` and ``end``
    character offsets, ``label`` and ``step``), an optional ``group`` (string or integer;
    the line number when absent) and an optional ``counterfactual`` object with its own
    ``text`` and ``readouts``. Labels are all strings or all integers across the file.
    Raises :class:`~depthprobe.tasks.files.DataFileError` listing every malformed field.
    """
    problems = ProblemLog(path)
    records = []
    for number, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.add(number, "(line)", f"is not valid JSON ({error.msg} at column "
                                           f"{error.colno}); expected {FORMAT}")
            continue
        if not isinstance(record, dict):
            problems.add(number, "(line)", f"must be a JSON object like {FORMAT}")
            continue
        before = len(problems.problems)
        parsed = _parse_record(number, record, problems)
        group = record.get("group", number)
        if not isinstance(group, str) and not _is_int(group):
            problems.add(number, "group", f"must be a string or an integer, got {group!r}")
        counterfactual = record.get("counterfactual")
        if counterfactual is not None:
            counterfactual = _parse_counterfactual(number, counterfactual, parsed, problems)
        if len(problems.problems) == before:
            records.append({"line": number, "text": parsed[0], "readouts": parsed[1],
                            "group": group, "counterfactual": counterfactual})

    labels = [r[2] for record in records for r in record["readouts"]]
    if labels and len({isinstance(label, str) for label in labels}) > 1:
        first_int = next(record["line"] for record in records
                         if any(_is_int(r[2]) for r in record["readouts"]))
        problems.add(first_int, "readouts[].label", "mixes integer labels with the string "
                                                    "labels of other lines; use one kind")
    if not records and not problems:
        problems.add(1, "(line)", f"the file contains no JSON lines; expected {FORMAT}")
    problems.raise_if_any()
    return records


@dataclass
class JsonlTask(Task):
    """Labelled texts from a JSONL file, one object per line.

    A line reads ``{"text": ..., "readouts": [{"start", "end", "label", "step"}, ...],
    "group": ...}``. ``start`` and ``end`` are character offsets into ``text``; the
    readout sits on the token that ends at ``end``. Labels are class names (strings,
    classes in sorted order) or class indices (integers, classes ``0..max``). ``group``
    defaults to the line number. An optional ``counterfactual`` object contains the same text
    with one update changed, with as many readouts. The whole file is checked before any
    model runs.
    """

    name = "jsonl"
    summary = "your own labelled texts from a JSONL file (text, readouts, group)"
    state_variable = "whatever the file's labels state"
    step_meaning = "the file's step field"
    readout_meaning = "the token that ends each readout's character span"

    path: str = field(default="", metadata={
        "help": "JSONL file: one {text, readouts: [{start, end, label, step}], group} per line"})

    def check(self) -> None:
        self._records

    @functools.cached_property
    def _records(self) -> list[dict]:
        return read_jsonl(existing_file(self.path, "path", "JSONL file"))

    @property
    def class_names(self) -> list[str]:
        labels = {r[2] for record in self._records for r in record["readouts"]}
        labels |= {r[2] for record in self._records if record["counterfactual"]
                   for r in record["counterfactual"][1]}
        if all(isinstance(label, str) for label in labels):
            return sorted(labels)
        return [str(index) for index in range(max(labels) + 1)]

    def _example(self, text: str, readouts: list, group, line: int) -> TextExample:
        names = self.class_names
        labelled = [LabelledSpan(Span(start, end),
                                 names.index(label) if isinstance(label, str) else label, step)
                    for start, end, label, step in readouts]
        return TextExample(text, labelled, group, {"line": line})

    def text_examples(self) -> list[TextExample]:
        self.check()
        examples = []
        for record in self._records:
            example = self._example(record["text"], record["readouts"], record["group"],
                                    record["line"])
            if record["counterfactual"] is not None:
                text, readouts = record["counterfactual"]
                example.counterfactual = self._example(text, readouts, record["group"],
                                                       record["line"])
            examples.append(example)
        return examples
