"""Composition of permutations of 1..n (S3, S5), with the state's parity as an alternative."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from .base import Task, TextExample
from .text import TextBuilder

TARGETS = ("state", "parity")


def compose(state: tuple[int, ...], action: tuple[int, ...]) -> tuple[int, ...]:
    """Apply ``action`` to ``state``: ``new[j] = state[action[j] - 1]`` (1-based digits)."""
    return tuple(state[digit - 1] for digit in action)


def inversion_parity(permutation: tuple[int, ...]) -> int:
    """Return the number of inversions of ``permutation`` modulo 2 (0 even, 1 odd)."""
    inversions = sum(1 for i, j in itertools.combinations(range(len(permutation)), 2)
                     if permutation[i] > permutation[j])
    return inversions % 2


@dataclass
class Permutation(Task):
    """Track the composition of a sequence of permutations, as in Li, Guo and Andreas (2025).

    A text reads "Permutations: 231, 312, 123." Each action is a permutation of ``1..n``
    written as digits. The state starts at the identity, and applying action ``a`` gives
    ``new[j] = state[a[j]-1]``. Actions are drawn uniformly from all ``n!`` permutations.
    After each action, the comma (or the final period) carries a readout labelled with the
    composed state (``target=state``, ``n!`` classes in lexicographic order) or with its
    parity, the inversion count mod 2 (``target=parity``, two classes).
    """

    name = "permutation"
    summary = "compose permutations of 1..n (S3, S5); the state is the product or its parity"
    state_variable = "composition of the actions so far (or its parity, with target=parity)"
    step_meaning = "number of actions applied so far, from 1"
    readout_meaning = "the comma after each action, and the period after the last"
    steps_option = "n_actions"

    n_stories: int = field(default=300, metadata={"help": "number of action sequences"})
    n_actions: int = field(default=8, metadata={"help": "actions per sequence (steps)"})
    n_elements: int = field(default=3,
                            metadata={"help": "permuted elements: 3 for S3 to 5 for S5"})
    target: str = field(default="state",
                        metadata={"help": "label: 'state' (the composed permutation) or "
                                          "'parity' (its inversion count mod 2)"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})

    @property
    def permutations(self) -> list[tuple[int, ...]]:
        """All permutations of ``1..n_elements`` in lexicographic order."""
        return list(itertools.permutations(range(1, self.n_elements + 1)))

    @property
    def class_names(self) -> list[str]:
        if self.target == "parity":
            return ["even", "odd"]
        return ["".join(map(str, p)) for p in self.permutations]

    def check(self) -> None:
        if not 3 <= self.n_elements <= 5:
            raise ValueError(f"n_elements must be 3, 4 or 5, got {self.n_elements}.")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, "
                             f"got {self.target!r}.")
        if self.n_actions < 1:
            raise ValueError(f"n_actions (steps) must be 1 or more, got {self.n_actions}.")
        if self.n_stories < 1:
            raise ValueError(f"n_stories must be 1 or more, got {self.n_stories}.")

    def label(self, state: tuple[int, ...]) -> int:
        if self.target == "parity":
            return inversion_parity(state)
        return self.permutations.index(state)

    def render(self, actions: list[tuple[int, ...]], group) -> TextExample:
        """Write a sequence of actions as text with one readout after each action."""
        builder = TextBuilder()
        builder.add("Permutations:")
        state = tuple(range(1, self.n_elements + 1))
        states = []
        for step, action in enumerate(actions, start=1):
            state = compose(state, action)
            states.append(state)
            builder.add(" " + "".join(map(str, action)))
            builder.add("," if step < len(actions) else ".")
            builder.mark_end(self.label(state), step)
        meta = {"actions": [list(a) for a in actions], "states": [list(s) for s in states]}
        return TextExample(builder.text, builder.readouts, group, meta)

    def text_examples(self) -> list[TextExample]:
        self.check()
        rng = random.Random(self.seed)
        permutations = self.permutations
        examples = []
        for index in range(self.n_stories):
            actions = [rng.choice(permutations) for _ in range(self.n_actions)]
            example = self.render(actions, group=index)

            # A first action of the other parity changes the composed state and its parity
            # at every step, because the later actions are the same bijections.
            other_parity = [p for p in permutations
                            if inversion_parity(p) != inversion_parity(actions[0])]
            changed = [rng.choice(other_parity)] + actions[1:]
            example.counterfactual = self.render(changed, group=index)
            example.counterfactual.meta["changed_step"] = 1
            examples.append(example)
        return examples

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        actions = [tuple(a) for a in example.meta["actions"]]
        previous = [None] + [r.label for r in example.readouts[:-1]]
        return {
            "last action alone": [self.label(a) for a in actions],
            "state one step behind": previous,
        }
