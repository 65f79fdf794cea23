"""Box contents under move, remove and put operations (Kim and Schuster 2023): generated or loaded."""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from dataclasses import dataclass, field

from .base import BehaviourQuery, Task, TextExample
from .files import ProblemLog, drop_sparse_steps, existing_file, read_lines
from .text import TextBuilder

logger = logging.getLogger(__name__)

OBJECTS = ("apple", "key", "ball", "book", "coin", "cup", "pen", "ring", "shoe", "watch",
           "bell", "map", "hat", "fan", "bag", "lamp", "toy", "egg", "doll", "clock")
SENTINEL = "<extra_id_0>"
READOUT_PLACES = ("operations", "query")

_BOX = re.compile(r"^Box (?P<box>\d+) (?:contains (?P<content>.+)|is empty)$")
_MOVE = re.compile(r"^Move (?P<content>.+) from Box (?P<source>\d+) to Box (?P<target>\d+)$")
_MOVE_ALL = re.compile(r"^Move the contents of Box (?P<source>\d+) to Box (?P<target>\d+)$")
_REMOVE = re.compile(r"^Remove (?P<content>.+) from Box (?P<source>\d+)$")
_PUT = re.compile(r"^Put (?P<content>.+) into Box (?P<target>\d+)$")


def describe(content: frozenset[str] | tuple[str, ...]) -> str:
    """Write a box's contents as the data set does: 'nothing' or 'the a and the b'."""
    if not content:
        return "nothing"
    return " and ".join(f"the {item}" for item in sorted(content))


def parse_content(text: str) -> frozenset[str] | None:
    """Parse 'nothing', 'is empty' or 'the a and the b'; ``None`` when malformed."""
    text = text.strip()
    if text in ("nothing", "is empty"):
        return frozenset()
    items = []
    for part in text.split(" and "):
        if not part.startswith("the ") or not part[4:].strip():
            return None
        items.append(part[4:].strip())
    return frozenset(items)


@dataclass
class BoxesLine:
    """One parsed line of a boxes JSONL file."""

    line: int
    sample_id: int
    box: int
    initial: str  # the sentence that describes every box
    operations: list[str]
    states: list[frozenset[str]]  # the queried box after the description and each operation
    changed: list[bool]  # whether each operation changed the queried box
    answer: frozenset[str]


def _replay(line: int, initial: str, operations: list[str], box: int,
            problems: ProblemLog) -> tuple[list[frozenset[str]], list[bool]] | None:
    """Replay the operations on the described boxes; record a problem on the first fault."""
    boxes: dict[int, set[str]] = {}
    for part in re.split(r", (?=Box \d+ )", initial):
        match = _BOX.match(part.strip())
        content = parse_content(match.group("content") or "nothing") if match else None
        if content is None:
            problems.add(line, "sentence", f"{part.strip()!r} of the initial description is "
                                           f"not 'Box N contains the X' or 'Box N is empty'")
            return None
        boxes[int(match.group("box"))] = set(content)
    if box not in boxes:
        problems.add(line, "sentence", f"the query names Box {box}, which the initial "
                                       f"description does not list")
        return None

    states, changed = [frozenset(boxes[box])], []
    for operation in operations:
        before = frozenset(boxes[box])
        fault = _apply(operation, boxes)
        if fault:
            problems.add(line, "sentence", f"operation {operation!r}: {fault}")
            return None
        states.append(frozenset(boxes[box]))
        changed.append(states[-1] != before)
    return states, changed


def _apply(operation: str, boxes: dict[int, set[str]]) -> str | None:
    """Apply one operation in place; return why it is invalid, or ``None``."""
    for pattern in (_MOVE_ALL, _MOVE, _REMOVE, _PUT):
        match = pattern.match(operation)
        if match:
            break
    else:
        return "is not a Move, Remove or Put operation"
    fields = match.groupdict()
    for key in ("source", "target"):
        if key in fields and int(fields[key]) not in boxes:
            return f"Box {fields[key]} is not in the initial description"
    source = boxes.get(int(fields["source"])) if "source" in fields else None
    if pattern is _MOVE_ALL:
        content = frozenset(source)
    else:
        content = parse_content(fields["content"])
        if not content:
            return f"{fields['content']!r} is not 'the X' or 'the X and the Y'"
    if source is not None:
        if not content <= source:
            return f"Box {fields['source']} does not hold {describe(content)}"
        source -= content
    if "target" in fields:
        boxes[int(fields["target"])] |= content
    return None


