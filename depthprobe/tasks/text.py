"""Build a task's text piece by piece while recording the character spans of readouts."""

from __future__ import annotations

import re

from ..sites import Span
from .base import LabelledSpan

# A word or a single punctuation mark: the units that later-token readouts sit on.
WORD_OR_PUNCTUATION = re.compile(r"\w+|[^\w\s]")


class TextBuilder:
    """Concatenate pieces of text and collect labelled readout spans on them."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.readouts: list[LabelledSpan] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __len__(self) -> int:
        return self._length

    def add(self, piece: str) -> Span:
        """Append ``piece`` and return its span, leading whitespace excluded."""
        start = self._length + (len(piece) - len(piece.lstrip()))
        self._parts.append(piece)
        self._length += len(piece)
        return Span(start, self._length)

    def add_word(self, piece: str, word: str) -> Span:
        """Append ``piece`` and return the span of the last occurrence of ``word`` in it."""
        offset = self._length
        self.add(piece)
        start = piece.rindex(word)
        return Span(offset + start, offset + start + len(word))

    def mark(self, span: Span, label: int, step: int) -> None:
        """Record a readout on ``span``; it aligns to the token that ends the span."""
        self.readouts.append(LabelledSpan(span, label, step))

    def mark_end(self, label: int, step: int) -> None:
        """Record a readout on the last character added so far (usually a period)."""
        self.mark(Span(self._length - 1, self._length), label, step)


def word_spans(text: str, start: int = 0) -> list[Span]:
    """Return the spans of the words and punctuation marks of ``text`` from ``start`` on."""
    return [Span(match.start(), match.end())
            for match in WORD_OR_PUNCTUATION.finditer(text, start)]
