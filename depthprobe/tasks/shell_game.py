"""The shell game: a ball under one of several cups, and a sequence of swaps."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from ..sites import Span
from .base import BehaviourQuery, LabelledSpan, Task, TextExample

# On both bundled models this wording gets step 0 (no swaps) right well above chance,
# while "The ball is under cup" makes SmolLM2 avoid the cup just named.
DEFAULT_QUERY = " Question: Where is the ball? Answer: under cup"


@dataclass
class ShellGame(Task):
    """Track which cup hides the ball while cups are swapped.

    A story reads "The ball is under cup A. Swap cups C and A. Swap cups B and C." Each
    swap is an ordered pair of distinct cups drawn uniformly, so it may or may not move
    the ball, and neither the order of the letters nor the last cup named gives the
    answer away. There is one readout per sentence, on its final period, labelled with
    the ball's cup after that sentence; the step counts the swaps so far (the opening
    sentence is step 0).
    """

    name = "shell-game"
    summary = "ball under one of 3-5 cups; the state is the ball's cup after each swap"
    state_variable = "the cup that hides the ball"
    step_meaning = "number of swaps so far (the opening sentence is step 0)"
    readout_meaning = "the period that ends each sentence"
    steps_option = "n_swaps"

    n_stories: int = field(default=300, metadata={"help": "number of stories"})
    n_swaps: int = field(default=8, metadata={"help": "swaps per story (steps 1..n_swaps)"})
    n_cups: int = field(default=3, metadata={"help": "number of cups, 3 to 5"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})
    query: str = field(default=DEFAULT_QUERY,
                       metadata={"help": "continuation prompt that asks for the cup"})

    @property
    def cups(self) -> list[str]:
        return list(string.ascii_uppercase[: self.n_cups])

    @property
    def class_names(self) -> list[str]:
        return [f"cup {cup}" for cup in self.cups]

    def check(self) -> None:
        if not 3 <= self.n_cups <= 5:
            raise ValueError(f"n_cups must be 3, 4 or 5, got {self.n_cups}.")
        if self.n_swaps < 1:
            raise ValueError(f"n_swaps (steps) must be 1 or more, got {self.n_swaps}.")
        if self.n_stories < 1:
            raise ValueError(f"n_stories must be 1 or more, got {self.n_stories}.")

    def story(self, rng: random.Random) -> tuple[int, list[tuple[int, int]]]:
        """Draw a start cup and ``n_swaps`` ordered pairs of distinct cups."""
        start = rng.randrange(self.n_cups)
        swaps = [tuple(rng.sample(range(self.n_cups), 2)) for _ in range(self.n_swaps)]
        return start, swaps

    def render(self, start: int, swaps: list[tuple[int, int]], group) -> TextExample:
        """Write a story as text with one labelled readout per sentence."""
        cups = self.cups
        text = f"The ball is under cup {cups[start]}."
        ball = start
        readouts = [LabelledSpan(Span(len(text) - 1, len(text)), ball, 0)]
        for step, (a, b) in enumerate(swaps, start=1):
            text += f" Swap cups {cups[a]} and {cups[b]}."
            if ball in (a, b):
                ball = b if ball == a else a
            readouts.append(LabelledSpan(Span(len(text) - 1, len(text)), ball, step))
        meta = {"start": start, "swaps": [list(pair) for pair in swaps]}
        return TextExample(text, readouts, group, meta)

    def text_examples(self) -> list[TextExample]:
        self.check()
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            start, swaps = self.story(rng)
            example = self.render(start, swaps, group=index)
            other = (start + 1 + rng.randrange(self.n_cups - 1)) % self.n_cups
            example.counterfactual = self.render(other, swaps, group=index)
            examples.append(example)
        return examples

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        choices = [f" {cup}" if self.query.endswith(("cup", "Cup")) else cup
                   for cup in self.cups]
        return [
            BehaviourQuery(example.text[: r.span.end] + self.query, choices, r.label, r.step,
                           example.group)
            for r in example.readouts
        ]

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        start = example.meta["start"]
        swaps = example.meta["swaps"]
        last_named = [start] + [b for _, b in swaps]
        first_of_swap = [start] + [a for a, _ in swaps]
        return {
            "start cup (ignore swaps)": [start] * (len(swaps) + 1),
            "last cup named": last_named,
            "first cup of the last swap": first_of_swap,
        }
