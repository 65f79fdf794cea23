"""Typed values for the places depthprobe reads: sites, readouts and examples.

Layer indices follow one convention everywhere: ``0`` is the residual stream entering
block 0 (the embedding output), and ``l = 1..L`` is the residual stream after block ``l``,
before the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable


@dataclass(frozen=True)
class Site:
    """One place in one sequence: a layer index and a token position."""

    layer: int
    position: int

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"Site layer must be 0 or more, got {self.layer}.")


@dataclass(frozen=True)
class Span:
    """A character span ``[start, end)`` of an example's text that ends on a readout."""

    start: int
    end: int


@dataclass(frozen=True)
class Readout:
    """A token position where a task states the value of its state variable.

    ``position`` counts tokens in the unpadded text, from 0. ``label`` is the state's
    value there (a class index), and ``step`` counts the updates that went into it.
    """

    position: int
    label: int
    step: int
    span: Span | None = None


@dataclass
class Example:
    """One text with its readouts, and the group (story id) used for grouped folds."""

    text: str
    readouts: list[Readout]
    group: Hashable
    input_ids: list[int] | None = None
    meta: dict = field(default_factory=dict)