def parse_boxes_file(path) -> list[BoxesLine]:
    """Parse and check a boxes JSONL file in the format of Kim and Schuster (2023).

    Each line contains ``sentence`` (the initial description, the operations and a final
    "Box k contains ANSWER."), ``masked_content`` (the answer after ``<extra_id_0> ``),
    ``sample_id`` and ``numops`` (the operations that changed box k). The operations are
    replayed; the answer and ``numops`` must agree with the replay. Raises
    :class:`~depthprobe.tasks.files.DataFileError` listing every malformed line.
    """
    problems = ProblemLog(path)
    parsed = []
    for number, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.add(number, "(line)", f"is not valid JSON ({error.msg})")
            continue
        if not isinstance(record, dict):
            problems.add(number, "(line)", "is not a JSON object")
            continue
        item = _parse_record(number, record, problems)
        if item is not None:
            parsed.append(item)
    if not parsed and not problems:
        problems.add(1, "(line)", "the file contains no JSON lines")
    problems.raise_if_any()
    return parsed


def _parse_record(number: int, record: dict, problems: ProblemLog) -> BoxesLine | None:
    missing = [key for key in ("sentence", "masked_content", "sample_id", "numops")
               if key not in record]
    for key in missing:
        problems.add(number, key, "is missing")
    if missing:
        return None
    sentence, masked = record["sentence"], record["masked_content"]
    for key, value, kind in (("sentence", sentence, str), ("masked_content", masked, str),
                             ("sample_id", record["sample_id"], int),
                             ("numops", record["numops"], int)):
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = "a string" if kind is str else "an integer"
            problems.add(number, key, f"must be {expected}, got {value!r}")
            return None

    sentences = [part.strip() for part in sentence.split(".") if part.strip()]
    query = _BOX.match(sentences[-1]) if len(sentences) >= 2 else None
    if query is None:
        problems.add(number, "sentence", "must be a description, operations and a final "
                                         "'Box N contains ...' sentence, each ending in '.'")
        return None
    stated = parse_content(query.group("content") or "nothing")
    if not masked.startswith(SENTINEL + " "):
        problems.add(number, "masked_content", f"must start with '{SENTINEL} ', got "
                                               f"{masked[:30]!r}")
        return None
    answer_text = masked[len(SENTINEL) + 1:].strip()
    answer = parse_content(answer_text.removeprefix("contains "))
    if answer is None or answer != stated:
        problems.add(number, "masked_content", f"{answer_text!r} differs from the final "
                                               f"sentence {sentences[-1]!r}")
        return None

    box = int(query.group("box"))
    replay = _replay(number, sentences[0], sentences[1:-1], box, problems)
    if replay is None:
        return None
    states, changed = replay
    if states[-1] != answer:
        problems.add(number, "masked_content", f"is {describe(answer)!r}, but the operations "
                                               f"leave {describe(states[-1])!r} in Box {box}")
        return None
    if record["numops"] != sum(changed):
        problems.add(number, "numops", f"is {record['numops']}, but {sum(changed)} "
                                       f"operation(s) change Box {box}")
        return None
    return BoxesLine(number, record["sample_id"], box, sentences[0], sentences[1:-1],
                     states, changed, answer)


