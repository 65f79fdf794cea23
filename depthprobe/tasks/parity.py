"""Running parity of a bit sequence."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import BehaviourQuery, Task, TextExample
from .text import TextBuilder

DEFAULT_QUERY = " Question: is the number of 1s so far even or odd? Answer:"


@dataclass
class Parity(Task):
    """Track whether an even or odd number of 1s has been read.

    A text reads "Bits: 1 0 1 1 0." with each bit a separate token on the bundled
    tokenizers. Every bit carries a readout labelled with the parity of the 1s up to and
    including it (0 even, 1 odd); the step is the bit's index from 1. Bits are uniform and
    independent, so the parity at each step is a fair coin.
    """

    name = "parity"
    summary = "a sequence of bits; the state is the running parity of the 1s"
    state_variable = "parity of the number of 1s read so far (even or odd)"
    step_meaning = "number of bits read so far, from 1"
    readout_meaning = "each bit"
    steps_option = "n_bits"

    n_stories: int = field(default=300, metadata={"help": "number of bit sequences"})
    n_bits: int = field(default=12, metadata={"help": "bits per sequence (steps 1..n_bits)"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})
    query: str = field(default=DEFAULT_QUERY,
                       metadata={"help": "continuation prompt that asks for the parity"})

    @property
    def class_names(self) -> list[str]:
        return ["even", "odd"]

    def check(self) -> None:
        if self.n_bits < 1:
            raise ValueError(f"n_bits must be 1 or more, got {self.n_bits}.")
        if self.n_stories < 1:
            raise ValueError(f"n_stories must be 1 or more, got {self.n_stories}.")

    def render(self, bits: list[int], group) -> TextExample:
        """Write a bit sequence as text with one readout per bit."""
        builder = TextBuilder()
        builder.add("Bits:")
        parity = 0
        for step, bit in enumerate(bits, start=1):
            parity ^= bit
            builder.mark(builder.add(f" {bit}"), parity, step)
        builder.add(".")
        return TextExample(builder.text, builder.readouts, group, {"bits": list(bits)})

    def text_examples(self) -> list[TextExample]:
        self.check()
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            bits = [rng.randrange(2) for _ in range(self.n_bits)]
            example = self.render(bits, group=index)
            # Flipping the first bit flips the parity at every readout.
            flipped = [1 - bits[0]] + bits[1:]
            example.counterfactual = self.render(flipped, group=index)
            example.counterfactual.meta["changed_step"] = 1
            examples.append(example)
        return examples

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        return [
            BehaviourQuery(example.text[: r.span.end] + self.query, [" even", " odd"],
                           r.label, r.step, example.group)
            for r in example.readouts
        ]

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        bits = example.meta["bits"]
        previous = [None] + [r.label for r in example.readouts[:-1]]
        return {
            "last bit": list(bits),
            "parity of the last two bits": [bits[0]] + [a ^ b for a, b in zip(bits, bits[1:])],
            "parity one step behind": previous,
        }
