"""The task interface: texts with state labels at character spans, aligned to tokens."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Sequence

from ..sites import Example, Readout, Span


@dataclass
class LabelledSpan:
    """A readout before tokenization: the character span it ends on, its label and step."""

    span: Span
    label: int
    step: int


@dataclass
class TextExample:
    """A task example before tokenization.

    ``readouts`` label character spans; :func:`align_examples` turns each into the token
    whose last character is the span's last character. ``counterfactual`` optionally
    holds the same text with one earlier update changed, so that the state differs.
    """

    text: str
    readouts: list[LabelledSpan]
    group: Hashable
    meta: dict = field(default_factory=dict)
    counterfactual: "TextExample | None" = None


@dataclass
class BehaviourQuery:
    """A prompt that asks the model for the state, and the possible answers.

    The model's choice is the answer whose first token gets the highest next-token logit
    after ``prompt``; ``answer`` is the index of the right one in ``choices``.
    """

    prompt: str
    choices: list[str]
    answer: int
    step: int
    group: Hashable


@dataclass
class TaskOption:
    """One task option as the command line shows it."""

    name: str
    type: type
    default: Any
    help: str


class Task(ABC):
    """A state-tracking task: a generator or loader of labelled texts.

    Subclasses are dataclasses whose fields are the task's options (each with a
    ``metadata={"help": ...}``); like scikit-learn estimators, construction only stores
    them, and :meth:`check` validates them before any model loads.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `depthprobe tasks`
    state_variable: ClassVar[str]
    step_meaning: ClassVar[str]
    readout_meaning: ClassVar[str]
    # The option that sets how many steps a generated text has, for a shared --steps flag;
    # None where the task has no such option.
    steps_option: ClassVar[str | None] = None

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of the state's values; a label is an index into this list."""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        """Raise ``ValueError`` naming a bad option and its fix; the default accepts all."""

    @abstractmethod
    def text_examples(self) -> list[TextExample]:
        """Return the task's examples with labels on character spans."""

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        """Return prompts that ask the model for the state of ``example``, one per step."""
        return []

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        """Return, per shortcut rule, the label it guesses at each readout of ``example``."""
        return {}

    @classmethod
    def options(cls) -> list[TaskOption]:
        """List the task's options with their types, defaults and help text."""
        result = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = f.type if isinstance(f.type, type) else type(default)
            result.append(TaskOption(f.name, kind, default, f.metadata.get("help", "")))
        return result

    def settings(self) -> dict:
        """Return the task's name and option values, for manifests."""
        return {"task": self.name, **dataclasses.asdict(self)}


def align_examples(
    examples: Sequence[TextExample], tokenizer, max_length: int | None = None
) -> list[Example]:
    """Tokenize examples and place each readout on the token that ends its span.

    Raises ``ValueError`` naming the example and the span when a span does not end on a
    token boundary, or ends past ``max_length`` tokens.
    """
    aligned = []
    for index, example in enumerate(examples):
        encoded = tokenizer(example.text, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        ends = {}
        for position, (start, end) in enumerate(encoded["offset_mapping"]):
            if end > start:
                ends.setdefault(end, position)

        readouts = []
        for labelled in example.readouts:
            span = labelled.span
            position = ends.get(span.end)
            if position is None:
                raise ValueError(
                    f"Readout span {span.start}:{span.end} "
                    f"({example.text[span.start:span.end]!r}) of example {index} "
                    f"(group {example.group!r}) does not end on a token boundary of this "
                    f"tokenizer; end the span on a whole word or punctuation mark."
                )
            if max_length is not None and position >= max_length:
                raise ValueError(
                    f"Readout span {span.start}:{span.end} of example {index} "
                    f"(group {example.group!r}) falls at token {position}, past the "
                    f"truncation length {max_length}; raise max_length or shorten the text."
                )
            readouts.append(Readout(position, labelled.label, labelled.step, span))
        aligned.append(Example(example.text, readouts, example.group, ids, dict(example.meta)))
    return aligned