@dataclass
class Boxes(Task):
    """Track the contents of one box while objects are moved, removed and put in.

    A text reads "Box 0 contains the apple, Box 1 contains nothing, ... . Move the apple
    from Box 0 to Box 1. Remove the key from Box 2. Put the bell into Box 0. Box 1
    contains", ending where the model would name the queried box's contents. Readouts sit
    on the period of the description (step 0) and of each operation, labelled with the
    queried box's contents after it, and on the final "contains". The step counts the
    operations so far that changed the queried box (the data set's ``numops``). With
    ``readout_at=query`` only the final "contains" carries a readout.

    Generated stories keep at most one object per box, so the state has one class per
    object plus "nothing". Loaded lines whose operations are a prefix of another line's
    (same ``sample_id`` and box) add only their query readout. The operation readouts do
    not name the queried box, so a probe on them learns one box's contents: ``box`` picks it.
    """

    name = "boxes"
    summary = "entity tracking in boxes (Kim and Schuster 2023); generated or loaded from JSONL"
    state_variable = "the contents of the queried box"
    step_meaning = "number of operations so far that changed the queried box"
    readout_meaning = "the period after the description and each operation, and the final 'contains'"
    steps_option = "n_operations"

    path: str = field(default="", metadata={
        "help": "boxes JSONL file (sentence, masked_content, sample_id, numops); empty "
                "generates stories"})
    box: int = field(default=0, metadata={
        "help": "queried box; -1 queries a random box per generated story, or every box "
                "of a loaded file"})
    readout_at: str = field(default="operations", metadata={
        "help": "'operations' (each operation and the query) or 'query' (the query only)"})
    n_stories: int = field(default=300, metadata={"help": "generated stories"})
    n_boxes: int = field(default=5, metadata={"help": "generated boxes, 2 to 10"})
    n_objects: int = field(default=10, metadata={"help": f"object vocabulary, up to {len(OBJECTS)}"})
    n_operations: int = field(default=6, metadata={"help": "operations per generated story"})
    touch_rate: float = field(default=0.6, metadata={
        "help": "generated stories: chance that an operation involves the queried box"})
    min_readouts: int = field(default=20, metadata={
        "help": "drop the readouts of steps with fewer readouts than this in all (a "
                "probe per step needs enough); 0 keeps all"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})

    def check(self) -> None:
        if self.readout_at not in READOUT_PLACES:
            raise ValueError(f"readout_at must be one of {', '.join(READOUT_PLACES)}, got "
                             f"{self.readout_at!r}.")
        if self.path:
            self._lines
            return
        if not 2 <= self.n_boxes <= 10:
            raise ValueError(f"n_boxes must be 2 to 10, got {self.n_boxes}.")
        if not -1 <= self.box < self.n_boxes:
            raise ValueError(f"box must be -1 or a box number below n_boxes={self.n_boxes}, "
                             f"got {self.box}.")
        if not self.n_boxes < self.n_objects <= len(OBJECTS):
            raise ValueError(f"n_objects must be more than n_boxes={self.n_boxes} and at "
                             f"most {len(OBJECTS)}, got {self.n_objects}.")
        for option in ("n_stories", "n_operations"):
            if getattr(self, option) < 1:
                raise ValueError(f"{option} must be 1 or more, got {getattr(self, option)}.")
        if not 0.0 <= self.touch_rate <= 1.0:
            raise ValueError(f"touch_rate must be between 0 and 1, got {self.touch_rate}.")

    @property
    def class_names(self) -> list[str]:
        if self.path:
            return self._contents
        return ["nothing"] + [f"the {item}" for item in OBJECTS[: self.n_objects]]

    # ------------------------------------------------------------------ loader
    @functools.cached_property
    def _lines(self) -> list[BoxesLine]:
        lines = parse_boxes_file(existing_file(self.path, "path", "boxes JSONL file"))
        if self.box >= 0:
            lines = [item for item in lines if item.box == self.box]
            if not lines:
                raise ValueError(f"No line of {self.path} queries Box {self.box}; set box=-1 "
                                 f"or another box number.")
        return lines

    @functools.cached_property
    def _contents(self) -> list[str]:
        names = {describe(state) for item in self._lines for state in item.states}
        return sorted(names, key=lambda name: (name != "nothing", name))

    # --------------------------------------------------------------- generator
    def _operation(self, rng: random.Random, boxes: list[str | None], target: int) -> str:
        """Draw one valid operation, involving box ``target`` with ``touch_rate``."""
        free = [item for item in OBJECTS[: self.n_objects] if item not in boxes]
        full = [b for b, item in enumerate(boxes) if item]
        empty = [b for b, item in enumerate(boxes) if not item]
        touch = rng.random() < self.touch_rate
        options = []
        for source in full:
            for destination in empty:
                if not touch or target in (source, destination):
                    options.append(("move", source, destination))
            if not touch or source == target:
                options.append(("remove", source, None))
        for destination in empty:
            if not touch or destination == target:
                options.append(("put", None, destination))
        kind, source, destination = rng.choice(options)

        if kind == "move":
            item, boxes[source], boxes[destination] = boxes[source], None, boxes[source]
            return f"Move the {item} from Box {source} to Box {destination}."
        if kind == "remove":
            item, boxes[source] = boxes[source], None
            return f"Remove the {item} from Box {source}."
        boxes[destination] = rng.choice(free)
        return f"Put the {boxes[destination]} into Box {destination}."

    def _generate(self, rng: random.Random, target: int) -> tuple[str, list[str]]:
        objects = rng.sample(OBJECTS[: self.n_objects], self.n_boxes)
        boxes: list[str | None] = [item if rng.random() < 0.7 else None for item in objects]
        initial = ", ".join(f"Box {b} contains {describe((item,) if item else ())}"
                            for b, item in enumerate(boxes))
        operations = [self._operation(rng, boxes, target) for _ in range(self.n_operations)]
        return initial, [op.rstrip(".") for op in operations]

    # -------------------------------------------------------------- interface
    def render(self, initial: str, operations: list[str], box: int, group,
               operation_readouts: bool = True) -> TextExample:
        """Write a story ending in 'Box k contains', with readouts for box ``k``."""
        problems = ProblemLog("<generated story>")
        replay = _replay(0, initial, operations, box, problems)
        problems.raise_if_any()
        states, changed = replay
        names = self.class_names
        builder = TextBuilder()
        builder.add(initial + ".")
        step = 0
        if operation_readouts and self.readout_at == "operations":
            builder.mark_end(names.index(describe(states[0])), step)
        for index, operation in enumerate(operations):
            builder.add(f" {operation}.")
            step += changed[index]
            if operation_readouts and self.readout_at == "operations":
                builder.mark_end(names.index(describe(states[index + 1])), step)
        builder.mark(builder.add_word(f" Box {box} contains", "contains"),
                     names.index(describe(states[-1])), step)
        meta = {"box": box, "operations": list(operations), "initial": initial,
                "states": [describe(state) for state in states]}
        return TextExample(builder.text, builder.readouts, group, meta)

    def text_examples(self) -> list[TextExample]:
        self.check()
        if self.path:
            longest: dict[tuple[int, int], BoxesLine] = {}
            for item in self._lines:
                key = (item.sample_id, item.box)
                if key not in longest or len(item.operations) > len(longest[key].operations):
                    longest[key] = item
            examples = [self.render(item.initial, item.operations, item.box, item.sample_id,
                                    operation_readouts=longest[(item.sample_id, item.box)]
                                    is item)
                        for item in self._lines]
            return drop_sparse_steps(examples, self.min_readouts, logger)

        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            target = self.box if self.box >= 0 else rng.randrange(self.n_boxes)
            initial, operations = self._generate(rng, target)
            examples.append(self.render(initial, operations, target, index))
        return drop_sparse_steps(examples, self.min_readouts, logger)

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        """Ask "What is in Box k?" when every state is one object or nothing."""
        words = [name.removeprefix("the ") for name in self.class_names]
        if any(" " in word for word in words):
            return []
        box = example.meta["box"]
        query = example.readouts[-1]
        prefix = example.text[: example.text.rindex(f" Box {box} contains")]
        prompt = f"{prefix} Question: What is in Box {box}? Answer:"
        return [BehaviourQuery(prompt, [f" {word}" for word in words], query.label,
                               query.step, example.group)]
